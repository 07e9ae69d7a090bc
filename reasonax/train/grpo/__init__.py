"""GRPO (DeepSeekMath, Shao et al. 2024) and its common variants, in three layers:

    objective.py  the pure math: advantages, clipped loss, k3 KL, aggregation (no I/O)
    rollout.py    prompts -> engine samples -> rewards -> the training batch (the plan's source)
    recipe.py     config, build(config) -> Plan, run, the CLI (python -m reasonax.train.grpo)
"""

from reasonax.train.grpo.objective import (AGGREGATIONS, SCALES, LossParams, aggregate, aggregate_terms, group_advantages,
                                           grpo_loss, importance_weights, k3_kl, make_prepare, overlong_penalty,
                                           policy_loss)
from reasonax.train.grpo.recipe import (GRPOConfig, GRPOSettings, accuracy_evaluator, batch_spec, build, check_config,
                                        default_config, greedy_correct, run, stop_ids, stop_strings, write_synthetic)

__all__ = ["AGGREGATIONS", "GRPOConfig", "GRPOSettings", "SCALES", "LossParams", "accuracy_evaluator", "aggregate", "aggregate_terms", "batch_spec", "build",
           "check_config", "default_config", "greedy_correct", "group_advantages", "grpo_loss",
           "importance_weights", "k3_kl", "make_prepare", "overlong_penalty", "policy_loss", "run", "stop_ids",
           "stop_strings", "write_synthetic"]
