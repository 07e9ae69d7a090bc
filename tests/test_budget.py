"""Compute-matched planning: docs/ALGORITHMS.md section 2 hand cases, and planned vs realised FLOPs."""

import pytest

from reasonax import model, sample
from reasonax.model import flops
from reasonax.sample import budget


def test_hand_cases():
    assert budget.compute_matched_samples(27e9, 9e9, 10) == 30
    assert budget.compute_matched_samples(27e9, 9e9, 1) == 3
    assert budget.price_matched_samples(10.5, 0.3, 1) == 35  # exact decimal ratio, not 34.99...
    # 2·P·n·S·W: 9B with 30 samples costs what 27B with 10 costs
    wc = 2 * 9e9 * 7500 * 30 * 300
    se = 2 * 27e9 * 7500 * 10 * 300
    assert wc == se == pytest.approx(1.215e18, rel=1e-12)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="positive"):
        budget.compute_matched_samples(0, 9e9, 10)


def test_generation_flops_is_2p_per_token_plus_attention():
    cfg = model.get_preset("qwen2.5-0.5b")
    f = budget.generation_flops(cfg, prompt_tokens=100, generated_tokens=300)
    assert f["dense"] == 2 * model.num_params(cfg) * 400  # tied: every param is in a matmul
    assert f["attention"] == 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers * sum(range(1, 401))
    untied = model.get_preset("qwen2.5-7b")
    g = budget.generation_flops(untied, 0, 1)
    assert g["dense"] == 2 * (model.num_params(untied) - untied.vocab_size * untied.hidden_size)


def test_plan_gives_the_weaker_model_more_samples_at_equal_compute():
    strong = model.get_preset("gemma2-27b")
    weak = model.get_preset("gemma2-9b")
    per_sample = budget.question_flops(strong, 200, 10, 300)["total"] * 7500
    p = budget.plan(per_sample, {"SE": strong, "WC": weak}, num_questions=7500, prompt_tokens=200,
                    tokens_per_sample=300)
    assert p["SE"].samples == 10
    ratio = flops.matmul_params(strong) / flops.matmul_params(weak)
    assert p["WC"].samples == pytest.approx(ratio * 10, abs=1.5)  # ~29: attention and prompt shift it a bit
    for b in p.values():
        assert b.flops["total"] <= per_sample


def test_report_planned_vs_realised():
    cfg = model.get_preset("qwen3-0.6b")
    planned = budget.plan(1e15, {"m": cfg}, num_questions=2, prompt_tokens=10, tokens_per_sample=5)["m"]
    res = sample.GenerateResult(tokens=[[1] * 5] * (2 * planned.samples), logprobs=[], model_logprobs=[],
                                finish_reasons=[], prompt_index=[i for i in range(2) for _ in range(planned.samples)],
                                sample_index=[], prompt_lengths=[10, 10])
    row = budget.report(planned, res)
    assert row["realised_over_planned"] == pytest.approx(1.0)  # realised exactly as planned
    short = sample.GenerateResult(tokens=[[1] * 2] * len(res.tokens), logprobs=[], model_logprobs=[],
                                  finish_reasons=[], prompt_index=res.prompt_index, sample_index=[],
                                  prompt_lengths=[10, 10])
    assert budget.report(planned, short)["realised_over_planned"] < 0.5
    assert "| m |" in budget.markdown_report([row])
