"""GRPO rollouts: prompts -> G completions each from the sampler on a copy of the learner's
params in the rollout layout (reasonax.train.rollout_layout, synced once per step) -> rewards ->
group advantages -> one fixed-shape training batch (the GRPO plan's source).

    source = RolloutSource(prompts, cfg, tokenizer, rc, mesh, seed)
    batch = source.next(state)      # what loop.run calls once per step
    source.metrics()                # this step's rollout metrics (reward, accuracy, lengths, times, sync)

Prompts come from a grain stream of record indices (shuffled every epoch, checkpointed with the
run, the same on every process: all processes generate the same global batch, SPMD, and each
places its own rows). The sampling seed differs at every step and round (derived from the run
seed, the step and the round), so a resumed run samples exactly what the uninterrupted one would.

A completion ends after the token that completes one of the template's stop strings (multi-token,
e.g. few-shot's blank line): the engine checks them between decode blocks and frees the slot, so
nothing past the stop is graded or trained on, and the completion counts as finished, not
truncated.

Rows (N = prompts x G sequences, prompt-major; T = the batch's longest prompt + completion
rounded up to a multiple of row_bucket, at most max_prompt_len + max_new_tokens): inputs /
targets the prompt + completion shifted by one, weights 1 on completion targets (0 for a
truncated completion with mask_truncated; it still counts in its group's statistics),
sampler_logp the sampler's log-prob of each completion target, advantages [N] (grpo or rloo).
With pack_len > 0 the sequences are packed instead (pack_rows): each micro-batch's sequences
first fit into pack_rows rows of pack_len tokens, with segment_ids, positions and `sequence`
(the index of each position's sequence, and advantage, in its micro-batch).

Times in the metrics: time/rollout (sampling), time/reward (grading), time/update (wall time from
the end of the previous next() to the start of this one: the previous step's updates with its
logging and checkpointing), time/weight_sync (the step's syncs), time/rollout_wait (one-step-off:
how long next() waited for the batch in flight), with tokens/s of sampling and of the updates.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import sys
import threading
import time
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from reasonax import sample
from reasonax.eval import grader
from reasonax.model import sharding
from reasonax.model.config import ModelConfig
from reasonax.model.params import ADAPTERS
from reasonax.sample.stops import cut_at_stop
from reasonax.train import data as data_lib
from reasonax.train import rollout_layout
from reasonax.train.grpo.objective import group_advantages, overlong_penalty, rloo_advantages


GRADE_LOCK = threading.Lock()  # the grader's worker pool serves one batch at a time (rollout thread, evaluation)


@dataclasses.dataclass(frozen=True)
class Prompt:
    tokens: tuple[int, ...]
    gold: str
    text: str
    where: str


def load_prompts(rc, tokenizer, max_prompt_len: int) -> list[Prompt]:
    """Prompts of rc.files (JSONL/Parquet; rc.prompt_field, rc.answer_field) tokenized as the
    training pipeline starts an example (data.prompt_tokens); ValueError naming the record
    when one is longer than max_prompt_len tokens. A malformed record raises naming its file and
    line, or with rc.on_malformed='skip' is skipped and counted (a warning on stderr)."""
    records, skipped = data_lib.load_records(rc.files, rc.prompt_field, rc.answer_field, rc.on_malformed)
    if skipped:
        print(f"[reasonax] grpo.files: skipped {skipped} malformed record(s) (grpo.on_malformed='skip'); "
              f"{len(records)} prompts kept", file=sys.stderr, flush=True)
    if not records:
        raise ValueError(f"grpo.files={list(rc.files)!r}: no prompts (set grpo.files or synthetic.task)")
    out = []
    for text, gold, where in records:
        ids = data_lib.prompt_tokens(text, rc, tokenizer)
        if len(ids) > max_prompt_len:
            raise ValueError(f"{where}: prompt of {len(ids)} tokens > grpo.max_prompt_len={max_prompt_len}")
        out.append(Prompt(tuple(ids), gold.strip(), text, where))
    return out


@dataclasses.dataclass
class _Completions:
    """One sampling round's completions after the stop-string cut (lists over rows)."""
    tokens: list
    logprobs: list
    truncated: list[bool]  # neither EOS nor a stop string before max_new_tokens
    stopped: list[bool]  # ended by a stop string
    generated: int  # tokens the engine drew (with those past a stop string, up to a block each)


def prompt_stream(n: int, seed: int) -> grain.DatasetIterator:
    """Checkpointable iterator of prompt indices: a new shuffle every epoch, forever."""
    return iter(grain.MapDataset.range(n).shuffle(seed=seed).repeat(None).to_iter_dataset())


def completion_text(tokenizer, tokens: Sequence[int], eos_ids: Sequence[int], stop_strings: Sequence[str] = ()) -> str:
    """What the grader sees of a completion: decoded without its stop tokens and cut at the first
    stop string (the engine's rows end with the token that completes it), as the generate CLI
    writes samples."""
    text = tokenizer.decode([t for t in tokens if t not in eos_ids], skip_special_tokens=True)
    return cut_at_stop(text, stop_strings)[0]


def engine_options(rc) -> dict:
    """The rollout engine's sizing from the grpo config (slots, KV budget, block steps)."""
    return dict(num_slots=rc.num_slots or None, kv_budget_bytes=int(rc.kv_budget_gb * 2**30),
                block_steps=rc.block_steps)


def load_reward_fn(path: str) -> Callable:
    """'package.module.function' -> the function; it is called as fn(prompts, completions, golds)
    (lists of str) and returns one float per completion."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"reward function {path!r}: expected a dotted path 'package.module.function'")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"reward function {path!r}: {module} has no callable {name!r}")
    return fn


def rewards(texts: Sequence[str], golds: Sequence[str], lengths: Sequence[int], prompts: Sequence[str], rc,
            user_fns: Sequence[Callable] = ()) -> tuple[np.ndarray, dict]:
    """Reward per completion and its parts: correct (the grader, no last-number fallback, its
    worker pool for anything sympy must decide), + format_weight if a \\boxed answer is present,
    + the DAPO overlong penalty (overlong_buffer > 0), + each user function."""
    correct = np.asarray(grader.grade_batch(list(texts), list(golds), fallback=False), np.float32)
    total = correct.copy()
    parts = {"accuracy": correct}
    if rc.format_weight:
        has_box = np.asarray([grader.boxed_answer(t) is not None for t in texts], np.float32)
        total += rc.format_weight * has_box
        parts["format"] = has_box
    if rc.overlong_buffer:
        pen = np.asarray(overlong_penalty(np.asarray(lengths), rc.max_new_tokens, rc.overlong_buffer))
        total += pen
        parts["overlong_penalty"] = pen
    for fn in user_fns:
        extra = np.asarray(fn(list(prompts), list(texts), list(golds)), np.float32)
        if extra.shape != total.shape:
            raise ValueError(f"reward function {fn.__module__}.{fn.__name__} returned shape {extra.shape}, "
                             f"expected {total.shape}")
        total += extra
    return total, parts


def row_length(longest: int, full: int, bucket: int) -> int:
    """Row length for a batch whose longest row needs `longest` positions: rounded up to a
    multiple of `bucket` (one compiled step per length), capped at `full`; bucket 0: `full`."""
    if bucket <= 0:
        return full
    return min(full, max(bucket, -(-longest // bucket) * bucket))


def completion_examples(prompt_tokens: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        logprobs: Sequence[Sequence[float]], truncated: Sequence[bool], seq_len: int,
                        mask_truncated: bool) -> list[dict[str, np.ndarray]]:
    """One shifted example per prompt_tokens[i] + completions[i] (inputs, targets, weights,
    sampler_logp; see the module docstring); ValueError naming the row when one exceeds seq_len."""
    examples = []
    for i, (p, c, lp) in enumerate(zip(prompt_tokens, completions, logprobs)):
        seq = np.asarray([*p, *c], np.int32)
        if len(seq) - 1 > seq_len:
            raise ValueError(f"row {i}: {len(p)} prompt + {len(c)} completion tokens exceed seq_len + 1 = {seq_len + 1}")
        # the first completion token is the target at position len(p) - 1
        on_completion = np.arange(len(seq) - 1) >= len(p) - 1
        sampler_logp = np.zeros(len(seq) - 1, np.float32)
        sampler_logp[len(p) - 1:] = lp
        keep = not (mask_truncated and truncated[i])
        examples.append({"inputs": seq[:-1], "targets": seq[1:], "sampler_logp": sampler_logp,
                         "weights": (on_completion & keep).astype(np.float32)})
    return examples


ROW_FEATURES = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "sampler_logp": np.float32}


def build_rows(prompt_tokens: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
               logprobs: Sequence[Sequence[float]], truncated: Sequence[bool], seq_len: int,
               mask_truncated: bool) -> dict[str, np.ndarray]:
    """Training rows (see the module docstring) for prompt_tokens[i] + completions[i], one per row."""
    return one_per_row(completion_examples(prompt_tokens, completions, logprobs, truncated, seq_len, mask_truncated),
                       seq_len)


def one_per_row(examples: Sequence[dict[str, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
    """The unpacked layout: example i in row i, padded to seq_len."""
    return data_lib.layout_rows(examples, [[i] for i in range(len(examples))], seq_len, ROW_FEATURES)


def update_rows(examples: Sequence[dict[str, np.ndarray]], rc, parts: int, rows_per_part: int) -> tuple[dict, dict]:
    """The step's rows and their metrics: packed (rc.pack_len > 0; pack_rows) or one per row cut to
    the longest rounded up to rc.row_bucket (row_length)."""
    if rc.pack_len:
        rows, needed = pack_rows(examples, parts, rc.pack_len, rows_per_part)
        return rows, {"update/pack_rows_needed": float(needed), "update/pack_overflow": float(needed > rows_per_part)}
    full = rc.max_prompt_len + rc.max_new_tokens
    return one_per_row(examples, row_length(max(len(ex["inputs"]) for ex in examples), full, rc.row_bucket)), {}


def packed_rows_per_part(rc, parts: int) -> int:
    """Packed rows per micro-batch: rc.pack_rows, or (0) enough for its prompts_per_step x
    group_size / parts sequences at full length whatever their lengths: first fit opens a row only
    when every open one holds more than pack_len - seq_len tokens, so at least pack_len // seq_len
    sequences each (seq_len = max_prompt_len + max_new_tokens)."""
    if rc.pack_rows:
        return rc.pack_rows
    per_part = rc.prompts_per_step * rc.group_size // parts
    return -(-per_part // (rc.pack_len // (rc.max_prompt_len + rc.max_new_tokens)))


def pack_rows(examples: Sequence[dict[str, np.ndarray]], parts: int, pack_len: int,
              rows_per_part: int) -> tuple[dict[str, np.ndarray], int]:
    """The packed update batch of `examples` (completion_examples) and how many rows a part needed.

    Example i goes to part (micro-batch) i % parts, as its unpacked row would (step._split takes
    rows j, j + parts, ... for micro-batch j), so minibatches hold the same sequences packed or
    not. Each part is packed first fit (data.first_fit) into rows of pack_len tokens; the global
    row r * parts + j is part j's row r, and `sequence` gives each position's example index in its
    part (i // parts; padding 0, weight 0), the index of its advantage in that micro-batch.
    Every part gets rows_per_part rows; when one needs more, every part gets that many rounded up
    to a multiple of rows_per_part (a new batch shape: one more compiled step)."""
    examples = [{**ex, "sequence": np.full(len(ex["inputs"]), i // parts, np.int32)} for i, ex in enumerate(examples)]
    bins = []
    for j in range(parts):
        idx = list(range(j, len(examples), parts))
        bins.append([[idx[k] for k in b] for b in data_lib.first_fit([len(examples[i]["inputs"]) for i in idx],
                                                                     pack_len)])
    needed = max(len(b) for b in bins)
    R = rows_per_part if needed <= rows_per_part else -(-needed // rows_per_part) * rows_per_part
    rows = [bins[j][r] if r < len(bins[j]) else [] for r in range(R) for j in range(parts)]
    return data_lib.layout_rows(examples, rows, pack_len, {**ROW_FEATURES, "sequence": np.int32}), needed


def sequence_advantages(rewards: np.ndarray, rc) -> np.ndarray:
    """Advantages [N] of the step's rewards by rc.advantage: grpo (group_advantages with
    rc.scale_rewards) or rloo (rloo_advantages)."""
    if rc.advantage == "rloo":
        return np.asarray(rloo_advantages(rewards, rc.group_size), np.float32)
    return np.asarray(group_advantages(rewards, rc.group_size, rc.scale_rewards, rc.adv_eps), np.float32)


OVERLAPS = ("none", "one-step-off")


class RolloutSource:
    """loop.run's batch source for GRPO (see the module docstring).

    The rollouts decode with a copy of the learner's weights in the rollout layout
    (reasonax.train.rollout_layout: grpo.rollout_mesh over `devices`, default all of the train
    mesh's devices), synced once per step. overlap 'one-step-off' (rc.overlap): `devices` are a
    separate rollout group; next(state) at step t returns the batch sampled with theta_{t-1} while
    step t-1 trained (step 0: with theta_0), syncs theta_t to the rollout group and starts sampling
    batch t+1 in a background thread while step t trains. The in-flight batch goes into each
    checkpoint (checkpoint_extra / restore_extra), so a resumed run trains on the same batches."""

    def __init__(self, prompts: list[Prompt], cfg: ModelConfig, tokenizer, rc, mesh, seed: int,
                 eos_ids: Sequence[int], stop_strings: Sequence[str] = (), *, devices: Sequence | None = None,
                 num_steps: int | None = None, chip=None, budget: int | None = None, parts: int = 1):
        self.prompts, self.cfg, self.tokenizer, self.rc, self.mesh = prompts, cfg, tokenizer, rc, mesh
        self.seed, self.eos_ids, self.stop_strings = seed, tuple(eos_ids), tuple(stop_strings)
        self.stop = sample.StopStrings(tokenizer, self.stop_strings, self.eos_ids)
        self.iterator = prompt_stream(len(prompts), seed)
        self.user_fns = [load_reward_fn(p) for p in rc.reward_fns]
        self.sp = sample.SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature,
                                        top_k=rc.top_k, top_p=rc.top_p, n=rc.group_size)
        self.seq_len = rc.max_prompt_len + rc.max_new_tokens
        self.overlap = rc.overlap == "one-step-off"
        if self.overlap and jax.process_count() > 1:
            raise ValueError("grpo.overlap='one-step-off' runs in one process (a single host); this run has "
                             f"{jax.process_count()} processes (see docs/ARCHITECTURE.md, 'Rollouts at pod scale')")
        self.devices = list(mesh.devices.flat) if devices is None else list(devices)
        self.num_steps, self.chip, self.budget = num_steps, chip, budget
        self.layout: rollout_layout.Layout | None = None  # resolved at the first step (needs the state's size)
        self.sync = rollout_layout.WeightSync(rollout_layout.lora_frozen if cfg.lora is not None else (lambda k: False))
        self._targets = None
        self._pending: concurrent.futures.Future | None = None  # one-step-off: the next batch in flight
        self._pending_index = -1
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rollout") if self.overlap else None
        # what loop.run saves beside the state (one-step-off only: the batch in flight)
        self.checkpoint_extra = self._checkpoint_extra if self.overlap else None
        self.parts = parts  # micro-batches per step (minibatches x accum_steps): the packed layout's parts
        self.pack_rows = packed_rows_per_part(rc, parts) if rc.pack_len else 0
        self._metrics: dict = {}
        self._last_end: float | None = None  # end of the previous next()
        self._prev_tokens = 0  # real tokens of the previous batch x update epochs
        # prompt KV shared across prompts, kept while the weights are unchanged (the weight sync's params version)
        self.prefix_cache = (sample.engine.PrefixCache(rc.prefix_cache_gb, rc.prefix_block)
                             if rc.prefix_cache_gb > 0 else None)
        self._prompt_tokens = np.zeros(2, np.int64)  # this step's prompt tokens: prefilled, from the prefix cache

    def metrics(self) -> dict:
        return dict(self._metrics)

    def _place(self, state, syncs: list) -> dict:
        """The weight sync: state.params in the rollout layout (resolved on the first call); its
        (bytes moved per device, seconds) appended to syncs."""
        if self.layout is None:
            dtype = state.params["embed"].dtype
            # overlap none: the train state stays on these devices while rolling out
            resident = 0 if self.overlap else rollout_layout.per_device_bytes(
                (state.params, getattr(state, "opt_state", None)))
            adapters = state.params["layers"].get(ADAPTERS) if isinstance(state.params["layers"], dict) else None
            self.layout = rollout_layout.resolve(
                self.cfg, self.rc, self.mesh, self.devices, rows=self.rc.prompts_per_step * self.rc.group_size,
                dtype=dtype, chip=self.chip, budget=self.budget, resident=resident,
                adapters_dtype=jax.tree.leaves(adapters)[0].dtype if adapters else None)
            if not self.layout.is_train:
                self._targets = rollout_layout.rollout_shardings(state.params, self.layout.mesh, self.cfg)
        params = self.sync(state.params, self._targets)
        syncs.append((self.sync.bytes_moved, self.sync.seconds))
        return params

    def _round(self, params, index: int, version: int, round_: int):
        idx = [int(next(self.iterator)) for _ in range(self.rc.prompts_per_step)]
        t0 = time.perf_counter()
        with sharding.use_rules(self.layout.rules):
            res = sample.generate(params, self.cfg, [self.prompts[i].tokens for i in idx], self.sp,
                                  eos_ids=self.eos_ids, seed=(self.seed * 1_000_003 + index * 97 + round_) % (2**31 - 1),
                                  key_ids=idx, stop=self.stop, **engine_options(self.rc),
                                  **({} if self.prefix_cache is None else
                                     dict(prefix_cache=self.prefix_cache, params_version=version)))
        t_gen = time.perf_counter() - t0
        self._prompt_tokens += (res.stats.get("prefill_tokens", 0), res.stats.get("cached_tokens", 0))
        t0 = time.perf_counter()
        out = _Completions(tokens=res.tokens, logprobs=res.logprobs,
                           truncated=[reason == "length" for reason in res.finish_reasons],
                           stopped=[reason == "stop" for reason in res.finish_reasons],
                           generated=res.stats.get("drawn", res.generated_tokens))
        texts = [completion_text(self.tokenizer, t, self.eos_ids, self.stop_strings) for t in out.tokens]
        G = self.rc.group_size
        golds = [self.prompts[i].gold for i in idx for _ in range(G)]
        qs = [self.prompts[i].text for i in idx for _ in range(G)]
        with GRADE_LOCK:
            r, parts = rewards(texts, golds, [len(t) for t in out.tokens], qs, self.rc, self.user_fns)
        return idx, out, r, parts, t_gen, time.perf_counter() - t0

    def _sample(self, params, index: int, version: int) -> tuple[dict, dict]:
        """Batch `index` (its prompts from the stream, its seeds from the index) sampled with params
        of weight-sync version `version` (the prefix cache's key): (global rows as numpy, their
        metrics). One batch at a time (the one-step-off thread's, or the first step's)."""
        self._prompt_tokens[:] = 0
        G, P = self.rc.group_size, self.rc.prompts_per_step
        crashes = grader.stats()["worker_crashes"]  # grader workers lost (and replaced) in this batch
        keep, spare, t_gen, t_rew, rounds, generated = [], [], 0.0, 0.0, 0, 0
        while len(keep) < P and rounds < max(1, self.rc.max_sampling_rounds if self.rc.dynamic_sampling else 1):
            idx, res, r, parts, tg, tr = self._round(params, index, version, rounds)
            t_gen, t_rew, rounds, generated = t_gen + tg, t_rew + tr, rounds + 1, generated + res.generated
            for g, i in enumerate(idx):
                rows = range(g * G, (g + 1) * G)
                parts_g = {k: v[rows.start:rows.stop] for k, v in parts.items()}
                parts_g["stopped"] = np.asarray(res.stopped[rows.start:rows.stop], np.float32)
                group = (i, res.tokens[rows.start:rows.stop], res.logprobs[rows.start:rows.stop],
                         res.truncated[rows.start:rows.stop], r[rows.start:rows.stop], parts_g)
                informative = np.ptp(group[4]) > 0
                (keep if informative or not self.rc.dynamic_sampling else spare).append(group)
        filled = max(0, P - len(keep))
        groups = (keep + spare)[:P]  # short after max rounds: all-equal groups fill (zero advantage)
        rew = np.concatenate([g[4] for g in groups])
        adv = sequence_advantages(rew, self.rc)
        comps = [c for g in groups for c in g[1]]
        trunc = [t for g in groups for t in g[3]]
        heads = [self.prompts[g[0]].tokens for g in groups for _ in range(G)]
        examples = completion_examples(heads, comps, [lp for g in groups for lp in g[2]], trunc, self.seq_len,
                                       self.rc.mask_truncated)
        rows, pack_metrics = update_rows(examples, self.rc, self.parts, self.pack_rows)
        rows["advantages"] = adv
        lengths = np.asarray([len(c) for c in comps])
        metrics = {
            "reward/mean": float(rew.mean()), "reward/std": float(rew.std()),
            "reward/accuracy": float(np.concatenate([g[5]["accuracy"] for g in groups]).mean()),
            "reward/zero_adv_groups": float(np.mean([np.ptp(g[4]) == 0 for g in groups])),
            "rollout/length_mean": float(lengths.mean()),
            "rollout/length_max": float(lengths.max()), "rollout/truncated": float(np.mean(trunc)),
            "rollout/stop_string": float(np.concatenate([g[5]["stopped"] for g in groups]).mean()),
            "rollout/rounds": float(rounds), "rollout/filled_groups": float(filled),
            "time/rollout": t_gen, "time/reward": t_rew, "rollout/tokens_per_sec": generated / max(t_gen, 1e-9),
            "grader/worker_crashes": float(grader.stats()["worker_crashes"] - crashes),
            "rollout/prefill_tokens": float(self._prompt_tokens[0]),
            "rollout/cached_tokens": float(self._prompt_tokens[1]),
            "rollout/prefix_hit_rate": float(self._prompt_tokens[1] / max(1, self._prompt_tokens.sum())),
            "update/padding": float(np.mean(rows["segment_ids"] == 0)), **pack_metrics,
        }
        if "format" in groups[0][5]:
            metrics["reward/format"] = float(np.concatenate([g[5]["format"] for g in groups]).mean())
        return rows, metrics

    def _sync_metrics(self, syncs: list[tuple[int, float]]) -> dict:
        """This step's weight syncs: bytes moved per device and seconds, summed; the params version."""
        return {"rollout/params_version": float(self.sync.version), "time/weight_sync": sum(s for _, s in syncs),
                "rollout/sync_bytes_per_device": float(sum(b for b, _ in syncs))}

    def next(self, state) -> dict:
        jax.block_until_ready(state.params)  # the previous update's device time, not the rollout's
        now = time.perf_counter()
        t_update = 0.0 if self._last_end is None else now - self._last_end
        step = int(state.step)
        wait, syncs = 0.0, []
        if self._pending is not None and self._pending_index == step:  # one-step-off: sampled with theta_{t-1}
            t0 = time.perf_counter()
            rows, metrics = self._pending.result()
            wait, self._pending = time.perf_counter() - t0, None
            metrics = {**metrics, "rollout/staleness": 1.0}
        else:  # on-policy: overlap none, or one-step-off's first step (and a resume without a batch in flight)
            rows, metrics = self._sample(self._place(state, syncs), step, self.sync.version)
            metrics = {**metrics, "rollout/staleness": 0.0}
            if not self.overlap:
                self.sync.free()
        if self.overlap:
            metrics["time/rollout_wait"] = wait
            if self.num_steps is None or step + 1 < self.num_steps:
                params = self._place(state, syncs)  # theta_t to the rollout group, before step t donates it
                self._pending = self._executor.submit(self._sample, params, step + 1, self.sync.version)
                self._pending_index = step + 1
        self._metrics = {**metrics, **self._sync_metrics(syncs), "time/update": t_update}
        if t_update:
            self._metrics["update/tokens_per_sec"] = self._prev_tokens / t_update
        self.last_tokens = int((rows["segment_ids"] > 0).sum())  # real tokens of this batch (MFU)
        self._prev_tokens = self.last_tokens * self.rc.mu
        self._last_end = time.perf_counter()
        return self._to_global(rows)

    def _to_global(self, rows: dict) -> dict:
        pc, pi = jax.process_count(), jax.process_index()
        local = {k: len(v) // pc for k, v in rows.items()}  # rows; advantages: one per sequence
        return data_lib.to_global({k: v[pi * local[k]:(pi + 1) * local[k]] for k, v in rows.items()}, self.mesh)

    def _checkpoint_extra(self) -> dict | None:
        """What a checkpoint must hold beside the state and the prompt stream: one-step-off's batch
        in flight (sampled with the params before the step just taken), waited for; None otherwise."""
        if self._pending is None:
            return None
        rows, metrics = self._pending.result()
        return {"index": self._pending_index, "rows": rows, "metrics": metrics}

    def restore_extra(self, extra: dict | None) -> None:
        """Put a checkpoint's batch in flight back (one-step-off resume)."""
        if extra is None:
            return
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_result(({k: np.asarray(v) for k, v in extra["rows"].items()}, dict(extra["metrics"])))
        self._pending, self._pending_index = fut, int(extra["index"])

    def close(self) -> None:
        """Wait for a batch in flight and stop the rollout thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
