"""LoRA training (reasonax.train.adapters): the step trains the adapters only on a frozen base that
stays bit for bit; the optimizer state holds the adapters alone; resume after a kill equals the
uninterrupted run; GRPO with beta > 0 keeps one copy of the base (its reference); the merged HF
export and the PEFT directory hold what was trained; a run can start from a PEFT adapter."""

import importlib.util
import json
import os
import random
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import model, typed
from reasonax.model import lora
from reasonax.model.params import ADAPTERS, is_spec, num_params
from reasonax.train import adapters, common, dry_run, grpo, loop, sft
from reasonax.train import checkpoint as ckpt_lib
from tests.test_train_loop import _finish, _losses, _worker, set_fields, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _lora_config(workdir, **changes):
    return tiny_config(workdir, **{"lora.r": 4, "lora.alpha": 8.0, "optim.lr": 1e-2, **changes})


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    return all(bool(np.array_equal(np.asarray(x), np.asarray(y))) for x, y in zip(la, lb))


def test_lora_sft_trains_only_the_adapters_resumes_exactly_and_exports_merged_and_peft(tmp_path):
    """Sharded over the 8 fake devices (data 2 x fsdp 4). The same run is then killed at an
    arbitrary step in a subprocess and resumed: its exports are bitwise this run's."""
    straight = tmp_path / "straight"
    c = typed.from_config(sft.SFTConfig, _resume_config(straight))
    plan = sft.build(c)
    cfg = plan.model
    assert cfg.lora == lora.LoraConfig(r=4, alpha=8.0)
    mesh = loop.config_mesh(c)
    state = loop.run(plan, mesh=mesh)

    # the state holds the adapters only, and AdamW's moments are adapter-shaped
    trained = jax.tree.map(lambda s: s.shape, adapters.trainable_specs(cfg), is_leaf=is_spec)
    assert jax.tree.map(lambda x: x.shape, state.params) == trained
    shapes = {s for s in jax.tree.leaves(trained, is_leaf=lambda x: isinstance(x, tuple))}
    opt_sizes = [x.size for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim} <= shapes
    assert sum(opt_sizes) == 2 * lora.num_adapter_params(cfg) and lora.num_adapter_params(cfg) < num_params(cfg) / 5
    # the base the step ran on is bit for bit the seeded init, after 12 updates
    base = plan.aux(mesh)["base"]
    fresh = common.init_params_fn(c, cfg)(mesh)
    assert _leaves_equal(base, fresh)
    ad = state.params["layers"][ADAPTERS]
    assert all(float(jnp.abs(ab["b"]).max()) > 0 for ab in ad.values())  # B left zero: training moved it
    losses = _losses(straight)
    assert losses[STEPS] < losses[1], losses

    # exports: the PEFT directory holds the trained adapters; the merged HF model runs as base + adapters
    _, back = lora.load_peft(straight / "peft", cfg)
    assert _leaves_equal(back, jax.device_get(ad))
    hf_cfg, merged = model.load_hf(straight / "hf")
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 200, (2, 24)), jnp.int32)
    want = model.forward(adapters.combine(base, state.params), tokens, cfg)
    np.testing.assert_allclose(np.asarray(model.forward(merged, tokens, hf_cfg)), np.asarray(want), atol=2e-5)
    assert not np.allclose(np.asarray(model.forward(base, tokens, cfg)), np.asarray(want), atol=1e-3)

    # a run that starts from that PEFT directory starts from those adapters (lr 0: it ends there too)
    c2 = _lora_config(tmp_path / "again", num_steps=1, **{"optim.total_steps": 1, "optim.lr": 0.0, "lora.r": 0,
                                                          "lora.init_from": str(straight / "peft")})
    sft.run(c2)
    _, again = lora.load_peft(tmp_path / "again" / "peft", cfg)
    assert _leaves_equal(again, back)
    with pytest.raises(ValueError, match=r"lora.r=8, but the adapter in lora.init_from=.* has rank 4"):
        sft.build(_lora_config(tmp_path / "x", **{"lora.r": 8, "lora.init_from": str(straight / "peft")}))

    _kill_and_resume(tmp_path, straight)


STEPS = 10


def _resume_config(workdir):
    return _lora_config(workdir, num_steps=STEPS, **{"optim.total_steps": STEPS, "checkpoint.every": 1,
                                                     "checkpoint.keep": 2, "mesh.fsdp": 4, "mesh.data": 2})


WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {root!r})
from tests.test_lora_train import _resume_config
from reasonax.train import sft
sft.run(_resume_config(sys.argv[1]))
"""


def _kill_and_resume(tmp_path, straight):
    """Run _resume_config in a subprocess, SIGKILL it at an arbitrary step, rerun it (it resumes
    from the latest complete checkpoint: adapters + AdamW state; the base is rebuilt) and compare
    its exports and losses with the uninterrupted run in `straight`."""
    killed = tmp_path / "killed"
    proc = _worker(tmp_path, killed, WORKER)
    kill_at = random.Random(os.getpid()).randint(2, STEPS - 3)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and max(_losses(killed), default=0) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt_lib.Checkpointer(killed / "checkpoints").latest_step()
    assert done is not None and done < STEPS
    _finish(_worker(tmp_path, killed, WORKER))
    from safetensors.numpy import load_file

    for sub in ("peft/adapter_model.safetensors", "hf/model.safetensors"):
        a, b = load_file(straight / sub), load_file(killed / sub)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{sub}: {k}")
    la, lb = _losses(straight), _losses(killed)
    assert sorted(lb) == list(range(1, STEPS + 1)) and all(la[s] == lb[s] for s in la)


def _grpo_config(workdir, **changes):
    spec = importlib.util.spec_from_file_location("grpo_tiny_cpu", ROOT / "configs" / "grpo_tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.workdir, c.tensorboard, c.peak_flops, c.eval_every = str(workdir), False, "1e11", 0
    c.synthetic.num_examples, c.synthetic.num_heldout = 64, 8
    g = c.grpo
    g.prompts_per_step, g.group_size, g.max_prompt_len, g.max_new_tokens, g.beta = 2, 4, 64, 8, 0.04
    c.num_steps = c.optim.total_steps = 2
    c.lora.r = 4
    return set_fields(c, changes)


def test_grpo_lora_with_kl_keeps_one_copy_of_the_base(tmp_path):
    """beta > 0: the reference is the base with adapters off. The step's frozen aux is one params
    tree (the dry run's memory: one base, where full GRPO holds params + a reference copy), and a
    run samples, scores against the reference and trains the adapters."""
    n = jax.device_count()
    full = grpo.build(_grpo_config(tmp_path / "full", **{"lora.r": 0, "mesh.fsdp": n}))
    low = grpo.build(_grpo_config(tmp_path / "lora", **{"mesh.fsdp": n}))
    mesh = loop.config_mesh(low.config)
    assert full.reference_is_init and not low.reference_is_init and low.aux_spec(mesh)["aux"] is None
    base_bytes = dry_run.per_device_bytes(model.abstract_params(full.model, mesh=mesh))
    rf, rl = dry_run.dry_run(full), dry_run.dry_run(low)
    assert rf["per_device_bytes"]["params"] == rf["per_device_bytes"]["reference"] == base_bytes
    assert rl["per_device_bytes"]["frozen"] == base_bytes  # the base, once: it is the reference too
    assert rl["per_device_bytes"]["params"] == dry_run.per_device_bytes(lora.abstract_adapters(low.model, mesh=mesh))
    assert rl["rollout"]["rollout"]["num_slots"] == rf["rollout"]["rollout"]["num_slots"]
    # the rollout copy: the base placed once (copy_bytes), each sync moves at most the adapters
    ro = rl["rollout"]["rollout"]
    assert ro["sync_bytes"] <= dry_run.per_device_bytes(lora.abstract_adapters(low.model)) < ro["copy_bytes"]

    state = loop.run(low)
    metrics = [json.loads(x) for x in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 2 and all("kl" in m for m in steps)
    assert steps[0]["kl"] == 0.0  # step 1: adapters' B = 0, the learner is the reference exactly
    assert _leaves_equal(low.aux(mesh)["base"], common.init_params_fn(low.config, low.model)(mesh))
    assert (tmp_path / "lora" / "peft" / "adapter_config.json").is_file()
    assert jax.tree.structure(state.params) == jax.tree.structure(
        jax.tree.map(lambda s: 0, adapters.trainable_specs(low.model), is_leaf=is_spec))
