"""The training loop end to end: SFT learns and exports, exact resume after SIGKILL, half-written
checkpoints ignored, restore onto other meshes, the non-finite guard."""

import importlib.util
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
from safetensors.numpy import load_file

from reasonax import typed
from reasonax.model import init_params, make_mesh
from reasonax.train import checkpoint as ckpt_lib
from reasonax.train import loop
from reasonax.train.plan import Plan, lm_batch_spec
from reasonax.train import state as S
from reasonax.train.loss import sft_loss

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(workdir, **changes):
    spec = importlib.util.spec_from_file_location("sft_tiny_cpu", ROOT / "configs" / "sft_tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.workdir = str(workdir)
    c.synthetic.num_examples = 400
    c.seq_len, c.batch_size = 64, 8
    c.log_every = 1
    c.peak_flops = "1e11"  # skip the matmul measurement
    c.tensorboard = False
    return set_fields(c, changes)


def set_fields(c, changes: dict):
    """c with each dotted field of `changes` ('optim.lr': 1e-3) set; returns c."""
    for k, v in changes.items():
        target = c
        *path, last = k.split(".")
        for p in path:
            target = target[p]
        target[last] = v
    return c


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_sft_learns_and_its_export_loads_in_transformers_and_the_sampler(tmp_path):
    import torch
    import transformers

    from reasonax import model, sample
    from reasonax.train import sft

    c = tiny_config(tmp_path, num_steps=80, seq_len=128, **{"optim.total_steps": 80, "checkpoint.every": 40})
    sft.run(c)
    losses = _losses(tmp_path)
    assert losses[80] < 0.3 * losses[1], losses  # ln(259) = 5.6 at the start
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data/examples"] >= 80 * 8 and last["data/skipped_malformed"] == 0  # data counters logged
    cfg, params = model.load_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok("Compute 12 + 30, working left to right.\n")["input_ids"]
    assert ids[0] == tok.bos_token_id  # as the training data had it
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    got = np.asarray(model.forward(params, jnp.asarray([ids], jnp.int32), cfg))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    res = sample.generate(params, cfg, [ids], sample.SamplingParams(max_new_tokens=64, temperature=0.0),
                          eos_ids=(tok.eos_token_id,), seed=0)
    text = tok.decode(res.tokens[0])
    # the trained format (a boxed answer, then EOS), generated from the exported weights
    assert "\\boxed{" in text and res.finish_reasons[0] == "eos", text


WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {root!r})
from tests.test_train_loop import tiny_config
from reasonax.train import common, sft
c = tiny_config(sys.argv[1], num_steps=12, **{{"optim.total_steps": 12, "checkpoint.every": 1,
                "checkpoint.keep": 2, "mesh.fsdp": 4, "mesh.data": 2}})
sft.run(c)
"""


def _worker(tmp_path, workdir, worker: str = WORKER):
    """Run the worker script (WORKER, or another with a {root} field) on workdir in a subprocess."""
    script = tmp_path / "worker.py"
    script.write_text(worker.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    _finish(_worker(tmp_path, tmp_path / "straight"))
    killed = tmp_path / "killed"
    proc = _worker(tmp_path, killed)
    kill_at = random.Random(os.getpid()).randint(2, 9)  # arbitrary step
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and max(_losses(killed), default=0) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt_lib.Checkpointer(killed / "checkpoints").latest_step()
    assert done is not None and done < 12
    _finish(_worker(tmp_path, killed))  # resumes from the latest complete checkpoint
    a, b = load_file(tmp_path / "straight" / "hf" / "model.safetensors"), load_file(killed / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    la, lb = _losses(tmp_path / "straight"), _losses(killed)
    assert sorted(lb) == list(range(1, 13))  # steps after the restored checkpoint were dropped, then rerun
    assert all(la[s] == lb[s] for s in la)


def _saved_state(mesh, seed=0):
    from reasonax.train import common

    c = tiny_config("unused")
    mcfg = common.model_config(c)
    opt = S.make_optimizer(c.optim, mcfg)
    return mcfg, opt, S.create_state(init_params(mcfg, jax.random.key(seed), mesh=mesh), mcfg, opt, mesh)


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    mcfg, opt, state = _saved_state(mesh)
    ck = ckpt_lib.Checkpointer(tmp_path, every=1)
    ck.save(1, state, config={"step": 1})
    ck.wait()
    newer = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    ck.save(2, newer, config={"step": 2})
    ck.close()
    # a kill during the save of step 3: its temporary directory holds a partial copy
    partial = tmp_path / "3.orbax-checkpoint-tmp-1732200000"
    partial.mkdir()
    (partial / "state").mkdir()
    (partial / "state" / "_METADATA").write_text("{")
    # and a kill before the rename left step 2's final directory missing its commit: simulate by
    # moving it back to a temporary name
    os.rename(tmp_path / "2", tmp_path / "2.orbax-checkpoint-tmp-1732200001")
    ck = ckpt_lib.Checkpointer(tmp_path, every=1)
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    abstract = S.abstract_state(mcfg, opt, mesh)
    restored = ck.restore(abstract)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    ck.close()


def test_restore_onto_other_meshes(tmp_path):
    mesh8 = make_mesh(data=2, fsdp=2, tensor=2)
    mcfg, opt, state = _saved_state(mesh8, seed=3)
    ck = ckpt_lib.Checkpointer(tmp_path / "a", every=1)
    ck.save(5, state)
    ck.close()
    expect = jax.device_get(state)
    mesh1 = make_mesh(devices=jax.devices()[:1])
    one = ckpt_lib.Checkpointer(tmp_path / "a").restore(S.abstract_state(mcfg, opt, mesh1))
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(one)} == {1}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(one), expect)
    ck = ckpt_lib.Checkpointer(tmp_path / "b", every=1)
    ck.save(6, one)
    ck.close()
    mesh_f8 = make_mesh(fsdp=8)
    eight = ckpt_lib.Checkpointer(tmp_path / "b").restore(S.abstract_state(mcfg, opt, mesh_f8))
    assert eight.params["layers"]["gate"].sharding.mesh.shape["fsdp"] == 8
    assert len(eight.params["layers"]["gate"].sharding.device_set) == 8
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(eight), expect)


class _PoisonSource:
    """Synthetic batches; from step `poison_from` on, the loss is NaN."""

    def __init__(self, mesh, poison_from):
        self.mesh, self.poison_from, self.iterator, self.i = mesh, poison_from, None, 0

    def next(self, state):
        from reasonax.model.sharding import batch_sharding

        rng = np.random.default_rng(self.i)
        self.i += 1
        B, T = 8, 16
        batch = dict(inputs=rng.integers(0, 259, (B, T)).astype(np.int32),
                     targets=rng.integers(0, 259, (B, T)).astype(np.int32), weights=np.ones((B, T), np.float32),
                     poison=np.full((B,), float(self.i >= self.poison_from), np.float32))
        return jax.device_put(batch, batch_sharding(self.mesh))


def test_non_finite_steps_stop_the_run_with_the_last_good_checkpoint(tmp_path):
    from reasonax.train import common

    c = typed.from_config(common.LMConfig, tiny_config(tmp_path, num_steps=20, max_bad_steps=3, seq_len=16,
                                                       **{"checkpoint.every": 2}))
    mcfg = common.model_config(c)

    def loss_fn(p, b):
        s, n, m = sft_loss(p, b, mcfg)
        return s + jnp.where(b["poison"][0] > 0, jnp.nan, 0.0), n, m

    mesh = loop.config_mesh(c)
    init = lambda m: init_params(mcfg, jax.random.key(0), mesh=m)  # noqa: E731
    with pytest.raises(loop.NonFiniteError, match="3 non-finite steps in a row"):
        loop.run(Plan(config=c, model=mcfg, loss=loss_fn, init=init, source=lambda m: _PoisonSource(m, poison_from=6),
                      batch_spec=lm_batch_spec), mesh=mesh)
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum("non-finite" in r.get("event", "") for r in events) == 3
    ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
    opt = S.make_optimizer(c.optim, mcfg)
    last = ck.restore(S.abstract_state(mcfg, opt, mesh))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(last.params))
    assert int(last.updates) == 5  # steps 1-5 were good; the skipped ones changed nothing
    ck.close()


def test_overrides_on_a_checkpoint_may_repeat_its_shapes_but_not_change_them(tmp_path):
    """A preset-based config reused with model.path (as the tiny GRPO config is, from the SFT
    export): overrides equal to the checkpoint's shapes pass, a different shape is an error."""
    from reasonax.model import save_hf
    from reasonax.model.config import TINY_MODEL
    from reasonax.train import common

    c = tiny_config(tmp_path)
    cfg = common.model_config(c)
    save_hf(init_params(cfg, jax.random.key(0)), cfg, tmp_path / "hf")
    c.model.path, c.model.preset = str(tmp_path / "hf"), ""
    assert common.model_config(c).hidden_size == TINY_MODEL["hidden_size"]
    c.model.overrides = {**TINY_MODEL, "hidden_size": 128}
    with pytest.raises(ValueError, match=r"hidden_size: 64 -> 128"):
        common.model_config(c)
