"""Selective Language Modeling (Rho-1, Lin et al. 2024), in three layers:

    objective.py   the pure math: token selection by excess loss, the selective loss (no I/O)
    ref_scores.py  the offline reference scores beside the data (sharded, resumable)
    recipe.py      config, build(config) -> Plan, run, the CLI (python -m reasonax.train.slm)
"""

from reasonax.train.slm.objective import (SCOPES, global_selection, keep_count, reference_loss, select_tokens,
                                          selected_loss, slm_loss)
from reasonax.train.slm.recipe import MODES, RANK_OVER, SLMConfig, build, check_config, default_config, run

__all__ = ["MODES", "RANK_OVER", "SCOPES", "SLMConfig", "build", "check_config", "default_config", "global_selection",
           "keep_count", "reference_loss", "run", "select_tokens", "selected_loss", "slm_loss"]
