"""Compute-matched sampling (Bansal et al., "Smaller, Weaker, Yet Better", arXiv 2408.16737).

One generated token of a dense model with P parameters costs about 2P FLOPs, so n questions with
S samples of W tokens cost 2·P·n·S·W. At equal compute a model with P_WC = P_SE / r parameters
gets S_WC = floor(r · S_SE) samples (compute-matched); with API prices replace r by the price
ratio (price-matched). The equal-W assumption is often wrong, so the planner predicts and the
report compares with what the sampler actually produced.

FLOPs here: `dense` = 2 · matmul params per token (prompt tokens once per question, since the
sampler prefills each distinct prompt once; generated tokens per sample), and `attention`
= 4 · heads · head_dim per attended (query, key) pair, shown separately.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from reasonax.model.config import ModelConfig
from reasonax.model.flops import forward_flops


def _exact(x) -> Fraction:
    """Exact value of a number as written (0.3 is 3/10, not the nearest binary float)."""
    return Fraction(x) if isinstance(x, (int, Fraction)) else Fraction(repr(float(x)))


def compute_matched_samples(p_strong: float, p_weak: float, samples_strong: int) -> int:
    """S_WC = floor((P_SE / P_WC) · S_SE). 27e9, 9e9, 10 -> 30."""
    if p_strong <= 0 or p_weak <= 0 or samples_strong < 0:
        raise ValueError(f"need positive sizes and samples >= 0, got {p_strong}, {p_weak}, {samples_strong}")
    return math.floor(_exact(p_strong) / _exact(p_weak) * samples_strong)


def price_matched_samples(price_strong: float, price_weak: float, samples_strong: int) -> int:
    """Price-matched: the price-per-token ratio replaces the parameter ratio. 10.5, 0.3, 1 -> 35."""
    return compute_matched_samples(price_strong, price_weak, samples_strong)


def generation_flops(cfg: ModelConfig, prompt_tokens: int, generated_tokens: int, prefill: bool = True,
                     cached: int = 0) -> dict:
    """FLOPs of one sample: {'dense', 'attention', 'total'}; prefill=False leaves the prompt out
    (it is shared by the question's samples and counted once elsewhere). `cached` prompt tokens
    came from a prefix cache: only the other prompt_tokens - cached are prefilled, attending to
    the cached ones."""
    if not 0 <= cached <= prompt_tokens:
        raise ValueError(f"cached tokens must be within the prompt: 0 <= {cached} <= {prompt_tokens}")
    out = forward_flops(cfg, 1, generated_tokens, context=prompt_tokens)
    if prefill:
        pre = forward_flops(cfg, 1, prompt_tokens - cached, context=cached)
        out = {k: v + pre[k] for k, v in out.items()}
    return out


def question_flops(cfg: ModelConfig, prompt_tokens: int, samples: int, tokens_per_sample: int) -> dict:
    """One question: the prompt prefilled once, then `samples` completions of `tokens_per_sample`."""
    pre = generation_flops(cfg, prompt_tokens, 0)
    gen = generation_flops(cfg, prompt_tokens, tokens_per_sample, prefill=False)
    return {k: pre[k] + samples * gen[k] for k in pre}


@dataclasses.dataclass(frozen=True)
class ModelBudget:
    name: str
    cfg: ModelConfig
    samples: int  # per question
    flops: dict  # planned {'dense', 'attention', 'total'} over all questions


def plan(budget_flops: float, models: dict[str, ModelConfig], num_questions: int, prompt_tokens: int,
         tokens_per_sample: int) -> dict[str, ModelBudget]:
    """Samples per question each model can afford within `budget_flops` (each model alone)."""
    out = {}
    for name, cfg in models.items():
        prefill = generation_flops(cfg, prompt_tokens, 0)["total"]
        per_sample = generation_flops(cfg, prompt_tokens, tokens_per_sample, prefill=False)["total"]
        samples = max(0, math.floor((budget_flops / num_questions - prefill) / per_sample))
        total = question_flops(cfg, prompt_tokens, samples, tokens_per_sample)
        out[name] = ModelBudget(name, cfg, samples, {k: v * num_questions for k, v in total.items()})
    return out


def realised_flops(cfg: ModelConfig, prompt_lengths: Sequence[int], prompt_index: Sequence[int],
                   lengths: Sequence[int]) -> dict:
    """FLOPs the sampler spent: each distinct prompt prefilled once, each row's generated tokens."""
    total = Counter({"dense": 0, "attention": 0, "total": 0})
    for p in prompt_lengths:
        total.update(generation_flops(cfg, p, 0))
    for i, g in zip(prompt_index, lengths):
        total.update(generation_flops(cfg, prompt_lengths[i], g, prefill=False))
    return dict(total)


def report(planned: ModelBudget, result) -> dict:
    """Planned vs realised for one model's run (`result`: sample.GenerateResult)."""
    real = realised_flops(planned.cfg, result.prompt_lengths, result.prompt_index, result.lengths)
    n_rows = max(1, len(result.lengths))
    return {"model": planned.name, "samples_per_question": planned.samples,
            "planned_flops": planned.flops["total"], "realised_flops": real["total"],
            "realised_dense": real["dense"], "realised_attention": real["attention"],
            "realised_over_planned": real["total"] / planned.flops["total"] if planned.flops["total"] else None,
            "mean_generated_tokens": sum(result.lengths) / n_rows,
            "mean_prompt_tokens": sum(result.prompt_lengths) / max(1, len(result.prompt_lengths))}


def markdown_report(rows: Sequence[dict]) -> str:
    lines = ["| model | samples/question | planned FLOPs | realised FLOPs | realised/planned | "
             "attention share | mean generated tokens |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["realised_over_planned"]
        lines.append(f"| {r['model']} | {r['samples_per_question']} | {r['planned_flops']:.3e} | "
                     f"{r['realised_flops']:.3e} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                     f"{r['realised_attention'] / max(1, r['realised_flops']):.1%} | "
                     f"{r['mean_generated_tokens']:.1f} |")
    return "\n".join(lines)
