"""Bad checkpoints fail with an error that names the problem (file, tensor, expected vs found)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from reasonax import model
from reasonax.model import hf
from tests import hf_reference as R


@pytest.fixture
def good_dir(tmp_path):
    R.save_hf_model("qwen2", tmp_path / "m")
    return tmp_path / "m"


def _edit_tensors(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor(good_dir):
    _edit_tensors(good_dir, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(hf.CheckpointError, match=r"missing tensor.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        model.load_hf(good_dir)


def test_wrong_shape(good_dir):
    def edit(t):
        t["model.layers.2.mlp.up_proj.weight"] = torch.zeros(81, 48)
    _edit_tensors(good_dir, edit)
    with pytest.raises(hf.CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight has shape \(81, 48\), "
                                                 r"expected \(80, 48\)"):
        model.load_hf(good_dir)


def test_unexpected_tensor(good_dir):
    def edit(t):
        t["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    _edit_tensors(good_dir, edit)
    with pytest.raises(hf.CheckpointError, match=r"unexpected tensor.*model\.layers\.0\.mlp\.extra_proj\.weight"):
        model.load_hf(good_dir)


def test_unknown_model_type(good_dir):
    raw = json.loads((good_dir / "config.json").read_text())
    raw["model_type"] = "mamba2"
    (good_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(hf.CheckpointError, match=r"config\.json: unknown model_type 'mamba2'"):
        model.load_hf(good_dir)


def test_truncated_file(good_dir):
    f = good_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors.*truncated"):
        model.load_hf(good_dir)


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(hf.CheckpointError, match=r"config\.json: not found"):
        model.load_hf(tmp_path)
    R.tiny_hf_config("qwen3").save_pretrained(str(tmp_path))
    with pytest.raises(hf.CheckpointError, match=r"no \*\.safetensors files"):
        model.load_hf(tmp_path)


def test_unsupported_rope_type(good_dir):
    raw = json.loads((good_dir / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    (good_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(hf.CheckpointError, match="rope_type 'yarn' is not supported"):
        model.load_hf(good_dir)


def test_bad_model_config_is_named():
    with pytest.raises(ValueError, match="num_heads 6 is not a multiple of num_kv_heads 4"):
        model.get_preset("qwen3-0.6b").replace(num_heads=6, num_kv_heads=4)
    with pytest.raises(KeyError, match="unknown preset 'qwen9'"):
        model.get_preset("qwen9")
