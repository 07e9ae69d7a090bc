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
    """One step with minibatches=2, epochs=2 = four single-update steps over the same minibatches;
    loss_fn's (num, den) metrics are pooled over the updates (an update without any counts for nothing)."""
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

    def with_metric(params, mb):  # a (num, den) metric that only minibatch 0 (even rows) has
        loss, n, metrics = fn(params, mb)
        f = mb["flag"].astype(jnp.float32)
        return loss, n, {**metrics, "flagged": (3.0 * f.sum(), f.sum())}

    state = fresh()
    sh = jax.tree.map(lambda x: x.sharding, state)
    multi = ST.build_train_step(with_metric, opt, sh, mesh, minibatches=2, epochs=2)
    flagged = {**batch, "flag": (np.arange(8) % 2 == 0).astype(np.int32)}
    s_multi, m = multi(state, jax.device_put(flagged, ST.batch_sharding(mesh)))
    assert float(m["flagged"]) == 3.0  # pooled over the updates: the ones without it do not count
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
    from tests.test_dry_run import load_config
    from tests.test_train_loop import set_fields

    c = load_config("grpo_tiny_cpu")
    c.workdir = str(workdir)
    c.synthetic.num_examples, c.synthetic.num_heldout = 200, 8
    c.grpo.prompts_per_step, c.grpo.group_size = 4, 8
    c.grpo.max_prompt_len, c.grpo.max_new_tokens = 64, 16
    c.grpo.reward_fns = ["tests.test_grpo.digit_reward"]
    c.num_steps = c.optim.total_steps = 30
    c.optim.lr = 1e-2
    c.eval_every, c.log_every, c.peak_flops, c.tensorboard, c.export_hf = 0, 1, "1e11", False, "none"
    c.checkpoint.every = 10
    return set_fields(c, changes)


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


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_each_policy_loss_learns_with_minibatches(tmp_path, loss):
    """12 steps with 2 minibatches (ratios differ from 1) and the packed update: the reward climbs.
    (ppo: test_grpo_learns_a_reward_on_cpu; 30 steps of each loss: bench/grpo_objectives.py.)"""
    from reasonax.train import grpo as G

    agg = "seq-mean-token-mean" if loss == "gspo" else "token-mean"
    G.run(_tiny(tmp_path / "run", **{"num_steps": 12, "optim.total_steps": 12, "checkpoint.every": 12,
                                      "grpo.minibatches": 2, "grpo.pack_len": 160, "grpo.policy_loss": loss,
                                      "grpo.aggregation": agg}))
    r = _rewards(tmp_path / "run")
    first, last = np.mean(r[:3]), np.mean(r[-3:])
    assert last > first + 0.2, (loss, first, last)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    """Stop at step 6 (a checkpoint), resume to 12: same rewards, losses and params as 12 in one go
    (params, optimizer state, prompt-stream position and the per-step sampling seed restored), with
    the packed update and 2 minibatches (unpacked rows resume exactly in tests/test_rollout_layout.py)."""
    import json
    from pathlib import Path

    from reasonax.train import grpo as G

    changes = {"num_steps": 12, "optim.total_steps": 12, "checkpoint.every": 6, "checkpoint.async_save": False,
               "grpo.pack_len": 160, "grpo.minibatches": 2}
    whole = G.run(_tiny(tmp_path / "whole", **changes))
    G.run(_tiny(tmp_path / "split", **{**changes, "num_steps": 6}))
    resumed = G.run(_tiny(tmp_path / "split", **changes))

    def metrics(w):
        rows = [json.loads(x) for x in (Path(w) / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["reward/mean"], r["loss"], r["update/pack_rows_needed"]) for r in rows if "loss" in r}

    assert metrics(tmp_path / "whole") == metrics(tmp_path / "split")  # the packed path ran (pack_rows_needed)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), whole.params,
                 resumed.params)


def test_sampling_differs_between_steps_for_the_same_prompt(tmp_path):
    """A new seed per step; the prefix cache serves only the weights it was filled with (the weight
    sync's params version changes with any new array)."""
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
    updated = jax.tree.map(lambda x: x * 1.0, params)  # step 1's weights: new arrays (an update)
    batches, cached, versions = [], [], []
    for s, p in ((0, params), (1, updated), (1, updated)):
        batches.append(np.asarray(source.next(types.SimpleNamespace(params=p, step=s))["inputs"]))
        cached.append(source.metrics()["rollout/cached_tokens"])
        versions.append(source.metrics()["rollout/params_version"])
    assert not np.array_equal(batches[0], batches[1])  # a new seed every step
    np.testing.assert_array_equal(batches[1], batches[2])  # and the same one for the same step
    assert versions[0] < versions[1] == versions[2]  # new arrays: a new version; the same arrays: the same
    assert cached == [0, 0, 2]  # a new params version empties the prefix cache; the same one reads it


def test_every_variant_runs_together_and_reports_its_metrics(tmp_path):
    """beta > 0 (frozen reference), mu = 2 and 2 minibatches (off-policy updates: the prepare pass),
    the packed update with RLOO advantages,
    IS correction, dual clip, dynamic sampling, overlong penalty, truncation mask, format reward,
    seq-mean-token-mean: a few steps run and every metric is there and sane."""
    import json

    from reasonax.train import grpo as G

    c = _tiny(tmp_path, **{"num_steps": 3, "optim.total_steps": 3, "grpo.beta": 0.04, "grpo.mu": 2,
                           "grpo.minibatches": 2, "grpo.is_cap": 2.0, "grpo.dual_clip": 3.0,
                           "grpo.dynamic_sampling": True, "grpo.max_sampling_rounds": 2,
                           "grpo.overlong_buffer": 4, "grpo.mask_truncated": True, "grpo.format_weight": 0.1,
                           "grpo.aggregation": "seq-mean-token-mean", "grpo.eval_limit": 4, "eval_every": 3,
                           "optim.lr": 1e-3, "grpo.pack_len": 160, "grpo.advantage": "rloo",
                           "grpo.scale_rewards": "none"})
    state = G.run(c)
    assert int(state.step) == 3 and int(state.updates) == 3 * 2 * 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    for r in steps:
        for k in ("kl", "is_weight", "is_capped", "clip_frac", "entropy", "logp_gap", "reward/format",
                  "reward/zero_adv_groups", "rollout/truncated", "rollout/rounds", "time/rollout", "time/reward",
                  "update/padding", "update/pack_overflow"):
            assert k in r and np.isfinite(r[k]), k
        assert r["kl"] >= 0.0
        assert r["logp_gap"] < 1e-3 and abs(r["is_weight"] - 1.0) < 1e-3  # same params, same float32 math
        assert 1 <= r["rollout/rounds"] <= 2
    # starts at the reference (step 1's first update has KL 0; pooled over the step's 4 updates at lr
    # 1e-3 it is small) and has moved away by the end (the KL need not grow every step)
    assert steps[0]["kl"] < 0.1 and steps[-1]["kl"] > 1e-4
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


# ----------------------------------------------------------------------------------------------
# The objective table (issue 25): hand cases per estimator and loss


def test_rloo_hand_cases():
    np.testing.assert_allclose(grpo.rloo_advantages([1.0, 0.0, 0.3, 0.7], 2), [1.0, -1.0, -0.4, 0.4], rtol=1e-6)
    r = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0])
    # A_i = R_i - mean of the other three: [1, -1/3, -1/3, -1/3], [2 - 2/3, 0 - 4/3, 1 - 1, 1 - 1]
    np.testing.assert_allclose(grpo.rloo_advantages(r, 4), [1, -1 / 3, -1 / 3, -1 / 3, 4 / 3, -4 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(grpo.rloo_advantages(r, 4), 4 / 3 * np.asarray(grpo.group_advantages(r, 4, "none")),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        grpo.rloo_advantages(r, 3)


def test_gspo_hand_cases():
    """GSPO (Zheng et al. 2025): s_i = exp(mean_t (logp - old)); L = mean_i -min(s A, clip(s) A)."""
    old = jnp.zeros((2, 3))
    logp = jnp.array([[0.1, -0.1, 0.3], [0.02, -0.04, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2: two tokens, mean -0.01
    adv = jnp.array([1.0, -2.0])
    s = np.exp([0.1, -0.01])
    wide = grpo.policy_objective("gspo", logp, old, adv, mask, 10.0, 10.0, "seq-mean-token-mean")
    np.testing.assert_allclose(wide, -np.mean(np.asarray(adv) * s), rtol=1e-6)  # every ratio inside the clip
    # the paper's range 3e-4 / 4e-4: s_1 = 1.105 -> 1.0004 (A > 0), s_2 = 0.990 -> 0.9997 (A < 0: min keeps it)
    tight = grpo.policy_objective("gspo", logp, old, adv, mask, 3e-4, 4e-4, "seq-mean-token-mean")
    np.testing.assert_allclose(tight, -(1.0004 * 1.0 + -2.0 * 0.9997) / 2, rtol=1e-6)
    # gradient inside the clip: d/dlogp_t of -s_i A_i / N = -A_i s_i / (N n_i) on the row's tokens
    g = jax.grad(lambda lp: grpo.policy_objective("gspo", lp, old, adv, mask, 10.0, 10.0, "seq-mean-token-mean"))(logp)
    want = -np.asarray(adv)[:, None] * s[:, None] / (2 * np.array([[3.0], [2.0]])) * np.asarray(mask)
    np.testing.assert_allclose(g, want, rtol=1e-5)
    with pytest.raises(ValueError, match="per sequence"):
        grpo.policy_objective("gspo", logp, old, adv, mask, 3e-4, 4e-4, "token-mean")


def test_cispo_hand_cases():
    """CISPO (MiniMax-M1): L_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A logp_t; no lower bound by default."""
    old = jnp.log(jnp.array([[0.5, 0.4, 0.05]]))
    p = jnp.array([[0.65, 0.2, 0.4]])  # r = 1.3, 0.5, 8.0 -> clipped at 1 + 4 = 5 (TRL's cap)
    lo, hi = grpo.clip_bounds("cispo")
    assert (lo, hi) == (float("inf"), 4.0)
    adv = jnp.array([2.0])
    f = lambda lp: grpo.policy_objective("cispo", lp, old, adv, jnp.ones((1, 3)), lo, hi)  # noqa: E731
    w = np.array([1.3, 0.5, 5.0])
    np.testing.assert_allclose(f(jnp.log(p)), -(w * 2.0 * np.log([0.65, 0.2, 0.4])).sum() / 3, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(f)(jnp.log(p)), [-w * 2.0 / 3], rtol=1e-5)  # clipped weight x A x grad logp
    # the PPO loss at r = 1.3 with the same A has a zero gradient past 1.28; CISPO keeps it, weighted
    assert grpo.clip_bounds("ppo") == (0.2, 0.28) and grpo.clip_bounds("gspo") == (3e-4, 4e-4)
    assert grpo.clip_bounds("ppo", 0.1, -1.0) == (0.1, 0.28)


def test_kl_estimators_values_and_gradients():
    """pi = 0.5, pi_ref = 0.25, d = ln 2: k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1; each gradient
    against the derivative of its formula (1, d, 1 - exp(-d)) at many points."""
    logp, ref = jnp.log(jnp.float32(0.5)), jnp.log(jnp.float32(0.25))
    d = np.log(2.0)
    for est, value in (("k1", d), ("k2", d * d / 2), ("k3", 0.5 + d - 1)):
        np.testing.assert_allclose(grpo.kl_penalty(logp, ref, est), value, rtol=1e-6)
    x, r = jnp.linspace(-3, 1, 41), jnp.linspace(1, -3, 41)
    dx = np.asarray(x - r)
    for est, deriv in (("k1", np.ones_like(dx)), ("k2", dx), ("k3", 1 - np.exp(-dx))):
        g = jax.vmap(jax.grad(lambda a, b: grpo.kl_penalty(a, b, est)))(x, r)
        np.testing.assert_allclose(g, deriv, rtol=1e-5, atol=1e-6, err_msg=est)
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.kl_penalty(x, r, "k4")


def test_importance_weights_levels_and_modes():
    learner = jnp.log(jnp.array([[0.5, 0.9, 0.2], [0.3, 0.3, 0.3]]))
    sampler = jnp.log(jnp.array([[0.5, 0.3, 0.4], [0.3, 0.1, 0.3]]))  # token ratios [1, 3, 0.5], [1, 3, 1]
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(grpo.importance_weights(learner, sampler, 2.0, mode="mask"), [[1, 0, 0.5], [1, 0, 1]],
                               rtol=1e-6)
    # sequence: products over the mask, 1.5 and 3, at every token of the row
    seq_t = grpo.importance_weights(learner, sampler, 2.0, level="sequence", mask=mask)
    np.testing.assert_allclose(seq_t, [[1.5] * 3, [2.0] * 3], rtol=1e-6)
    seq_m = grpo.importance_weights(learner, sampler, 2.0, level="sequence", mode="mask", mask=mask)
    np.testing.assert_allclose(seq_m, [[1.5] * 3, [0.0] * 3], rtol=1e-6)
    with pytest.raises(ValueError, match="is_cap"):
        grpo.importance_weights(learner, sampler, 0.0)


def test_objective_config_errors_name_the_fields():
    from reasonax.train.grpo import GRPOSettings

    ok = GRPOSettings(advantage="rloo", scale_rewards="none", policy_loss="gspo", aggregation="seq-mean-token-mean",
                      is_cap=3.0, is_level="sequence", is_mode="mask", beta=0.01, kl_estimator="k2", pack_len=256)
    assert ok.problems() == []
    for bad, field in ((dict(advantage="rloo"), "scale_rewards"), (dict(kl_estimator="k1"), "beta=0"),
                       (dict(policy_loss="gspo"), "aggregation='token-mean'"),
                       (dict(policy_loss="cispo", dual_clip=3.0), "dual_clip"),
                       (dict(is_mode="mask"), "is_cap=0"), (dict(is_level="sequence"), "is_cap=0"),
                       (dict(policy_loss="grpo"), "policy_loss"), (dict(advantage="ppo"), "advantage"),
                       (dict(pack_len=100), "pack_len=100"), (dict(pack_rows=4), "pack_rows=4")):
        probs = GRPOSettings(**bad).problems()
        assert any(field in p for p in probs), (bad, probs)


def test_first_fit_packs_in_order():
    from reasonax.train import data

    assert data.first_fit([5, 4, 3, 2, 6], 8) == [[0, 2], [1, 3], [4]]
    with pytest.raises(ValueError, match="item 1"):
        data.first_fit([3, 9], 8)


# ----------------------------------------------------------------------------------------------
# The packed update equals the unpacked one


def _packed_and_unpacked(parts: int, pack_len: int = 40):
    """Ten sequences of varied lengths with distinct token ids (the id finds a position's values in
    either layout): their unpacked rows and their packed rows (rollout.pack_rows)."""
    from reasonax.train.grpo import rollout

    rng = np.random.default_rng(0)
    plen, clen = rng.integers(2, 9, 10), rng.integers(1, 12, 10)
    ids = iter(range(1, 1000))
    prompts = [[next(ids) for _ in range(n)] for n in plen]
    comps = [[next(ids) for _ in range(n)] for n in clen]
    lps = [list(-rng.random(n)) for n in clen]
    trunc = [bool(t) for t in rng.integers(0, 2, 10)]
    examples = rollout.completion_examples(prompts, comps, lps, trunc, 20, mask_truncated=True)
    unpacked = rollout.build_rows(prompts, comps, lps, trunc, 20, mask_truncated=True)
    packed, needed = rollout.pack_rows(examples, parts, pack_len, rows_per_part=2)
    rows = 2 if needed <= 2 else -(-needed // 2) * 2  # a step that needs more rows grows by whole budgets
    assert packed["inputs"].shape == (rows * parts, pack_len)
    assert (packed["segment_ids"] > 0).sum() == (unpacked["segment_ids"] > 0).sum()
    return unpacked, packed


def _parts(batch: dict, n: int) -> list[dict]:
    """The step's micro-batches: rows (and advantages) j, j + n, ... (step._split)."""
    return [{k: v[j::n] for k, v in batch.items()} for j in range(n)]


IS_SETTINGS = [dict(is_cap=1.5), dict(is_cap=1.5, is_mode="mask"), dict(is_cap=1.2, is_level="sequence"),
               dict(is_cap=2.0, is_level="sequence", is_mode="mask")]
# every policy loss with each of its aggregations (IS off), and with each IS setting
OBJECTIVE_SETTINGS = ([dict(policy_loss=pl, aggregation=agg) for pl in ("ppo", "cispo") for agg in grpo.AGGREGATIONS]
                      + [dict(policy_loss="gspo", aggregation="seq-mean-token-mean")]
                      + [dict(policy_loss=pl, aggregation=agg, **is_) for pl, agg in (
                          ("ppo", "token-mean"), ("cispo", "seq-mean-token-sum"), ("gspo", "seq-mean-token-mean"))
                         for is_ in IS_SETTINGS])


@pytest.mark.parametrize("parts", [1, 2])
def test_packed_objective_equals_unpacked(parts):
    """Every policy loss x aggregation x IS setting (with KL, entropy and dual clip on the way):
    per micro-batch, the packed rows give the unpacked (numerator, denominator), metrics and
    gradients w.r.t. every position's log-prob; sequence-level IS compared in log-weights."""
    unpacked, packed = _packed_and_unpacked(parts)
    rng = np.random.default_rng(1)
    n_ids = int(unpacked["inputs"].max()) + 1
    vals = {k: jnp.asarray(-rng.random(n_ids) * s, jnp.float32) for k, s in
            (("logp", 2.0), ("old", 2.0), ("ref", 2.0), ("ent", -3.0))}
    adv = jnp.asarray(rng.normal(size=10), jnp.float32)

    def terms_and_grad(hp, batch, v):
        def f(logp_flat):
            ids = batch["inputs"]
            b = {**{k: jnp.asarray(x) for k, x in batch.items()}, "old_logp": v["old"][ids], "ref_logp": v["ref"][ids]}
            num, den, metrics = grpo.objective_terms(logp_flat[ids], v["ent"][ids], b, hp)
            return num, (den, metrics)

        return jax.value_and_grad(f, has_aux=True)(v["logp"])

    for setting in OBJECTIVE_SETTINGS:
        extra = dict(beta=0.1, kl_estimator="k2", entropy_coef=0.01) if setting["policy_loss"] == "cispo" else {}
        if setting["policy_loss"] == "ppo" and setting["aggregation"] == "dr-grpo":
            extra = dict(dual_clip=2.0, beta=0.05)
        hp = grpo.LossParams(temperature=1.0, max_new_tokens=16, eps_low=0.2, eps_high=0.3, **setting, **extra)
        for u, p in zip(_parts({**unpacked, "advantages": adv}, parts), _parts({**packed, "advantages": adv}, parts)):
            (nu, (du, mu_)), gu = terms_and_grad(hp, u, vals)
            (np_, (dp, mp)), gp = terms_and_grad(hp, p, vals)
            msg = str(setting)
            np.testing.assert_allclose(float(du), float(dp), rtol=1e-6, err_msg=msg)
            np.testing.assert_allclose(float(nu), float(np_), rtol=1e-5, atol=1e-6, err_msg=msg)
            np.testing.assert_allclose(gu, gp, rtol=1e-5, atol=1e-6, err_msg=msg)
            assert mu_.keys() == mp.keys()
            for k in mu_:
                np.testing.assert_allclose([float(x) for x in mu_[k]], [float(x) for x in mp[k]], rtol=1e-5,
                                           atol=1e-6, err_msg=f"{msg} {k}")
        if setting.get("is_level") == "sequence":  # the log-weights, position by position
            for u, p in zip(_parts({**unpacked, "advantages": adv}, parts), _parts({**packed, "advantages": adv}, parts)):
                lw = [np.asarray(grpo.objective.is_log_ratio(vals["old"][b["inputs"]], b["sampler_logp"], b["weights"],
                                                             "sequence", b.get("sequence"), 10 // parts))
                      for b in (u, p)]
                at_u = {int(i): x for i, x, m in zip(u["inputs"].ravel(), lw[0].ravel(), u["weights"].ravel()) if m}
                at_p = {int(i): x for i, x, m in zip(p["inputs"].ravel(), lw[1].ravel(), p["weights"].ravel()) if m}
                assert at_u.keys() == at_p.keys() and at_u
                np.testing.assert_allclose([at_u[i] for i in at_u], [at_p[i] for i in at_u], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("minibatches,setting", [
    (1, dict(policy_loss="ppo", aggregation="seq-mean-token-mean", is_cap=1.5, beta=0.1, kl_estimator="k2",
             entropy_coef=0.01)),
    (2, dict(policy_loss="gspo", aggregation="seq-mean-token-mean", is_cap=2.0, is_level="sequence", is_mode="mask",
             eps_low=0.2, eps_high=0.3)),
])
def test_packed_update_equals_unpacked(minibatches, setting):
    """The whole train step on the tiny model (prepare pass for old / reference log-probs on the
    packed rows, minibatch updates): packed rows give the unpacked loss, metrics and updates (SGD,
    so the params' change is the gradient)."""
    import functools

    import optax

    from reasonax.model import init_params, make_mesh
    from reasonax.train import state as S
    from reasonax.train import step as ST
    from tests.test_train_step import CFG

    unpacked, packed = _packed_and_unpacked(minibatches)
    adv = np.random.default_rng(2).normal(size=10).astype(np.float32)
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    opt = optax.sgd(0.5)
    params = init_params(CFG, jax.random.key(0), std=0.3, mesh=mesh)
    ref = init_params(CFG, jax.random.key(1), std=0.3, mesh=mesh)
    hp = grpo.LossParams(temperature=0.9, max_new_tokens=12, **{"eps_low": 0.2, "eps_high": 0.28, **setting})
    fn = functools.partial(grpo.grpo_loss, cfg=CFG, hp=hp, chunk=None)
    p0, out = jax.device_get(params), []
    for rows in (unpacked, packed):
        batch = {**rows, "advantages": adv, "inputs": rows["inputs"] % 95, "targets": rows["targets"] % 95}
        state = S.create_state(jax.tree.map(jnp.array, p0), CFG, opt, mesh)  # the step donates it
        step = ST.build_train_step(fn, opt, jax.tree.map(lambda x: x.sharding, state), mesh, minibatches=minibatches,
                                   prepare=grpo.make_prepare(CFG, hp, None, old=True, ref=True),
                                   aux_shardings=jax.tree.map(lambda x: x.sharding, ref))
        new, metrics = step(state, jax.device_put(batch, ST.batch_sharding(mesh)), ref)
        out.append((jax.tree.map(lambda a, b: np.asarray(a) - b, new.params, p0), metrics))
    (du, mu_), (dp, mp) = out
    assert mu_.keys() == mp.keys() and "is_weight" in mu_
    for k in mu_:
        np.testing.assert_allclose(float(mu_[k]), float(mp[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), du, dp)


def test_step_flops_count_every_pass_on_real_tokens():
    from reasonax.model import flops
    from tests.test_train_step import CFG

    P, tokens, rows = flops.matmul_params(CFG), 300, 10
    attn = flops.forward_flops(CFG, rows, 30)["attention"]
    full = flops.step_flops(CFG, tokens, rows, updates=2, forwards=2)
    assert full["prepare"] == 2 * (2 * P * tokens + attn)  # two forwards, 2P per token
    assert full["update"] == 2 * (6 * P * tokens + 3 * attn)  # mu = 2 updates, 6P per token
    assert flops.step_flops(CFG, tokens, rows)["total"] == flops.train_flops(CFG, rows, 30)["total"]  # full rows
    lora = flops.step_flops(CFG, tokens, rows, adapter_params=1000)
    assert lora["update"] == 4 * P * tokens + 6 * 1000 * tokens + 3 * attn and lora["prepare"] == 0
