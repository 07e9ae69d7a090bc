"""Convert once: HF dir -> Orbax -> HF dir, exact, and restore onto a mesh."""

import subprocess
import sys

import jax
import numpy as np

from reasonax import model
from reasonax.model import convert
from tests import hf_reference as R


def test_cli_round_trip_hf_orbax_hf(tmp_path):
    R.save_hf_model("gemma3", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # tokenizer files travel with the model
    env_py = sys.executable
    for args in (["--to=orbax", f"--hf_dir={tmp_path / 'hf'}", f"--orbax_dir={tmp_path / 'ckpt'}"],
                 ["--to=hf", f"--orbax_dir={tmp_path / 'ckpt'}", f"--hf_dir={tmp_path / 'back'}"]):
        out = subprocess.run([env_py, "-m", "reasonax.model.convert", *args], capture_output=True, text=True,
                             env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    cfg, a = model.load_hf(tmp_path / "hf")
    cfg_o, b = convert.load_orbax(tmp_path / "ckpt")
    cfg_b, c = model.load_hf(tmp_path / "back")
    assert cfg == cfg_o == cfg_b
    for other in (b, c):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, other)


def test_orbax_restores_onto_a_mesh_and_casts(tmp_path):
    R.save_hf_model("qwen3", tmp_path / "hf")
    cfg, params = model.load_hf(tmp_path / "hf")
    convert.save_orbax(params, cfg, tmp_path / "ckpt")
    mesh = model.make_mesh(data=2, fsdp=2, tensor=2)
    cfg2, restored = convert.load_model(tmp_path / "ckpt", dtype="bfloat16", mesh=mesh)
    assert cfg2 == cfg
    assert restored["layers"]["q"].sharding.spec == model.param_shardings(cfg, mesh)["layers"]["q"].spec
    assert restored["embed"].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(restored["embed"]), np.asarray(params["embed"].astype("bfloat16")))
