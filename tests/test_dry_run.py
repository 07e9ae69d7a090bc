"""--dry_run: abstract state, compiled train step on fake CPU devices, per-device memory report."""

import functools
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest

from reasonax.model.params import is_spec, num_params, param_specs
from reasonax.train import dry_run, sft

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def mesh_config(**mesh) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(mesh=dict(dict(data=1, fsdp=1, tensor=1), **mesh)))


# ----------------------------------------------------------------------------------------------
# pure helpers


def test_mesh_devices_is_the_product_of_the_axes():
    assert dry_run.mesh_devices(mesh_config(data=2, fsdp=16, tensor=2)) == 64
    assert dry_run.mesh_shape(mesh_config(data=2, fsdp=-1), num_devices=64) == {"data": 2, "fsdp": 32, "tensor": 1}


def test_mesh_devices_rejects_an_unsized_axis_with_the_fix():
    with pytest.raises(ValueError, match=r"fsdp=-1.*--config\.mesh\.fsdp="):
        dry_run.mesh_devices(mesh_config(fsdp=-1))
    with pytest.raises(ValueError, match="do not divide"):
        dry_run.mesh_devices(mesh_config(data=3, fsdp=-1), num_devices=64)


def test_check_batch_names_the_bad_split():
    c = ml_collections.ConfigDict(dict(batch_size=64, accum_steps=8))
    dry_run.check_batch(c, {"data": 1, "fsdp": 8, "tensor": 1})
    with pytest.raises(ValueError, match="data\\*fsdp = 16"):
        dry_run.check_batch(c, {"data": 2, "fsdp": 8, "tensor": 1})


def test_fake_device_env_appends_and_replaces_the_device_count():
    env = dry_run.fake_device_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}, 32)
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=32"
    assert env["JAX_PLATFORMS"] == "cpu" and env[dry_run.REEXEC_ENV] == "1"
    assert dry_run.fake_device_env({}, 4)["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


def test_fit_reports_headroom_and_shortfall():
    assert dry_run.fit(12 * dry_run.GIB, 16)["fits"] and dry_run.fit(12 * dry_run.GIB, 16)["headroom_bytes"] == 4 << 30
    assert not dry_run.fit(17 * dry_run.GIB, 16)["fits"]


def test_cli_rejects_an_unsized_mesh_before_starting_anything():
    c = load_config("sft_tiny_cpu")  # mesh fsdp=-1
    with pytest.raises(SystemExit, match=r"--config\.mesh\.fsdp="):
        dry_run.main(c, sft.build)


# ----------------------------------------------------------------------------------------------
# the realistic configs


def test_qwen25_math_1p5b_v5e8_dry_run_fits_with_exact_state_figures():
    assert jax.device_count() >= 8
    c = load_config("sft_qwen25_math_1p5b_v5e8")
    plan = sft.build(c)
    cfg = plan.model
    report = dry_run.dry_run(plan, device_memory_gib=c.device_memory_gib)
    print(dry_run.format_report(report))

    # independently of the shardings: a leaf with an 'embed' dim is split 8 ways (1536 / 8), the rest
    # (norms, biases) is replicated on every device
    elems = sum(math.prod(s.shape) // (8 if "embed" in s.axes else 1)
                for s in jax.tree.leaves(param_specs(cfg), is_leaf=is_spec))
    d = report["per_device_bytes"]
    assert report["model"]["num_params"] == num_params(cfg)
    assert d["params"] == 2 * elems  # bfloat16
    assert abs(d["params"] - num_params(cfg) * 2 / 8) < 0.01 * d["params"]  # replicated leaves are tiny
    assert 0 <= d["opt_state"] - 2 * 4 * elems <= 16  # float32 mu + nu, plus int32 step counts
    assert d["batch"] == 64 * 4096 * 4 * 5 // 8

    m = report["compiled"]
    assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert m["total"] == m["argument"] + m["output"] - m["alias"] + m["temp"]
    state_bytes = d["params"] + d["opt_state"]
    assert state_bytes <= m["argument"] - d["batch"] <= state_bytes + 64  # + step/updates/bad_steps/rng
    assert m["alias"] >= state_bytes  # the donated state is updated in place
    assert report["fit"]["fits"] and report["fit"]["device_memory_gib"] == 16.0
    text = dry_run.format_report(report)
    assert "fits in 16 GiB per device" in text and "optimizer state (exact)" in text


def test_sft_cli_dry_run_reexecs_on_the_pod_mesh(tmp_path):
    """The Gemma2-9B v5p-64 config cut to 2 layers: the CLI restarts itself on 32 fake devices."""
    cfg_file = tmp_path / "gemma_2_layers.py"
    cfg_file.write_text(
        "import importlib.util\n"
        "from reasonax.model.config import FULL, SLIDING\n"
        f"spec = importlib.util.spec_from_file_location('base', {str(ROOT / 'configs' / 'sft_gemma2_9b_v5p64.py')!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n\n"
        "def get_config():\n"
        "    c = base.get_config()\n"
        "    c.model.overrides = dict(num_layers=2, layer_types=(SLIDING, FULL))\n"
        "    return c\n")
    env = {k: v for k, v in os.environ.items() if k != dry_run.REEXEC_ENV}  # conftest's 8 devices
    proc = subprocess.run([sys.executable, "-m", "reasonax.train.sft", f"--config={cfg_file}", "--dry_run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "re-executing on 32 fake CPU devices" in out
    assert "mesh data=1 x fsdp=32 x tensor=1 (32 cpu devices)" in out
    assert "2 layers" in out and "total = args + outputs - alias + temp" in out
    assert "fits in 95 GiB per device" in out


@pytest.mark.parametrize("name,devices,reference", [("grpo_qwen25_math_1p5b_v5e8", 8, False),
                                                    ("grpo_qwen25_math_1p5b_8k_v5e8", 8, False),
                                                    ("grpo_qwen3_1p7b_h100", 1, True)])
def test_grpo_pod_configs_pass_the_dry_run(name, devices, reference):
    """The realistic GRPO configs compile (prepare pass, mu x minibatch updates, the frozen
    reference when beta > 0) and fit their device memory."""
    import contextlib
    import io

    from reasonax.train import grpo

    c = load_config(name)
    before = c.to_dict()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dry_run.main(c, grpo.build)  # 8 fake devices already (conftest): no re-exec
    text = out.getvalue()
    assert f"({devices} cpu devices)" in text and "fits in" in text, text
    assert c.to_dict() == before  # the plan works on its own copy
    p = grpo.build(c).config
    assert p.batch_size == c.grpo.prompts_per_step * c.grpo.group_size
    assert p.seq_len == c.grpo.max_prompt_len + c.grpo.max_new_tokens
    assert ("reference" in text) == reference
    assert "rollout: grpo.rollout_mesh=" in text and "peak = max(train step, rollout)" in text


def test_grpo_dry_run_reports_the_rollout_engine_next_to_the_train_step():
    """The engine's slots follow grpo.kv_budget_gb per device; their KV cache is exact; the peak is
    the larger of the train step and the rollout (train state + slots + decode temporaries)."""
    from reasonax.model.cache import kv_bytes_per_row
    from reasonax.sample import engine, sampler
    from reasonax.train import grpo
    from reasonax.train.plan import Plan

    c = load_config("grpo_qwen25_math_1p5b_v5e8")
    g = c.grpo
    g.prompts_per_step, g.group_size, g.max_prompt_len, g.max_new_tokens = 8, 8, 64, 64
    g.minibatches, c.accum_steps = 1, 1
    c.model.preset = ""
    c.model.path = ""
    cfg = grpo_tiny_model(c)
    c.batch_size, c.seq_len = 64, 128
    loss = functools.partial(grpo.grpo_loss, cfg=cfg, hp=grpo.LossParams.of(g), chunk=None)
    budget = 4 * (kv_bytes_per_row(cfg, 128, "bfloat16") + engine.step_bytes_per_slot(cfg))
    g.kv_budget_gb = budget / 2**30
    plan = Plan(config=c, model=cfg, loss=loss, init=None, source=None, batch_spec=grpo.batch_spec, rollout=g)
    report = dry_run.dry_run(plan, 100.0)
    today, ro = report["rollout"]["today"], report["rollout"]["rollout"]
    assert sampler.bucket(64) + 64 == today["cache_columns"] == ro["cache_columns"] == 128
    assert today["num_slots"] == ro["num_slots"] == 32  # 4 per device x 8 devices (the slots shard over 8 either way)
    assert today["kv_bytes"] == ro["kv_bytes"] == 4 * kv_bytes_per_row(cfg, 128, "bfloat16")
    assert ro["layout"] == "data=8,tensor=1"  # auto on CPU (no chip figures): the fewest tensor shards
    d = report["per_device_bytes"]
    resident = d["params"] + d["opt_state"]
    assert today["memory_bytes"] == resident + today["kv_bytes"] + today["decode_temp_bytes"]
    # the replicated copy: every leaf FSDP-sharded in training moves (the norms are replicated in both)
    assert 0.9 * ro["weights_held_bytes"] < ro["copy_bytes"] == ro["sync_bytes"] < ro["weights_held_bytes"]
    assert ro["memory_bytes"] == resident + ro["copy_bytes"] + ro["kv_bytes"] + ro["decode_temp_bytes"]
    assert today["sync_bytes"] == today["copy_bytes"] == 0
    assert report["peak"] == max(report["compiled"]["total"], ro["memory_bytes"])
    text = dry_run.format_report(report)
    assert "decode slots x cache columns" in text and "data=8,tensor=1" in text


def grpo_tiny_model(c):
    from reasonax.model import get_preset

    return get_preset("qwen2.5-0.5b").replace(num_layers=2, vocab_size=512, hidden_size=64, intermediate_size=128,
                                              num_heads=4, num_kv_heads=2, head_dim=16)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_slm_has_a_dry_run_that_reads_no_data(tmp_path, mode):
    """slm.build's plan compiles on the mesh without scoring or reading data: offline the batch
    carries the stored reference losses, online the reference params are the step's aux (counted
    like the params: the reference here has the model's shapes)."""
    from reasonax.model import save_hf
    from reasonax.model.config import TINY_MODEL, get_preset
    from reasonax.model.params import init_params
    from reasonax.train import slm

    cfg = get_preset("qwen2.5-0.5b").replace(**TINY_MODEL)
    save_hf(init_params(cfg, jax.random.key(0)), cfg, tmp_path / "ref")
    c = load_config("slm_tiny_cpu")
    c.slm.reference.path, c.slm.mode = str(tmp_path / "ref"), mode
    c.mesh, c.batch_size, c.accum_steps = dict(data=2, fsdp=4, tensor=1), 16, 2
    c.data.files = [str(tmp_path / "missing.jsonl")]  # never opened
    before = c.to_dict()
    plan = slm.build(c)
    report = dry_run.dry_run(plan)
    assert c.to_dict() == before
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and report["compiled"]["total"] > 0
    d = report["per_device_bytes"]
    assert ("reference" in d) == (mode == "online")
    if mode == "online":
        assert d["reference"] == d["params"]
    lm = 16 * c.seq_len * 4 * 5 // 8  # 4 int32 fields + float32 weights, rows over 8 devices
    assert d["batch"] == lm + (16 * c.seq_len * 4 // 8 if mode == "offline" else 0)  # + float32 ref_loss
    assert not (tmp_path / "missing.jsonl").exists()
