"""Selective Language Modeling: the docs/ALGORITHMS.md section 3 cases, selection properties, zero
gradient on unselected tokens, global ranking under accumulation, sharded = single device, the
reference scoring pass (keyed storage, resume, mismatch errors) and the recipe end to end."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import jsonl
from reasonax.model import config as C
from reasonax.model import init_params, make_mesh, save_hf
from reasonax.tasks import arithmetic
from reasonax.tasks.byte_tokenizer import byte_tokenizer
from reasonax.train import data as data_lib
from reasonax.train import loss as L
from reasonax.train.slm import ref_scores as R
from reasonax.train import loop, slm
from reasonax.train import state as S
from reasonax.train import step as ST
from tests.test_train_step import _batch

L_THETA = np.array([2.0, 1.0, 3.0, 0.5, 4.0, 1.5, 2.5, 0.2, 3.5, 1.2], np.float32)
L_REF = np.array([1.2, 1.5, 1.0, 0.3, 3.9, 0.4, 0.6, 0.15, 0.9, 1.3], np.float32)
CFG = C.qwen2(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8)
BYTES_CFG = C.qwen2(vocab_size=259, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, tie_embeddings=True, bos_token_id=257, eos_token_ids=(258,),
                    pad_token_id=256)


# ----------------------------------------------------------------------------------------------
# docs/ALGORITHMS.md section 3


def test_hand_case_keeps_the_six_highest_excess_tokens():
    excess = L_THETA - L_REF
    valid = np.ones((1, 10), bool)
    keep = np.asarray(slm.select_tokens(excess[None], valid, 0.6))
    assert set(np.flatnonzero(keep[0])) == {0, 2, 3, 5, 6, 8}
    assert not keep[0, 4]  # the highest raw loss: the reference finds it hard too
    loss_sum, count, _ = slm.selected_loss(jnp.asarray(L_THETA[None]), jnp.asarray(L_REF[None]), keep, valid)
    assert count == 6
    np.testing.assert_allclose(loss_sum / count, 13.0 / 6, rtol=1e-6)
    np.testing.assert_allclose(13.0 / 6, 2.1667, atol=5e-5)


def test_full_ratio_is_the_clm_loss_and_n_keep_floors():
    valid = np.ones((1, 10), bool)
    keep = slm.select_tokens((L_THETA - L_REF)[None], valid, 1.0)
    loss_sum, count, _ = slm.selected_loss(jnp.asarray(L_THETA[None]), jnp.asarray(L_REF[None]), keep, valid)
    np.testing.assert_allclose(loss_sum / count, 1.94, rtol=1e-6)
    # N_valid = 7, k = 0.6 -> floor(4.2) = 4 kept, never one of the 3 invalid (highest-excess) slots
    valid7 = np.ones((1, 10), bool)
    valid7[0, [2, 6, 8]] = False
    keep7 = np.asarray(slm.select_tokens((L_THETA - L_REF)[None], valid7, 0.6))
    assert keep7.sum() == 4 and not (keep7 & ~valid7).any()
    assert set(np.flatnonzero(keep7[0])) == {0, 5, 3, 4}
    for n, k, want in [(10, 0.7, 7), (3, 0.1, 1), (0, 0.6, 0), (1000, 0.6, 600), (7, 0.5, 3)]:
        assert int(slm.keep_count(n, k)) == want, (n, k)


def test_batch_and_sequence_scope_hand_case():
    excess = np.array([[3.0, 2.0, 1.0, 0.0], [0.5, 0.4, 0.3, 0.2]], np.float32)
    valid = np.ones_like(excess, bool)
    batch = np.asarray(slm.select_tokens(excess, valid, 0.5, scope="batch"))
    seq = np.asarray(slm.select_tokens(excess, valid, 0.5, scope="sequence"))
    assert {tuple(x) for x in np.argwhere(batch)} == {(0, 0), (0, 1), (0, 2), (1, 0)}
    assert {tuple(x) for x in np.argwhere(seq)} == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize("scope", slm.SCOPES)
def test_selection_is_the_top_k_of_valid_tokens_and_never_padding(scope):
    rng = np.random.default_rng(0)
    for trial in range(20):
        B, T = rng.integers(1, 5), rng.integers(1, 12)
        ratio = float(rng.choice([0.05, 0.3, 0.6, 0.99, 1.0]))
        excess = rng.normal(size=(B, T)).astype(np.float32)
        valid = rng.random((B, T)) < 0.6
        excess[~valid] += 100.0  # padding / prompt slots look most attractive: must still be skipped
        keep = np.asarray(slm.select_tokens(excess, valid, ratio, scope))
        assert not (keep & ~valid).any()
        groups = [(slice(None), slice(None))] if scope == "batch" else [(b, slice(None)) for b in range(B)]
        for g in groups:
            n = int(valid[g].sum())
            want = 0 if n == 0 else max(1, int(np.floor(ratio * n + 1e-9)))
            assert keep[g].sum() == want, (trial, scope, n, ratio)
            if 0 < want < n:  # every kept token's excess >= every unkept valid token's
                assert excess[g][keep[g]].min() >= excess[g][valid[g] & ~keep[g]].max()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="ratio"):
        slm.select_tokens(np.zeros((1, 3)), np.ones((1, 3), bool), 0.0)
    with pytest.raises(ValueError, match="scope"):
        slm.select_tokens(np.zeros((1, 3)), np.ones((1, 3), bool), 0.5, scope="token")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        slm.select_tokens(np.zeros((1, 3)), np.ones((1, 4), bool), 0.5)


def test_gradient_wrt_logits_is_exactly_zero_at_unselected_positions():
    rng = np.random.default_rng(1)
    B, T, V = 2, 10, 7
    logits = jnp.asarray(rng.normal(size=(B, T, V)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)))
    ref = jnp.asarray(rng.random((B, T)) * 2, jnp.float32)
    valid = jnp.asarray(rng.random((B, T)) < 0.8)

    def f(lg):
        loss = -jnp.take_along_axis(jax.nn.log_softmax(lg), targets[..., None], -1)[..., 0]
        keep = slm.select_tokens(jax.lax.stop_gradient(loss - ref), valid, 0.6)
        return slm.selected_loss(loss, ref, keep, valid)[0], keep

    grad, keep = jax.grad(f, has_aux=True)(logits)
    grad, keep = np.asarray(grad), np.asarray(keep)
    assert (grad[~keep] == 0.0).all()
    assert (np.abs(grad[keep]).sum(-1) > 0).all()


# ----------------------------------------------------------------------------------------------
# The loss inside the train step


def _slm_batch(B=16, T=12, seed=0):
    b = _batch(B, T, seed=seed)
    b["ref_loss"] = (np.random.default_rng(seed + 1).random((B, T)) * 6).astype(np.float32) * (b["weights"] > 0)
    return b


def test_ratio_one_equals_the_sft_loss_in_value_and_gradient():
    params = init_params(CFG, jax.random.key(0), std=0.3)
    batch = jax.tree.map(jnp.asarray, _slm_batch())
    grad = lambda fn: jax.value_and_grad(lambda p: (lambda s, n, m: s / n)(*fn(p, batch)))(params)  # noqa: E731
    v1, g1 = grad(functools.partial(slm.slm_loss, cfg=CFG, ratio=1.0, chunk=5))
    v2, g2 = grad(functools.partial(L.sft_loss, cfg=CFG, chunk=5))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
    v6, _ = grad(functools.partial(slm.slm_loss, cfg=CFG, ratio=0.6, chunk=5))
    assert abs(float(v6) - float(v1)) > 1e-3


def _run_slm(mesh, batch, accum=1, prepare=True, steps=2, scope="batch"):
    optim = S.default_optim_config()
    optim.warmup_steps, optim.total_steps, optim.lr = 1, 10, 1e-2
    opt = S.make_optimizer(optim, CFG)
    state = S.create_state(init_params(CFG, jax.random.key(0), std=0.3, mesh=mesh), CFG, opt, mesh)
    fn = functools.partial(slm.slm_loss, cfg=CFG, ratio=0.6, scope=scope, chunk=5)
    step = ST.build_train_step(fn, opt, jax.tree.map(lambda x: x.sharding, state), mesh, accum_steps=accum,
                               prepare=slm.global_selection(CFG, 0.6, 5) if prepare else None)
    batch = jax.device_put(batch, ST.batch_sharding(mesh))
    out = []
    for _ in range(steps):
        state, m = step(state, batch)
        out.append({k: float(v) for k, v in m.items()})
    return state, out


def test_global_ranking_does_not_depend_on_accumulation_and_micro_ranking_does():
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    batch = _slm_batch()
    s1, m1 = _run_slm(mesh, batch, accum=1, prepare=False)
    s4, m4 = _run_slm(mesh, batch, accum=4, prepare=True)
    for a, b in zip(m1, m4):
        for k in ("loss", "tokens", "grad_norm", "slm/selected_frac", "slm/excess_selected", "slm/loss_all"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=k)
    # Adam's first steps are ~lr * sign(g): rounding flips the few near-zero gradients, so compare
    # against the step size (lr 1e-2), which a different selection would exceed everywhere
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3), s1.params, s4.params)
    _, micro = _run_slm(mesh, batch, accum=4, prepare=False)
    assert abs(micro[0]["loss"] - m1[0]["loss"]) > 1e-3  # ranking per micro-batch keeps other tokens
    assert micro[0]["tokens"] != m1[0]["tokens"] or micro[0]["slm/excess_selected"] != m1[0]["slm/excess_selected"]


@pytest.mark.parametrize("scope", slm.SCOPES)
def test_sharded_step_equals_single_device(scope):
    batch = _slm_batch()
    one = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    s1, m1 = _run_slm(one, batch, accum=2, scope=scope)
    s8, m8 = _run_slm(make_mesh(data=2, fsdp=2, tensor=2), batch, accum=2, scope=scope)
    for a, b in zip(m1, m8):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=2e-5)
        assert a["tokens"] == b["tokens"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3), s1.params, s8.params)


# ----------------------------------------------------------------------------------------------
# Reference scores


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _data(tmp_path, n=30, seq_len=48, **kw):
    path = tmp_path / "data.jsonl"
    if not path.is_file():
        jsonl.rewrite(path, arithmetic.add_noise(arithmetic.records(n, seed=3), 0.3, seed=3))
    d = data_lib.default_data_config()
    d.files, d.seq_len, d.num_threads = [str(path)], seq_len, 0
    d.update(kw)
    return d


def _ref_params(mesh=None):
    return init_params(BYTES_CFG, jax.random.key(7), std=0.5, mesh=mesh)


def _alone_losses(params, d, tok, index):
    """The reference's target losses of record `index` run alone (no packing), float32."""
    records, _ = data_lib.load_records(d.files)
    ex = data_lib.encode_record(records[index], d, tok)
    b = {k: jnp.asarray(ex[k][None]) for k in ("inputs", "targets")}
    return np.asarray(-L.batch_logprobs(params, b, BYTES_CFG))[0]


def test_scoring_pass_stores_each_records_losses_and_resumes(tmp_path, tok, monkeypatch):
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    params = _ref_params(mesh)
    d = _data(tmp_path)
    full = R.score(params, BYTES_CFG, tok, d, tmp_path / "full", mesh=mesh, batch_size=8, part_records=7,
                   progress=False)
    assert full.num_records == 30 and full.meta["complete"] and full.losses.dtype == np.float16
    assert not list((tmp_path / "full").glob("part-*"))
    host = jax.device_get(params)
    for i in (0, 13, 29):
        n = int(full.offsets[i + 1] - full.offsets[i])
        np.testing.assert_allclose(full.example(i, n), _alone_losses(host, d, tok, i), rtol=1e-3, atol=1e-3)

    # interrupted after two parts, then run again: only the missing parts are scored
    calls = []
    real = R._score_part

    def flaky(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(R, "_score_part", flaky)
    with pytest.raises(KeyboardInterrupt):
        R.score(params, BYTES_CFG, tok, d, tmp_path / "resumed", mesh=mesh, batch_size=8, part_records=7,
                progress=False)
    assert len(list((tmp_path / "resumed").glob("part-*.npz"))) == 2
    monkeypatch.setattr(R, "_score_part", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    resumed = R.score(params, BYTES_CFG, tok, d, tmp_path / "resumed", mesh=mesh, batch_size=8, part_records=7,
                      progress=False)
    assert calls == [0, 7, 14, 21, 28]  # parts 0, 1 before the interruption; 2, 3, 4 after
    np.testing.assert_array_equal(np.asarray(resumed.losses), np.asarray(full.losses))
    np.testing.assert_array_equal(resumed.offsets, full.offsets)


def test_training_batches_carry_the_reference_loss_of_their_tokens(tmp_path, tok):
    """Shuffled, packed training rows: ref_loss at every trained target = the reference's loss of
    that token computed on the same row now (keyed by record and position, not by row)."""
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    params = _ref_params(mesh)
    d = _data(tmp_path, seq_len=256)  # two or three examples a row
    scores = R.score(params, BYTES_CFG, tok, d, tmp_path / "s", mesh=mesh, batch_size=4, progress=False,
                     dtype="float32")
    it = iter(data_lib.sft_dataset(d, tok, global_batch=4, ref_scores=scores))
    for _ in range(3):
        b = next(it)
        online = np.asarray(-L.batch_logprobs(params, jax.tree.map(jnp.asarray, b), BYTES_CFG))
        real = b["segment_ids"] > 0
        assert (b["segment_ids"].max(-1) > 1).any()  # rows really are packed
        np.testing.assert_allclose(b["ref_loss"][real], online[real], rtol=1e-4, atol=1e-4)
        assert (b["ref_loss"][~real] == 0).all()


def test_tokenizer_or_data_mismatch_is_an_error(tmp_path, tok):
    import transformers

    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    d = _data(tmp_path)
    R.score(_ref_params(mesh), BYTES_CFG, tok, d, tmp_path / "s", mesh=mesh, batch_size=4, progress=False)
    other = byte_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        R.RefScores.load(tmp_path / "s", tokenizer=other)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        R.check_same_tokenizer(other, tok)
    with pytest.raises(ValueError, match="seq_len"):
        R.RefScores.load(tmp_path / "s", tokenizer=tok, data_config=_data(tmp_path, seq_len=40))
    # a byte tokenizer saved and reloaded (as the reference's export ships it) is the same tokenizer
    tok.save_pretrained(tmp_path / "tok")
    from reasonax.model.tokenizer import load_tokenizer

    R.check_same_tokenizer(load_tokenizer(tmp_path / "tok"), tok)
    assert isinstance(load_tokenizer(tmp_path / "tok"), transformers.PreTrainedTokenizerFast)
    with pytest.raises(FileNotFoundError, match="no complete reference scores"):
        R.RefScores.load(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# The recipe


def _recipe_config(workdir, ref_dir, data_file, **changes):
    c = slm.default_config()
    c.workdir = str(workdir)
    c.model.preset = "qwen2.5-0.5b"
    c.model.overrides = {k: getattr(BYTES_CFG, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
        "tie_embeddings", "bos_token_id", "eos_token_ids", "pad_token_id")}
    c.tokenizer = "bytes"
    c.data.files = [str(data_file)]
    c.data.num_threads = 0
    c.eval_data.files = [str(data_file)]
    c.eval_data.max_batches = 2
    c.eval_every = 2
    c.seq_len, c.batch_size, c.num_steps = 64, 8, 4
    c.optim.warmup_steps, c.optim.total_steps, c.optim.lr = 1, 4, 3e-3
    c.log_every, c.peak_flops, c.tensorboard, c.export_hf = 1, "1e11", False, "none"
    c.slm.reference.path = str(ref_dir)
    for k, v in changes.items():
        target = c
        *path, last = k.split(".")
        for p in path:
            target = target[p]
        target[last] = v
    return c


def _metrics(workdir):
    return [r for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_recipe_offline_and_online_train_on_the_same_selection(tmp_path, tok):
    data_file = Path(_data(tmp_path, n=60).files[0])
    ref_dir = tmp_path / "ref"
    save_hf(_ref_params(), BYTES_CFG, ref_dir)
    tok.save_pretrained(ref_dir)
    off = slm.run(_recipe_config(tmp_path / "off", ref_dir, data_file, **{"slm.scores_dtype": "float32"}))
    on = slm.run(_recipe_config(tmp_path / "on", ref_dir, data_file, **{"slm.mode": "online"}))
    assert int(off.step) == int(on.step) == 4
    m_off, m_on = _metrics(tmp_path / "off"), _metrics(tmp_path / "on")
    for a, b in zip(m_off, m_on):
        np.testing.assert_allclose(a["slm/ref_loss"], b["slm/ref_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
        assert abs(a["slm/selected_frac"] - 0.6) < 0.01
        assert a["slm/excess_selected"] > a["slm/excess_unselected"]
        assert a["slm/loss_all"] != a["loss"]
    evals = [r for r in map(json.loads, (tmp_path / "off" / "metrics.jsonl").read_text().splitlines())
             if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(np.isfinite(r["eval/loss"]) for r in evals)
    assert (tmp_path / "off" / "ref_scores" / "meta.json").is_file()
    assert not (tmp_path / "on" / "ref_scores").exists()


def test_recipe_rejects_a_reference_with_another_tokenizer(tmp_path, tok):
    data_file = Path(_data(tmp_path).files[0])
    ref_dir = tmp_path / "ref"
    save_hf(_ref_params(), BYTES_CFG, ref_dir)
    other = byte_tokenizer()
    other.add_tokens(["<|extra|>"])
    other.save_pretrained(ref_dir)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        slm.run(_recipe_config(tmp_path / "w", ref_dir, data_file))


def test_lora_with_the_reference_as_the_model_keeps_one_copy(tmp_path, tok):
    """Online SLM from the reference itself (model.path = slm.reference.path) with LoRA: the
    reference is the base with adapters off (no second copy in the step's aux), so at the first
    step, adapters' B = 0, the learner's loss on every token is the reference's."""
    data_file = Path(_data(tmp_path, n=60).files[0])
    ref_dir = tmp_path / "ref"
    save_hf(_ref_params(), BYTES_CFG, ref_dir)
    tok.save_pretrained(ref_dir)
    c = _recipe_config(tmp_path / "lora", ref_dir, data_file, **{
        "slm.mode": "online", "model.preset": "", "model.path": str(ref_dir), "model.overrides": {},
        "lora.r": 4, "num_steps": 2, "optim.total_steps": 2, "eval_every": 0})
    plan = slm.build(c)
    mesh = loop.config_mesh(plan.config)
    assert plan.trainable is not None and plan.aux_spec(mesh)["aux"] is None
    slm.run(c)
    m = _metrics(tmp_path / "lora")
    assert len(m) == 2
    np.testing.assert_allclose(m[0]["slm/loss_all"], m[0]["slm/ref_loss"], rtol=1e-6)
    assert (tmp_path / "lora" / "peft" / "adapter_config.json").is_file()
