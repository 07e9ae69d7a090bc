"""Forward (prefill) of the real Gemma 3 270M: reasonax vs transformers on the same weights, same run.

    python bench/forward.py [--dtype float32] [--shapes 1x64,8x128,8x512] [--repeats 5]

Reports per shape: reasonax compile time (lower + compile), step time (median), transformers
step time (eager attention and sdpa, torch.inference_mode), the ratio, and achieved FLOP/s
as a fraction of the matmul FLOP/s measured here in the same process (a 2048^3 jnp.dot).
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype, n=2048, repeats=10):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = _median_time(lambda: f(a, a).block_until_ready(), repeats)
    return 2 * n**3 / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", default="1x64,8x128,4x512")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from reasonax import model
    from reasonax.model import flops, gguf

    path = gguf.gemma3_270m_dir()
    cfg, params = model.load_hf(path, dtype=args.dtype)
    tdtype = getattr(torch, args.dtype)
    refs = {impl: transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=tdtype,
                                                                     attn_implementation=impl).eval()
            for impl in ("eager", "sdpa")}
    peak = matmul_peak(jnp.dtype(args.dtype))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}")
    print(f"measured matmul peak ({args.dtype}, 2048^3 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
    print("| batch x seq | compile s | reasonax ms | hf eager ms | hf sdpa ms | speedup vs best hf | "
          "reasonax GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        b, t = map(int, shape.split("x"))
        tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(b, t)), jnp.int32)
        t0 = time.perf_counter()
        compiled = model.forward.lower(params, tokens, cfg).compile()
        compile_s = time.perf_counter() - t0
        compiled(params, tokens).block_until_ready()
        ours = _median_time(lambda: compiled(params, tokens).block_until_ready(), args.repeats)
        tt = torch.tensor(np.asarray(tokens))
        hf_times = {}
        for impl, ref in refs.items():
            with torch.inference_mode():
                ref(tt)
                hf_times[impl] = _median_time(lambda: ref(tt), args.repeats)
        f = flops.forward_flops(cfg, b, t)["total"]
        best = min(hf_times.values())
        print(f"| {b}x{t} | {compile_s:.2f} | {ours * 1e3:.1f} | {hf_times['eager'] * 1e3:.1f} | "
              f"{hf_times['sdpa'] * 1e3:.1f} | {best / ours:.2f}x | {f / ours / 1e9:.1f} | {f / ours / peak:.0%} |")


if __name__ == "__main__":
    main()
