"""GRPO: the docs/ALGORITHMS.md section 4 cases (advantages, clipping on both sides, clip-higher, k3
value and gradient, the four aggregations, zero-variance groups) and the variants' pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax.train import grpo


def test_group_advantages_hand_cases():
    a = np.asarray(grpo.group_advantages([1, 0, 0, 0, 1, 1, 1, 1], 4, eps=0.0 + 1e-12))
    np.testing.assert_allclose(a[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-6)
    assert (a[4:] == 0).all()  # all-equal group: zero advantage, no NaN
    with_eps = np.asarray(grpo.group_advantages([1, 0, 0, 0], 4))  # default eps 1e-4
    np.testing.assert_allclose(with_eps, np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-6)


def test_advantage_scales():
    r = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0])
    none = np.asarray(grpo.group_advantages(r, 4, scale="none"))
    np.testing.assert_allclose(none, [0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0], rtol=1e-6)
    batch = np.asarray(grpo.group_advantages(r, 4, scale="batch", eps=0.0))
    np.testing.assert_allclose(batch, none / np.std(r, ddof=1), rtol=1e-6)
    group = np.asarray(grpo.group_advantages(r, 4, scale="group", eps=0.0))
    np.testing.assert_allclose(group[4:], none[4:] / np.std(r[4:], ddof=1), rtol=1e-6)
    for bad in (dict(rewards=r, group_size=3), dict(rewards=r, group_size=1), dict(rewards=r[None], group_size=4)):
        with pytest.raises(ValueError, match="groups"):
            grpo.group_advantages(**bad)
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(r, 4, scale="std")


def _loss_and_grad(rho, adv, **kw):
    old = jnp.zeros((1, 1))

    def f(logp):
        loss, clipped = grpo.policy_loss(logp, old, jnp.asarray([adv], jnp.float32), **kw)
        return loss.sum(), clipped

    (loss, clipped), g = jax.value_and_grad(f, has_aux=True)(jnp.log(jnp.full((1, 1), rho, jnp.float32)))
    return float(loss), float(g[0, 0]), bool(clipped[0, 0])


def test_clipping_hand_cases():
    loss, g, clipped = _loss_and_grad(1.3, 1.0)
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, g, _ = _loss_and_grad(1.25, 1.0, eps_high=0.28)  # clip-higher: inside the wider range
    np.testing.assert_allclose(loss, -1.25, rtol=1e-6)
    assert g != 0.0
    loss, g, clipped = _loss_and_grad(0.7, -1.0)
    np.testing.assert_allclose(loss, 0.8, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, g, clipped = _loss_and_grad(1.5, -1.0)  # pessimistic bound: the gradient flows
    np.testing.assert_allclose(loss, 1.5, rtol=1e-6)
    np.testing.assert_allclose(g, 1.5, rtol=1e-6)  # d(rho * 1)/d logp = rho
    assert not clipped
    loss, g, clipped = _loss_and_grad(5.0, -1.0, dual_clip=3.0)  # dual clip caps it at c * |A|
    np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, _, _ = _loss_and_grad(2.0, -1.0, dual_clip=3.0)  # below the dual bound: unchanged
    np.testing.assert_allclose(loss, 2.0, rtol=1e-6)
    loss, g, _ = _loss_and_grad(1.0, 0.7)  # on policy: rho = 1, gradient = -A
    np.testing.assert_allclose([loss, g], [-0.7, -0.7], rtol=1e-6)


def test_k3_value_and_gradient():
    logp = jnp.log(jnp.float32(0.5))
    ref = jnp.log(jnp.float32(0.25))
    np.testing.assert_allclose(grpo.k3_kl(logp, ref), 0.5 + np.log(2) - 1, rtol=1e-6)
    np.testing.assert_allclose(0.5 + np.log(2) - 1, 0.193147, atol=1e-6)
    np.testing.assert_allclose(jax.grad(grpo.k3_kl)(logp, ref), 0.5, rtol=1e-6)
    assert float(grpo.k3_kl(ref, ref)) == 0.0
    x = jnp.linspace(-5, 5, 101)
    assert (np.asarray(grpo.k3_kl(x, 0.3 * x[::-1])) >= 0).all()


def test_aggregation_hand_cases():
    loss = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    loss_junk = np.where(mask > 0, loss, 99.0)  # masked positions must not leak in
    want = {"seq-mean-token-mean": 0.75, "token-mean": 4.0 / 6, "dr-grpo": 0.5, "seq-mean-token-sum": 2.0}
    for mode, value in want.items():
        np.testing.assert_allclose(grpo.aggregate(loss_junk, mask, mode, max_len=4), value, rtol=1e-6, err_msg=mode)
    np.testing.assert_allclose(grpo.aggregate(loss, mask, "dr-grpo", max_len=8), 4.0 / 16, rtol=1e-6)
    np.testing.assert_allclose(grpo.aggregate(loss, mask, "dr-grpo"), 0.5, rtol=1e-6)  # max_len default: T
    with pytest.raises(ValueError, match="aggregation mode"):
        grpo.aggregate(loss, mask, "mean")
    # a sequence with no counted token (a masked truncated completion) adds 0 to the seq means
    np.testing.assert_allclose(grpo.aggregate(loss, mask * [[0], [1]], "seq-mean-token-mean"), 0.25, rtol=1e-6)


def test_overlong_penalty_and_importance_weights():
    pen = np.asarray(grpo.overlong_penalty([10, 12, 16, 20], max_len=20, buffer=8))
    np.testing.assert_allclose(pen, [0.0, 0.0, -0.5, -1.0], rtol=1e-6)
    w = np.asarray(grpo.importance_weights(jnp.log(jnp.array([0.5, 0.9, 0.2])),
                                           jnp.log(jnp.array([0.5, 0.3, 0.4])), cap=2.0))
    np.testing.assert_allclose(w, [1.0, 2.0, 0.5], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Train-step pieces: minibatch updates, the loss, rows


def test_minibatch_epochs_equal_sequential_updates():
    """One step with minibatches=2, epochs=2 = four single-update steps over the same minibatches."""
    import functools

    from reasonax.model import init_params, make_mesh
    from reasonax.train import loss as L
    from reasonax.train import state as S
    from reasonax.train import step as ST
    from tests.test_train_step import CFG, _batch

    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    optim = S.default_optim_config()
    optim.warmup_steps, optim.total_steps, optim.lr = 1, 10, 1e-2
    opt = S.make_optimizer(optim, CFG)
    fn = functools.partial(L.sft_loss, cfg=CFG, chunk=5)
    batch = _batch(B=8)

    def fresh():
        return S.create_state(init_params(CFG, jax.random.key(0), mesh=mesh), CFG, opt, mesh)

    state = fresh()
    sh = jax.tree.map(lambda x: x.sharding, state)
    multi = ST.build_train_step(fn, opt, sh, mesh, minibatches=2, epochs=2)
    s_multi, m = multi(state, jax.device_put(batch, ST.batch_sharding(mesh)))
    single = ST.build_train_step(fn, opt, sh, mesh)
    s = fresh()
    minis = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]  # minibatch m = rows m, m+2, ...
    losses = []
    for mb in minis * 2:
        s, out = single(s, jax.device_put(mb, ST.batch_sharding(mesh)))
        losses.append(float(out["loss"]))
    assert int(s_multi.step) == 1 and int(s_multi.updates) == 4 and int(s.updates) == 4
    np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-5)
    assert float(m["tokens"]) == 2 * batch["weights"].sum()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s_multi.params, s.params)


def test_build_rows_places_completion_targets():
    from reasonax.train.grpo import rollout

    rows = rollout.build_rows([[5, 6, 7], [5, 6]], [[1, 2], [3, 4, 9]], [[-0.1, -0.2], [-0.3, -0.4, -0.5]],
                              truncated=[False, True], seq_len=6, mask_truncated=True)
    np.testing.assert_array_equal(rows["inputs"][0], [5, 6, 7, 1, 0, 0])
    np.testing.assert_array_equal(rows["targets"][0], [6, 7, 1, 2, 0, 0])
    np.testing.assert_array_equal(rows["weights"][0], [0, 0, 1, 1, 0, 0])
    np.testing.assert_allclose(rows["sampler_logp"][0], [0, 0, -0.1, -0.2, 0, 0])
    np.testing.assert_array_equal(rows["weights"][1], 0)  # truncated and masked
    np.testing.assert_allclose(rows["sampler_logp"][1], [0, -0.3, -0.4, -0.5, 0, 0])
    np.testing.assert_array_equal(rows["segment_ids"][1], [1, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="exceed"):
        rollout.build_rows([[1] * 5], [[2] * 3], [[0.0] * 3], [False], seq_len=6, mask_truncated=False)


def test_on_policy_loss_gradient_is_the_advantage_weighted_logprob_gradient():
    """mu = 1, no staleness: rho = 1, so grad of token-mean GRPO = -grad sum(m A logp) / sum m."""
    import functools

    from reasonax.model import init_params
    from reasonax.train import loss as L
    from tests.test_train_step import CFG, _batch

    hp = grpo.LossParams(temperature=1.0, eps_low=0.2, eps_high=0.28, aggregation="token-mean", max_new_tokens=12)
    b = _batch(B=4)
    b["advantages"] = np.array([1.5, -0.5, -0.5, -0.5], np.float32)
    b["sampler_logp"] = np.zeros_like(b["weights"])
    batch = jax.tree.map(jnp.asarray, b)
    params = init_params(CFG, jax.random.key(0), std=0.3)
    fn = functools.partial(grpo.grpo_loss, cfg=CFG, hp=hp, chunk=5)
    g1 = jax.grad(lambda p: (lambda n, d, m: n / d)(*fn(p, batch)))(params)
    w = batch["weights"]

    def direct(p):
        lp = L.batch_logprobs(p, batch, CFG, 5)
        return -(lp * w * batch["advantages"][:, None]).sum() / w.sum()

    g2 = jax.grad(direct)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
    _, _, metrics = fn(params, batch)
    assert float(metrics["clip_frac"][0]) == 0.0


def test_logprobs_with_temperature_and_entropy_match_full_softmax():
    from reasonax.model import forward, init_params
    from reasonax.train import loss as L
    from tests.test_train_step import CFG, _batch

    params = init_params(CFG, jax.random.key(2), std=0.5)
    batch = jax.tree.map(jnp.asarray, _batch(B=3))
    logits = forward(params, batch["inputs"], CFG, positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp_full = jax.nn.log_softmax(logits / 0.7, axis=-1)
    want = jnp.take_along_axis(logp_full, batch["targets"][..., None], -1)[..., 0]
    ent_want = -(jnp.exp(logp_full) * logp_full).sum(-1)
    for chunk in (5, None):
        lp, ent = L.batch_logprobs(params, batch, CFG, chunk, temperature=0.7, entropy=True)
        np.testing.assert_allclose(lp, want, atol=2e-5)
        np.testing.assert_allclose(ent, ent_want, atol=2e-5)


def test_user_reward_function_by_dotted_path():
    from reasonax.train.grpo import rollout

    fn = rollout.load_reward_fn("tests.test_grpo.digit_reward")
    assert fn(["q"], ["a1b2"], ["0"]) == [0.5]
    with pytest.raises(ValueError, match="no callable"):
        rollout.load_reward_fn("tests.test_grpo.nothing_here")
    with pytest.raises(ValueError, match="dotted path"):
        rollout.load_reward_fn("digit_reward")


def digit_reward(prompts, completions, golds):
    """Share of a completion's characters that are digits (a reward a random model can climb)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


# ----------------------------------------------------------------------------------------------
# End to end


def _tiny(workdir, **changes):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("grpo_tiny_cpu", root / "configs" / "grpo_tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.workdir = str(workdir)
    c.synthetic.num_examples, c.synthetic.num_heldout = 200, 8
    c.grpo.prompts_per_step, c.grpo.group_size = 4, 8
    c.grpo.max_prompt_len, c.grpo.max_new_tokens = 64, 16
    c.grpo.reward_fns = ["tests.test_grpo.digit_reward"]
    c.num_steps = c.optim.total_steps = 30
    c.optim.lr = 1e-2
    c.eval_every, c.log_every, c.peak_flops, c.tensorboard, c.export_hf = 0, 1, "1e11", False, "none"
    c.checkpoint.every = 10
    for k, v in changes.items():
        target = c
        *path, last = k.split(".")
        for p in path:
            target = target[p]
        target[last] = v
    return c


def _rewards(workdir):
    import json
    from pathlib import Path

    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["reward/mean"] for r in rows if "reward/mean" in r]


def test_grpo_learns_a_reward_on_cpu(tmp_path):
    from reasonax.train import grpo as G

    G.run(_tiny(tmp_path / "run"))
    r = _rewards(tmp_path / "run")
    assert len(r) == 30
    first, last = np.mean(r[:5]), np.mean(r[-5:])
    print("digit-share reward, first 5 steps", first, "last 5", last)
    assert last > first + 0.2, (first, last)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    """Stop at step 6 (a checkpoint), resume to 12: same rewards, losses and params as 12 in one go
    (params, optimizer state, prompt-stream position and the per-step sampling seed restored)."""
    import json
    from pathlib import Path

    from reasonax.train import grpo as G

    changes = {"num_steps": 12, "optim.total_steps": 12, "checkpoint.every": 6, "checkpoint.async_save": False}
    whole = G.run(_tiny(tmp_path / "whole", **changes))
    G.run(_tiny(tmp_path / "split", **{**changes, "num_steps": 6}))
    resumed = G.run(_tiny(tmp_path / "split", **changes))

    def metrics(w):
        rows = [json.loads(x) for x in (Path(w) / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["reward/mean"], r["loss"]) for r in rows if "loss" in r}

    assert metrics(tmp_path / "whole") == metrics(tmp_path / "split")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), whole.params,
                 resumed.params)


def test_sampling_differs_between_steps_for_the_same_prompt(tmp_path):
    """A new seed per step; a step's prefix cache serves only that step's params version."""
    import types

    from reasonax.model import init_params, make_mesh
    from reasonax.tasks.byte_tokenizer import byte_tokenizer
    from reasonax.train import common
    from reasonax.train.grpo import rollout

    c = _tiny(tmp_path)
    c.grpo.prompts_per_step, c.grpo.group_size = 1, 4
    cfg = common.model_config(c)
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    params = init_params(cfg, jax.random.key(0), mesh=mesh)
    prompt = rollout.Prompt(tokens=(257, 49, 50), gold="3", text="12", where="x:1")
    c.grpo.prefix_cache_gb, c.grpo.prefix_block = 0.01, 1  # the prompt's KV kept while the step stays
    source = rollout.RolloutSource([prompt], cfg, byte_tokenizer(), c.grpo, mesh, seed=0, eos_ids=(258,))
    batches, cached = [], []
    for s in (0, 1, 1):
        batches.append(np.asarray(source.next(types.SimpleNamespace(params=params, step=s))["inputs"]))
        cached.append(source.metrics()["rollout/cached_tokens"])
    assert not np.array_equal(batches[0], batches[1])  # a new seed every step
    np.testing.assert_array_equal(batches[1], batches[2])  # and the same one for the same step
    assert cached == [0, 0, 2]  # a new step (params version) empties the prefix cache; the same one reads it


def test_every_variant_runs_together_and_reports_its_metrics(tmp_path):
    """beta > 0 (frozen reference), mu = 2 and 2 minibatches (off-policy updates: the prepare pass),
    IS correction, dual clip, dynamic sampling, overlong penalty, truncation mask, format reward,
    seq-mean-token-mean: a few steps run and every metric is there and sane."""
    import json

    from reasonax.train import grpo as G

    c = _tiny(tmp_path, **{"num_steps": 3, "optim.total_steps": 3, "grpo.beta": 0.04, "grpo.mu": 2,
                           "grpo.minibatches": 2, "grpo.is_cap": 2.0, "grpo.dual_clip": 3.0,
                           "grpo.dynamic_sampling": True, "grpo.max_sampling_rounds": 2,
                           "grpo.overlong_buffer": 4, "grpo.mask_truncated": True, "grpo.format_weight": 0.1,
                           "grpo.aggregation": "seq-mean-token-mean", "grpo.eval_limit": 4, "eval_every": 3,
                           "optim.lr": 1e-3})
    state = G.run(c)
    assert int(state.step) == 3 and int(state.updates) == 3 * 2 * 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    for r in steps:
        for k in ("kl", "is_weight", "is_capped", "clip_frac", "entropy", "logp_gap", "reward/format",
                  "reward/zero_adv_groups", "rollout/truncated", "rollout/rounds", "time/rollout", "time/reward"):
            assert k in r and np.isfinite(r[k]), k
        assert r["kl"] >= 0.0
        assert r["logp_gap"] < 1e-3 and abs(r["is_weight"] - 1.0) < 1e-3  # same params, same float32 math
        assert 1 <= r["rollout/rounds"] <= 2
    assert steps[0]["kl"] < 0.05 and steps[0]["kl"] < steps[-1]["kl"]  # starts at the reference, moves away
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [3]


def test_trimmed_rows_give_the_same_loss_as_full_rows():
    """Rows cut to the batch's longest sequence (row_bucket) change no loss term or gradient."""
    import functools

    from reasonax.model import init_params
    from reasonax.train.grpo import rollout
    from tests.test_train_step import CFG

    assert rollout.row_length(70, 256, 64) == 128 and rollout.row_length(5, 256, 64) == 64
    assert rollout.row_length(250, 256, 64) == 256 and rollout.row_length(70, 256, 0) == 256
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 96, n)) for n in (5, 9)]
    comps = [list(rng.integers(0, 96, n)) for n in (7, 3)]
    lps = [list(-rng.random(len(c))) for c in comps]
    hp = grpo.LossParams(temperature=0.8, eps_low=0.2, eps_high=0.28, is_cap=2.0, aggregation="dr-grpo",
                         max_new_tokens=8)
    params = init_params(CFG, jax.random.key(0), std=0.3)
    fn = functools.partial(grpo.grpo_loss, cfg=CFG, hp=hp, chunk=None)
    out = []
    for T in (16, 40):
        rows = rollout.build_rows(prompts, comps, lps, [False, True], T, mask_truncated=False)
        rows["advantages"] = np.array([0.7, -0.7], np.float32)
        batch = jax.tree.map(jnp.asarray, rows)
        out.append((fn(params, batch), jax.grad(lambda p: (lambda a, b, c: a / b)(*fn(p, batch)))(params)))
    (n1, d1, m1), g1 = out[0]
    (n2, d2, m2), g2 = out[1]
    np.testing.assert_allclose(float(n1 / d1), float(n2 / d2), rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(float(m1[k][0] / m1[k][1]), float(m2[k][0] / m2[k][1]), rtol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_completion_text_drops_stop_tokens_and_cuts_at_stop_strings():
    from reasonax.tasks.byte_tokenizer import byte_tokenizer
    from reasonax.train.grpo import rollout

    tok = byte_tokenizer()
    ids = tok.encode(" So \\boxed{4}.\n\nQuestion: 1+1? Answer: \\boxed{2}", add_special_tokens=False) + [258]
    assert rollout.completion_text(tok, ids, (258,)) == " So \\boxed{4}.\n\nQuestion: 1+1? Answer: \\boxed{2}"
    assert rollout.completion_text(tok, ids, (258,), ("\n\n",)) == " So \\boxed{4}."


def test_stop_strings_cut_through_the_token_that_completes_the_stop_string():
    from reasonax.sample import StopStrings
    from reasonax.tasks.byte_tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    ids = enc(" So \\boxed{4}.\n\nQuestion: 1+1?") + [258]
    keep = len(enc(" So \\boxed{4}.\n\n"))
    assert StopStrings(tok, ("\n\n",), (258,)).cut(ids) == keep
    assert StopStrings(tok, ("Question", "\n\n"), (258,)).cut(ids) == keep
    assert StopStrings(tok, ("\n\n",), (258,)).cut(ids, checked=keep - 1) == keep  # told the head is clean
    assert StopStrings(tok, ("\n\n",), (258,)).cut(ids[:keep - 1]) is None  # one newline is not a stop
    assert StopStrings(tok, ("\n\n",), (258,)).cut(enc("\n\nabc")) == 2
    assert StopStrings(tok, ("\n\n\n",), (258,)).cut(ids) is None
    assert not StopStrings(tok, ("",)) and StopStrings(tok, ("",)).cut(ids) is None  # empty stops nothing


def test_rollout_trains_a_stopped_completion_up_to_its_stop_and_not_as_truncated(tmp_path, monkeypatch):
    """The engine ends a completion at few-shot's blank line (finish reason "stop"): the rollout
    asks for the template's stop strings, grades and trains the completion as it came, and does
    not count it as truncated; one that ended with EOS is unchanged."""
    import types

    from reasonax import sample
    from reasonax.model import init_params, make_mesh
    from reasonax.tasks.byte_tokenizer import byte_tokenizer
    from reasonax.train import common
    from reasonax.train.grpo import rollout

    tok = byte_tokenizer()
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    kept = enc(" \\boxed{3}\n\n")
    ended = enc(" \\boxed{5}") + [258]
    c = _tiny(tmp_path)
    c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.mask_truncated = 1, 2, True
    c.grpo.reward_fns, c.grpo.max_new_tokens = [], 24
    cfg = common.model_config(c)
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    params = init_params(cfg, jax.random.key(0), mesh=mesh)
    prompt = rollout.Prompt(tokens=(257, 49, 43, 50), gold="3", text="1+2", where="x:1")
    asked = {}

    def fake_generate(params, cfg, prompts, sp, eos_ids, seed, key_ids, stop, **engine):
        asked["stop"] = stop
        rows = [kept, ended]
        return sample.GenerateResult(tokens=rows, logprobs=[[-0.5] * len(r) for r in rows],
                                     model_logprobs=[[-0.5] * len(r) for r in rows],
                                     finish_reasons=["stop", "eos"], prompt_index=[0, 0], sample_index=[0, 1],
                                     prompt_lengths=[len(prompt.tokens)])

    monkeypatch.setattr(rollout.sample, "generate", fake_generate)
    source = rollout.RolloutSource([prompt], cfg, tok, c.grpo, mesh, seed=0, eos_ids=(258,), stop_strings=("\n\n",))
    batch = jax.tree.map(np.asarray, source.next(types.SimpleNamespace(params=params, step=0)))
    assert asked["stop"].strings == ("\n\n",) and asked["stop"].skip == {258}
    m = source.metrics()
    assert m["reward/accuracy"] == 0.5  # row 0 graded on " \boxed{3}" (the gold), row 1 wrong
    assert m["rollout/truncated"] == 0.0 and m["rollout/stop_string"] == 0.5
    np.testing.assert_array_equal(batch["weights"].sum(1), [len(kept), len(ended)])  # neither masked
    P = len(prompt.tokens)
    np.testing.assert_array_equal(batch["targets"][0, P - 1:P - 1 + len(kept)], kept)
    assert (batch["segment_ids"][0, P + len(kept):] == 0).all()


def test_format_reward_pays_for_a_box_only():
    """format_weight rewards a \\boxed answer; a stated answer ("The answer is 3.") earns the
    correctness reward but not the format one."""
    import ml_collections

    from reasonax.eval import grader
    from reasonax.train.grpo import rollout

    rc = ml_collections.ConfigDict(dict(format_weight=0.5, overlong_buffer=0, max_new_tokens=16))
    texts = ["The answer is 3.", "so \\boxed{3}.", "so \\boxed{4}.", "\\boxed{} and nothing"]
    total, parts = rollout.rewards(texts, ["3"] * 4, [4] * 4, ["q"] * 4, rc)
    np.testing.assert_array_equal(parts["format"], [0, 1, 1, 0])
    np.testing.assert_array_equal(parts["accuracy"], [1, 1, 0, 0])
    np.testing.assert_allclose(total, [1, 1.5, 0.5, 0])
    assert grader.boxed_answer("\\boxed{1} and \\boxed{2}") == grader.extract_answer("\\boxed{1} and \\boxed{2}")
