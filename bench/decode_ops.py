"""Micro-benchmarks behind the CPU decode choices, on the real Gemma 3 270M (float32), one decode step.

    python bench/decode_ops.py

1. attention projections as einsums against 3-D weights ([N, H, D]) vs the 2-D matmuls over
   flattened heads that reasonax uses (transformer._project_in / _project_out);
2. one decode step through the layer stack: lax.scan over the stacked weights vs the unrolled
   loop over per-layer arrays (transformer.unstack_layers), at batch 1 and 8;
3. the unembedding matmul's read rate at batch 1 and 8 next to the machine's read bandwidth.
"""

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _median(fn, repeats=15):
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    import jax
    import jax.numpy as jnp

    from reasonax import model
    from reasonax.model import gguf, transformer

    cfg, params = model.load_hf(gguf.gemma3_270m_dir())
    per_layer = transformer.unstack_layers(params)["layers"]
    x = jnp.ones((1, 1, cfg.hidden_size))

    def proj_3d(ls, x):
        for p in ls:
            q = jnp.einsum("BTD,NHD->BTNH", x, p["q"])
            k, v = (jnp.einsum("BTD,KHD->BTKH", x, p[n]) for n in ("k", "v"))
            x = x + jnp.einsum("BTNH,DNH->BTD", q, p["o"]) + k.sum() + v.sum()
        return x

    def proj_2d(ls, x):
        for p in ls:
            q = transformer._project_in(x, p["q"])
            k, v = (transformer._project_in(x, p[n]) for n in ("k", "v"))
            x = x + transformer._project_out(q, p["o"]) + k.sum() + v.sum()
        return x

    for name, fn in (("3-D einsums", proj_3d), ("2-D matmuls (reasonax)", proj_2d)):
        f = jax.jit(fn)
        print(f"attention projections, 18 layers, batch 1, {name}: {_median(lambda: f(per_layer, x)) * 1e3:.1f} ms")

    step = jax.jit(lambda p, t, c: transformer.hidden_states(p, t, cfg, cache=c)[0])
    unstacked = transformer.unstack_layers(params)
    for batch in (1, 8):
        cache = model.init_cache(cfg, batch, 96)
        tok = jnp.ones((batch, 1), jnp.int32)
        scan = _median(lambda: step(params, tok, cache))
        loop = _median(lambda: step(unstacked, tok, cache))
        print(f"decode step through the layers, batch {batch}: lax.scan over stacked weights {scan * 1e3:.1f} ms, "
              f"unrolled over per-layer arrays {loop * 1e3:.1f} ms")

    table = params["embed"]
    read = jax.jit(lambda a: a.sum())
    bandwidth = table.nbytes / _median(lambda: read(table))
    head = jax.jit(lambda h, w: jnp.einsum("BD,VD->BV", h, w))
    for batch in (1, 8):
        h = jnp.ones((batch, cfg.hidden_size))
        t = _median(lambda: head(h, table))
        print(f"unembedding [{batch}, {cfg.hidden_size}] x [{cfg.vocab_size}, {cfg.hidden_size}]^T: "
              f"{table.nbytes / t / 1e9:.1f} GB/s of the table (read bandwidth here {bandwidth / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
