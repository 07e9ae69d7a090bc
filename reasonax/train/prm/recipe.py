"""The process reward model (PRM) recipe: a decoder with a one-logit head trained with binary
cross-entropy at each step's separator (reasonax.train.prm.objective), on the shared train step,
loop, dry run, LoRA and checkpoints. Data: TRL's stepwise format (reasonax.train.prm.data).

    python -m reasonax.train.prm --config=configs/prm_tiny_cpu.py --config.workdir=/tmp/prm
    python -m reasonax.train.prm --config=configs/prm_tiny_cpu.py --config.workdir=/tmp/prm --dry_run

The plan trains model.prm.param_specs: the decoder without its LM head, plus params["prm_head"]
(drawn with prm.head_init_std unless model.path is a PRM save_prm wrote). With LoRA the head is
trained in full beside the adapters (Plan.always_trained) and exported as PEFT modules_to_save
(`score`, task_type TOKEN_CLS). The export is model.prm.save_prm: an HF directory transformers
loads as AutoModelForTokenClassification (num_labels = 1) where the family has that class.
Held-out data (eval_data.files, or the synthetic task's held-out file) is logged as eval/loss,
eval/step_accuracy and eval/auc.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app

from reasonax import jsonl, typed
from reasonax.model import prm
from reasonax.model.sharding import batch_sharding
from reasonax.tasks import arithmetic
from reasonax.train import common, loop
from reasonax.train.data import _process_layout, to_global
from reasonax.train.plan import Plan
from reasonax.train.prm import data as prm_data
from reasonax.train.prm.objective import auc, prm_loss, step_accuracy

MODULE = "reasonax.train.prm"
SYNTHETIC_TASKS = ("", "arithmetic-steps")


@dataclasses.dataclass(frozen=True)
class PRMSyntheticConfig:
    """A built-in stepwise task written as the data (config.synthetic): tasks.arithmetic.stepwise_records."""

    task: str = ""            # 'arithmetic-steps': write <workdir>/data/arithmetic-steps{,-eval}.jsonl and train on them
    num_examples: int = 2000  # training solutions
    num_eval: int = 200       # held-out solutions (used as eval_data when eval_data.files is empty; 0: none)
    steps: int = 3            # steps per solution
    max_value: int = 9        # largest starting value and operand
    error_rate: float = 0.5   # share of solutions with one wrong step (later steps labelled wrong too)

    def problems(self) -> list[str]:
        out = [] if self.task in SYNTHETIC_TASKS else [f"task={self.task!r}; expected one of {SYNTHETIC_TASKS}"]
        if not 0.0 <= self.error_rate <= 1.0:
            out.append(f"error_rate={self.error_rate}: expected 0 <= error_rate <= 1")
        return out


@dataclasses.dataclass(frozen=True)
class PRMConfig(loop.TrainConfig):
    """The loop's fields plus model, tokenizer, data (stepwise), synthetic, eval_data and head_init_std.
    data.seq_len is derived: the run's seq_len."""

    model: common.ModelFields = common.ModelFields()
    tokenizer: str = ""       # tokenizer directory (default: the model's); 'bytes': the built-in byte tokenizer
    data: prm_data.PRMDataConfig = prm_data.PRMDataConfig()
    synthetic: PRMSyntheticConfig = PRMSyntheticConfig()
    eval_data: common.EvalDataConfig = common.EvalDataConfig()  # held-out stepwise files (read with data's fields)
    head_init_std: float = 0.02  # std of the PRM head's random init (the bias starts at 0)

    def __post_init__(self):
        if self.data.seq_len != self.seq_len:
            object.__setattr__(self, "data", dataclasses.replace(self.data, seq_len=self.seq_len))


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of PRMConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(PRMConfig())


def write_synthetic(c: PRMConfig) -> tuple[Path, Path | None]:
    """Write the synthetic task's train and held-out files under <workdir>/data (once; same seed,
    same files); returns their paths (held-out None when synthetic.num_eval is 0)."""
    s = c.synthetic
    root = Path(c.workdir) / "data"
    train, held = root / f"{s.task}.jsonl", (root / f"{s.task}-eval.jsonl" if s.num_eval else None)
    if jax.process_index() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for path, n, seed in ((train, s.num_examples, c.seed), (held, s.num_eval, c.seed + 1_000_003)):
            if path is not None and not path.is_file():
                jsonl.rewrite(path, arithmetic.stepwise_records(n, seed, s.steps, s.max_value, s.error_rate))
    loop.barrier("reasonax.prm.write_synthetic")
    return train, held


def data_files(c: PRMConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training files, held-out files) of the run: data.files / eval_data.files, or the synthetic
    task's when synthetic.task is set (its held-out file when eval_data.files is empty)."""
    train, held = c.data.files, c.eval_data.files
    if c.synthetic.task:
        t, h = write_synthetic(c)
        train, held = (str(t),), held or ((str(h),) if h else ())
    if not train:
        raise ValueError("config.data.files is empty (or set config.synthetic.task)")
    return tuple(train), tuple(held)


def prm_batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """One global PRM batch [batch_size, seq_len]: inputs, segment_ids, positions (int32), labels
    and weights (float32), rows sharded over the batch axes."""
    shape, s = (int(config.batch_size), int(config.seq_len)), batch_sharding(mesh)
    out = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s) for k in ("inputs", "segment_ids", "positions")}
    return {**out, **{k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s) for k in ("labels", "weights")}}


def init_fn(c: PRMConfig, cfg) -> callable:
    """mesh -> PRM params: a PRM checkpoint as it is, or a decoder (model.path / preset) with its LM
    head dropped and a new head drawn (seed, head_init_std)."""
    if c.model.path and prm.is_prm_checkpoint(c.model.path):
        return lambda mesh: prm.load_prm(c.model.path, c.param_dtype, mesh)[1]
    base = common.init_params_fn(c, cfg)

    def init(mesh):
        key = jax.random.fold_in(jax.random.key(c.seed), 2)
        return prm.init_prm(base(mesh), cfg, key, std=c.head_init_std, mesh=mesh)

    return init


def source_fn(c: PRMConfig, files, tokenizer):
    """mesh -> loop.DataSource over data.batches of the encoded training files (stats: data/*)."""

    def source(mesh):
        rows_examples, stats = prm_data.encode_all(prm_data.load_step_records(files(), c.data), tokenizer(), c.data)
        index, count, rows = _process_layout(c.batch_size, None, None)
        ds = prm_data.batches(rows_examples, c.data, rows, process_index=index, process_count=count)
        return loop.DataSource(iter(ds), mesh, stats)

    return source


def _host(x: jax.Array) -> np.ndarray:
    """A global array's values on every process, float64 (gathered across processes when several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x), np.float64)


def heldout_evaluator(c: PRMConfig, cfg, files, tokenizer):
    """mesh -> (params -> {'loss', 'step_accuracy', 'auc', 'steps'}) over the held-out files (one
    pass, no shuffle; None when there are none). auc is left out when the held-out labels are all
    of one class."""

    def build(mesh):
        held = files()
        if not held:
            return None
        d = dataclasses.replace(c.data, shuffle=False, num_epochs=1)
        examples, _ = prm_data.encode_all(prm_data.load_step_records(held, d), tokenizer(), d)
        index, count, rows = _process_layout(c.eval_data.batch_size or c.batch_size, None, None)
        batches = []
        for b in prm_data.batches(examples, d, rows, process_index=index, process_count=count):
            batches.append(to_global(b, mesh))
            if len(batches) == c.eval_data.max_batches:
                break
        eval_cfg = cfg.replace(remat="none")
        logits_fn = jax.jit(lambda p, b: prm.prm_logits(p, b["inputs"], eval_cfg, positions=b["positions"],
                                                        segment_ids=b["segment_ids"]))

        def evaluate(params) -> dict:
            scores, labels, loss = [], [], 0.0
            with jax.set_mesh(mesh):
                for b in batches:
                    z, w, y = (_host(x) for x in (logits_fn(params, b), b["weights"], b["labels"]))
                    w = w > 0
                    z, y = z[w], y[w]
                    loss += float(np.sum(np.logaddexp(0.0, z) - y * z))
                    scores.append(1.0 / (1.0 + np.exp(-z)))
                    labels.append(y)
            s, y = np.concatenate(scores), np.concatenate(labels)
            out = {"loss": loss / max(len(s), 1), "step_accuracy": step_accuracy(s, y), "steps": float(len(s))}
            area = auc(s, y)
            return out if area is None else {**out, "auc": area}

        return evaluate

    return build


def exporter(c: PRMConfig, cfg):
    """params -> the PRM's HF directory (model.prm.save_prm; + tokenizer files) in export_hf
    (default <workdir>/hf), or None with export_hf='none'."""

    def export(params):
        if c.export_hf == "none":
            return None
        out = Path(c.export_hf or Path(c.workdir) / "hf")
        return prm.save_prm(params, cfg.replace(remat="none"), out, tokenizer_dir=common.tokenizer_dir(c))

    return export


def build(config: ml_collections.ConfigDict | PRMConfig) -> Plan:
    """The PRM plan: prm_loss over stepwise batches; the state is the PRM's params
    (prm.param_specs: no LM head, the head "prm_head"), with LoRA the adapters plus the head."""
    c = typed.from_config(PRMConfig, config)
    cfg = common.model_config(c)
    tokenizer = functools.cache(lambda: common.load_tokenizer(c))
    files = functools.cache(lambda: data_files(c))  # writes the synthetic task's data once
    return common.with_lora(Plan(
        config=c, model=cfg, loss=functools.partial(prm_loss, cfg=cfg), init=init_fn(c, cfg),
        source=source_fn(c, lambda: files()[0], tokenizer), batch_spec=prm_batch_spec,
        evaluate=heldout_evaluator(c, cfg, lambda: files()[1], tokenizer), finish=exporter(c, cfg),
        module=MODULE, trainable=prm.param_specs(cfg), always_trained=(prm.HEAD,), peft_task_type="TOKEN_CLS",
        unembed=False), c)


def run(config: ml_collections.ConfigDict | PRMConfig):
    """Train (or resume) the PRM per config; export it at the end. Returns the final state."""
    c = typed.from_config(PRMConfig, config)
    loop.init_distributed(c.distributed)  # before anything touches the devices
    return loop.run(build(c))


def main(argv):
    common.main(argv, build, run, "configs/prm_tiny_cpu.py")


def cli() -> None:
    """The `reasonax-prm` command (also `python -m reasonax.train.prm`)."""
    common.recipe_flags("configs/prm_*.py", "compile the PRM train step for config.mesh on fake CPU devices and "
                        "print per-device memory of params, optimizer state and the compiled step; no training")
    app.run(main)
