"""The process reward model recipe: objective.py (pure), data.py (the stepwise format), recipe.py
(config, plan, CLI). `python -m reasonax.train.prm` and `reasonax-prm` run it."""

from reasonax.train.prm.objective import auc, bce_with_logits, prm_loss, prm_objective, step_accuracy
from reasonax.train.prm.recipe import PRMConfig, build, cli, default_config, run

__all__ = ["PRMConfig", "auc", "bce_with_logits", "build", "cli", "default_config", "prm_loss", "prm_objective",
           "run", "step_accuracy"]
