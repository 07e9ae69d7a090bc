"""HF checkpoint import/export: transformers loads what we save, round trips, config forms, layouts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from reasonax import model
from reasonax.model import hf
from tests import hf_reference as R


def _tokens(shape, vocab=R.VOCAB, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int32)


@pytest.mark.parametrize("family", R.FAMILIES)
def test_save_hf_loads_in_transformers_with_same_logits(family, tmp_path):
    cfg = hf.config_from_hf(R.tiny_hf_config(family))
    params = R.random_jax_params(cfg, seed=3)
    hf.save_hf(params, cfg, tmp_path / "out")
    ref = R.load_reference(tmp_path / "out")
    tokens = _tokens((2, 3 * R.WINDOW))
    got = np.asarray(model.forward(params, tokens, cfg))
    want = R.hf_logits(ref, tokens)
    assert np.abs(got - want).max() <= 1e-4
    # and the round trip through our loader is exact, array for array
    cfg2, params2 = model.load_hf(tmp_path / "out")
    assert cfg2 == cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_sharded_safetensors_with_index(tmp_path):
    cfg = hf.config_from_hf(R.tiny_hf_config("qwen2"))
    params = R.random_jax_params(cfg, seed=4)
    hf.save_hf(params, cfg, tmp_path / "out", max_shard_bytes=40_000)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 2 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    _, params2 = model.load_hf(tmp_path / "out")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
    ref = R.load_reference(tmp_path / "out")  # transformers reads the sharded layout too
    tokens = _tokens((1, 9))
    assert np.abs(np.asarray(model.forward(params, tokens, cfg)) - R.hf_logits(ref, tokens)).max() <= 1e-4


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_half_precision_checkpoints(stored, tmp_path):
    ref = R.make_hf_model("gemma2", seed=5).to(getattr(torch, stored))
    ref.save_pretrained(str(tmp_path))
    cfg, params = model.load_hf(tmp_path, dtype=stored)
    assert params["embed"].dtype == jnp.dtype(stored)
    want = ref.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [N*H, D]
    got = np.asarray(params["layers"]["q"][1].astype(jnp.float32)).reshape(-1, cfg.hidden_size)
    np.testing.assert_array_equal(got, want)  # exact: no rounding on the way in
    _, params32 = model.load_hf(tmp_path, dtype="float32")  # upcast on load
    np.testing.assert_array_equal(np.asarray(params32["embed"]), ref.model.embed_tokens.weight.detach().float().numpy())
    hf.save_hf(params, cfg, tmp_path / "again")  # saved in the params' dtype
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"), dtype="auto")
    assert again.dtype == getattr(torch, stored)
    torch.testing.assert_close(again.model.norm.weight, ref.model.norm.weight, rtol=0, atol=0)


_SPARSE_TEXT = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 7,
                "vocab_size": 128, "sliding_window": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 32}


def _legacy_rope():
    return {**_SPARSE_TEXT, "rope_theta": 50000.0, "rope_local_base_freq": 500.0,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0}}


def _new_rope():
    return {**_SPARSE_TEXT, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}}


def _write_config(path, raw):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))


def test_legacy_and_rope_parameters_forms_agree(tmp_path):
    _write_config(tmp_path / "legacy", _legacy_rope())
    _write_config(tmp_path / "new", _new_rope())
    a, b = hf.read_config(tmp_path / "legacy"), hf.read_config(tmp_path / "new")
    assert a == b
    assert a.rope == model.RopeConfig(theta=50000.0, type="linear", factor=4.0)
    assert a.rope_local == model.RopeConfig(theta=500.0)
    # sparse config: Gemma 3 defaults filled in, 5 local : 1 global
    assert a.query_pre_attn_scalar == 256 and a.layer_types[5] == model.FULL and a.layer_types.count(model.FULL) == 1
    _write_config(tmp_path / "qwen_legacy", {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4,
                                             "num_hidden_layers": 2, "rope_theta": 10000.0, "num_key_value_heads": 2,
                                             "intermediate_size": 64, "vocab_size": 50})
    _write_config(tmp_path / "qwen_new", {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4,
                                          "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 50,
                                          "num_key_value_heads": 2,
                                          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    q1, q2 = hf.read_config(tmp_path / "qwen_legacy"), hf.read_config(tmp_path / "qwen_new")
    assert q1 == q2 and q1.rope.theta == 10000.0 and q1.num_kv_heads == 2 and q1.qkv_bias


@pytest.mark.parametrize("layout", ["language_model.model.", "model.language_model."])
def test_gemma3_multimodal_checkpoint(layout, tmp_path):
    """Gemma 3 4B-style dir: sparse text_config, prefixed text tensors, vision tensors skipped."""
    text_cfg = transformers.Gemma3TextConfig(**{k: v for k, v in _legacy_rope().items() if k != "model_type"})
    ref = R.randomise_(transformers.AutoModelForCausalLM.from_config(text_cfg, attn_implementation="eager"), 6)
    raw = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
           "text_config": _legacy_rope(),
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28,
                             "patch_size": 14}}
    _write_config(tmp_path, raw)
    head = "language_model.lm_head." if layout.startswith("language_model") else "lm_head."
    tensors = {(layout + k[len("model."):] if k.startswith("model.") else head + k[len("lm_head."):]): v.clone()
               for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(16, 3, 14, 14)
    tensors["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(16, 64)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg, params = model.load_hf(tmp_path)
    assert cfg.model_type == "gemma3_text" and cfg.num_layers == 7
    tokens = _tokens((1, 10), vocab=128)
    got = np.asarray(model.forward(params, tokens, cfg))
    assert np.abs(got - R.hf_logits(ref.eval(), tokens)).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(model.PRESETS))
def test_presets_export_to_hf_config_and_back(name):
    cfg = model.get_preset(name)
    hf_cfg = hf.config_to_hf(cfg)
    assert hf.config_from_hf(hf_cfg) == cfg
    with torch.device("meta"):  # transformers builds the same parameter count from the exported config
        ref = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    assert sum(p.numel() for p in ref.parameters()) == model.num_params(cfg)


def test_export_refuses_what_the_family_cannot_express():
    cfg = model.get_preset("qwen2.5-0.5b").replace(qk_norm=True)
    with pytest.raises(hf.CheckpointError, match="qk_norm"):
        hf.config_to_hf(cfg)
