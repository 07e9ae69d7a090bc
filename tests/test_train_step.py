"""The train step: chunked CE, true-token-mean accumulation, optimizer masking, dtypes, NaN guard,
sharded vs single device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax.model import config as C
from reasonax.model import forward, init_params, make_mesh
from reasonax.model.transformer import hidden_states, positions_from_segments
from reasonax.train import loss as L
from reasonax.train import state as S
from reasonax.train import step as ST

CFG = C.qwen2(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8)
GEMMA2 = C.gemma2(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=16, sliding_window=4)


def _batch(B=16, T=12, V=96, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((B, T), np.int32)
    seg[::3, T // 2:] = 2  # some packed rows
    seg[1::4, -3:] = 0  # some padding
    pos = np.asarray(positions_from_segments(jnp.asarray(seg)))
    w = (rng.random((B, T)) < 0.6).astype(np.float32) * (seg > 0)
    w[0] = 1.0  # rows with very different token counts: a mean of micro-batch means would differ
    w[2] = 0.0
    return dict(inputs=rng.integers(0, V, (B, T)).astype(np.int32),
                targets=rng.integers(0, V, (B, T)).astype(np.int32), weights=w, segment_ids=seg, positions=pos)


def _optim(**kw):
    o = S.default_optim_config()
    o.warmup_steps, o.total_steps, o.lr = 1, 10, 1e-2
    o.update(kw)
    return o


def _run(cfg, mesh, batch, steps=2, accum=1, dtype=jnp.float32, optim=None, loss_fn=None, unroll=False):
    optim = optim or _optim()
    opt = S.make_optimizer(optim, cfg)
    params = init_params(cfg, jax.random.key(0), dtype=dtype, mesh=mesh)
    state = S.create_state(params, cfg, opt, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    fn = loss_fn or functools.partial(L.sft_loss, cfg=cfg, chunk=5)
    step = ST.build_train_step(fn, opt, shardings, mesh, accum_steps=accum, lr_schedule=S.schedule(optim),
                               unroll_layers=unroll)
    batch = jax.device_put(batch, ST.batch_sharding(mesh))
    metrics = []
    for _ in range(steps):
        state, m = step(state, batch)
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics


def _ref_logprobs(params, batch, cfg):
    logits = forward(params, batch["inputs"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("cfg,chunk", [(CFG, 1), (CFG, 5), (CFG, None), (GEMMA2, 5)],
                         ids=["qwen2-1", "qwen2-5", "qwen2-auto", "gemma2-softcap-5"])
def test_chunked_logprobs_and_grads_match_full_logits(cfg, chunk):
    params = init_params(cfg, jax.random.key(1))
    batch = jax.tree.map(jnp.asarray, _batch(B=4))

    def chunked(p):
        h, _ = hidden_states(p, batch["inputs"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"])
        return L.token_logprobs(p, h, batch["targets"], cfg, chunk)

    got, ref = jax.jit(chunked)(params), _ref_logprobs(params, batch, cfg)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    g1 = jax.jit(jax.grad(lambda p: (chunked(p) * batch["weights"]).sum()))(params)
    g2 = jax.jit(jax.grad(lambda p: (_ref_logprobs(p, batch, cfg) * batch["weights"]).sum()))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), g1, g2)


def test_chunked_loss_memory_stays_bounded_for_262k_vocab():
    """value_and_grad of the loss for Gemma's vocab: XLA's temp buffers stay far below one float32
    [B,T,V] logits tensor (which the unchunked loss needs several of)."""
    cfg = C.gemma3(vocab_size=262144, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=32, sliding_window=16)
    B, T = 2, 512
    full_logits = B * T * cfg.vocab_size * 4  # 1 GiB
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "weights" else jnp.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}

    def temp_bytes(loss):
        f = jax.jit(jax.value_and_grad(lambda p, b: loss(p, b)[0]))
        return f.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    chunk = L.chunk_len(B, T, cfg.vocab_size, budget_bytes=64 << 20)  # 64 MiB of logits per chunk
    chunked = temp_bytes(functools.partial(L.sft_loss, cfg=cfg, chunk=chunk))

    def unchunked(p, b):
        lp = _ref_logprobs(p, b, cfg)
        return -(lp * b["weights"]).sum(), None

    assert chunked < full_logits / 4, (chunked, full_logits)
    assert temp_bytes(unchunked) > full_logits  # the bound is not vacuous: the naive loss exceeds it


def test_accumulation_gives_the_true_token_mean():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    batch = _batch()
    s1, m1 = _run(CFG, mesh, batch, accum=1)
    s4, m4 = _run(CFG, mesh, batch, accum=4)
    params = init_params(CFG, jax.random.key(0))
    lp = _ref_logprobs(params, jax.tree.map(jnp.asarray, batch), CFG)
    true_mean = float(-(lp * batch["weights"]).sum() / batch["weights"].sum())
    np.testing.assert_allclose(m1[0]["loss"], true_mean, rtol=1e-5)
    np.testing.assert_allclose(m4[0]["loss"], true_mean, rtol=1e-5)
    assert m4[0]["tokens"] == batch["weights"].sum()
    # a mean of micro-batch means would be visibly different on this batch
    rows = np.arange(16).reshape(4, 4).T  # micro-batch i = rows i, i+4, ...
    per_mb = [float(-(lp[r] * batch["weights"][r]).sum() / batch["weights"][r].sum()) for r in rows]
    assert abs(np.mean(per_mb) - true_mean) > 1e-3
    np.testing.assert_allclose(m1[0]["grad_norm"], m4[0]["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):  # Adam amplifies rounding
        np.testing.assert_allclose(a, b, atol=5e-5)  # where a gradient is ~0; lr is 1e-2
    np.testing.assert_allclose(m1[1]["loss"], m4[1]["loss"], rtol=1e-5)


def test_sharded_matches_single_device():
    batch = _batch()
    s8, m8 = _run(CFG, make_mesh(data=2, fsdp=2, tensor=2), batch, steps=3)
    s1, m1 = _run(CFG, make_mesh(devices=jax.devices()[:1]), batch, steps=3)
    for a, b in zip(m8, m1):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):  # Adam amplifies rounding
        np.testing.assert_allclose(a, b, atol=5e-5)  # where a gradient is ~0; lr is 1e-2
    assert s8.params["layers"]["gate"].sharding.spec != s1.params["layers"]["gate"].sharding.spec


def test_weight_decay_skips_norms_and_biases():
    opt_cfg = _optim(weight_decay=0.5, clip_norm=0.0)
    zero_loss = lambda p, b: (0.0 * p["embed"].sum(), jnp.float32(1.0), {})  # noqa: E731  zero gradients
    mesh = make_mesh(devices=jax.devices()[:1])
    params0 = init_params(CFG, jax.random.key(0), mesh=mesh)
    state, _ = _run(CFG, mesh, _batch(), steps=2, optim=opt_cfg, loss_fn=zero_loss)
    mask = S.decay_mask(CFG)
    assert mask["layers"]["q"] and not mask["layers"]["q_bias"] and not mask["final_norm"]
    for (path, new), old, decays in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                        jax.tree.leaves(params0), jax.tree.leaves(mask)):
        if decays:
            assert float(jnp.abs(new).sum()) < float(jnp.abs(old).sum()), path
        else:
            np.testing.assert_array_equal(new, old)


def test_bf16_params_keep_float32_optimizer_state():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state, m = _run(CFG, mesh, _batch(), steps=2, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
    floats = [x for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(m[-1]["loss"])


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_step(remat):
    batch = _batch()
    mesh = make_mesh(devices=jax.devices()[:1])
    _, ref = _run(CFG, mesh, batch)
    cfg = CFG.replace(remat=remat)
    _, got = _run(cfg, mesh, batch, loss_fn=functools.partial(L.sft_loss, cfg=cfg, chunk=5))
    np.testing.assert_allclose(got[-1]["loss"], ref[-1]["loss"], rtol=1e-6)


def test_unrolled_layers_give_the_same_step_and_stacked_params():
    cfg = GEMMA2  # local and global layers: each unrolled layer must pick its own mask
    batch = _batch()
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    fn = functools.partial(L.sft_loss, cfg=cfg, chunk=5)
    scan, ref = _run(cfg, mesh, batch, accum=2, loss_fn=fn)
    unrolled, got = _run(cfg, mesh, batch, accum=2, loss_fn=fn, unroll=True)
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[name] for m in got], [m[name] for m in ref], rtol=1e-5)
    assert jax.tree.structure(unrolled.params) == jax.tree.structure(scan.params)  # still stacked
    for a, b in zip(jax.tree.leaves(unrolled.params), jax.tree.leaves(scan.params)):
        assert a.shape == b.shape and a.sharding == b.sharding
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_layer_loop_config_values():
    assert ST.resolve_layer_loop("auto", on_cpu=True) and not ST.resolve_layer_loop("auto", on_cpu=False)
    assert ST.resolve_layer_loop("unroll", on_cpu=False) and not ST.resolve_layer_loop("scan", on_cpu=True)
    with pytest.raises(ValueError, match="layer_loop='loop'"):
        ST.resolve_layer_loop("loop", on_cpu=True)


def test_non_finite_step_is_skipped_and_counted():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    opt_cfg = _optim()
    opt = S.make_optimizer(opt_cfg, CFG)

    def loss_fn(p, b):  # NaN when the batch says so
        loss_sum, count, metrics = L.sft_loss(p, b, CFG, chunk=5)
        return loss_sum + jnp.where(b["poison"][0] > 0, jnp.nan, 0.0), count, metrics

    state = S.create_state(init_params(CFG, jax.random.key(0), mesh=mesh), CFG, opt, mesh)
    step = ST.build_train_step(loss_fn, opt, jax.tree.map(lambda x: x.sharding, state), mesh)
    good = {**_batch(), "poison": np.zeros(16, np.float32)}
    bad = {**good, "poison": np.ones(16, np.float32)}
    state, m = step(state, jax.device_put(good, ST.batch_sharding(mesh)))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    for i in range(2):
        state, m = step(state, jax.device_put(bad, ST.batch_sharding(mesh)))
        assert float(m["skipped"]) == 1.0 and int(state.bad_steps) == i + 1
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert int(state.step) == 3 and int(state.updates) == 1
    state, m = step(state, jax.device_put(good, ST.batch_sharding(mesh)))
    assert float(m["skipped"]) == 0.0 and int(state.bad_steps) == 0 and int(state.updates) == 2
