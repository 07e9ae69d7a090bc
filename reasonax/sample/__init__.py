"""The sampler (prefill + while-loop decode) and compute-matched budgets."""

from reasonax.sample import budget
from reasonax.sample.sampler import GenerateResult, SamplingParams, generate

__all__ = ["GenerateResult", "SamplingParams", "budget", "generate"]
