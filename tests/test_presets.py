"""Each preset's parameter count equals the published count of the real checkpoint.

Published totals are the safetensors totals shown by Hugging Face (or the Keras preset tables
where HF shows none). Two conventions are accounted for explicitly:
- Qwen3-0.6B and Qwen3-1.7B are tied but their safetensors also store lm_head, so HF's total
  counts the embedding twice;
- Gemma 3 4B/12B/27B are multimodal: HF's total includes the SigLIP vision tower
  (416,866,032 params, same in all three) and the projector (1152 + 1152 * hidden).
"""

import pytest

from reasonax import model

SIGLIP_VISION_TOWER = 416_866_032

PUBLISHED = {
    # name: (published total, stored lm_head copy of a tied embedding, multimodal)
    "qwen2.5-0.5b": (494_032_768, False, False),
    "qwen2.5-1.5b": (1_543_714_304, False, False),
    "qwen2.5-3b": (3_085_938_688, False, False),
    "qwen2.5-7b": (7_615_616_512, False, False),
    "qwen2.5-math-1.5b": (1_543_714_304, False, False),
    "qwen2.5-math-7b": (7_615_616_512, False, False),  # card gives none; same shapes as Qwen2.5-7B
    "qwen3-0.6b": (751_632_384, True, False),
    "qwen3-1.7b": (2_031_739_904, True, False),
    "qwen3-4b": (4_022_468_096, False, False),
    "qwen3-8b": (8_190_735_360, False, False),
    "gemma-2b": (2_506_172_416, False, False),
    "gemma-7b": (8_537_680_896, False, False),
    "gemma2-2b": (2_614_341_888, False, False),
    "gemma2-9b": (9_241_705_984, False, False),
    "gemma2-27b": (27_227_128_320, False, False),
    "gemma3-270m": (268_098_176, False, False),
    "gemma3-1b": (999_885_952, False, False),
    "gemma3-4b": (4_300_079_472, False, True),
    "gemma3-12b": (12_187_325_040, False, True),
    "gemma3-27b": (27_432_406_640, False, True),
}


def test_every_preset_has_a_published_count():
    assert set(PUBLISHED) == set(model.PRESETS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_count(name):
    cfg = model.get_preset(name)
    published, stored_head_copy, multimodal = PUBLISHED[name]
    expected_text = published
    if stored_head_copy:
        expected_text -= cfg.vocab_size * cfg.hidden_size
    if multimodal:
        expected_text -= SIGLIP_VISION_TOWER + 1152 + 1152 * cfg.hidden_size
    assert model.num_params(cfg) == expected_text


def test_preset_shape_facts():
    """Spot facts the issue names: Qwen2.5-Math RoPE, Gemma 3 layer pattern and local RoPE."""
    math15 = model.get_preset("qwen2.5-math-1.5b")
    assert math15.rope.theta == 10_000 and math15.max_position_embeddings == 4096
    g = model.get_preset("gemma3-4b")
    assert g.layer_types[:6] == (model.SLIDING,) * 5 + (model.FULL,)
    assert g.rope == model.RopeConfig(theta=1e6, type="linear", factor=8.0)
    assert g.rope_local == model.RopeConfig(theta=1e4)
    assert model.get_preset("gemma2-27b").query_pre_attn_scalar == 4608 / 32
