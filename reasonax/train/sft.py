"""Supervised fine-tuning: the shared loop with the weighted next-token loss on completion tokens.

    python -m reasonax.train.sft --config=configs/sft_tiny_cpu.py --config.workdir=/tmp/sft
    python -m reasonax.train.sft --config=configs/sft_qwen25_math_1p5b_v5e8.py --dry_run

Every config field (and its default) is in default_config(); override any with
--config.<path>=value (e.g. --config.optim.lr=1e-5). Re-running with the same workdir resumes
from its latest checkpoint. --dry_run compiles the step for the configured mesh on fake CPU
devices and prints per-device memory instead of training (reasonax.train.dry_run).
"""

from __future__ import annotations

import functools

import ml_collections
from absl import app

from reasonax import typed
from reasonax.train import common, loop
from reasonax.train.loss import sft_loss
from reasonax.train.plan import Plan, lm_batch_spec

MODULE = "reasonax.train.sft"


SFTConfig = common.LMConfig  # the loop's fields plus model, tokenizer, data, synthetic and eval_data


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of SFTConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(SFTConfig())


def build(config: ml_collections.ConfigDict | SFTConfig) -> Plan:
    """The SFT plan: the weighted next-token loss over the data pipeline's batches. The config is
    converted once into a frozen SFTConfig (checked; the caller's config is not touched)."""
    c = typed.from_config(SFTConfig, config)
    cfg = common.model_config(c)
    tokenizer = functools.cache(lambda: common.load_tokenizer(c))
    data_cfg = functools.cache(lambda: common.data_config(c))  # writes the synthetic task's data once
    return common.with_lora(Plan(
        config=c, model=cfg, loss=functools.partial(sft_loss, cfg=cfg, chunk=c.loss_chunk or None),
        init=common.init_params_fn(c, cfg), source=common.lm_source(c, data_cfg, tokenizer), batch_spec=lm_batch_spec,
        evaluate=common.heldout_evaluator(c, cfg, tokenizer), finish=common.exporter(c, cfg), module=MODULE), c)


def run(config: ml_collections.ConfigDict | SFTConfig):
    """Train (or resume) per config; export HF safetensors at the end. Returns the final state."""
    c = typed.from_config(SFTConfig, config)
    loop.init_distributed(c.distributed)  # before anything touches the devices
    return loop.run(build(c))


def main(argv):
    common.main(argv, build, run, "configs/sft_tiny_cpu.py")


def cli() -> None:
    """The `reasonax-sft` command (also `python -m reasonax.train.sft`)."""
    common.recipe_flags("configs/sft_*.py", "compile the train step for config.mesh on fake CPU devices and "
                        "print per-device memory of params, optimizer state and the compiled step; no training")
    app.run(main)


if __name__ == "__main__":
    cli()
