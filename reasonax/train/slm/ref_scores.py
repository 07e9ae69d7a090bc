"""Reference scores for SLM: every target token's loss under a frozen reference model, computed
once in a sharded, resumable pass and stored beside the data, keyed by record and position.

    scores = score(ref_params, ref_cfg, tokenizer, data_config, out_dir, mesh=mesh, batch_size=64)
    scores = RefScores.load(out_dir, tokenizer=tokenizer, data_config=data_config)
    scores.example(record_index, n_targets, where) -> float32 [n_targets]   (L_ref of x_1..x_n)

A record is tokenized exactly as the training pipeline does (data.tokenize_example +
fit_length: same template, BOS/EOS, truncation), so target j of record r in a training row is
losses[offsets[r] + j], whatever the shuffle or packing. Layout of out_dir:

    meta.json     signature (tokenizer fingerprint, data fields, files and sizes), dtype, counts,
                  complete: true once losses.npy / offsets.npy are final
    losses.npy    float16 [total targets] (compact: 2 bytes a token; ~1e-3 relative rounding)
    offsets.npy   int64 [records + 1]
    part-*.npz    while scoring: one file per `part_records` records (lengths, losses), written
                  atomically; a restarted pass skips the parts present, then merges them.

Records dropped by overlong='drop' get zero targets. The pass packs consecutive records into
rows (next fit, segment ids keep them apart), so short records cost little padding.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from reasonax import jsonl
from reasonax.model.config import ModelConfig
from reasonax.model.sharding import batch_sharding
from reasonax.train import data as data_lib
from reasonax.train import loop
from reasonax.train.loss import batch_logprobs

FORMAT = 1
DTYPES = ("float16", "float32")
# text that must tokenize identically under the reference's and the model's tokenizers
_PROBES = ("Hello, world! 12345 67.89", "\\boxed{\\frac{x^2+1}{3}} = -7", "  spaces\tand\nnewlines  ",
           "Ünïcödé ∑ π ≤ 你好 🙂", "<|im_start|>user <start_of_turn> </s> <eos>")
# data fields that change how a record becomes tokens
_DATA_FIELDS = ("prompt_field", "completion_field", "template", "instruction", "add_eos", "seq_len",
                "overlong", "on_malformed")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary, the special token ids and the ids of a few probe strings."""
    probe = [tokenizer.encode(t, add_special_tokens=False) for t in _PROBES]
    blob = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.bos_token_id, tokenizer.eos_token_id,
                       tokenizer.pad_token_id, probe])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_same_tokenizer(reference, model, ref_name: str = "reference", model_name: str = "model") -> None:
    """ValueError unless the two tokenizers have the same fingerprint."""
    a, b = tokenizer_fingerprint(reference), tokenizer_fingerprint(model)
    if a != b:
        raise ValueError(f"tokenizer mismatch: the {ref_name} tokenizer (fingerprint {a}, vocab "
                         f"{len(reference.get_vocab())}) differs from the {model_name} tokenizer (fingerprint "
                         f"{b}, vocab {len(model.get_vocab())}); SLM needs the same tokenizer for both")


def data_signature(config) -> dict:
    """What fixes a record's tokens: the tokenization fields and the data files with their sizes."""
    sig = {k: getattr(config, k) for k in _DATA_FIELDS}
    sig["files"] = [[f, os.path.getsize(f)] for f in data_lib.expand_files(config.files)]
    return sig


class RefScores:
    """Stored reference losses (see the module docstring); load() checks the signature."""

    def __init__(self, directory: Path, meta: dict, losses: np.ndarray, offsets: np.ndarray):
        self.directory, self.meta, self.losses, self.offsets = directory, meta, losses, offsets

    @classmethod
    def load(cls, directory, tokenizer=None, data_config=None) -> RefScores:
        """Open complete scores (losses memory-mapped); with tokenizer / data_config, raise a
        ValueError if they differ from what the scores were computed with."""
        directory = Path(directory)
        meta = _read_meta(directory)
        if meta is None or not meta.get("complete"):
            raise FileNotFoundError(f"{directory}: no complete reference scores (run the scoring pass: "
                                    f"python -m reasonax.train.slm --config=... --score_only)")
        _check_signature(directory, meta, tokenizer, data_config)
        losses = np.load(directory / "losses.npy", mmap_mode="r")
        offsets = np.load(directory / "offsets.npy")
        if len(offsets) != meta["num_records"] + 1 or offsets[-1] != len(losses):
            raise ValueError(f"{directory}: offsets.npy / losses.npy do not match meta.json (damaged scores)")
        return cls(directory, meta, losses, offsets)

    @property
    def num_records(self) -> int:
        return len(self.offsets) - 1

    def check_records(self, n: int) -> None:
        if n != self.num_records:
            raise ValueError(f"{self.directory}: scores for {self.num_records} records, but the data has {n} "
                             f"(data changed since scoring; delete the scores to recompute)")

    def example(self, index: int, n: int, where: str = "") -> np.ndarray:
        """Record `index`'s n target losses (float32); ValueError if the stored count differs."""
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        if hi - lo != n:
            raise ValueError(f"{where or f'record {index}'}: {n} targets, but {self.directory} stores {hi - lo} "
                             f"reference losses for record {index} (its tokenization differs; rescore)")
        return np.asarray(self.losses[lo:hi], np.float32)


def _read_meta(directory: Path) -> dict | None:
    path = directory / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_signature(directory: Path, meta: dict, tokenizer, data_config) -> None:
    if tokenizer is not None and meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"tokenizer mismatch: {directory} was scored with a reference tokenizer of fingerprint "
                         f"{meta['tokenizer']}, the model's tokenizer has fingerprint "
                         f"{tokenizer_fingerprint(tokenizer)}; SLM needs the same tokenizer for both")
    if data_config is not None:
        sig = data_signature(data_config)
        diff = sorted(k for k in set(sig) | set(meta["data"]) if sig.get(k) != meta["data"].get(k))
        if diff:
            raise ValueError(f"{directory}: scores were computed for other data settings ({', '.join(diff)}: "
                             f"{[meta['data'].get(k) for k in diff]} vs now {[sig.get(k) for k in diff]}); "
                             f"delete the directory or set another scores_dir")


def pack_rows(lengths: list[int], seq_len: int) -> list[list[tuple[int, int]]]:
    """Next-fit packing of consecutive examples: rows of [(example, targets)], each <= seq_len."""
    rows, row, used = [], [], 0
    for i, n in enumerate(lengths):
        if not n:
            continue
        if used + n > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append((i, n))
        used += n
    return rows + ([row] if row else [])


def score(ref_params: dict, ref_cfg: ModelConfig, tokenizer, data_config, out_dir, *, mesh: jax.sharding.Mesh,
          batch_size: int, part_records: int = 4096, dtype: str = "float16", chunk: int | None = None,
          progress: bool = True) -> RefScores:
    """Score every record of data_config.files with the reference (resuming a partial pass) and
    return the loaded scores. batch_size: global rows per forward, a multiple of the data*fsdp
    shards and of the process count. All processes run this (same arguments); process 0 writes."""
    if dtype not in DTYPES:
        raise ValueError(f"scores dtype {dtype!r}; expected one of {DTYPES}")
    out_dir = Path(out_dir)
    meta = {"format": FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer), "data": data_signature(data_config),
            "dtype": dtype, "part_records": part_records}
    old = _read_meta(out_dir)
    if old is not None:
        _check_signature(out_dir, old, tokenizer, data_config)
        if old.get("complete"):
            return RefScores.load(out_dir, tokenizer, data_config)
        meta["part_records"] = old["part_records"]  # parts on disk fix the split
    primary = jax.process_index() == 0
    if primary:
        out_dir.mkdir(parents=True, exist_ok=True)
        jsonl.write_json(out_dir / "meta.json", {**meta, "complete": False}, indent=1)
    records, _ = data_lib.load_records(data_config.files, data_config.prompt_field, data_config.completion_field,
                                       data_config.on_malformed)
    seq_len, per = data_config.seq_len, meta["part_records"]
    num_parts = -(-len(records) // per)
    forward = jax.jit(lambda p, b: -batch_logprobs(p, b, ref_cfg, chunk),
                      in_shardings=(jax.tree.map(lambda x: x.sharding, ref_params), batch_sharding(mesh)),
                      out_shardings=NamedSharding(mesh, PartitionSpec()))
    local = batch_size // jax.process_count()
    bar = _progress(num_parts, progress and primary)
    for k in range(num_parts):
        path = out_dir / f"part-{k:06d}.npz"
        if path.is_file():
            bar.update(1)
            continue
        t0 = time.perf_counter()
        lengths, losses = _score_part(records[k * per:(k + 1) * per], k * per, tokenizer, data_config, forward,
                                      ref_params, mesh, batch_size, local, seq_len)
        if primary:
            jsonl.write_atomic(path, lambda f: np.savez(f, lengths=lengths, losses=losses.astype(dtype)))
        bar.update(1)
        bar.set_postfix(tok_per_s=f"{lengths.sum() / (time.perf_counter() - t0):,.0f}")
    bar.close()
    loop.barrier("reasonax.ref_scores.parts")
    if primary:
        _merge(out_dir, meta, num_parts, len(records), dtype)
    loop.barrier("reasonax.ref_scores.merged")
    return RefScores.load(out_dir, tokenizer, data_config)


def _score_part(records, first: int, tokenizer, config, forward, params, mesh, batch_size, local, seq_len):
    examples = []
    for i, rec in enumerate(records):
        ex = data_lib.encode_record(rec, config, tokenizer, index=first + i)
        examples.append(ex)
    lengths = np.asarray([0 if ex is None else len(ex["targets"]) for ex in examples], np.int32)
    rows = pack_rows(list(lengths), seq_len)
    num_rows = max(batch_size, -(-len(rows) // batch_size) * batch_size)
    arrays = data_lib.layout_rows(examples, [[i for i, _ in row] for row in rows], seq_len,
                                  {"inputs": np.int32, "targets": np.int32}, num_rows)
    out = np.zeros((num_rows, seq_len), np.float32)
    p = jax.process_index()
    for b in range(0, num_rows, batch_size):
        batch = {k: v[b + p * local:b + (p + 1) * local] for k, v in arrays.items()}
        out[b:b + batch_size] = np.asarray(forward(params, data_lib.to_global(batch, mesh)))
    pieces = [None] * len(examples)
    for r, row in enumerate(rows):
        at = 0
        for i, n in row:
            pieces[i] = out[r, at:at + n]
            at += n
    flat = [x for x in pieces if x is not None]
    return lengths, np.concatenate(flat) if flat else np.zeros(0, np.float32)


def _merge(out_dir: Path, meta: dict, num_parts: int, num_records: int, dtype: str) -> None:
    """Parts -> losses.npy + offsets.npy (streamed), then meta.json with complete=True, then the
    parts are removed."""
    paths = [out_dir / f"part-{k:06d}.npz" for k in range(num_parts)]
    lengths = [np.load(p)["lengths"] for p in paths]
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    if len(lengths) != num_records:
        raise ValueError(f"{out_dir}: parts cover {len(lengths)} records, the data has {num_records}")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    tmp = out_dir / "losses.tmp.npy"
    losses = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(int(offsets[-1]),))
    at = 0
    for p in paths:
        part = np.load(p)["losses"]
        losses[at:at + len(part)] = part
        at += len(part)
    losses.flush()
    del losses
    os.replace(tmp, out_dir / "losses.npy")
    jsonl.write_atomic(out_dir / "offsets.npy", lambda f: np.save(f, offsets))
    full = {**meta, "num_records": num_records, "num_tokens": int(offsets[-1]), "complete": True}
    jsonl.write_json(out_dir / "meta.json", full, indent=1)
    for p in paths:
        p.unlink()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="reference scores (parts)", unit="part", disable=not enabled)
