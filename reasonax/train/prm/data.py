"""The PRM's data: TRL's stepwise format, read with file and line in every error, encoded into
rows with a label at the last token of each step's separator, batched by a grain pipeline.

    {"prompt": str, "completions": [step, ...], "labels": [bool | float in [0, 1], ...]}

in .jsonl / .jsonl.gz (line numbers) or .parquet (row numbers). Every record is validated when
the files are read, before training: labels and steps equal in number, no empty step, labels
booleans or numbers in [0, 1].

Encoding (model.prm.tokenize_steps): BOS, the prompt, then each step and the separator tokenized
apart (BPE never merges the separator into a step). A row is one example, padded to seq_len (no
packing): inputs, segment_ids (1 real, 0 padding), positions, labels and weights (1 at each
step's score position, 0 elsewhere). An example longer than seq_len is cut to its first seq_len
tokens (overlong='truncate'): steps whose separator lies beyond are not trained on (their labels
dropped, counted) or the example is dropped (overlong='drop'); both counts are logged as data/*.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import grain
import numpy as np

from reasonax import jsonl
from reasonax.model.prm import tokenize_steps
from reasonax.train import data as data_lib

OVERLONG = ("truncate", "drop")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    prompt: str
    steps: tuple[str, ...]
    labels: tuple[float, ...]
    where: str  # 'file:line' or 'file: row N'


@dataclasses.dataclass(frozen=True)
class PRMDataConfig:
    """config.data of the PRM recipe (--config.data.<field>=value)."""

    files: tuple[str, ...] = ()  # stepwise records: .jsonl, .jsonl.gz, .parquet (glob patterns allowed)
    prompt_field: str = "prompt"  # record field of the prompt (a string)
    completions_field: str = "completions"  # record field of the steps (a list of non-empty strings)
    labels_field: str = "labels"  # record field of the labels (one per step: bool, or a number in [0, 1])
    separator: str = "\n"  # inserted after every step, tokenized apart; the score is read at its last token
    seq_len: int = 512  # tokens per row (derived: the run's seq_len)
    overlong: str = "truncate"  # an example over seq_len tokens: truncate (labels past seq_len dropped) | drop
    shuffle: bool = True  # shuffle examples (a different order every epoch)
    seed: int = 0  # shuffle seed, 0 <= seed < 2**32
    num_epochs: int | None = None  # passes over the data; None repeats forever

    def problems(self) -> list[str]:
        out = [] if self.overlong in OVERLONG else [f"overlong={self.overlong!r}; expected one of {OVERLONG}"]
        if not self.separator:
            out.append("separator is empty")
        if self.seq_len < 2:
            out.append(f"seq_len={self.seq_len} must be >= 2")
        if self.num_epochs is not None and self.num_epochs < 1:
            out.append(f"num_epochs={self.num_epochs} must be None (forever) or >= 1")
        if not 0 <= self.seed < 2**32:
            out.append(f"seed={self.seed} must be in [0, 2**32)")
        return out


def parse_record(rec: dict, where: str, config: PRMDataConfig) -> StepRecord:
    """A StepRecord, or ValueError naming where, the field and what was expected."""
    prompt = jsonl.field(rec, config.prompt_field, where, error=ValueError)
    steps = jsonl.field(rec, config.completions_field, where, error=ValueError)
    labels = jsonl.field(rec, config.labels_field, where, error=ValueError)
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: field {config.prompt_field!r} is not a string (got {type(prompt).__name__})")
    for name, value in ((config.completions_field, steps), (config.labels_field, labels)):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: field {name!r} is not a list (got {type(value).__name__})")
    if len(steps) != len(labels):
        raise ValueError(f"{where}: {len(labels)} labels for {len(steps)} steps (fields {config.labels_field!r}, "
                         f"{config.completions_field!r}); expected one label per step")
    if not steps:
        raise ValueError(f"{where}: field {config.completions_field!r} is an empty list (no steps)")
    for i, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"{where}: step {i} of field {config.completions_field!r} is empty "
                             f"(got {s!r}); every step needs text")
    out = []
    for i, y in enumerate(labels):
        if isinstance(y, bool):
            out.append(float(y))
        elif isinstance(y, (int, float)) and math.isfinite(y) and 0.0 <= y <= 1.0:
            out.append(float(y))
        else:
            raise ValueError(f"{where}: label {i} of field {config.labels_field!r} is {y!r}; expected a bool or "
                             f"a number in [0, 1]")
    return StepRecord(prompt, tuple(steps), tuple(out), where)


def _parquet_rows(path: str, config: PRMDataConfig):
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path}: unreadable Parquet file ({e})") from None
    cols = (config.prompt_field, config.completions_field, config.labels_field)
    for col in cols:
        if col not in names:
            raise ValueError(f"{path}: missing column {col!r} (columns: {names[:20]})")
    table = pq.read_table(path, columns=list(cols)).to_pylist()
    for i, rec in enumerate(table, 1):
        yield f"{path}: row {i}", rec


def load_step_records(files: Sequence[str | os.PathLike], config: PRMDataConfig) -> list[StepRecord]:
    """Every record of the files in order, validated (parse_record); glob patterns expanded."""
    out = []
    for path in data_lib.expand_files(files):
        if path.endswith((".jsonl", ".jsonl.gz")):
            rows = ((f"{path}:{n}", rec) for n, rec in jsonl.read(path, error=ValueError))
        elif path.endswith(".parquet"):
            rows = _parquet_rows(path, config)
        else:
            raise ValueError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz or .parquet)")
        out.extend(parse_record(rec, where, config) for where, rec in rows)
    if not out:
        raise ValueError(f"data files {list(files)!r}: no records")
    return out


@dataclasses.dataclass
class PRMDataStats:
    """Counts over the whole dataset, made once when it is encoded (logged as data/*)."""

    examples: int = 0        # examples kept
    steps: int = 0           # step labels trained on
    truncated: int = 0       # examples cut to seq_len (overlong='truncate')
    labels_dropped: int = 0  # step labels whose separator lay past seq_len (not trained on)
    dropped_overlong: int = 0  # examples removed for being too long (overlong='drop')

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def encode_example(rec: StepRecord, tokenizer, config: PRMDataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens int32 [n], score positions int32 [k], labels float32 [k]) of one record, cut to
    seq_len tokens: labels whose position falls past the cut are left out."""
    ids, ends = tokenize_steps(tokenizer, rec.prompt, rec.steps, config.separator)
    keep = [i for i, e in enumerate(ends) if e < config.seq_len]
    return (np.asarray(ids[:config.seq_len], np.int32), np.asarray([ends[i] for i in keep], np.int32),
            np.asarray([rec.labels[i] for i in keep], np.float32))


def to_row(tokens: np.ndarray, ends: np.ndarray, labels: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """One padded row: inputs, segment_ids, positions (int32) and labels, weights (float32) [seq_len]."""
    n = len(tokens)
    row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "segment_ids", "positions")}
    row["inputs"][:n], row["segment_ids"][:n], row["positions"][:n] = tokens, 1, np.arange(n)
    row["labels"], row["weights"] = np.zeros(seq_len, np.float32), np.zeros(seq_len, np.float32)
    row["labels"][ends], row["weights"][ends] = labels, 1.0
    return row


def encode_all(records: Sequence[StepRecord], tokenizer, config: PRMDataConfig
               ) -> tuple[list[dict[str, np.ndarray]], PRMDataStats]:
    """Rows of every record (the dataset is tokenized once, up front) and their stats."""
    rows, stats = [], PRMDataStats()
    for rec in records:
        full = len(tokenize_steps(tokenizer, rec.prompt, rec.steps, config.separator)[0])
        tokens, ends, labels = encode_example(rec, tokenizer, config)
        if full > config.seq_len:
            if config.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            stats.labels_dropped += len(rec.labels) - len(labels)
        rows.append(to_row(tokens, ends, labels, config.seq_len))
        stats.examples += 1
        stats.steps += len(labels)
    if not rows:
        raise ValueError(f"data files: all {len(records)} examples are longer than seq_len={config.seq_len} "
                         f"(overlong='drop')")
    return rows, stats


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    n = len(batch["inputs"])
    return batch if n == rows else {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)])
                                    for k, v in batch.items()}


def batches(examples: list[dict[str, np.ndarray]], config: PRMDataConfig, rows: int, *, process_index: int = 0,
            process_count: int = 1) -> grain.IterDataset:
    """The checkpointable stream of process-local batches [rows, seq_len]: shuffle(seed) (reseeded
    every epoch by grain), repeat(num_epochs), process p takes elements p, p + P, ...; a final
    short batch is padded with all-padding rows (weight 0)."""
    ds = grain.MapDataset.range(len(examples))
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)
    ds = ds[process_index::process_count].map(lambda i: examples[int(i)])
    return ds.to_iter_dataset().batch(rows, drop_remainder=False).map(lambda b: _pad_rows(b, rows))
