"""The rollout engine (continuous batching over decode slots), token selection, stop strings and
compute-matched budgets."""

from reasonax.sample import budget, engine
from reasonax.sample.engine import EngineStats, generate
from reasonax.sample.sampler import GenerateResult, SamplingParams
from reasonax.sample.stops import StopStrings

__all__ = ["EngineStats", "GenerateResult", "SamplingParams", "StopStrings", "budget", "engine", "generate"]
