"""CLI: prompts JSONL -> completions JSONL + summary JSON.

    python -m reasonax.sample.generate_cli --config=configs/generate_gemma3_270m.py \\
        --config.model=/models/gemma-3-270m --config.prompts=questions.jsonl --config.output=out/samples.jsonl

Each output line: {"prompt_id", "sample_index", "text", "num_tokens", "finish_reason"[, "logprobs"]}.
All prompts go to one run of the rollout engine (reasonax.sample.engine: continuous batching,
stop strings end a row in the loop); a prompt's records are appended (and fsynced) as soon as
all its samples are done. A rerun with the same output skips prompt ids already complete and
regenerates unfinished ones with the same keys, so an interrupted run ends with the records an
uninterrupted one writes. Prompt prefixes shared across prompts (few-shot exemplars) are
prefilled once, through a prefix cache of prefix_cache_gb per device. The summary
(<output>.summary.json) has tokens, FLOPs, wall time, tokens/s, the decode slots and their KV
memory, slot use, and the prompt tokens prefilled and read from the prefix cache (engine
prefill_tokens, cached_tokens, prefix_hit_rate; the top-level prefill_tokens counts every
distinct prompt's tokens).

SIGTERM (a preemption notice; reasonax.cli.Sigterm) stops the run after the decode block in
flight: the prompts whose samples are all done are on disk, the rest are dropped, the CLI prints
how many are kept and exits with status 75 (reasonax.cli.EXIT_PREEMPTED); the same command
again continues and ends with the records of an uninterrupted run (the file's line order may
differ: records go out as prompts complete).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import jax
import ml_collections
from absl import app, logging
from ml_collections import config_flags

from reasonax import cli as cli_lib, jsonl, typed
from reasonax.cli import flag_config
from reasonax.model import convert, prompts as prompts_lib
from reasonax.model.sharding import make_mesh
from reasonax.model.tokenizer import load_tokenizer
from reasonax.sample import budget, engine
from reasonax.sample.sampler import SamplingParams
from reasonax.sample.stops import StopStrings, cut_at_stop, stop_token_ids

@dataclasses.dataclass(frozen=True)
class SamplingFields:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1 = off
    min_p: float = 0.0        # 0 = off
    n: int = 1                # samples per prompt (the prompt is prefilled once for all of them)

    def problems(self) -> list[str]:
        if self.max_new_tokens < 1 or self.n < 1 or self.temperature < 0 or self.top_k < 0:
            return [f"max_new_tokens={self.max_new_tokens} and n={self.n} must be >= 1, temperature="
                    f"{self.temperature} and top_k={self.top_k} >= 0"]
        return []


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Every field of a generate config, with its default and meaning."""

    model: str = ""           # HF directory (config.json + safetensors) or reasonax Orbax checkpoint (convert CLI)
    dtype: str = "float32"    # parameter / activation dtype: float32 or bfloat16
    prompts: str = ""         # input JSONL, one question per line
    id_field: str = "id"      # field with a unique prompt id ("" = use the line number)
    question_field: str = "question"  # field with the question text (dotted names reach nested fields)
    prompt_format: str = "auto"  # auto (the model family's chat format) | qwen-chat | gemma-chat | few-shot | raw
    instruction: str = prompts_lib.BOXED_INSTRUCTION  # instruction of the chat formats
    few_shot: str = ""        # JSONL of {"question", "answer"} worked examples prepended to every prompt
    num_few_shot: int = 0     # how many of them (0 = all)
    stop_strings: tuple[str, ...] = ()  # text that ends a completion (checked after every decode block); empty = the format's
    output: str = ""          # output JSONL; <output>.summary.json is written next to it
    sampling: SamplingFields = SamplingFields()
    seed: int = 0             # sampling seed; each (prompt line, sample index) has its own key
    kv_budget_gb: float = 2.0  # per device: KV cache + decode temporaries of the slots (sets the slot count)
    num_slots: int = 0        # decode slots (0 = as many as kv_budget_gb holds, at most 256)
    prefix_cache_gb: float = 0.125  # per device, out of kv_budget_gb: KV of prompt prefixes shared across prompts
                              # (few-shot exemplars, a system prompt) is computed once; 0 = off. Same tokens either way
    prefix_block: int = 128   # tokens per prefix-cache block (a prefix is reused in whole blocks)
    block_steps: int = 16     # decode steps per jitted block (stop strings are checked between blocks)
    save_logprobs: bool = False  # add per-token log-probs (sampling distribution) to each record
    progress: bool = True     # progress bar

    def problems(self) -> list[str]:
        out = []
        if self.prompt_format != "auto" and self.prompt_format not in prompts_lib.FORMATS:
            out.append(f"prompt_format={self.prompt_format!r}; expected auto or one of {tuple(prompts_lib.FORMATS)}")
        if self.dtype not in ("float32", "bfloat16"):
            out.append(f"dtype={self.dtype!r}; expected float32 or bfloat16")
        out += engine.option_problems(self.num_slots, self.block_steps, self.kv_budget_gb, self.prefix_cache_gb,
                                      self.prefix_block)
        return out


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of GenerateConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(GenerateConfig())


def load_prompts(cfg) -> list[dict]:
    """[{'id', 'question', 'key'}] from the prompts JSONL (fields named by the config)."""
    out, seen = [], {}
    path = Path(cfg.prompts)
    for lineno, rec in jsonl.read(path):
        pid = str(jsonl.field(rec, cfg.id_field, path, lineno)) if cfg.id_field else str(lineno)
        question = jsonl.field(rec, cfg.question_field, path, lineno)
        if not isinstance(question, str):
            raise jsonl.JsonlError(f"{path}:{lineno}: field {cfg.question_field!r} is not a string")
        if pid in seen:
            raise jsonl.JsonlError(f"{path}:{lineno}: duplicate prompt id {pid!r} (first at line {seen[pid]})")
        seen[pid] = lineno
        out.append({"id": pid, "question": question, "key": lineno})
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def few_shot_examples(cfg) -> list[prompts_lib.Example]:
    if not cfg.few_shot:
        return []
    path = Path(cfg.few_shot)
    return [prompts_lib.Example(jsonl.field(r, "question", path, n), jsonl.field(r, "answer", path, n))
            for n, r in jsonl.read(path)][: cfg.num_few_shot or None]


def completed(output: Path, n: int) -> set[str]:
    """Prompt ids with all n samples in `output`; drops a cut last line and unfinished groups."""
    if not output.exists():
        return set()
    jsonl.drop_partial_tail(output)
    records = [r for _, r in jsonl.read(output)]
    counts = Counter(r["prompt_id"] for r in records)
    done = {pid for pid, c in counts.items() if c >= n}
    if len(done) != len(counts):  # a group cut short: keep only complete groups
        jsonl.rewrite(output, [r for r in records if r["prompt_id"] in done])
    return done


def append_groups(output: Path, n: int, record: Callable[[engine.Completion], dict]):
    """An engine on_complete that appends (and fsyncs) a prompt's n records, in sample order, once
    all its samples are done: a stop or crash leaves whole groups on disk (see `completed`)."""
    groups: dict[int, list] = {}

    def on_complete(c: engine.Completion) -> None:
        group = groups.setdefault(c.prompt, [])
        group.append(record(c))
        if len(group) == n:
            jsonl.append(output, sorted(groups.pop(c.prompt), key=lambda r: r["sample_index"]))

    return on_complete


def run(cfg: ml_collections.ConfigDict | GenerateConfig, should_stop: Callable[[], bool] | None = None) -> dict:
    """Generate per cfg (converted once into a GenerateConfig); returns the summary it writes.
    should_stop (asked after every decode block; a SIGTERM notice) ends the run early: the summary
    then has stopped=True and prompts_complete, the prompts whose records are on disk."""
    cfg = typed.from_config(GenerateConfig, cfg)
    mesh = make_mesh(data=-1) if jax.device_count() > 1 else None
    model_cfg, params = convert.load_model(cfg.model, dtype=cfg.dtype, mesh=mesh)
    tokenizer = load_tokenizer(cfg.model)
    fmt = prompts_lib.default_format(model_cfg) if cfg.prompt_format == "auto" else prompts_lib.get_format(
        cfg.prompt_format)
    stops = tuple(cfg.stop_strings) if cfg.stop_strings else fmt.stop_strings
    eos_ids = stop_token_ids(tokenizer, stops, model_cfg)
    shots = few_shot_examples(cfg)
    sp = SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                        top_k=cfg.sampling.top_k, top_p=cfg.sampling.top_p, min_p=cfg.sampling.min_p,
                        n=cfg.sampling.n)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    items = load_prompts(cfg)
    done = completed(output, sp.n)
    todo = [it for it in items if it["id"] not in done]
    logging.info("%d prompts, %d already complete in %s, %d to do", len(items), len(done), output, len(todo))

    from tqdm import tqdm

    token_prompts = [tokenizer(fmt.render(it["question"], shots, cfg.instruction))["input_ids"] for it in todo]
    stats = Counter()

    def record(c: engine.Completion) -> dict:
        text = cut_at_stop(tokenizer.decode(c.tokens, skip_special_tokens=True), stops)[0]
        rec = {"prompt_id": todo[c.prompt]["id"], "sample_index": c.sample, "text": text,
               "num_tokens": len(c.tokens), "finish_reason": c.finish_reason}
        if cfg.save_logprobs:
            rec["logprobs"] = [round(x, 5) for x in c.logprobs]
        return rec

    write = append_groups(output, sp.n, record)  # a prompt's records go out when all its samples are done

    t0 = time.perf_counter()
    res, run_stats = None, {}
    if todo:
        with tqdm(total=len(todo) * sp.n, desc="samples", unit="sample", disable=not cfg.progress) as bar:
            res = engine.generate(params, model_cfg, token_prompts, sp, eos_ids=eos_ids, seed=cfg.seed,
                                  key_ids=[it["key"] for it in todo], stop=StopStrings(tokenizer, stops, eos_ids),
                                  num_slots=cfg.num_slots or None, kv_budget_bytes=int(cfg.kv_budget_gb * 2**30),
                                  block_steps=cfg.block_steps, progress=engine.tqdm_progress(bar), on_complete=write,
                                  should_stop=should_stop,
                                  **engine.prefix_cache_options(cfg.prefix_cache_gb, cfg.prefix_block))
        if res.stats["stopped"]:
            complete = len(completed(output, sp.n))
            summary = {"model": str(cfg.model), "output": str(output), "prompts_total": len(items),
                       "prompts_complete": complete, "stopped": True}
            Path(str(output) + ".summary.json").write_text(json.dumps(summary, indent=2))
            return summary
        stats.update(prompts=len(todo), samples=len(res.tokens), generated_tokens=res.generated_tokens,
                     prefill_tokens=res.prefill_tokens)
        run_stats = {k: res.stats[k] for k in ("num_slots", "cache_columns", "kv_bytes_per_device",
                                               "step_bytes_per_device", "slot_use", "blocks", "prefills",
                                               "prefill_tokens", "cached_tokens", "prefix_hit_rate",
                                               "prefix_cache_bytes_per_device", "prefill_s")}
    flops = {"dense": 0, "attention": 0, "total": 0}
    if res is not None:
        flops = budget.realised_flops(model_cfg, res.prompt_lengths, res.prompt_index, res.lengths)
    wall = time.perf_counter() - t0
    summary = {"model": str(cfg.model), "model_type": model_cfg.model_type, "output": str(output),
               "prompts_total": len(items), "prompts_skipped_as_done": len(done), **stats,
               "flops": flops, "wall_time_s": round(wall, 3),
               "generated_tokens_per_s": round(stats["generated_tokens"] / wall, 2) if wall > 0 else None,
               "sampling": sp.__dict__, "seed": cfg.seed, "prompt_format": fmt.name, "engine": run_stats}
    Path(str(output) + ".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv):
    cfg = flag_config(argv, "configs/generate_gemma3_270m.py")
    if not cfg.model or not cfg.prompts or not cfg.output:
        raise app.UsageError("--config.model, --config.prompts and --config.output are required")
    with cli_lib.Sigterm("finishing the decode block, writing the prompts whose samples are done, then exiting") \
            as notice:
        summary = run(cfg, should_stop=notice.requested)
    if summary.get("stopped"):
        cli_lib.exit_preempted(f"{summary['prompts_complete']} of {summary['prompts_total']} prompts complete in "
                               f"{summary['output']}")
    print(json.dumps({**{k: summary[k] for k in ("samples", "generated_tokens", "wall_time_s",
                                                 "generated_tokens_per_s") if k in summary},
                      **{k: summary["engine"][k] for k in ("num_slots", "kv_bytes_per_device", "slot_use",
                                                           "prefill_tokens", "cached_tokens", "prefix_hit_rate")
                         if k in summary["engine"]}}))


def cli() -> None:
    """The `reasonax-generate` command (also `python -m reasonax.sample.generate_cli`); the flags are
    defined here only, since config files import this module's default_config."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file (see configs/generate_*.py).")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    cli()
