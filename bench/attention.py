"""One attention layer, forward + backward: the blockwise kernel against the einsum reference on CPU.

    python bench/attention.py [--seqs 1024,2048,4096] [--blocks 256,512,1024] [--batch 1]
        [--heads 12 --kv_heads 2 --head_dim 128] [--repeats 5]

Per row length T: median seconds of jit(value_and_grad) of sum(attend(q, k, v) * w) over q, k, v
(causal, one segment, float32), and the compiled program's temporaries
(compiled.memory_analysis().temp_size_in_bytes), for einsum and for blockwise at each block size;
the blockwise outputs and gradients are checked against einsum's first (max abs difference
printed). Default heads: Qwen2.5-1.5B's (12 query heads, 2 kv heads of 128).
With --decode: one decode query per row over a cache of T columns (--batch rows), einsum decode
(attention._attend_decode) vs the blockwise decode, forward only.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _median(fn, repeats):
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--blocks", default="256,512,1024")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from reasonax.model import attention
    from reasonax.model.config import ModelConfig

    base = ModelConfig(model_type="qwen2", vocab_size=16, hidden_size=args.heads * args.head_dim, intermediate_size=8,
                       num_layers=1, num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim)
    print(f"# {platform.machine()} {os.cpu_count()} cores, jax {jax.__version__}, batch {args.batch}, "
          f"heads {args.heads}/{args.kv_heads}x{args.head_dim}, {'decode' if args.decode else 'fwd+bwd'}")
    print("| T | kernel | block | seconds | temp MiB | max abs diff vs einsum |")
    print("|---|---|---|---|---|---|")
    for T in map(int, args.seqs.split(",")):
        B = args.batch
        keys = jax.random.split(jax.random.key(0), 4)
        Tq = 1 if args.decode else T
        q = jax.random.normal(keys[0], (B, Tq, args.heads, args.head_dim))
        k = jax.random.normal(keys[1], (B, T, args.kv_heads, args.head_dim))
        v = jax.random.normal(keys[2], (B, T, args.kv_heads, args.head_dim))
        w = jax.random.normal(keys[3], q.shape)
        slots = jnp.arange(T, dtype=jnp.int32)
        seg = jnp.ones((B, T), jnp.int32)
        if args.decode:
            spec = attention.MaskSpec(jnp.full((B, 1), T - 1, jnp.int32), slots, jnp.ones((B, 1), jnp.int32), seg)
        else:
            spec = attention.MaskSpec(slots, slots, seg, seg, aligned=True)

        def build(cfg):
            if args.decode:
                return jax.jit(lambda q, k, v: attention.attend(cfg, q, k, v, spec))
            return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(attention.attend(cfg, q, k, v, spec) * w),
                                              argnums=(0, 1, 2)))

        ref = None
        for impl, block in [("einsum", 0)] + [("blockwise", int(b)) for b in args.blocks.split(",")]:
            cfg = base.replace(attention_impl=impl, attention_block=block or 512)
            fn = build(cfg)
            temp = fn.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
            out = fn(q, k, v)
            leaves = jax.tree.leaves(out)
            if ref is None:
                ref, diff = leaves, 0.0
            else:
                diff = max(float(jnp.abs(a - b).max()) for a, b in zip(leaves, ref))
            sec = _median(lambda: fn(q, k, v), args.repeats)
            print(f"| {T} | {impl} | {block or '-'} | {sec:.4f} | {temp / 2**20:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
