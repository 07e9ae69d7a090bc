"""What the recipes share: config groups, the model and tokenizer of a run, its data files, the
held-out loss, the HF export, and the CLI main that trains or dry-runs a plan.

Recipes (sft, slm, grpo) import this; it imports no recipe.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import jax
from absl import flags
from ml_collections import config_flags

from reasonax import cli, jsonl
from reasonax.model import config as config_lib
from reasonax.model import convert, hf, params as params_lib
from reasonax.model.config import ModelConfig
from reasonax.model import tokenizer as tokenizer_lib
from reasonax.tasks import arithmetic
from reasonax.tasks.byte_tokenizer import byte_tokenizer
from reasonax.train import data as data_lib
from reasonax.train import adapters, dry_run, loop
from reasonax.train.loss import sft_loss


@dataclasses.dataclass(frozen=True)
class ModelFields:
    """Where the learner comes from (config.model): exactly one of path and preset."""

    path: str = ""            # HF directory or reasonax Orbax checkpoint to start from
    preset: str = ""          # or: a preset name (reasonax.model.PRESETS), randomly initialised
    overrides: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields replaced (e.g. num_layers=2)
    init_std: float = 0.02    # std of the random init (preset only)

    def problems(self) -> list[str]:
        return [] if bool(self.path) != bool(self.preset) else ["set exactly one of path and preset"]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """A built-in task written as the training data (config.synthetic)."""

    task: str = ""            # 'arithmetic': write reasonax.tasks.arithmetic records as the training JSONL
    num_examples: int = 2000
    steps: int = 2            # operations per arithmetic problem
    max_value: int = 99       # largest starting value / added or subtracted operand (9: single digits)

    def problems(self) -> list[str]:
        return [] if self.task in SYNTHETIC_TASKS else [f"task={self.task!r}; expected one of {SYNTHETIC_TASKS}"]


@dataclasses.dataclass(frozen=True)
class LMSyntheticConfig(SyntheticConfig):
    noise: float = 0.0        # share of completion characters that are random junk spans (SLM experiments)


@dataclasses.dataclass(frozen=True)
class EvalDataConfig:
    """Held-out data (config.eval_data), read with data's template and fields; the loss is logged
    as eval/loss (mean CE over completion tokens) every eval_every steps and at the end."""

    files: tuple[str, ...] = ()  # held-out JSONL/Parquet
    max_batches: int = 0      # evaluate on at most this many batches (0: all, read once and kept in memory)
    batch_size: int = 0       # global rows per eval batch (0: batch_size)


SYNTHETIC_TASKS = ("", "arithmetic")


@dataclasses.dataclass(frozen=True)
class LMConfig(loop.TrainConfig):
    """The loop's fields plus model, tokenizer, data, synthetic and eval_data: a recipe trained on a
    token-level dataset (SFT, SLM). data.seq_len is derived: the run's seq_len."""

    model: ModelFields = ModelFields()
    tokenizer: str = ""       # tokenizer directory (default: the model's); 'bytes': the built-in byte tokenizer
    data: data_lib.DataConfig = data_lib.DataConfig()
    synthetic: LMSyntheticConfig = LMSyntheticConfig()
    eval_data: EvalDataConfig = EvalDataConfig()

    def __post_init__(self):
        if self.data.seq_len != self.seq_len:
            object.__setattr__(self, "data", dataclasses.replace(self.data, seq_len=self.seq_len))


def model_config(c) -> ModelConfig:
    """The ModelConfig of the run: from model.path or model.preset, overrides and remat applied."""
    cfg = convert.checkpoint_config(c.model.path) if c.model.path else config_lib.get_preset(c.model.preset)
    overrides = dict(c.model.overrides)
    shape_fields = {"vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                    "head_dim", "tie_embeddings", "qkv_bias", "o_bias", "qk_norm", "sandwich_norm"}
    for key in ("layer_types", "eos_token_ids"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if overrides and c.model.path:  # values equal to the checkpoint's are fine (a preset config reused)
        changed = sorted(k for k in shape_fields & set(overrides) if overrides[k] != getattr(cfg, k))
        if changed:
            raise ValueError(f"model.overrides {changed} change parameter shapes of the checkpoint at "
                             f"{c.model.path} ({', '.join(f'{k}: {getattr(cfg, k)} -> {overrides[k]}' for k in changed)})")
    return cfg.replace(**overrides, remat=c.remat, lora=adapters.settings(c.lora))


def init_params_fn(c, cfg: ModelConfig):
    """mesh -> params: loaded from model.path, or random from model.preset (seeded)."""
    if c.model.path:
        return lambda mesh: convert.load_model(c.model.path, c.param_dtype, mesh)[1]
    return lambda mesh: params_lib.init_params(cfg, jax.random.key(c.seed), c.param_dtype, mesh,
                                               std=c.model.init_std)


def abstract_params_fn(cfg: ModelConfig, dtype) -> Callable:
    """mesh -> the ShapeDtypeStructs (with shardings) of params of cfg: a reference's, for the dry run."""
    return lambda mesh: params_lib.abstract_params(cfg, dtype, mesh)


def tokenizer_dir(c) -> Path | None:
    """Directory of the tokenizer files ('bytes' writes the byte tokenizer under workdir)."""
    if c.tokenizer == "bytes":
        out = Path(c.workdir) / "tokenizer"
        if jax.process_index() == 0 and not (out / "tokenizer.json").is_file():
            byte_tokenizer(out)
        return out
    if c.tokenizer:
        return Path(c.tokenizer)
    return convert.tokenizer_path(c.model.path) if c.model.path else None


def load_tokenizer(c):
    """The run's tokenizer: config.tokenizer ('bytes': built in memory; its files are written only
    for the HF export), a directory, or the model's own."""
    return tokenizer_lib.from_spec(c.tokenizer, c.model.path)


def data_config(c: LMConfig) -> data_lib.DataConfig:
    """c.data, with the synthetic task's JSONL as its files when one is set."""
    d = dataclasses.replace(c.data, files=(str(write_synthetic(c)),)) if c.synthetic.task else c.data
    if not d.files:
        raise ValueError("config.data.files is empty (or set config.synthetic.task)")
    return d


def write_synthetic(c) -> Path:
    """Write the synthetic task's records to <workdir>/data/<task>.jsonl (once; same seed, same file)."""
    noise = c.synthetic.noise
    path = Path(c.workdir) / "data" / (f"arithmetic-noise{noise}.jsonl" if noise else "arithmetic.jsonl")
    if jax.process_index() == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        recs = arithmetic.records(c.synthetic.num_examples, c.seed, c.synthetic.steps,
                                  c.synthetic.max_value)
        jsonl.rewrite(path, arithmetic.add_noise(recs, noise, c.seed) if noise else recs)
    loop.barrier("reasonax.sft.write_synthetic")  # the others read it next
    return path


def lm_source(c, data_cfg: Callable, tokenizer: Callable, **dataset_kw) -> Callable:
    """mesh -> loop.DataSource over data_lib.sft_dataset(data_cfg(), tokenizer()), with its DataStats.
    dataset_kw values may be functions of the mesh (called then), e.g. SLM's ref_scores."""

    def source(mesh):
        stats = data_lib.DataStats()  # truncated / dropped / malformed counts, logged as data/*
        kw = {k: v(mesh) if callable(v) else v for k, v in dataset_kw.items()}
        dataset = data_lib.sft_dataset(data_cfg(), tokenizer(), global_batch=c.batch_size, stats=stats, **kw)
        return loop.DataSource(iter(dataset), mesh, stats)

    return source


def heldout_evaluator(c, cfg: ModelConfig, tokenizer: Callable) -> Callable | None:
    """mesh -> (params -> {'loss', 'tokens'}) on c.eval_data.files (None when there are none): the
    weighted next-token loss over all their examples (one pass, no shuffle, packed as data.pack says)."""
    if not c.eval_data.files:
        return None

    def build(mesh):
        d = dataclasses.replace(c.data, files=c.eval_data.files, shuffle=False, num_epochs=1)
        rows = c.eval_data.batch_size or c.batch_size
        batches = []
        for batch in data_lib.sft_dataset(d, tokenizer(), global_batch=rows):
            batches.append(data_lib.to_global(batch, mesh))
            if len(batches) == c.eval_data.max_batches:
                break
        eval_cfg = cfg.replace(remat="none")
        loss = jax.jit(lambda p, b: sft_loss(p, b, eval_cfg, c.loss_chunk or None)[:2])

        def evaluate(params) -> dict:
            total = count = 0.0
            with jax.set_mesh(mesh):
                for b in batches:
                    s, n = jax.device_get(loss(params, b))
                    total, count = total + float(s), count + float(n)
            return {"loss": total / max(count, 1.0), "tokens": count}

        return evaluate

    return build


def exporter(c, cfg: ModelConfig) -> Callable:
    """params -> the HF directory written (+ tokenizer files) in export_hf (default <workdir>/hf), or
    None with export_hf='none'."""

    def export(params) -> Path | None:
        if c.export_hf == "none":
            return None
        out = Path(c.export_hf or Path(c.workdir) / "hf")
        return hf.save_hf(params, cfg.replace(remat="none"), out, tokenizer_dir=tokenizer_dir(c))

    return export


def with_lora(plan, c):
    """plan, trained with LoRA adapters when config.lora is on (reasonax.train.adapters)."""
    return adapters.lora_plan(plan, c) if plan.model.lora is not None else plan


def recipe_flags(configs: str, dry_run_help: str) -> None:
    """Define a recipe CLI's --config (an ml_collections file, e.g. of `configs`) and --dry_run;
    called once, by the recipe's cli()."""
    config_flags.DEFINE_config_file("config", None, f"ml_collections config file (see {configs}).")
    flags.DEFINE_bool("dry_run", False, dry_run_help)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv, build: Callable, run: Callable, example: str) -> None:
    """A recipe CLI main: --config, and --dry_run (compile build(config)'s step for config.mesh
    and print memory, reasonax.train.dry_run) or run(config)."""
    c = cli.flag_config(argv, example)
    if flags.FLAGS.dry_run:
        dry_run.main(c, build)
        return
    cli.require_workdir(c)
    run(c)
