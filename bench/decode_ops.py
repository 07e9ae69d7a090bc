"""Micro-benchmarks behind the CPU decode choices, on the real Gemma 3 270M (float32), one decode step.

    python bench/decode_ops.py

1. attention projections as einsums against 3-D weights ([N, H, D]) vs the 2-D matmuls over
   flattened heads that reasonax uses (transformer._project_in / _project_out);
2. one decode step through the layer stack: lax.scan over the stacked weights vs the unrolled
   loop over per-layer arrays (transformer.unstack_layers), at batch 1 and 8;
3. the unembedding matmul's read rate at batch 1 and 8 next to the machine's read bandwidth;
4. a ceiling: only the matmuls of one batch-8 decode step (the 126 layer projections and the
   unembedding, on the real weights), in JAX and in torch (F.linear, MKL), and the tokens/s they
   alone allow;
5. one layer's decode attention at the rollout engine's shapes (Gemma 3 270M heads: 1 kv head of
   256, 4 query heads; 32 slots, 1,408 cache columns, the first 1,024 live): the reference score
   einsum 'BKGH,BSKH->BKGS' (attention._attend_einsum) against the engine's 'BSKH,BKGH->BKSG'
   (attention._attend_decode), each on the first 1,024 columns sliced out of the cache, on the
   whole cache (masked), on eight 128-column blocks, and on the engine's per-layer blocks
   (cache.block_widths: 128, 128, 256, 512 for the first 1,024 columns); then the same over 18
   layers' caches at once (1.2 GB of keys and values, not held in the CPU's caches, as in a step);
6. decode attention over long caches (2,048 / 4,096 / 8,192 columns in the engine's blocks): the
   einsum decode against the blockwise decode (attention.LONG_DECODE is where auto switches);
7. drawing one token per row from [32, 262144] float32 logits (temperature 1): the Gumbel-max
   trick with jax.random's threefry (jax.random.categorical's rule) against the sampler's
   exponential race on counter-hash noise (sampler.draw_tokens).
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
            q = transformer._project_in(cfg, x, p, "q")
            k, v = (transformer._project_in(cfg, x, p, n) for n in ("k", "v"))
            x = x + transformer._project_out(cfg, q, p, "o") + k.sum() + v.sum()
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

    matmul_ceiling(cfg, per_layer, table, batch=8)
    decode_attention(cfg)
    long_decode_attention(cfg)
    token_draw(cfg)


def decode_attention(cfg, slots=32, columns=1408, live=1024, block=128, layers=18):
    import jax
    import jax.numpy as jnp

    from reasonax.model import attention
    from reasonax.model.cache import block_widths

    K, N, H = cfg.num_kv_heads, cfg.num_heads, cfg.head_dim
    q = jax.random.normal(jax.random.key(0), (slots, 1, N, H))
    k, v = (jax.random.normal(jax.random.key(i), (slots, columns, K, H)) for i in (1, 2))
    starts = lambda ws: [sum(ws[:i]) for i in range(len(ws))]  # noqa: E731
    uniform = (block,) * (live // block)
    engine = block_widths(columns, block)
    engine = engine[:next(i for i in range(len(engine)) if sum(engine[:i + 1]) >= live) + 1]
    split = lambda a, ws: tuple(a[:, lo:lo + w] for lo, w in zip(starts(ws), ws))  # noqa: E731
    mask = lambda n: jnp.ones((slots, 1, n), bool)  # noqa: E731
    kv_bytes = 2 * slots * live * K * H * 4
    cases = {
        "reference einsum, first columns sliced": ((q, k, v), jax.jit(
            lambda q, k, v: attention._attend_einsum(cfg, q, k[:, :live], v[:, :live], mask(live)))),
        "engine einsum, first columns sliced": ((q, k, v), jax.jit(
            lambda q, k, v: attention._attend_decode(cfg, q, k[:, :live], v[:, :live], mask(live)))),
        "engine einsum, whole cache masked": ((q, k, v), jax.jit(
            lambda q, k, v: attention._attend_decode(cfg, q, k, v, jnp.broadcast_to(jnp.arange(columns) < live,
                                                                                     (slots, 1, columns))))),
        f"engine einsum, {len(uniform)} blocks of {block} columns": ((q, split(k, uniform), split(v, uniform)),
                                                                      jax.jit(lambda q, k, v: attention._attend_decode(
                                                                          cfg, q, k, v, mask(live)))),
        f"engine einsum, the engine's blocks {engine}": ((q, split(k, engine), split(v, engine)), jax.jit(
            lambda q, k, v: attention._attend_decode(cfg, q, k, v, mask(live)))),
    }
    for name, (args, f) in cases.items():
        t = _median(lambda: f(*args))
        print(f"decode attention, one layer, {slots} slots x {live} of {columns} columns, {name}: "
              f"{t * 1e3:.2f} ms ({kv_bytes / t / 1e9:.1f} GB/s of the live keys and values)")
    # every layer of a step: the caches do not fit the CPU's caches, as in the engine's decode
    ks = [jax.random.normal(jax.random.key(10 + i), (slots, live, K, H)) for i in range(layers)]
    vs = [jax.random.normal(jax.random.key(50 + i), (slots, live, K, H)) for i in range(layers)]
    for ws in (uniform, engine):
        kb, vb = [split(a, ws) for a in ks], [split(a, ws) for a in vs]
        f = jax.jit(lambda q, kb, vb: [attention._attend_decode(cfg, q, kb[i], vb[i], mask(live)) for i in range(layers)])
        t = _median(lambda: f(q, kb, vb), repeats=7)
        print(f"decode attention, {layers} layers, {slots} slots x {live} columns in blocks {ws}: {t * 1e3:.1f} ms "
              f"({layers * kv_bytes / t / 1e9:.1f} GB/s)")


def long_decode_attention(cfg, slots=32, block=128):
    """6. decode attention over long caches (attention.attend, the engine's per-layer blocks,
    cache.block_widths): the einsum decode (all scores of a row at once) against the blockwise
    decode (one block of scores at a time), at cache lengths around attention.LONG_DECODE."""
    import jax
    import jax.numpy as jnp

    from reasonax.model import attention
    from reasonax.model.cache import block_widths

    K, N, H = cfg.num_kv_heads, cfg.num_heads, cfg.head_dim
    for columns in (2048, 4096, 8192):
        q = jax.random.normal(jax.random.key(0), (slots, 1, N, H))
        kb, vb = (tuple(jax.random.normal(jax.random.key(i + j), (slots, w, K, H))
                        for j, w in enumerate(block_widths(columns, block))) for i in (1, 2))
        spec = attention.MaskSpec(jnp.full((slots, 1), columns - 1, jnp.int32), jnp.arange(columns, dtype=jnp.int32),
                                  jnp.ones((slots, 1), jnp.int32), jnp.ones((slots, columns), jnp.int32))
        for impl in ("einsum", "blockwise"):
            c = cfg.replace(attention_impl=impl)
            f = jax.jit(lambda q, k, v, c=c: attention.attend(c, q, k, v, spec))
            t = _median(lambda: f(q, kb, vb))
            print(f"decode attention, one layer, {slots} slots x {columns} columns in the engine's blocks, "
                  f"{impl}: {t * 1e3:.2f} ms")


def token_draw(cfg, slots=32):
    """7. one token per row from [slots, vocab] logits at temperature 1: the Gumbel-max trick on
    threefry noise against the sampler's race on hash noise (the same distribution; other draws)."""
    import jax
    import jax.numpy as jnp

    from reasonax import sample
    from reasonax.sample import sampler

    logits = jax.random.normal(jax.random.key(0), (slots, cfg.vocab_size)) * 3
    keys = sampler.row_keys(0, jnp.arange(slots), jnp.zeros(slots, jnp.int32))
    sp = sample.SamplingParams(temperature=1.0)

    def gumbel_max(logits, keys, step):
        ks = jax.vmap(jax.random.fold_in)(keys, jnp.full(keys.shape, step, jnp.int32))
        g = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[-1:], logits.dtype))(ks)
        tok = sampler.argmax(g + logits)
        return tok, sampler._logprob_of(logits, tok)

    cases = {"Gumbel-max (jax.random.categorical's rule)": jax.jit(gumbel_max),
             "exponential race on hash noise (sampler.draw_tokens)": jax.jit(lambda l, k, t: sampler.draw_tokens(l, k, t, sp)[:2])}
    for name, f in cases.items():
        t = _median(lambda: f(logits, keys, jnp.int32(3)))
        print(f"draw one token per row, [{slots}, {cfg.vocab_size}] logits, {name}: {t * 1e3:.1f} ms")


def matmul_ceiling(cfg, per_layer, table, batch):
    """Time only the matmuls of one decode step, JAX and torch on the same weights."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    D = cfg.hidden_size
    mats = [m for p in per_layer for m in (*(p[n].reshape(-1, D) for n in ("q", "k", "v")),
                                           p["o"].reshape(D, -1), p["gate"], p["up"], p["down"])]
    xs = {m.shape[1]: jnp.ones((batch, m.shape[1])) for m in mats}
    layers = jax.jit(lambda ms: [jnp.einsum("BK,NK->BN", xs[m.shape[1]], m) for m in ms])
    head = jax.jit(lambda t: jnp.einsum("BD,VD->BV", xs[D], t))
    t_mats = [torch.tensor(np.asarray(m)) for m in mats]
    t_table = torch.tensor(np.asarray(table))
    t_xs = {k: torch.ones(batch, k) for k in xs}
    sides = {"JAX": (lambda: layers(mats), lambda: head(table)),
             "torch": (lambda: [torch.nn.functional.linear(t_xs[m.shape[1]], m) for m in t_mats],
                       lambda: torch.nn.functional.linear(t_xs[D], t_table))}
    layer_bytes = sum(m.nbytes for m in mats)
    for name, (f_layers, f_head) in sides.items():
        t_l, t_h = _median(f_layers), _median(f_head)
        print(f"{name}, batch {batch}, matmuls only: {len(mats)} layer matmuls {t_l * 1e3:.1f} ms "
              f"({layer_bytes / t_l / 1e9:.1f} GB/s), unembedding {t_h * 1e3:.1f} ms "
              f"({table.nbytes / t_h / 1e9:.1f} GB/s): {(t_l + t_h) * 1e3:.1f} ms per step, "
              f"at most {batch / (t_l + t_h):.0f} tokens/s")


if __name__ == "__main__":
    main()
