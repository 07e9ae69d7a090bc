"""Grain pipelines for supervised fine-tuning: records -> tokens -> shifted, packed, batched rows.

    files (.jsonl/.jsonl.gz/.parquet) --load_records--> [(prompt, completion, where)]   (validated once)
      -> MapDataset: shuffle(seed) -> repeat(num_epochs) -> [process_index::process_count]
      -> map(encode_record): tokenize, fit to seq_len+1 tokens, shift          (None = dropped)
      -> to_iter_dataset -> fold dropped markers into the next example
      -> FirstFitPackIterDataset (pack=True) or pad to seq_len (pack=False)
      -> batch(global_batch // process_count) -> pad a final short batch, count DataStats

Every row is `seq_len` long: for an example with tokens x0..xn and completion mask m, the row
holds inputs x[:-1], targets x[1:] and weights m[1:] (a target is trained on only when it is a
completion token). Padding has segment id 0, weight 0, input and target 0.

The pipeline runs in-process (tokenization may use a few reader threads) and is deterministic for
a seed. The iterator is checkpointable: `get_state()` is a JSON-able dict (grain's
CheckpointSave/CheckpointRestore store it with Orbax) and `set_state()` resumes exactly,
DataStats included.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import threading
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from reasonax import jsonl, typed
from reasonax.model import prompts as prompts_lib
from reasonax.model.sharding import batch_shards, batch_sharding

TEMPLATES = ("raw", "tokenizer", *(f for f in prompts_lib.FORMATS if f != "raw"))
OVERLONG = ("truncate", "drop")
ON_MALFORMED = ("raise", "skip")

# per-example features that travel through packing; the two flags are summed into DataStats at
# the output and removed (value at index 0 of each example, 0 elsewhere)
_ROW_FEATURES = ("inputs", "targets", "weights", "_truncated", "_dropped")
_FLAGS = ("_truncated", "_dropped")
_OUTPUT_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
REF_LOSS = "ref_loss"  # optional per-target float32 feature: a reference model's loss (SLM)
# reader threads take turns on the tokenizer: HF fast tokenizers may raise "RuntimeError: Already
# borrowed" when one object is used from several threads at once (huggingface/tokenizers#537)
_TOKENIZER_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The SFT data pipeline's settings (config.data of SFT and SLM; --config.data.<field>=value).

    template: how a record becomes text:
      'raw'        prompt and completion as they are, the tokenizer's BOS (if it has one) before the
                   prompt and, with add_eos, its EOS after the completion;
      'qwen-chat' | 'gemma-chat' | 'few-shot'  (reasonax.model.prompts formats): the prompt
                   rendered by PromptFormat.render(prompt, instruction=instruction) after the
                   tokenizer's BOS (as reasonax.sample.generate_cli tokenizes prompts), the
                   completion followed by the format's first stop string (few-shot: with a leading
                   space, as in its "Answer: ..." blocks);
      'tokenizer'  tokenizer.apply_chat_template with a user turn (instruction + blank line +
                   prompt) and an assistant turn; the completion is the conversation text after
                   the rendered generation prompt. No BOS is added (the template writes it).
    """

    files: tuple[str, ...] = ()  # paths or glob patterns: .jsonl, .jsonl.gz, .parquet
    #                              (--config.data.files=a.jsonl; repeat the flag for more)
    prompt_field: str = "prompt"  # record field of the prompt (a string; dotted names reach nested objects)
    completion_field: str = "completion"  # record field of the completion (a non-empty string)
    template: str = "raw"  # raw | qwen-chat | gemma-chat | few-shot | tokenizer (see above)
    instruction: str = prompts_lib.BOXED_INSTRUCTION  # text used by the chat templates
    add_eos: bool = True  # 'raw' only: append tokenizer.eos_token_id after the completion
    seq_len: int = 512  # tokens per row; an example uses len(tokens) - 1 slots (the shift)
    pack: bool = True  # True: first-fit several examples per row (segment_ids 1, 2, ...); False: one per row
    overlong: str = "truncate"  # an example over seq_len + 1 tokens: truncate (keep the first seq_len + 1) | drop
    on_malformed: str = "raise"  # a bad record: raise (ValueError naming file, line, field) | skip (counted)
    shuffle: bool = True  # shuffle examples (a different order every epoch)
    seed: int = 0  # shuffle seed, 0 <= seed < 2**32
    num_epochs: int | None = None  # passes over the data; None repeats forever
    num_threads: int = 2  # reader threads that tokenize ahead (0: in the calling thread); results do not depend on it

    def problems(self) -> list[str]:
        out = []
        for name, allowed in (("template", TEMPLATES), ("overlong", OVERLONG), ("on_malformed", ON_MALFORMED)):
            if getattr(self, name) not in allowed:
                out.append(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.seq_len < 1:
            out.append(f"seq_len={self.seq_len} must be a positive integer")
        if self.num_epochs is not None and self.num_epochs < 1:
            out.append(f"num_epochs={self.num_epochs} must be None (forever) or >= 1")
        if not 0 <= self.seed < 2**32:
            out.append(f"seed={self.seed} must be in [0, 2**32)")
        if self.num_threads < 0:
            out.append(f"num_threads={self.num_threads} must be >= 0")
        return out


def default_data_config() -> ml_collections.ConfigDict:
    """The ConfigDict of DataConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(DataConfig())


@dataclasses.dataclass
class DataStats:
    """Counters of what the iterator has emitted (all but skipped_malformed, a property of the
    files counted once when the dataset is built). Updated in place as batches come out; saved in
    the iterator state, so after set_state they equal those of the uninterrupted run.

      examples          examples emitted (segments)
      tokens            non-padding input tokens emitted (len(tokens) - 1 per example)
      loss_tokens       tokens with weight 1 (completion targets)
      padding_tokens    padding slots emitted (including all-padding rows of a final short batch)
      truncated         examples cut to seq_len + 1 tokens (overlong='truncate')
      dropped_overlong  examples removed for being too long (overlong='drop')
      skipped_malformed records skipped as malformed (on_malformed='skip'), over all files
      batches           batches emitted
    """

    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    padding_tokens: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    skipped_malformed: int = 0
    batches: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load(self, d: dict) -> None:
        """Set every counter from a dict made by as_dict (missing counters become 0)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, int(d.get(f.name, 0)))


# ----------------------------------------------------------------------------------------------
# Config checks and records


def check_config(config) -> DataConfig:
    """The DataConfig of a data config (ConfigDict, dict or DataConfig); ValueError naming each
    bad field, and an empty files list."""
    out = typed.from_config(DataConfig, config, "data")
    if not out.files:
        raise ValueError(f"data.files={list(out.files)!r} must be a non-empty list of paths")
    return out


def expand_files(files: Sequence[str | os.PathLike]) -> list[str]:
    """Paths in order, glob patterns expanded (sorted); FileNotFoundError for a pattern or path
    that matches nothing."""
    out = []
    for f in files:
        f = os.fspath(f)
        if glob.has_magic(f):
            matches = sorted(glob.glob(f))
            if not matches:
                raise FileNotFoundError(f"data.files: pattern {f!r} matches no file")
            out.extend(matches)
        elif not os.path.isfile(f):
            raise FileNotFoundError(f"data.files: {f}: no such file")
        else:
            out.append(f)
    return out


def _text_field(rec: dict, name: str, where: str, allow_empty: bool) -> str:
    """rec[name] as a string, or ValueError naming where and the field."""
    value = jsonl.field(rec, name, where, error=ValueError)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} is not a string (got {type(value).__name__})")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


def _jsonl_records(path: str, prompt_field: str, completion_field: str, skip: bool):
    """(records, skipped) of one JSONL file; records are (prompt, completion, 'file:line')."""
    records, bad_lines = [], []
    for lineno, rec in jsonl.read(path, skip_bad=skip, bad_lines=bad_lines, error=ValueError):
        where = f"{path}:{lineno}"
        try:
            prompt = _text_field(rec, prompt_field, where, allow_empty=True)
            completion = _text_field(rec, completion_field, where, allow_empty=False)
        except ValueError:
            if not skip:
                raise
            bad_lines.append(lineno)
            continue
        records.append((prompt, completion, where))
    return records, len(bad_lines)


def _parquet_records(path: str, prompt_field: str, completion_field: str, skip: bool):
    """(records, skipped) of one Parquet file; records are (prompt, completion, 'file: row N')
    with 1-based row numbers. A missing column is always an error."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path}: unreadable Parquet file ({e})") from None
    for col in (prompt_field, completion_field):
        if col not in names:
            raise ValueError(f"{path}: missing column {col!r} (columns: {names[:20]})")
    table = pq.read_table(path, columns=[prompt_field, completion_field])
    prompts, completions = (table.column(c).to_pylist() for c in (prompt_field, completion_field))
    records, skipped = [], 0
    for i, (p, c) in enumerate(zip(prompts, completions), 1):
        where = f"{path}: row {i}"
        try:
            prompt = _text_field({prompt_field: p}, prompt_field, where, allow_empty=True)
            completion = _text_field({completion_field: c}, completion_field, where, allow_empty=False)
        except ValueError:
            if not skip:
                raise
            skipped += 1
            continue
        records.append((prompt, completion, where))
    return records, skipped


def load_records(files: Sequence[str | os.PathLike], prompt_field: str = "prompt",
                 completion_field: str = "completion",
                 on_malformed: str = "raise") -> tuple[list[tuple[str, str, str]], int]:
    """All (prompt, completion, where) records of the files in order, and the number skipped.

    Every record is validated here, once, so skip counts are exact and a bad record fails before
    training starts. where is 'file:line' (JSONL) or 'file: row N' (Parquet), for messages.
    """
    if on_malformed not in ON_MALFORMED:
        raise ValueError(f"on_malformed={on_malformed!r}; expected one of {ON_MALFORMED}")
    skip = on_malformed == "skip"
    records, skipped = [], 0
    for path in expand_files(files):
        if path.endswith((".jsonl", ".jsonl.gz")):
            recs, n = _jsonl_records(path, prompt_field, completion_field, skip)
        elif path.endswith(".parquet"):
            recs, n = _parquet_records(path, prompt_field, completion_field, skip)
        else:
            raise ValueError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz or .parquet)")
        records.extend(recs)
        skipped += n
    return records, skipped


# ----------------------------------------------------------------------------------------------
# One example: text -> tokens -> fitted -> shifted


def render_texts(prompt: str, completion: str, config, tokenizer) -> tuple[str, str, bool]:
    """(prompt text, completion text, prepend BOS) for the config's template (see
    default_data_config). The EOS of 'raw' is added at tokenization, not here."""
    template = config.template
    if template == "raw":
        return prompt, completion, True
    if template == "tokenizer":
        user = f"{config.instruction}\n\n{prompt}" if config.instruction else prompt
        turns = [{"role": "user", "content": user}]
        head = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": completion}],
                                             tokenize=False)
        if not full.startswith(head):
            raise ValueError("data.template='tokenizer': the chat template does not render the generation "
                             "prompt as a prefix of the conversation; use a named template instead")
        return head, full[len(head):], False
    fmt = prompts_lib.get_format(template)
    if template == "few-shot" and completion[:1] not in (" ", "\n"):
        completion = " " + completion
    return fmt.render(prompt, instruction=config.instruction), completion + fmt.stop_strings[0], True


def tokenize_example(prompt: str, completion: str, config, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [n], completion mask int32 [n]) of one record.

    Prompt and completion are tokenized separately with add_special_tokens=False (no merge across
    the boundary, as at generation); the tokenizer's BOS, if it has one, goes before the prompt
    (not for template='tokenizer'), and for 'raw' with add_eos its EOS after the completion.
    """
    prompt_text, completion_text, bos = render_texts(prompt, completion, config, tokenizer)
    head = _prompt_ids(prompt_text, bos, tokenizer)
    with _TOKENIZER_LOCK:
        tail = tokenizer.encode(completion_text, add_special_tokens=False)
    if config.template == "raw" and config.add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("data.add_eos=True but the tokenizer has no eos_token_id")
        tail = [*tail, tokenizer.eos_token_id]
    tokens = np.asarray(head + tail, np.int32)
    mask = np.concatenate([np.zeros(len(head), np.int32), np.ones(len(tail), np.int32)])
    return tokens, mask


def _prompt_ids(prompt_text: str, bos: bool, tokenizer) -> list[int]:
    with _TOKENIZER_LOCK:
        ids = tokenizer.encode(prompt_text, add_special_tokens=False) if prompt_text else []
    return [tokenizer.bos_token_id, *ids] if bos and tokenizer.bos_token_id is not None else ids


def prompt_tokens(prompt: str, config, tokenizer) -> list[int]:
    """The prompt's tokens exactly as tokenize_example starts a training example (what a model
    trained on the config's template sees before its completion): for sampling (GRPO)."""
    prompt_text, _, bos = render_texts(prompt, "", config, tokenizer)
    return _prompt_ids(prompt_text, bos, tokenizer)


def fit_length(tokens: np.ndarray, mask: np.ndarray, seq_len: int, overlong: str):
    """(tokens, mask, truncated) with at most seq_len + 1 tokens, or None when overlong='drop'
    removes the example."""
    if len(tokens) <= seq_len + 1:
        return tokens, mask, False
    if overlong == "drop":
        return None
    return tokens[: seq_len + 1], mask[: seq_len + 1], True


def shift_example(tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """inputs x[:-1], targets x[1:], weights m[1:] (float32) of one example."""
    return {"inputs": np.asarray(tokens[:-1], np.int32), "targets": np.asarray(tokens[1:], np.int32),
            "weights": np.asarray(mask[1:], np.float32)}


def encode_record(record: tuple[str, str, str], config, tokenizer, index: int | None = None,
                  ref_scores=None) -> dict[str, np.ndarray] | None:
    """A shifted example with its stats flags, or None if overlong='drop' removed it.

    The flags `_truncated` and `_dropped` (int32, value at index 0) travel with the example
    through packing so DataStats count what is emitted. With `ref_scores` (a
    reasonax.train.slm.ref_scores.RefScores) the example also carries `ref_loss`, the stored
    reference loss of each target, looked up by the record's `index`.
    """
    prompt, completion, where = record
    try:
        tokens, mask = tokenize_example(prompt, completion, config, tokenizer)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if len(tokens) < 2:
        raise ValueError(f"{where}: the example has {len(tokens)} token(s); training needs at least 2")
    fitted = fit_length(tokens, mask, config.seq_len, config.overlong)
    if fitted is None:
        return None
    tokens, mask, truncated = fitted
    ex = shift_example(tokens, mask)
    ex["_truncated"] = np.zeros(len(tokens) - 1, np.int32)
    ex["_truncated"][0] = int(truncated)
    ex["_dropped"] = np.zeros(len(tokens) - 1, np.int32)
    if ref_scores is not None:
        ex[REF_LOSS] = ref_scores.example(index, len(tokens) - 1, where)
    return ex


def layout_rows(examples: Sequence[dict[str, np.ndarray]], rows: Sequence[Sequence[int]], seq_len: int,
                features: dict[str, type], num_rows: int | None = None) -> dict[str, np.ndarray]:
    """[num_rows, seq_len] arrays of rows built from examples laid end to end: rows[r] lists the
    indices of the examples in row r, in order; each example is a dict of equal-length 1-D arrays
    (the shifted features: inputs, targets, weights, ...) of which `features` (name -> dtype) are
    kept. Adds segment_ids (1, 2, ... for the examples of a row, 0 on padding) and positions (from
    0 in each example). Padding is 0 in every array; rows past len(rows) are all padding. The one
    row builder outside the grain packer (reasonax.train.slm.ref_scores, the GRPO rollouts)."""
    num_rows = len(rows) if num_rows is None else num_rows
    out = {k: np.zeros((num_rows, seq_len), dtype) for k, dtype in features.items()}
    out["segment_ids"] = np.zeros((num_rows, seq_len), np.int32)
    out["positions"] = np.zeros((num_rows, seq_len), np.int32)
    first = next(iter(features))
    for r, row in enumerate(rows):
        at = 0
        for seg, i in enumerate(row, start=1):
            n = len(examples[i][first])
            if at + n > seq_len:
                raise ValueError(f"row {r}: examples {list(row)} hold more than seq_len = {seq_len} positions")
            for k in features:
                out[k][r, at:at + n] = examples[i][k]
            out["segment_ids"][r, at:at + n] = seg
            out["positions"][r, at:at + n] = np.arange(n)
            at += n
    return out


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit packing, in order: each item goes into the first row with room for it, else a new
    row; returns each row's item indices (the layout grain's FirstFitPackIterDataset makes, for
    layout_rows). ValueError naming the item when one is longer than capacity."""
    rows, free = [], []
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"item {i}: {n} positions > the row's {capacity}")
        r = next((r for r, f in enumerate(free) if f >= n), None)
        if r is None:
            rows.append([])
            free.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= n
    return rows


def pad_example(ex: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example as a padded row: segment_ids 1 on its tokens, positions 0..n-1, zeros after."""
    n = len(ex["inputs"])
    row = {k: np.pad(v, (0, seq_len - n)) for k, v in ex.items()}
    row["segment_ids"] = np.pad(np.ones(n, np.int32), (0, seq_len - n))
    row["positions"] = np.pad(np.arange(n, dtype=np.int32), (0, seq_len - n))
    return row


def _from_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A row of FirstFitPackIterDataset with its segment ids / positions under our names."""
    out = {k: v for k, v in row.items() if not k.endswith(("_segment_ids", "_positions"))}  # the packer's, per feature
    out["segment_ids"] = row["inputs_segment_ids"]
    out["positions"] = row["inputs_positions"]
    return out


# ----------------------------------------------------------------------------------------------
# Datasets


def examples_dataset(config, tokenizer, *, process_index: int = 0, process_count: int = 1,
                     records: list | None = None, ref_scores=None) -> grain.MapDataset:
    """The shuffled, repeated, process-sharded MapDataset of encoded examples (encode_record):
    dicts of 1-D arrays, None where an overlong example was dropped.

    Order: shuffle(seed) over all records (grain reseeds it every epoch), repeat(num_epochs),
    then process p takes elements p, p + P, p + 2P, ... of that global stream, so shards are
    disjoint and together cover every example of every epoch. Elements are record indices until
    the map, so an example knows its record (for ref_scores, see encode_record).
    """
    if records is None:
        records, _ = load_records(config.files, config.prompt_field, config.completion_field,
                                  config.on_malformed)
    if not records:
        raise ValueError(f"data.files={list(config.files)!r}: no usable records")
    ds = grain.MapDataset.range(len(records))
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)
    ds = ds[process_index::process_count]
    encode = functools.partial(encode_record, config=config, tokenizer=tokenizer, ref_scores=ref_scores)
    return ds.map(lambda i: encode(records[i], index=int(i)))


class _FoldDroppedIterator(grain.DatasetIterator):
    """Skips None (dropped) elements, adding their count to the next example's `_dropped` flag.

    Between two calls no count is pending, so the state is the parent's. Drops after the last
    example of a finite stream go straight into `stats` when the end is reached.
    """

    def __init__(self, parent: grain.DatasetIterator, stats: DataStats):
        super().__init__(parent)
        self._counters = stats

    def __next__(self):
        dropped = 0
        while True:
            try:
                ex = next(self._parent)
            except StopIteration:
                self._counters.dropped_overlong += dropped
                raise
            if ex is None:
                dropped += 1
                continue
            ex["_dropped"][0] += dropped
            return ex

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class _FoldDropped(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, stats: DataStats):
        super().__init__(parent)
        self._counters = stats

    def __iter__(self) -> _FoldDroppedIterator:
        return _FoldDroppedIterator(self._parent.__iter__(), self._counters)


def count_batch(batch: dict[str, np.ndarray], stats: DataStats) -> None:
    """Add one padded batch (with its flag features) to the counters."""
    real = batch["segment_ids"] > 0
    stats.examples += int(np.sum(real & (batch["positions"] == 0)))
    stats.tokens += int(real.sum())
    stats.padding_tokens += int(real.size - real.sum())
    stats.loss_tokens += int(batch["weights"].sum())
    stats.truncated += int(batch["_truncated"].sum())
    stats.dropped_overlong += int(batch["_dropped"].sum())
    stats.batches += 1


def pad_batch(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A short final batch completed with all-padding rows (zeros everywhere)."""
    n = len(batch["inputs"])
    if n == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


class SftIterator(grain.DatasetIterator):
    """The output iterator: fixed-shape batches, DataStats updated, state = pipeline + stats."""

    def __init__(self, parent: grain.DatasetIterator, rows: int, stats: DataStats):
        super().__init__(parent)
        self._rows = rows
        self.stats = stats

    def __next__(self) -> dict[str, np.ndarray]:
        batch = pad_batch(next(self._parent), self._rows)
        count_batch(batch, self.stats)
        return {k: batch[k] for k in (*_OUTPUT_KEYS, REF_LOSS) if k in batch}

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "stats": self.stats.as_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["pipeline"])
        self.stats.load(state["stats"])


class SftDataset(grain.IterDataset):
    """IterDataset whose iterator is an SftIterator (see sft_dataset)."""

    def __init__(self, parent: grain.IterDataset, rows: int, stats: DataStats):
        super().__init__(parent)
        self._rows = rows
        self.stats = stats

    def __iter__(self) -> SftIterator:
        return SftIterator(self._parent.__iter__(), self._rows, self.stats)


def _process_layout(global_batch: int, process_index: int | None, process_count: int | None):
    """(process_index, process_count, local rows), checked."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if global_batch < 1 or global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} must be a positive multiple of "
                         f"process_count={process_count}")
    return process_index, process_count, global_batch // process_count


def sft_dataset(config, tokenizer, *, global_batch: int, process_index: int | None = None,
                process_count: int | None = None, stats: DataStats | None = None,
                ref_scores=None) -> SftDataset:
    """Batches of this process's examples, each array [global_batch // process_count, seq_len]:

      inputs int32, targets int32 (next tokens), weights float32 (1 on completion targets),
      segment_ids int32 (1, 2, ... per example in the row, 0 = padding), positions int32
      (0.. within each example).

    process_index / process_count default to jax's. With finite num_epochs the last batch is
    completed with all-padding rows and iteration then stops; shards may differ by a few
    examples, so processes can end a batch apart (count steps, not batches, in a loop).
    `stats` (also the dataset's and its iterators' `.stats`) is updated as batches come out;
    build one dataset, and one iterator at a time, per DataStats. With `ref_scores` (SLM) batches
    also hold ref_loss float32 (each target's stored reference loss, 0 on padding).
    """
    config = check_config(config)
    if config.template == "raw" and config.add_eos and tokenizer.eos_token_id is None:
        raise ValueError("data.add_eos=True but the tokenizer has no eos_token_id")
    process_index, process_count, rows = _process_layout(global_batch, process_index, process_count)
    stats = DataStats() if stats is None else stats
    records, skipped = load_records(config.files, config.prompt_field, config.completion_field,
                                    config.on_malformed)
    stats.skipped_malformed = skipped
    if ref_scores is not None:
        ref_scores.check_records(len(records))
    examples = examples_dataset(config, tokenizer, process_index=process_index, process_count=process_count,
                                records=records, ref_scores=ref_scores)
    features = _ROW_FEATURES + ((REF_LOSS,) if ref_scores is not None else ())
    read = grain.ReadOptions(num_threads=config.num_threads,
                             prefetch_buffer_size=64 if config.num_threads else 0)
    ds = _FoldDropped(examples.to_iter_dataset(read, allow_nones=True), stats)
    if config.pack:
        ds = grain.experimental.FirstFitPackIterDataset(
            ds, length_struct={k: config.seq_len for k in features}, num_packing_bins=rows,
            shuffle_bins=False)
        ds = ds.map(_from_packed)
    else:
        ds = ds.map(functools.partial(pad_example, seq_len=config.seq_len))
    return SftDataset(ds.batch(rows, drop_remainder=False), rows, stats)


# ----------------------------------------------------------------------------------------------
# Device placement


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """The process-local batch as global jax.Arrays, rows sharded over mesh axes ('data', 'fsdp').

    The global leading dim is local rows * process_count; it must divide by the data * fsdp size.
    """
    sharding, shards = batch_sharding(mesh), batch_shards(mesh)
    out = {}
    for name, local in batch.items():
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        if global_shape[0] % shards:
            raise ValueError(f"batch[{name!r}]: {global_shape[0]} global rows do not divide over the "
                             f"mesh's data*fsdp = {shards} shards")
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
