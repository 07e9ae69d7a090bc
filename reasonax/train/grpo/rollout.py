"""GRPO rollouts: prompts -> G completions each from the sampler on the learner's own params ->
rewards -> group advantages -> one fixed-shape training batch (the GRPO plan's source).

    source = RolloutSource(prompts, cfg, tokenizer, rc, mesh, seed)
    batch = source.next(state)      # what loop.run calls once per step
    source.metrics()                # this step's rollout metrics (reward, accuracy, lengths, times)

Prompts come from a grain stream of record indices (shuffled every epoch, checkpointed with the
run, the same on every process: all processes generate the same global batch, SPMD, and each
places its own rows). The sampling seed differs at every step and round (derived from the run
seed, the step and the round), so a resumed run samples exactly what the uninterrupted one would.

A completion ends after the token that completes one of the template's stop strings (multi-token,
e.g. few-shot's blank line): the engine checks them between decode blocks and frees the slot, so
nothing past the stop is graded or trained on, and the completion counts as finished, not
truncated.

Rows (N = prompts x G, prompt-major; T = the batch's longest prompt + completion rounded up to
a multiple of row_bucket, at most max_prompt_len + max_new_tokens): inputs / targets the
prompt + completion shifted by one, weights 1 on completion targets (0 for a truncated completion
with mask_truncated; it still counts in its group's statistics), sampler_logp the sampler's
log-prob of each completion target, advantages [N].

Times in the metrics: time/rollout (sampling), time/reward (grading), time/update (wall time from
the end of the previous rollout to the start of this one: the previous step's updates with its
logging and checkpointing), with tokens/s of sampling and of the updates.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from reasonax import sample
from reasonax.eval import grader
from reasonax.model.config import ModelConfig
from reasonax.sample.stops import cut_at_stop
from reasonax.train import data as data_lib
from reasonax.train.grpo.objective import group_advantages, overlong_penalty


@dataclasses.dataclass(frozen=True)
class Prompt:
    tokens: tuple[int, ...]
    gold: str
    text: str
    where: str


def load_prompts(rc, tokenizer, max_prompt_len: int) -> list[Prompt]:
    """Prompts of rc.files (JSONL/Parquet; rc.prompt_field, rc.answer_field) tokenized as the
    training pipeline starts an example (data.prompt_tokens); ValueError naming the record
    when one is longer than max_prompt_len tokens."""
    records, _ = data_lib.load_records(rc.files, rc.prompt_field, rc.answer_field, rc.on_malformed)
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


def build_rows(prompt_tokens: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
               logprobs: Sequence[Sequence[float]], truncated: Sequence[bool], seq_len: int,
               mask_truncated: bool) -> dict[str, np.ndarray]:
    """Training rows (see the module docstring) for prompt_tokens[i] + completions[i], one per row."""
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
    return data_lib.layout_rows(examples, [[i] for i in range(len(examples))], seq_len,
                                {"inputs": np.int32, "targets": np.int32, "weights": np.float32,
                                 "sampler_logp": np.float32})


class RolloutSource:
    """loop.run's batch source for GRPO (see the module docstring)."""

    def __init__(self, prompts: list[Prompt], cfg: ModelConfig, tokenizer, rc, mesh, seed: int,
                 eos_ids: Sequence[int], stop_strings: Sequence[str] = ()):
        self.prompts, self.cfg, self.tokenizer, self.rc, self.mesh = prompts, cfg, tokenizer, rc, mesh
        self.seed, self.eos_ids, self.stop_strings = seed, tuple(eos_ids), tuple(stop_strings)
        self.stop = sample.StopStrings(tokenizer, self.stop_strings, self.eos_ids)
        self.iterator = prompt_stream(len(prompts), seed)
        self.user_fns = [load_reward_fn(p) for p in rc.reward_fns]
        self.sp = sample.SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature,
                                        top_k=rc.top_k, top_p=rc.top_p, n=rc.group_size)
        self.seq_len = rc.max_prompt_len + rc.max_new_tokens
        self._metrics: dict = {}
        self._last_end: float | None = None  # end of the previous rollout
        self._prev_tokens = 0  # real tokens of the previous batch x update epochs
        # prompt KV shared across prompts, kept while the weights are unchanged (params version: the step)
        self.prefix_cache = (sample.engine.PrefixCache(rc.prefix_cache_gb, rc.prefix_block)
                             if rc.prefix_cache_gb > 0 else None)
        self._prompt_tokens = np.zeros(2, np.int64)  # this step's prompt tokens: prefilled, from the prefix cache

    def metrics(self) -> dict:
        return dict(self._metrics)

    def _round(self, state, step: int, round_: int):
        idx = [int(next(self.iterator)) for _ in range(self.rc.prompts_per_step)]
        t0 = time.perf_counter()
        res = sample.generate(state.params, self.cfg, [self.prompts[i].tokens for i in idx], self.sp,
                              eos_ids=self.eos_ids, seed=(self.seed * 1_000_003 + step * 97 + round_) % (2**31 - 1),
                              key_ids=idx, stop=self.stop, **engine_options(self.rc),
                              **({} if self.prefix_cache is None else
                                 dict(prefix_cache=self.prefix_cache, params_version=int(state.step))))
        t_gen = time.perf_counter() - t0
        self._prompt_tokens += (res.stats["prefill_tokens"], res.stats["cached_tokens"])
        t0 = time.perf_counter()
        out = _Completions(tokens=res.tokens, logprobs=res.logprobs,
                           truncated=[reason == "length" for reason in res.finish_reasons],
                           stopped=[reason == "stop" for reason in res.finish_reasons],
                           generated=res.stats.get("drawn", res.generated_tokens))
        texts = [completion_text(self.tokenizer, t, self.eos_ids, self.stop_strings) for t in out.tokens]
        G = self.rc.group_size
        golds = [self.prompts[i].gold for i in idx for _ in range(G)]
        qs = [self.prompts[i].text for i in idx for _ in range(G)]
        r, parts = rewards(texts, golds, [len(t) for t in out.tokens], qs, self.rc, self.user_fns)
        return idx, out, r, parts, t_gen, time.perf_counter() - t0

    def next(self, state) -> dict:
        jax.block_until_ready(state.params)  # the previous update's device time, not the rollout's
        now = time.perf_counter()
        t_update = 0.0 if self._last_end is None else now - self._last_end
        step, G, P = int(state.step), self.rc.group_size, self.rc.prompts_per_step
        keep, spare, t_gen, t_rew, rounds, generated = [], [], 0.0, 0.0, 0, 0
        while len(keep) < P and rounds < max(1, self.rc.max_sampling_rounds if self.rc.dynamic_sampling else 1):
            idx, res, r, parts, tg, tr = self._round(state, step, rounds)
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
        adv = np.asarray(group_advantages(rew, G, self.rc.scale_rewards, self.rc.adv_eps))
        comps = [c for g in groups for c in g[1]]
        trunc = [t for g in groups for t in g[3]]
        heads = [self.prompts[g[0]].tokens for g in groups for _ in range(G)]
        T = row_length(max(len(p) + len(c) - 1 for p, c in zip(heads, comps)), self.seq_len, self.rc.row_bucket)
        rows = build_rows(heads, comps, [lp for g in groups for lp in g[2]], trunc, T, self.rc.mask_truncated)
        rows["advantages"] = adv.astype(np.float32)
        lengths = np.asarray([len(c) for c in comps])
        zero_groups = float(np.mean([np.ptp(g[4]) == 0 for g in groups]))
        self._metrics = {
            "reward/mean": float(rew.mean()), "reward/std": float(rew.std()),
            "reward/accuracy": float(np.concatenate([g[5]["accuracy"] for g in groups]).mean()),
            "reward/zero_adv_groups": zero_groups, "rollout/length_mean": float(lengths.mean()),
            "rollout/length_max": float(lengths.max()), "rollout/truncated": float(np.mean(trunc)),
            "rollout/stop_string": float(np.concatenate([g[5]["stopped"] for g in groups]).mean()),
            "rollout/rounds": float(rounds), "rollout/filled_groups": float(filled),
            "time/rollout": t_gen, "time/reward": t_rew, "time/update": t_update,
            "rollout/tokens_per_sec": generated / max(t_gen, 1e-9),
            "rollout/prefill_tokens": float(self._prompt_tokens[0]),
            "rollout/cached_tokens": float(self._prompt_tokens[1]),
            "rollout/prefix_hit_rate": float(self._prompt_tokens[1] / max(1, self._prompt_tokens.sum())),
        }
        self._prompt_tokens[:] = 0
        if t_update:
            self._metrics["update/tokens_per_sec"] = self._prev_tokens / t_update
        self._prev_tokens = int((rows["segment_ids"] > 0).sum()) * self.rc.mu
        self._last_end = time.perf_counter()
        if "format" in groups[0][5]:
            self._metrics["reward/format"] = float(np.concatenate([g[5]["format"] for g in groups]).mean())
        pc, pi = jax.process_count(), jax.process_index()
        local = len(comps) // pc
        return data_lib.to_global({k: v[pi * local:(pi + 1) * local] for k, v in rows.items()}, self.mesh)
