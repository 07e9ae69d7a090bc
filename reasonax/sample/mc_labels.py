"""Math-Shepherd-style Monte Carlo step labels (Wang et al. 2024, arXiv 2312.08935): rollouts from
each step prefix through the rollout engine, graded against the gold answer.

    python -m reasonax.sample.mc_labels --config=configs/mc_labels_demo.py

For a solution of n steps (reasonax.eval.stepwise reads them; the prompt, each step and the
separator are tokenized apart and joined by reasonax.model.prm.join_steps, as the PRM reads
them), the prefix of step i < n is the prompt + steps 1..i, each followed by the separator. From
it the policy samples k completions (one engine prompt with sampling.n = k: the prefix is
prefilled once and shared by its k rows); a completion reaches the gold when the grader
(reasonax.eval.grader) finds the gold answer in steps 1..i + the completion. Step i's label is
c_i / k (soft) or c_i > 0 (hard); step n's is whether the solution's own answer is the gold one
(graded, not sampled): reasonax.eval.step_labels.mc_labels.

Engine calls: the step prefixes of `solutions_per_call` solutions go to one generate call; a
PrefixCache (prefix_cache_gb, blocks of prefix_block tokens, kept across the calls of a run at
params version 0) serves each prefix's longest cached head -- the question shared by a question's
solutions, step i's prefix inside step i+1's -- so only the rest is prefilled. Every (solution
id, step) has its own key id, so a rollout's tokens depend on neither the batch, the cache nor
where a rerun resumed.

Rollout FLOPs are counted from realised tokens (reasonax.sample.budget.generation_flops): each
prefix prefilled once, minus the tokens the prefix cache served (GenerateResult.cached_lengths),
plus every kept generated token; the total goes to <output>.summary.json (this invocation's and,
across resumed invocations, the cumulative sum). Output lines: {id, prompt, completions, labels,
gold, kept input fields, answer_correct, rollouts: {k, correct [n-1], prefix_tokens [n-1],
generated_tokens [n-1]}}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import jax
import ml_collections

from reasonax import jsonl, typed
from reasonax.cli import flag_config
from reasonax.eval import grader, step_labels, stepwise
from reasonax.model import convert, prm
from reasonax.model.config import ModelConfig
from reasonax.model.sharding import make_mesh
from reasonax.model.tokenizer import from_spec
from reasonax.sample import budget, engine
from reasonax.sample.sampler import SamplingParams
from reasonax.sample.stops import StopStrings, cut_at_stop, stop_token_ids


@dataclasses.dataclass(frozen=True)
class RolloutFields:
    """How the policy completes a step prefix."""

    k: int = 8                  # completions per step prefix
    max_new_tokens: int = 256   # per completion
    temperature: float = 1.0    # 0 = greedy (then all k completions are the same)
    top_k: int = 0              # 0 = off
    top_p: float = 1.0          # 1 = off
    stop_strings: tuple[str, ...] = ()  # text that ends a completion (besides EOS)

    def problems(self) -> list[str]:
        if self.k < 1 or self.max_new_tokens < 1 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            return [f"k={self.k} and max_new_tokens={self.max_new_tokens} must be >= 1, temperature="
                    f"{self.temperature} and top_k={self.top_k} >= 0, top_p={self.top_p} in (0, 1]"]
        return []


@dataclasses.dataclass(frozen=True)
class MCLabelsConfig:
    """Every field of a Monte Carlo labelling job, with its default and meaning."""

    model: str = ""             # the policy: HF directory (config.json + safetensors) or reasonax Orbax checkpoint
    dtype: str = "float32"      # parameter / activation dtype: float32 or bfloat16
    tokenizer: str = ""         # "" = the model's own, "bytes" = the byte tokenizer, or a tokenizer directory
    bos: bool = True            # start the prompt with the tokenizer's BOS (as data.template='raw' trains); the
                                # prompt is the raw text the policy continues (render a chat template into it)
    solutions: stepwise.SolutionFields = stepwise.SolutionFields()  # what to read (each needs a gold answer)
    output: str = ""            # stepwise JSONL written (appended to: a rerun resumes);
                                # <output>.summary.json next to it
    mode: str = "soft"          # soft: label = fraction of the k completions that reach the gold;
                                # hard: whether any does
    rollout: RolloutFields = RolloutFields()
    seed: int = 0               # sampling seed; each (solution id, step, sample) has its own key
    fallback: bool = False      # grader: take the last number when no answer is stated
    grade_timeout_s: float = 5.0  # per comparison, in the grader's killable workers
    solutions_per_call: int = 8  # solutions whose step prefixes go to one engine call (records appended after it)
    kv_budget_gb: float = 2.0   # per device: KV cache + decode temporaries of the slots (sets the slot count)
    num_slots: int = 0          # decode slots (0 = as many as kv_budget_gb holds, at most 256)
    prefix_cache_gb: float = 0.25  # per device, out of kv_budget_gb: the prefix cache (0 = off; same tokens either way)
    prefix_block: int = 16      # tokens per prefix-cache block (step prefixes differ by a few dozen tokens)
    block_steps: int = 16       # decode steps per jitted block
    max_records: int = 0        # stop after this many new records (0 = all): a partial run, resumed later
    progress: bool = True       # progress bar

    def problems(self) -> list[str]:
        out = []
        if not self.model or not self.output:
            out.append("model and output are required")
        if self.mode not in step_labels.MODES:
            out.append(f"mode={self.mode!r}; expected one of {step_labels.MODES}")
        if self.dtype not in ("float32", "bfloat16"):
            out.append(f"dtype={self.dtype!r}; expected float32 or bfloat16")
        if self.solutions_per_call < 1 or self.max_records < 0:
            out.append(f"solutions_per_call={self.solutions_per_call} (>= 1), max_records={self.max_records} (>= 0)")
        out += engine.option_problems(self.num_slots, self.block_steps, self.kv_budget_gb, self.prefix_cache_gb,
                                      self.prefix_block)
        return out


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of MCLabelsConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(MCLabelsConfig())


def key_id(solution_id: str, step: int) -> int:
    """The engine key id of a step prefix's rollouts: a hash of (solution id, step), so the
    samples do not depend on the solution's position, the batch or where a run resumed."""
    return int.from_bytes(hashlib.blake2b(f"{solution_id}\x00{step}".encode(), digest_size=4).digest(), "little")


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """A solution as the policy sees it: prefixes[i] = prompt + steps 1..i+1 with separators (i < n-1)."""

    ids: list[int]
    ends: list[int]

    def prefix(self, i: int) -> list[int]:
        return self.ids[:self.ends[i] + 1]


def tokenize(sol: stepwise.Solution, tokenizer, separator: str, bos: bool) -> Tokenized:
    """Prompt (with BOS when asked and the tokenizer has one), each step and the separator
    tokenized apart and joined (prm.join_steps); ValueError naming the solution when one is empty."""
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    head = enc(sol.prompt)
    if bos and tokenizer.bos_token_id is not None:
        head = [tokenizer.bos_token_id, *head]
    try:
        ids, ends = prm.join_steps(head, [enc(s) for s in sol.steps], enc(separator))
    except ValueError as e:
        raise ValueError(f"{sol.where}: {e} after tokenization") from None
    return Tokenized(ids, ends)


def rollout_flops(cfg: ModelConfig, prompt_lengths, cached_lengths, prompt_index, lengths) -> dict:
    """FLOPs of one engine call from realised tokens: each prompt prefilled once except its
    cached tokens, each row's generated tokens attending to its prompt and itself."""
    total = Counter({"dense": 0, "attention": 0, "total": 0})
    for p, c in zip(prompt_lengths, cached_lengths):
        total.update(budget.generation_flops(cfg, p, 0, cached=c))
    for i, g in zip(prompt_index, lengths):
        total.update(budget.generation_flops(cfg, prompt_lengths[i], g, prefill=False))
    return dict(total)


def label_batch(params, cfg: ModelConfig, tokenizer, sols: list[stepwise.Solution], c: MCLabelsConfig, *,
                eos_ids, prefix_cache=None, params_version: int | None = None,
                progress=None) -> tuple[list[dict], dict]:
    """Monte Carlo labels of `sols` (one engine call for all their step prefixes): (stepwise
    records, {'flops', 'prompts', 'rows', 'prefill_tokens', 'cached_tokens', 'generated_tokens',
    'engine': the call's token counts: prompt_lengths, cached_lengths, prompt_index, lengths, and
    the engine's own prefill_tokens, cached_tokens, prefix_hit_rate})."""
    r = c.rollout
    sep = c.solutions.separator
    toks = [tokenize(s, tokenizer, sep, c.bos) for s in sols]
    prompts, owner, keys = [], [], []
    for j, (s, t) in enumerate(zip(sols, toks)):
        longest = t.ends[-2] + 1 if len(s.steps) > 1 else 0
        if longest + r.max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"{s.where}: the prefix of step {len(s.steps) - 1} is {longest} tokens; with "
                             f"rollout.max_new_tokens={r.max_new_tokens} it exceeds the model's "
                             f"{cfg.max_position_embeddings} positions")
        for i in range(len(s.steps) - 1):
            prompts.append(t.prefix(i))
            owner.append((j, i))
            keys.append(key_id(s.id, i))
    counts = [[0] * (len(s.steps) - 1) for s in sols]
    gen_tokens = [[0] * (len(s.steps) - 1) for s in sols]
    stats = {"flops": {"dense": 0, "attention": 0, "total": 0}, "prompts": len(prompts), "rows": 0,
             "prefill_tokens": 0, "cached_tokens": 0, "generated_tokens": 0,
             "engine": {"prompt_lengths": [], "cached_lengths": [], "prompt_index": [], "lengths": []}}
    texts, golds, row_owner = [], [], []
    if prompts:
        sp = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
                            top_p=r.top_p, n=r.k)
        stop = StopStrings(tokenizer, r.stop_strings, eos_ids) if r.stop_strings else None
        cache = dict(prefix_cache=prefix_cache, params_version=params_version) if prefix_cache is not None else {}
        res = engine.generate(params, cfg, prompts, sp, eos_ids=eos_ids, seed=c.seed, key_ids=keys, stop=stop,
                              num_slots=c.num_slots or None, kv_budget_bytes=int(c.kv_budget_gb * 2**30),
                              block_steps=c.block_steps, progress=progress, **cache)
        for p, row in zip(res.prompt_index, res.tokens):
            j, i = owner[p]
            text = tokenizer.decode([t for t in row if t not in eos_ids], skip_special_tokens=True)
            texts.append(sep.join(sols[j].steps[:i + 1]) + sep + cut_at_stop(text, r.stop_strings)[0])
            golds.append(sols[j].gold)
            row_owner.append((j, i))
            gen_tokens[j][i] += len(row)
        stats.update(flops=rollout_flops(cfg, res.prompt_lengths, res.cached_lengths, res.prompt_index, res.lengths),
                     rows=len(res.tokens), prefill_tokens=sum(res.prompt_lengths) - sum(res.cached_lengths),
                     cached_tokens=sum(res.cached_lengths), generated_tokens=res.generated_tokens,
                     engine={"prompt_lengths": res.prompt_lengths, "cached_lengths": res.cached_lengths,
                             "prompt_index": res.prompt_index, "lengths": res.lengths,
                             **{k: res.stats[k] for k in ("prefill_tokens", "cached_tokens", "prefix_hit_rate")}})
    # the rollouts' verdicts, then each solution's own answer, in one grading batch
    verdicts = grader.grade_batch(texts + [sep.join(s.steps) for s in sols], golds + [s.gold for s in sols],
                                  fallback=c.fallback, timeout=c.grade_timeout_s)
    for (j, i), ok in zip(row_owner, verdicts):
        counts[j][i] += bool(ok)
    own = verdicts[len(texts):]
    records = []
    for j, s in enumerate(sols):
        labels = step_labels.mc_labels(counts[j], r.k, own[j], c.mode)
        rollouts = {"k": r.k, "correct": counts[j],
                    "prefix_tokens": [toks[j].ends[i] + 1 for i in range(len(s.steps) - 1)],
                    "generated_tokens": gen_tokens[j]}
        records.append(stepwise.record(s, labels, answer_correct=bool(own[j]), rollouts=rollouts))
    return records, stats


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}


def run(config: ml_collections.ConfigDict | MCLabelsConfig) -> dict:
    """Label per config (converted once into an MCLabelsConfig); returns the summary it writes."""
    c = typed.from_config(MCLabelsConfig, config)
    sols = stepwise.read_solutions(c.solutions, need_gold=True)
    output = Path(c.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    todo, done = stepwise.pending(sols, output)
    if c.max_records:
        todo = todo[:c.max_records]
    mesh = make_mesh(data=-1) if jax.device_count() > 1 else None
    cfg, params = convert.load_model(c.model, dtype=c.dtype, mesh=mesh)
    tokenizer = from_spec(c.tokenizer, c.model, "config.tokenizer")
    eos_ids = stop_token_ids(tokenizer, c.rollout.stop_strings, cfg)
    cache = engine.PrefixCache(c.prefix_cache_gb, c.prefix_block) if c.prefix_cache_gb > 0 else None
    flops, counters = {"dense": 0, "attention": 0, "total": 0}, Counter()
    from tqdm import tqdm

    rows = c.rollout.k * sum(len(s.steps) - 1 for s in todo)
    with tqdm(total=rows, desc=f"rollouts ({len(todo)} solutions)", unit="rollout", disable=not c.progress) as bar:
        for lo in range(0, len(todo), c.solutions_per_call):
            part = todo[lo:lo + c.solutions_per_call]
            recs, st = label_batch(params, cfg, tokenizer, part, c, eos_ids=eos_ids, prefix_cache=cache,
                                   params_version=0 if cache is not None else None,
                                   progress=engine.tqdm_progress(bar))
            jsonl.append(output, recs)
            st.pop("engine")
            flops = _add(flops, st.pop("flops"))
            counters.update(st)
    summary_path = Path(str(output) + ".summary.json")
    before = {}
    if done and summary_path.is_file():
        before = json.loads(summary_path.read_text()).get("rollout_flops_cumulative", {})
    steps = correct = 0
    for _, rec in stepwise.read_stepwise(output):
        steps += len(rec["labels"])
        correct += sum(float(v) for v in rec["labels"])
    summary = {"output": str(output), "labeller": "monte_carlo", "model": c.model, "mode": c.mode,
               "k": c.rollout.k, "solutions_in_input": len(sols), "skipped_as_done": done, "written_now": len(todo),
               "records": done + len(todo), "steps": steps, "mean_label": correct / steps if steps else None,
               "rollout_flops": flops, "rollout_flops_cumulative": _add(before, flops),
               **{k: counters[k] for k in ("prompts", "rows", "prefill_tokens", "cached_tokens", "generated_tokens")},
               "separator": c.solutions.separator,
               "seed": c.seed}
    jsonl.write_json(summary_path, summary, indent=1)
    return summary


def main(argv):
    summary = run(flag_config(argv, "configs/mc_labels_demo.py"))
    print(json.dumps({k: summary[k] for k in ("records", "written_now", "steps", "mean_label")}
                     | {"rollout_flops": summary["rollout_flops"]["total"]}))


def cli() -> None:
    """The `reasonax-mc-labels` command (also `python -m reasonax.sample.mc_labels`)."""
    from absl import app
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/mc_labels_demo.py).")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    cli()
