"""Selective Language Modeling (Rho-1, Lin et al. 2024, arXiv 2404.07965): the recipe (config,
plan) and its CLI, on the shared loop. The objective is reasonax.train.slm.objective, the offline
reference scores reasonax.train.slm.ref_scores.

Scope (slm.scope): 'batch' ranks all valid tokens of the batch together (the paper);
'sequence' keeps the top k% of each row. With gradient accumulation, slm.rank_over says which
batch 'batch' ranks over: 'global' (default) the whole optimizer batch of batch_size rows,
at the cost of one extra forward over it before the gradient passes (so selection does not
depend on accum_steps); 'micro' each micro-batch of batch_size / accum_steps rows on its own.
Both are the same with accum_steps = 1. Either way the loss is the sum over kept tokens of the
whole batch divided by their count.

Reference losses (slm.mode): 'offline' scores the data once with the reference model
(reasonax.train.slm.ref_scores: sharded, resumable, float16 beside the data) and feeds them in the
batches; 'online' runs the reference forward inside the train step (no scoring pass, one extra
forward per step, the reference's params held on the mesh).

    python -m reasonax.train.sft --config=configs/slm_ref_tiny_cpu.py --config.workdir=/tmp/ref
    python -m reasonax.train.slm --config=configs/slm_tiny_cpu.py --config.workdir=/tmp/slm \\
        --config.slm.reference.path=/tmp/ref/hf
    python -m reasonax.train.slm --config=configs/slm_tiny_cpu.py --config.slm.reference.path=/tmp/ref/hf --dry_run
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax.numpy as jnp
import ml_collections
from absl import app, flags

from reasonax import typed
from reasonax.model import convert
from reasonax.model import tokenizer as tokenizer_lib
from reasonax.train import common, loop
from reasonax.train.plan import Plan, lm_batch_spec, with_fields
from reasonax.train.slm import ref_scores
from reasonax.train.slm.objective import SCOPES, global_selection, slm_loss

RANK_OVER = ("global", "micro")
MODES = ("offline", "online")
MODULE = "reasonax.train.slm"


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    path: str = ""            # reference model: HF directory or reasonax Orbax checkpoint (required)
    tokenizer: str = ""       # its tokenizer directory ('' : the reference's own; 'bytes': built-in);
                              # it must equal the model's tokenizer
    param_dtype: str = ""     # reference params dtype ('' : param_dtype)

    def problems(self) -> list[str]:
        return [] if self.path else ["path is required (train one with configs/slm_ref_tiny_cpu.py, or point "
                                     "it at an HF directory)"]


@dataclasses.dataclass(frozen=True)
class SLMSettings:
    """config.slm."""

    ratio: float = 0.6        # k: fraction of valid tokens kept (paper: 0.6 at 1B, 0.7 at 7B); 1.0 = CLM
    scope: str = "batch"      # batch: rank all tokens of the batch together | sequence: top k% per row
    rank_over: str = "global"  # with accum_steps > 1, 'batch' ranks over: global (whole optimizer batch,
                               # +1 forward per step) | micro (each micro-batch alone)
    mode: str = "offline"     # offline: score the data once and store it | online: reference forward in the step
    reference: ReferenceConfig = ReferenceConfig()
    scores_dir: str = ""      # offline reference scores ('' : <workdir>/ref_scores); reused when the
                              # data, tokenizer and settings match, resumed when partial
    scores_dtype: str = "float16"  # float16 | float32
    score_batch_size: int = 0  # global rows per scoring forward (0: batch_size)
    part_records: int = 4096  # records per scoring part (the unit of resume)

    def problems(self) -> list[str]:
        out = [] if 0.0 < self.ratio <= 1.0 else [f"ratio={self.ratio}: expected 0 < ratio <= 1"]
        for name, allowed in (("scope", SCOPES), ("rank_over", RANK_OVER), ("mode", MODES),
                              ("scores_dtype", ref_scores.DTYPES)):
            if getattr(self, name) not in allowed:
                out.append(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.score_batch_size < 0 or self.part_records < 1:
            out.append(f"score_batch_size={self.score_batch_size} (>= 0), part_records={self.part_records} (>= 1)")
        return out


@dataclasses.dataclass(frozen=True)
class SLMConfig(common.LMConfig):
    """SFT's fields (model, tokenizer, data, eval_data, synthetic, the loop's) plus slm.*."""

    slm: SLMSettings = SLMSettings()


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of SLMConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(SLMConfig())


def check_config(config) -> SLMConfig:
    """The frozen SLMConfig of config; ValueError naming every bad field."""
    return typed.from_config(SLMConfig, config)


def load_reference(c, mesh):
    """(ModelConfig, params on the mesh, tokenizer) of the reference model."""
    path = c.slm.reference.path
    ref_cfg, params = convert.load_model(path, c.slm.reference.param_dtype or c.param_dtype, mesh)
    tokenizer = tokenizer_lib.from_spec(c.slm.reference.tokenizer, path, "slm.reference.tokenizer")
    return ref_cfg.replace(remat="none"), params, tokenizer


def scores_dir(c) -> Path:
    return Path(c.slm.scores_dir or Path(c.workdir) / "ref_scores")


def score(c, data_cfg, mesh, ref_cfg, ref_params, tokenizer) -> ref_scores.RefScores:
    """The offline scoring pass for the run's data (reused / resumed when present)."""
    return ref_scores.score(ref_params, ref_cfg, tokenizer, data_cfg, scores_dir(c), mesh=mesh,
                            batch_size=c.slm.score_batch_size or c.batch_size, part_records=c.slm.part_records,
                            dtype=c.slm.scores_dtype, chunk=c.loss_chunk or None)


def reference_scores(c, mesh, tokenizer, data_cfg) -> ref_scores.RefScores:
    """Load the reference, check its tokenizer is the model's, and run (or reuse / resume) the
    offline scoring pass over the run's data."""
    ref_cfg, ref_params, ref_tokenizer = load_reference(c, mesh)
    ref_scores.check_same_tokenizer(ref_tokenizer, tokenizer)
    return score(c, data_cfg, mesh, ref_cfg, ref_params, ref_tokenizer)


def build(config: ml_collections.ConfigDict) -> Plan:
    """The SLM plan: the selective loss over the data pipeline's batches, with the reference's
    losses stored in them (offline: the scoring pass runs when the source is built) or computed
    in the step from the reference params as aux (online)."""
    c = check_config(config)
    s = c.slm
    cfg = common.model_config(c)
    chunk = c.loss_chunk or None
    online = s.mode == "online"
    ref_cfg = convert.checkpoint_config(s.reference.path).replace(remat="none")
    tokenizer = functools.cache(lambda: common.load_tokenizer(c))
    data_cfg = functools.cache(lambda: common.data_config(c))  # writes the synthetic task's data once

    def aux(mesh):
        _, params, ref_tokenizer = load_reference(c, mesh)
        ref_scores.check_same_tokenizer(ref_tokenizer, tokenizer())
        return params

    scores = {} if online else {"ref_scores": lambda mesh: reference_scores(c, mesh, tokenizer(), data_cfg())}
    online_cfg = ref_cfg if online else None
    global_rank = s.scope == "batch" and s.rank_over == "global" and c.accum_steps > 1
    # online, with the reference being the model trained from (same path and dtype): with LoRA the
    # base with adapters off is the reference, one copy of the weights
    ref_is_init = online and s.reference.path == c.model.path and s.reference.param_dtype in ("", c.param_dtype)
    return common.with_lora(Plan(
        config=c, model=cfg,
        loss=functools.partial(slm_loss, cfg=cfg, ratio=s.ratio, scope=s.scope, chunk=chunk, ref_cfg=online_cfg),
        init=common.init_params_fn(c, cfg), source=common.lm_source(c, data_cfg, tokenizer, **scores),
        batch_spec=lm_batch_spec if online else with_fields(lm_batch_spec, ref_loss=lambda rows, seq: (rows, seq)),
        prepare=global_selection(cfg, s.ratio, chunk, online_cfg) if global_rank else None,
        aux=aux if online else None,
        aux_spec=common.abstract_params_fn(ref_cfg, jnp.dtype(s.reference.param_dtype or c.param_dtype))
        if online else None, reference_is_init=ref_is_init,
        evaluate=common.heldout_evaluator(c, cfg, tokenizer), finish=common.exporter(c, cfg), module=MODULE), c)


def run(config: ml_collections.ConfigDict | SLMConfig, score_only: bool = False):
    """Score (offline mode), then train with the SLM loss per config; export HF at the end.
    score_only: run (or finish) the scoring pass and return its RefScores, without training."""
    c = check_config(config)
    loop.init_distributed(c.distributed)  # before anything touches the devices
    plan = build(c)
    if score_only:
        if c.slm.mode != "offline":
            raise ValueError("--score_only needs slm.mode='offline' (online mode stores no scores)")
        return reference_scores(c, loop.config_mesh(c), common.load_tokenizer(c), common.data_config(c))
    return loop.run(plan)


def main(argv):
    common.main(argv, build, lambda c: run(c, score_only=flags.FLAGS.score_only), "configs/slm_tiny_cpu.py")


def cli() -> None:
    """The `reasonax-slm` command (also `python -m reasonax.train.slm`)."""
    common.recipe_flags("configs/slm_*.py", "compile the SLM train step (with the online reference, or the stored "
                        "reference losses in the batch) for config.mesh on fake CPU devices and print per-device "
                        "memory; no training, no scoring")
    flags.DEFINE_bool("score_only", False, "offline mode: run (or finish) the reference scoring pass into "
                      "slm.scores_dir and exit without training")
    app.run(main)
