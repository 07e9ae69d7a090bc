"""GRPO (DeepSeekMath, Shao et al. 2024) and the objectives peers offer, in three layers:

    objective.py  the pure math: advantages (grpo, rloo), policy losses (ppo, gspo, cispo), IS
                  correction, KL estimators, aggregation (no I/O)
    rollout.py    prompts -> engine samples -> rewards -> the training batch (the plan's source)
    recipe.py     config, build(config) -> Plan, run, the CLI (python -m reasonax.train.grpo)
"""

from reasonax.train.grpo import objective
from reasonax.train.grpo.objective import (ADVANTAGES, AGGREGATIONS, CLIP_DEFAULTS, IS_LEVELS, IS_MODES, KL_ESTIMATORS,
                                           POLICY_LOSSES, SCALES, LossParams, aggregate, aggregate_terms, clip_bounds,
                                           group_advantages, grpo_loss, importance_weights, k3_kl, kl_penalty,
                                           make_prepare, objective_terms, overlong_penalty, policy_loss, policy_objective,
                                           rloo_advantages)
from reasonax.train.grpo.recipe import (GRPOConfig, GRPOSettings, accuracy_evaluator, batch_spec, build, check_config,
                                        default_config, greedy_correct, run, stop_ids, stop_strings, write_synthetic)

__all__ = ["ADVANTAGES", "AGGREGATIONS", "CLIP_DEFAULTS", "GRPOConfig", "GRPOSettings", "IS_LEVELS", "IS_MODES",
           "KL_ESTIMATORS", "POLICY_LOSSES", "SCALES", "LossParams", "accuracy_evaluator", "aggregate",
           "aggregate_terms", "batch_spec", "build", "check_config", "clip_bounds", "default_config",
           "greedy_correct", "group_advantages", "grpo_loss", "importance_weights", "k3_kl", "kl_penalty",
           "make_prepare", "objective", "objective_terms", "overlong_penalty", "policy_loss", "policy_objective",
           "rloo_advantages", "run",
           "stop_ids", "stop_strings", "write_synthetic"]
