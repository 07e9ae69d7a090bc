"""GRPO's rollout layout (reasonax.train.rollout_layout), the weight sync and one-step-off overlap,
on 8 fake CPU devices: rollouts in the rollout layout against today's (the learner's FSDP arrays),
the sync against the learner's weights, one-step-off against a run that samples step t's batch
with theta_{t-1}, resume after SIGKILL, LoRA syncs, the collectives of the compiled decode block,
and the errors of bad settings."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import sample
from reasonax.model import config as model_config
from reasonax.model import init_params, lora, make_mesh, sharding
from reasonax.train import checkpoint as ckpt_lib
from reasonax.train import dry_run, grpo, loop
from reasonax.train import rollout_layout as RL
from tests.test_dry_run import load_config
from tests.test_train_loop import set_fields

ROOT = Path(__file__).resolve().parents[1]
CFG = model_config.qwen2(**model_config.TINY_MODEL)  # 4 query heads, 2 KV heads


def _params(mesh):
    return init_params(CFG, jax.random.key(3), jnp.float32, mesh=mesh)


def _generate(params, temperature):
    prompts = [[5, 17, 42, 8, 99, 3][: 3 + i % 4] for i in range(6)]
    sp = sample.SamplingParams(max_new_tokens=12, temperature=temperature, n=2)
    return sample.generate(params, CFG, prompts, sp, eos_ids=(), seed=7, num_slots=8)


@pytest.fixture(scope="module")
def fsdp_params():
    return _params(make_mesh(fsdp=8))


def _synced(params, data, tensor, sync=None):
    mesh = RL.make_mesh(data, tensor, jax.devices()[: data * tensor])
    sync = sync or RL.WeightSync()
    return sync(params, RL.rollout_shardings(params, mesh, CFG)), sync, mesh


def test_rollouts_in_the_rollout_layout_match_todays(fsdp_params):
    """Replicated weights (data=8): the same tokens and log-probs as decoding with the FSDP arrays.
    Tensor parallel (data=4, tensor=2; reductions split over 2 devices): the same greedy tokens,
    log-probs within 1e-5."""
    today = {t: _generate(fsdp_params, t) for t in (1.0, 0.0)}
    replicated, _, _ = _synced(fsdp_params, 8, 1)
    with sharding.use_rules(RL.RULES):
        res = _generate(replicated, 1.0)
    assert res.tokens == today[1.0].tokens
    np.testing.assert_allclose(np.concatenate(res.logprobs), np.concatenate(today[1.0].logprobs), atol=1e-6)
    tp, _, _ = _synced(fsdp_params, 4, 2)
    assert tp["layers"]["q"].sharding.spec != fsdp_params["layers"]["q"].sharding.spec
    with sharding.use_rules(RL.RULES):
        greedy = _generate(tp, 0.0)
    assert greedy.tokens == today[0.0].tokens
    np.testing.assert_allclose(np.concatenate(greedy.logprobs), np.concatenate(today[0.0].logprobs), atol=1e-5)


def test_weight_sync_gives_the_learners_weights_bitwise_and_moves_only_what_changed(fsdp_params):
    params = jax.tree.map(lambda x: x * 1.5 + 0.25, fsdp_params)  # "an update": new arrays
    out, sync, mesh = _synced(params, 4, 2)
    copies = [b for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(out)) if a is not b]
    assert len(copies) > 10  # all but the replicated norms, which are in place already
    assert sync.version == 1 and sync.bytes_moved == RL.per_device_bytes(copies) > 0
    for a, b, t in zip(jax.tree.leaves(params), jax.tree.leaves(out),
                       jax.tree.leaves(RL.rollout_shardings(params, mesh, CFG))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding.is_equivalent_to(t, b.ndim)
    again = sync(params, RL.rollout_shardings(params, mesh, CFG))  # nothing changed: the same copies
    assert sync.version == 1 and sync.bytes_moved == 0  # and the same params version
    assert all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(again)))
    sync.free()
    assert all(x.is_deleted() for x in copies)
    assert not any(x.is_deleted() for x in jax.tree.leaves(params))  # the learner's arrays are never touched
    # the 'train' layout: no copy at all
    assert all(a is b for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(RL.WeightSync()(params, None))))


def test_lora_syncs_move_only_the_adapters(fsdp_params):
    cfg = CFG.replace(lora=model_config.LoraConfig(r=8, alpha=16.0))  # rank 8: FSDP-sharded in training
    mesh8 = make_mesh(fsdp=8)
    adapters = lora.init_adapters(cfg, jax.random.key(1), jnp.float32, mesh8)
    combine = lambda ad: {**fsdp_params, "layers": {**fsdp_params["layers"], "lora": ad}}  # noqa: E731
    rmesh = RL.make_mesh(8, 1, jax.devices())
    sync = RL.WeightSync(RL.lora_frozen)
    targets = RL.rollout_shardings(combine(adapters), rmesh, cfg)
    first = sync(combine(adapters), targets)
    adapter_bytes = RL.per_device_bytes(first["layers"]["lora"])
    assert sync.bytes_moved > adapter_bytes > 0  # the first sync places the base too
    sync.free()  # overlap none: the adapters' copies go, the base stays placed
    new = jax.tree.map(lambda x: x + 1.0, adapters)
    second = sync(combine(new), targets)
    assert sync.bytes_moved == adapter_bytes
    base_keys = [k for k in first if k != "layers"]
    assert all(first[k] is second[k] for k in base_keys)
    assert second["layers"]["q"] is first["layers"]["q"]
    np.testing.assert_array_equal(np.asarray(second["layers"]["lora"]["q"]["b"]), np.asarray(new["q"]["b"]))


def test_collectives_parser_on_a_hand_written_module():
    hlo = """HloModule m

%inner (p: f32[4]) -> f32[4] {
  %ag = f32[8,16]{1,0} all-gather(%x), dimensions={0}
  %ar = (f32[4]{0}, bf16[2,2]{1,0}) all-reduce(%a, %b), to_apply=%sum
}

%outer (p: f32[4]) -> f32[4] {
  %w = (s32[]) while(%t), condition=%c, body=%inner, backend_config={"known_trip_count":{"n":"3"}}
  %cp = s32[10]{0} collective-permute(%y), source_target_pairs={{0,1}}
}

ENTRY %main (p: f32[4]) -> f32[4] {
  %g = f32[100]{0} all-gather(%z), dimensions={0}
  %loop = (s32[]) while(%t), condition=%c, body=%outer
}
"""
    got = RL.collectives(hlo)
    per_layer = 8 * 16 * 4 + 4 * 4 + 2 * 2 * 2
    assert got == {"outside_loops": 400, "per_iteration": 3 * per_layer + 40, "per_inner_iteration": per_layer,
                   "largest_in_loop": 512, "count_per_iteration": 3 * 2 + 1}


def test_pod_config_decode_needs_no_weight_collectives_in_the_rollout_layout():
    """configs/grpo_qwen25_math_1p5b_v5e8.py (its 1.5B shapes, 2 layers, shorter rows): today's decode
    gathers each layer's weights per step; in the layout auto picks (replicated) the collectives per
    layer-step are under 1% of that; under a tensor layout no collective inside the loops is larger
    than the [slots, hidden] float32 activations it reduces; a sync moves at most one bf16 copy."""
    c = load_config("grpo_qwen25_math_1p5b_v5e8")
    c.model.overrides = {"num_layers": 2}
    c.grpo.max_prompt_len, c.grpo.max_new_tokens, c.grpo.kv_budget_gb = 64, 64, 0.25
    plan = grpo.build(c)
    today = RL.collectives(dry_run.compile_rollout_decode(
        dataclasses.replace(plan, rollout=dataclasses.replace(plan.rollout, rollout_mesh="train"))).as_text())
    auto = RL.collectives(dry_run.compile_rollout_decode(plan).as_text())
    assert today["per_inner_iteration"] > 150 * 2**20  # 1.5B's layer weights, gathered per layer-step
    assert auto["per_inner_iteration"] <= 0.01 * today["per_inner_iteration"]
    tp_plan = dataclasses.replace(plan, rollout=dataclasses.replace(plan.rollout, rollout_mesh="data=4,tensor=2"))
    tp = RL.collectives(dry_run.compile_rollout_decode(tp_plan).as_text())
    slots, _ = RL.slot_count(plan.model, tp_plan.rollout, 4, int(plan.config.batch_size), jnp.bfloat16)
    assert 0 < tp["largest_in_loop"] <= (slots // 4) * plan.model.hidden_size * 4
    mesh = RL.make_mesh(8, 1, jax.devices())
    assert RL.per_device_bytes(RL.policy_spec(plan.model, jnp.bfloat16, mesh)) <= 2 * dry_run.num_params(plan.model)


# ----------------------------------------------------------------------------------------------
# Runs


def _tiny(workdir, **changes):
    c = load_config("grpo_tiny_cpu")
    c.workdir = str(workdir)
    c.synthetic.num_examples, c.synthetic.num_heldout = 64, 8
    g = c.grpo
    g.prompts_per_step, g.group_size, g.max_prompt_len, g.max_new_tokens = 4, 4, 64, 8
    g.reward_fns = ["tests.test_grpo.digit_reward"]
    g.is_cap, g.overlap, g.rollout_devices = 2.0, "one-step-off", 4
    c.mesh = dict(data=1, fsdp=4, tensor=1)
    c.num_steps = c.optim.total_steps = 6
    c.optim.lr = 1e-2
    c.eval_every, c.log_every, c.peak_flops, c.tensorboard = 0, 1, "1e11", False
    c.checkpoint.every, c.checkpoint.async_save = 1, False
    return set_fields(c, changes)


def _steps(workdir) -> dict:
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


class _Lagged:
    """A source that samples step t's batch with theta_{t-1} (step 0: theta_0), on-policy otherwise:
    the reference schedule of one-step-off."""

    def __init__(self, source):
        self.source, self.prev = source, None

    def next(self, state):
        prev = self.prev if self.prev is not None else state.params
        self.prev = jax.tree.map(jnp.copy, state.params)  # theta_t, before the step donates it
        return self.source.next(dataclasses.replace(state, params=prev))

    def __getattr__(self, name):
        return getattr(self.source, name)


MODES = {"one-step-off": {}, "none": {"grpo.overlap": "none", "grpo.rollout_devices": 0, "mesh.fsdp": 8}}


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """Uninterrupted 6-step runs by overlap mode, made once (workdir, final state)."""
    runs = {}

    def get(mode):
        if mode not in runs:
            workdir = tmp_path_factory.mktemp(mode)
            runs[mode] = workdir, grpo.run(_tiny(workdir, **MODES[mode]))
        return runs[mode]

    return get


@pytest.fixture
def one_step_off(straight_runs):
    return straight_runs("one-step-off")


def test_one_step_off_equals_sampling_each_batch_with_the_previous_weights(one_step_off, tmp_path):
    workdir, state = one_step_off
    ref_plan = grpo.build(_tiny(tmp_path / "ref", **{"grpo.overlap": "none", "grpo.rollout_devices": 0}))
    inner = ref_plan.source
    ref_plan = dataclasses.replace(ref_plan, source=lambda mesh: _Lagged(inner(mesh)))
    ref = loop.run(ref_plan, mesh=make_mesh(fsdp=4, devices=jax.devices()[4:]))  # the same devices train
    a, b = _steps(workdir), _steps(tmp_path / "ref")
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    for k in ("reward/mean", "rollout/length_mean", "loss", "grad_norm", "is_weight"):
        assert [a[s][k] for s in a] == [b[s][k] for s in a], k
    assert [a[s]["rollout/staleness"] for s in a] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert a[2]["is_weight"] != 1.0  # stale samples: the correction is at work
    assert all("time/weight_sync" in a[s] and "rollout/params_version" in a[s] for s in (1, 2, 3))
    assert len({float(np.asarray(x).sum()) for x in jax.tree.leaves(state.params)}) > 1
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert set(x.sharding.device_set) == set(jax.devices()[4:])


WORKER = """
import sys
sys.path.insert(0, {root!r})
from tests.test_rollout_layout import MODES, _tiny
from reasonax.train import grpo
grpo.run(_tiny(sys.argv[1], **MODES[sys.argv[2]]))
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_after_sigkill_equals_the_uninterrupted_run(straight_runs, tmp_path, mode):
    """Killed mid-run and rerun, the run ends with the uninterrupted run's params, in both overlap
    modes. With one-step-off the checkpoint after step t holds theta_{t+1} and the batch in flight
    (sampled with theta_t); with overlap none, the rollouts through the rollout layout resume
    from the prompt stream and the per-step seed."""
    straight = straight_runs(mode)[0]
    killed = tmp_path / "killed"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    run = lambda: subprocess.Popen([sys.executable, str(script), str(killed), mode],  # noqa: E731
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    proc = run()
    kill_at = random.Random(os.getpid()).randint(2, 4)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and max(_steps(killed), default=0) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt_lib.Checkpointer(killed / "checkpoints").latest_step()
    assert done is not None and done < 6
    extra = ckpt_lib.Checkpointer(killed / "checkpoints").restore_extra(done)
    assert (extra is None) if mode == "none" else (extra["index"] == done)  # one-step-off: the next step's batch
    proc = run()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    a, b = _steps(straight), _steps(killed)
    assert sorted(b) == list(range(1, 7))
    assert all(a[s]["loss"] == b[s]["loss"] and a[s]["reward/mean"] == b[s]["reward/mean"] for s in a)
    from safetensors.numpy import load_file

    x, y = load_file(straight / "hf" / "model.safetensors"), load_file(killed / "hf" / "model.safetensors")
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# Errors


def test_bad_settings_are_errors_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="config.grpo: is_cap=0.0"):
        grpo.check_config(_tiny(tmp_path, **{"grpo.is_cap": 0.0}))
    with pytest.raises(ValueError, match="config.grpo: rollout_devices must be >= 1"):
        grpo.check_config(_tiny(tmp_path, **{"grpo.rollout_devices": 0}))
    with pytest.raises(ValueError, match="config.grpo: rollout_mesh='data=two'"):
        grpo.check_config(_tiny(tmp_path, **{"grpo.rollout_mesh": "data=two"}))
    with pytest.raises(ValueError, match="config.grpo: rollout_mesh='data=2' covers 2 devices"):
        grpo.check_config(_tiny(tmp_path, **{"grpo.rollout_mesh": "data=2"}))
    with pytest.raises(ValueError, match="grpo.rollout_mesh.*tensor=3 does not divide"):
        grpo.build(_tiny(tmp_path, **{"grpo.rollout_mesh": "data=1,tensor=3", "grpo.rollout_devices": 3}))
    with pytest.raises(ValueError, match="grpo.rollout_mesh.*8 devices"):  # data x tensor != the devices
        RL.check(4, 1, 8, CFG)
    with pytest.raises(ValueError, match="config.mesh: no devices left"):
        loop.config_mesh(_tiny(tmp_path), skip=8)
    with pytest.raises(ValueError, match="config.mesh.*grpo.rollout_devices"):
        loop.config_mesh(grpo.check_config(_tiny(tmp_path)), skip=6)  # fsdp=4 on the 2 devices left
    plan = grpo.build(_tiny(tmp_path, **{"device_memory_gib": 0.0001}))
    with pytest.raises(ValueError, match="grpo.rollout_mesh.*no rollout layout fits"):
        dry_run.dry_run(plan)
