"""The main job: compute-matched sampling end to end on a synthetic task, then GRPO and rounds of
self-improvement (Bansal et al., "Smaller, Weaker, Yet Better", arXiv 2408.16737).

    python -m reasonax.pipeline --config=configs/demo.py [--config.workdir=runs/demo]

Stages, each a call into the library, every artefact under config.workdir:

  data      word problems (reasonax.tasks.word_problems): gold solutions to pretrain on, the
            sampling questions (train split, disjoint from those), the test set; the byte
            tokenizer saved as tokenizer/tokenizer.json and loaded from there like any other.
  pretrain  WC, SE (about 3x WC's parameters) and a student model trained from scratch on gold
            solutions (reasonax.train.sft); greedy accuracy on the test set.
  sample    S samples per sampling question from WC and SE (reasonax.sample.generate), S_WC =
            floor(P_SE / P_WC * S_SE) (sample.budget), each graded (eval.grader, strict) and
            step-checked (eval.step_check). A budget's data are the first S samples of each question
            (every sample is an independent draw keyed by question and sample index, so a prefix
            is what a separate run at that budget would draw); its realised FLOPs count exactly
            those rows, next to the plan (2·P per token, attention apart).
  filter    per dataset -- each model at each budget (S_SE for SE, S_WC for WC) and the
            number-matched control (WC with S_SE samples) -- coverage@S, diversity@S and the
            false-positive rate from the step checker, with bootstrap 95% intervals; the solutions
            whose final answer is right are kept (reasoning unchecked, as in the paper).
  finetune  the paper's three setups on the finetune.budget data: a student, WC (self-improvement)
            and SE (weak-to-strong) each fine-tuned on WC data and on SE data (+ the student on the
            number-matched control), the same number of steps each; held-out greedy accuracy.
  grpo      GRPO (reasonax.train.grpo) from the best fine-tuned model; accuracy before / after.
  search    a process reward model (reasonax.train.prm) trained on the sampled WC and SE
            solutions, labelled step by step by the step checker (eval.checker_labels, with the
            final answer graded), a share of the sampling questions held out for its step
            accuracy / AUC; then on the first search.questions test questions, the best
            fine-tuned model as the policy, majority vote, PRM best-of-N, PRM-weighted vote and
            step-level beam search compared at matched realised FLOPs (reasonax.evaluate's
            selection: beam search with W = k beams of M = search.expansions sets each level's
            budget, the sample methods take the N nearest it).
  rounds    self-improvement for `rounds` rounds: WC samples, filters and fine-tunes on its own
            data, again from the last round's model (round 1 is finetune's WC on WC data), the
            compute of every round (sampling + training FLOPs) accounted.
  report    report.md, coverage.png, accuracy.png, reward.png, search.png (accuracy against
            FLOPs per selection method); a console summary next to the paper's headline result
            and search-and-learn's finding (beam search beats best-of-N at small budgets).

A finished stage writes stages/<name>.json and is skipped when the pipeline runs again (delete
that file to redo it); an interrupted stage resumes from what it finished (each training run from
its latest Orbax checkpoint, each sampling job from the questions whose samples are all in
<samples>.partial). SIGTERM (a preemption notice) stops the run with exit status 75: training at
its next step (saved), sampling after its decode block in flight, any other stage when it ends;
the same command again continues. The run's config is
saved as config.json; resuming with a different config is an error naming the fields. Runs on one
process (the stages use the default mesh over the local devices).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import ml_collections

from reasonax import cli as cli_lib, evaluate, jsonl, pipeline_report, sample
from reasonax.cli import flag_config, require_workdir
from reasonax.eval import checker_labels, metrics, stepwise
from reasonax.eval.datasets import Problem
from reasonax.model import config as config_lib
from reasonax.model import convert
from reasonax.model import flops as flops_lib
from reasonax.model.tokenizer import load_tokenizer
from reasonax.sample import budget, generate_cli
from reasonax.sample import search as search_lib
from reasonax.sample.stops import stop_token_ids
from reasonax.tasks import word_problems
from reasonax.model.config import TINY_MODEL
from reasonax.train import common, grpo, sft
from reasonax.train import prm as prm_recipe
from reasonax.train.grpo import rollout
from reasonax.train.grpo.rollout import completion_text

STAGES = ("data", "pretrain", "sample", "filter", "finetune", "grpo", "search", "rounds", "report")
MODELS = ("wc", "se", "student")
BUDGETS = ("low", "high")
PRESET = "qwen2.5-0.5b"  # the architecture family of the demo models (shapes from models.*.overrides)


def default_config() -> ml_collections.ConfigDict:
    """Every field of a pipeline config (configs/demo.py sets the demo's sizes)."""
    se = dict(TINY_MODEL, hidden_size=96, intermediate_size=384, num_layers=3, num_heads=6)
    return ml_collections.ConfigDict(dict(
        workdir="",  # the run directory (required)
        seed=0,
        task=dict(
            level=1,            # reasonax.tasks.word_problems.LEVELS
            num_pretrain=4000,  # gold solutions the models are trained on from scratch
            num_questions=200,  # sampling questions (train split, not among the pretraining ones)
            num_test=200,       # held-out questions (test split)
        ),
        models=dict(  # ModelConfig overrides on the qwen2.5 preset; steps of pretraining from scratch
            wc=dict(overrides=TINY_MODEL, steps=400, lr=3e-3),
            se=dict(overrides=se, steps=650, lr=3e-3),  # ~13/8 of WC's: Gemma2-27B saw 13T tokens, 9B 8T
            student=dict(overrides=TINY_MODEL, steps=200, lr=3e-3),
        ),
        train=dict(batch_size=8, seq_len=256, warmup_steps=20),  # every SFT run (packed rows)
        sampling=dict(
            se_samples=dict(low=1, high=10),  # S_SE per budget; S_WC = floor(P_SE / P_WC * S_SE)
            temperature=0.7, top_p=1.0, max_new_tokens=96,
        ),
        finetune=dict(budget="high", steps=100, lr=5e-4, warmup_steps=10),
        grpo=dict(steps=30, prompts_per_step=8, group_size=16, lr=2e-5, temperature=1.0),
        search=dict(  # the PRM and verifier-guided search stage
            heldout=0.1,      # share of the sampling questions whose labelled solutions are held out (PRM eval)
            prm=dict(steps=60, batch_size=16, seq_len=192, lr=1e-3, warmup_steps=6),  # the PRM's training run,
                              # from the best fine-tuned model (one solution per row, no packing)
            questions=40,     # the first test questions the methods are compared on
            ks=(2, 4),        # budget levels: beam search with W = k beams sets each level's FLOPs
            expansions=4,     # beam search: M, samples per live beam per step
            max_steps=6,      # beam search: steps (engine calls) per solution at most
            aggregation="last",  # a solution's PRM score from its step scores: last | min | product
            calibration_questions=8,  # questions sampled first for the mean solution and step lengths
            calibration_samples=4,    # samples per calibration question
        ),
        rounds=2,       # self-improvement rounds of WC (>= 1; round 1 is finetune's WC on WC data)
        n_boot=1000,    # bootstrap resamples of every confidence interval
        peak_flops="auto",  # MFU peak of the training runs' logs (monitor.resolve_peak)
    ))


# ------------------------------------------------------------------------------------------------
# helpers


class Progress:
    """Stage lines with the elapsed time of the whole run; `should_stop()` tells the stages whether a
    SIGTERM notice came (the run's cli.Sigterm, when it has one)."""

    def __init__(self, notice: cli_lib.Sigterm | None = None):
        self.t0 = time.perf_counter()
        self.notice = notice

    def should_stop(self) -> bool:
        return self.notice is not None and self.notice.requested()

    def say(self, text: str) -> None:
        t = time.perf_counter() - self.t0
        print(f"[{int(t // 60):02d}:{int(t % 60):02d}] {text}", flush=True)

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"        {desc}", unit="row", leave=False, mininterval=1.0)


def _read_json(path: Path):
    return json.loads(path.read_text())


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_json(path, obj, indent=1, default=float)


def _coverage(correct: list[list[bool]], k: int, n_boot: int) -> dict:
    """coverage@k (pass@k) over questions' verdicts with its bootstrap 95% interval, as a dict;
    k = 1 with one verdict per question is plain accuracy."""

    e = metrics.coverage_at_k(correct, k, n_boot=n_boot)
    return {"value": e.value, "low": e.low, "high": e.high}


def matmul_params(name: str, c) -> int:
    """Parameters in the matmuls of a model (2x this = FLOPs per token): the P of the budget."""

    return flops_lib.matmul_params(preset_config(name, c))


def preset_config(name: str, c):
    """The ModelConfig of the demo's model `name` (wc, se, student): the preset with its overrides."""
    o = dict(c.models[name].overrides)
    o["eos_token_ids"] = tuple(o["eos_token_ids"])
    return config_lib.get_preset(PRESET).replace(**o)


def samples_per_question(c) -> dict:
    """{budget: {'se': S_SE, 'wc': S_WC}} with S_WC compute-matched (floor of the P ratio x S_SE)."""

    p_se, p_wc = matmul_params("se", c), matmul_params("wc", c)
    return {b: {"se": int(s), "wc": budget.compute_matched_samples(p_se, p_wc, int(s))}
            for b, s in c.sampling.se_samples.items()}


def datasets(c) -> dict:
    """{dataset name: (model, samples per question)}: each model at each budget and the
    number-matched control (WC with SE's samples)."""
    s = samples_per_question(c)
    out = {}
    for b in BUDGETS:
        out[f"wc-{b}"] = ("wc", s[b]["wc"])
        out[f"se-{b}"] = ("se", s[b]["se"])
        out[f"wc-{b}-number-matched"] = ("wc", s[b]["se"])
    return out


def _tokenizer(run: Path):
    return load_tokenizer(run / "tokenizer")


def _prompts(run: Path, file: str, tokenizer):
    """(rollout.Prompt per record of data/<file>, eval Problem per record with the record's id)."""

    path = run / "data" / file
    rc = grpo.GRPOSettings(files=(str(path),))
    prompts = rollout.load_prompts(rc, tokenizer, max_prompt_len=1 << 16)
    ids = [r["id"] for _, r in jsonl.read(path)]
    return prompts, [Problem(i, p.text, p.gold, "word_problems") for i, p in zip(ids, prompts)]


def _eos(cfg, tokenizer) -> tuple[int, ...]:
    return stop_token_ids(tokenizer, (), cfg)


def heldout_accuracy(model_dir: Path, run: Path, c) -> dict:
    """Greedy accuracy of an exported model on the test questions, with its 95% interval."""

    cfg, params = convert.load_model(str(model_dir))
    tok = _tokenizer(run)
    ok = grpo.greedy_correct(params, _prompts(run, "test.jsonl", tok)[0], cfg, tok, c.sampling.max_new_tokens,
                             _eos(cfg, tok))
    return {"accuracy": _coverage([[v] for v in ok], 1, c.n_boot), "correct": int(sum(ok)), "problems": len(ok)}


def train_sft(workdir: Path, c, files: list[Path], steps: int, lr: float, warmup: int, seed: int, *,
              run: Path, init: Path | None = None, overrides: dict | None = None) -> dict:
    """One SFT run (from init's HF export, or from scratch with overrides); resumed when
    interrupted, skipped when done. Returns {'hf' (relative to run), 'train_flops', 'seconds', 'examples'}."""

    done = workdir / "done.json"
    if done.is_file():
        return _read_json(done)
    s = sft.default_config()
    s.workdir, s.seed = str(workdir), seed
    if init is not None:
        s.model.path = str(init)
    else:
        s.model.preset, s.model.overrides = PRESET, dict(overrides)
    s.tokenizer = str(run / "tokenizer")
    s.data.files, s.data.template, s.data.seed = [str(f) for f in files], "raw", seed
    s.seq_len, s.batch_size = c.train.seq_len, c.train.batch_size
    s.num_steps = s.optim.total_steps = steps
    s.optim.lr, s.optim.warmup_steps, s.optim.weight_decay = lr, min(warmup, steps - 1), 0.0
    s.checkpoint.every, s.checkpoint.keep = max(1, steps // 2), 1
    s.log_every, s.tensorboard, s.peak_flops = max(1, steps // 4), False, c.peak_flops
    if (workdir / "hf").exists():  # an export cut short: redone from the final checkpoint
        shutil.rmtree(workdir / "hf")
    t0 = time.perf_counter()
    sft.run(s)
    cfg = common.model_config(s)
    # paths in results are relative to the run directory (it may be moved or resumed from elsewhere)
    out = {"hf": str((workdir / "hf").relative_to(run)), "steps": steps, "seconds": time.perf_counter() - t0,
           "examples": sum(1 for f in files for _ in jsonl.read(f)),
           "train_flops": flops_lib.train_flops(cfg, s.batch_size, s.seq_len)["total"] * steps}
    _write_json(done, out)
    return out


def sample_model(model_dir: Path, out: Path, n: int, seed: int, run: Path, c, progress: Progress,
                 name: str, should_stop=None) -> list[dict]:
    """n graded samples per sampling question (skipped when out exists): rows with prompt_id,
    sample_index, text, tokens, finish, answer, gold, correct, steps_ok; the prompts' token
    counts and the wall time (of the last run, when resumed) go to out.json.

    Each question's n rows are appended to <out>.partial as soon as they are all done (crash-safe);
    a rerun samples only the questions not complete there, with the same keys (the question's
    index), so the rows are those of an uninterrupted run. should_stop (a SIGTERM notice, asked
    after every decode block) ends the job there with exit status 75 (cli.exit_preempted)."""

    if out.is_file():
        return [r for _, r in jsonl.read(out)]
    partial = out.with_name(out.name + ".partial")
    cfg, params = convert.load_model(str(model_dir))
    tok = _tokenizer(run)
    prompts, problems = _prompts(run, "questions.jsonl", tok)
    eos = _eos(cfg, tok)
    sp = sample.SamplingParams(max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature,
                               top_p=c.sampling.top_p, n=n)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = generate_cli.completed(partial, n)
    todo = [i for i, p in enumerate(problems) if p.id not in done]

    def record(r: sample.engine.Completion) -> dict:
        return {"prompt_id": problems[todo[r.prompt]].id, "sample_index": r.sample,
                "text": completion_text(tok, r.tokens, eos), "tokens": len(r.tokens), "finish": r.finish_reason}

    res = None
    if todo:
        with progress.bar(len(todo) * n, f"{name}: {len(todo)} questions x {n}") as bar:
            res = sample.generate(params, cfg, [prompts[i].tokens for i in todo], sp, eos_ids=eos, seed=seed,
                                  key_ids=todo, progress=sample.engine.tqdm_progress(bar),
                                  on_complete=generate_cli.append_groups(partial, n, record), should_stop=should_stop)
        if res.stats["stopped"]:
            cli_lib.exit_preempted(f"{len(generate_cli.completed(partial, n))} of {len(problems)} questions' samples "
                                   f"in {partial}")
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted((r for _, r in jsonl.read(partial)), key=lambda r: (order[r["prompt_id"]], r["sample_index"]))
    graded = evaluate.grade_samples(problems, rows, fallback=False, timeout=5.0)
    seconds = res.wall_time_s if res is not None else 0.0
    tokens = res.generated_tokens if res is not None else 0
    _write_json(out.with_name(out.name + ".json"), {"prompt_lengths": [len(p.tokens) for p in prompts],
                                                    "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)})
    jsonl.rewrite(out, graded)
    partial.unlink()
    return graded


def realised_flops(model: str, rows: list[dict], prompt_lengths: list[int], c) -> dict:
    index = {}
    for r in rows:
        index.setdefault(r["prompt_id"], len(index))
    return budget.realised_flops(preset_config(model, c), prompt_lengths, [index[r["prompt_id"]] for r in rows],
                                 [r["tokens"] for r in rows])


def correct_by_question(rows: list[dict]) -> list[list[bool]]:
    """Graded sample rows -> each question's verdicts in sample order (what metrics.coverage_at_k takes)."""
    by_q: dict[str, list[bool]] = {}
    for r in sorted(rows, key=lambda r: r["sample_index"]):
        by_q.setdefault(r["prompt_id"], []).append(r["correct"])
    return list(by_q.values())


def keep_correct(rows: list[dict], run: Path, out: Path) -> int:
    """Write the answer-correct solutions as SFT records (the question's prompt, the sampled
    completion); returns their count."""
    prompt = {r["id"]: r["prompt"] for _, r in jsonl.read(run / "data" / "questions.jsonl")}
    kept = [{"id": f"{r['prompt_id']}/{r['sample_index']}", "prompt": prompt[r["prompt_id"]],
             "completion": r["text"], "steps_ok": r["steps_ok"]} for r in rows if r["correct"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl.rewrite(out, kept)
    return len(kept)


# ------------------------------------------------------------------------------------------------
# stages: fn(c, run, results, progress) -> dict (saved as stages/<name>.json)


def stage_data(c, run: Path, results: dict, progress: Progress) -> dict:
    t = c.task
    train = word_problems.records(t.num_pretrain + t.num_questions, "train", t.level, c.seed)
    test = word_problems.records(t.num_test, "test", t.level, c.seed)
    (run / "data").mkdir(parents=True, exist_ok=True)
    jsonl.rewrite(run / "data" / "pretrain.jsonl", train[:t.num_pretrain])
    jsonl.rewrite(run / "data" / "questions.jsonl", train[t.num_pretrain:])
    jsonl.rewrite(run / "data" / "test.jsonl", test)
    tok = word_problems.save_tokenizer(run / "tokenizer")
    gold = [len(tok.encode(r["completion"], add_special_tokens=False)) + 1 for r in train[t.num_pretrain:]]
    prompt = [len(tok(r["prompt"])["input_ids"]) for r in train[t.num_pretrain:]]
    progress.say(f"        {t.num_pretrain} pretraining solutions, {t.num_questions} sampling questions, "
                 f"{t.num_test} test questions (level {t.level}: {word_problems.LEVELS[t.level]})")
    return {"level": t.level, "pretrain": t.num_pretrain, "questions": t.num_questions, "test": t.num_test,
            "gold_tokens_mean": sum(gold) / len(gold), "prompt_tokens_mean": sum(prompt) / len(prompt),
            "example": {"prompt": train[0]["prompt"], "completion": train[0]["completion"]}}


def stage_pretrain(c, run: Path, results: dict, progress: Progress) -> dict:
    out = {}
    for i, name in enumerate(MODELS):
        m = c.models[name]
        progress.say(f"        {name}: {matmul_params(name, c):,} matmul params, {m.steps} steps from scratch")
        res = train_sft(run / "models" / name, c, [run / "data" / "pretrain.jsonl"], m.steps, m.lr,
                        c.train.warmup_steps, c.seed + i, run=run, overrides=dict(m.overrides))
        res.update(heldout_accuracy(run / res["hf"], run, c), matmul_params=matmul_params(name, c))
        progress.say(f"        {name}: held-out accuracy {res['accuracy']['value']:.3f} ({res['seconds']:.0f} s)")
        out[name] = res
    return {"models": out}


def stage_sample(c, run: Path, results: dict, progress: Progress) -> dict:
    s = samples_per_question(c)
    out, all_rows = {"samples_per_question": s, "models": {}}, {}
    for i, name in enumerate(("wc", "se")):
        n = max(s[b][name] for b in BUDGETS)
        path = run / "samples" / f"{name}.jsonl"
        all_rows[name] = sample_model(run / "models" / name / "hf", path, n, c.seed + 100 + i, run, c, progress,
                                      name, should_stop=progress.should_stop)
        side = _read_json(path.with_name(path.name + ".json"))
        out["models"][name] = {"samples": n, "rows": len(all_rows[name]), **side}
        progress.say(f"        {name}: {len(all_rows[name])} samples, {side['tokens_per_s']:,.0f} generated tokens/s")
    d = results["data"]
    w_plan, p_plan = round(d["gold_tokens_mean"]), round(d["prompt_tokens_mean"])
    flops = []
    for name, (model, n) in datasets(c).items():
        rows = [r for r in all_rows[model] if r["sample_index"] < n]
        real = realised_flops(model, rows, out["models"][model]["prompt_lengths"], c)
        plan = budget.question_flops(preset_config(model, c), p_plan, n, w_plan)["total"] * d["questions"]
        flops.append({"dataset": name, "model": model, "samples_per_question": n, "planned_flops": plan,
                      "realised_flops": real["total"], "realised_attention": real["attention"],
                      "realised_over_planned": real["total"] / plan,
                      "mean_generated_tokens": sum(r["tokens"] for r in rows) / max(1, len(rows))})
    out["flops"], out["planned_tokens_per_sample"] = flops, w_plan
    return out


def stage_filter(c, run: Path, results: dict, progress: Progress) -> dict:
    problems = _prompts(run, "questions.jsonl", _tokenizer(run))[1]
    all_rows = {m: [r for _, r in jsonl.read(run / "samples" / f"{m}.jsonl")] for m in ("wc", "se")}
    out = {"datasets": {}, "coverage_curve": {}}
    for name, (model, n) in datasets(c).items():
        rows = [r for r in all_rows[model] if r["sample_index"] < n]
        m = evaluate.compute_metrics(problems, rows, [n], c.n_boot)
        kept = keep_correct(rows, run, run / "datasets" / f"{name}.jsonl")
        row = m["by_k"][n]
        out["datasets"][name] = {"model": model, "samples_per_question": n, "samples": len(rows), "kept": kept,
                                 "coverage": row["pass@k"], "diversity": row["diversity@k (all)"],
                                 "diversity_solved": row["diversity@k (solved)"], "fpr": m["fpr (step checker)"],
                                 "fpr_judged": m["fpr (step checker) judged"]}
        progress.say(f"        {name}: coverage@{n} {row['pass@k']['value']:.3f}, kept {kept} of {len(rows)}")
    for model, rows in all_rows.items():  # coverage@k for every k up to the model's samples
        correct = correct_by_question(rows)
        out["coverage_curve"][model] = [metrics.coverage_at_k(correct, k, n_boot=0).value
                                        for k in range(1, min(map(len, correct)) + 1)]
    return out


def finetune_setups(c) -> list[tuple[str, str, str]]:
    """(setup, model, dataset) of the fine-tuning stage."""
    b = c.finetune.budget
    if b not in BUDGETS:
        raise ValueError(f"finetune.budget={b!r}; expected one of {BUDGETS}")
    return [("student", "student", f"wc-{b}"), ("student", "student", f"se-{b}"),
            ("student", "student", f"wc-{b}-number-matched"),
            ("self-improvement", "wc", f"wc-{b}"), ("self-improvement", "wc", f"se-{b}"),
            ("weak-to-strong", "se", f"wc-{b}"), ("weak-to-strong", "se", f"se-{b}")]


def finetune(model_hf: Path, data: Path, workdir: Path, c, seed: int, run: Path) -> dict:
    """Fine-tune an exported model on a kept dataset; held-out accuracy (skipped when the dataset is empty)."""
    if not any(True for _ in jsonl.read(data)):
        return {"skipped": f"{data.name} has no correct solutions to fine-tune on"}
    f = c.finetune
    res = train_sft(workdir, c, [data], f.steps, f.lr, f.warmup_steps, seed, run=run, init=model_hf)
    return {**res, **heldout_accuracy(run / res["hf"], run, c)}


def stage_finetune(c, run: Path, results: dict, progress: Progress) -> dict:
    out = []
    for i, (setup, model, data) in enumerate(finetune_setups(c)):
        res = finetune(run / "models" / model / "hf", run / "datasets" / f"{data}.jsonl",
                       run / "finetune" / f"{model}-on-{data}", c, c.seed + 200 + i, run)
        base = results["pretrain"]["models"][model]["accuracy"]["value"]
        out.append({"setup": setup, "model": model, "data": data, "base_accuracy": base, **res})
        acc = "skipped" if "skipped" in res else f"{res['accuracy']['value']:.3f} (base {base:.3f})"
        progress.say(f"        {setup}: {model} on {data}: held-out accuracy {acc}")
    return {"runs": out}


def best_finetuned(results: dict) -> dict | None:
    """The fine-tuning run with the best held-out accuracy (the first of equals), None when every
    fine-tune was skipped: where GRPO starts and the search stage's policy."""
    done = [r for r in results["finetune"]["runs"] if "skipped" not in r]
    return max(done, key=lambda r: r["accuracy"]["value"]) if done else None


def stage_grpo(c, run: Path, results: dict, progress: Progress) -> dict:
    best = best_finetuned(results)
    if best is None:
        return {"skipped": "no fine-tuned model (every dataset was empty)"}
    g = grpo.default_config()
    g.workdir, g.seed = str(run / "grpo"), c.seed
    g.model.path = str(run / best["hf"])
    q = c.grpo
    g.grpo.files, g.grpo.template = [str(run / "data" / "questions.jsonl")], "raw"
    g.grpo.prompts_per_step, g.grpo.group_size, g.grpo.temperature = q.prompts_per_step, q.group_size, q.temperature
    g.grpo.max_prompt_len, g.grpo.max_new_tokens = 128, c.sampling.max_new_tokens
    g.num_steps = g.optim.total_steps = q.steps
    g.optim.lr, g.optim.end_lr_ratio = q.lr, 1.0
    g.checkpoint.every, g.checkpoint.keep = max(1, q.steps // 2), 1
    g.log_every, g.tensorboard, g.peak_flops = 1, False, c.peak_flops  # every step: the reward curve
    progress.say(f"        from {best['model']} on {best['data']} (held-out {best['accuracy']['value']:.3f}), "
                 f"{q.steps} steps x {q.prompts_per_step} prompts x {q.group_size} completions")
    t0 = time.perf_counter()
    if not (run / "grpo" / "hf" / "model.safetensors").is_file():
        grpo.run(g)
    after = heldout_accuracy(run / "grpo" / "hf", run, c)
    curve = [(r["step"], r["reward/mean"], r["reward/accuracy"])
             for _, r in jsonl.read(run / "grpo" / "metrics.jsonl") if "reward/mean" in r]
    return {"from": f"{best['model']}-on-{best['data']}", "before": best["accuracy"], "after": after["accuracy"],
            "steps": q.steps, "seconds": time.perf_counter() - t0, "reward_curve": curve}


SEARCH_SEPARATOR = ". "  # the demo's steps are sentences on one line (eval.stepwise.demo_fields)


def split_heldout(labels: Path, heldout: float, questions: list[str], train: Path, held: Path) -> dict:
    """Write the labelled solutions of the last ceil(heldout x questions) sampling questions to
    held, the others to train (whole questions apart, so no question is on both sides); returns
    the counts."""
    n_held = math.ceil(heldout * len(questions)) if heldout > 0 else 0
    held_ids = set(questions[len(questions) - n_held:]) if n_held else set()
    rows = [r for _, r in stepwise.read_stepwise(labels)]
    parts = ([r for r in rows if r["prompt_id"] not in held_ids], [r for r in rows if r["prompt_id"] in held_ids])
    for path, part in zip((train, held), parts):
        jsonl.rewrite(path, part)
    return {"train_solutions": len(parts[0]), "heldout_solutions": len(parts[1]), "heldout_questions": n_held}


def train_prm(workdir: Path, init: Path, train: Path, held: Path | None, c, run: Path) -> dict:
    """The PRM's training run (reasonax.train.prm) from init's HF export, on the stepwise files;
    resumed from its latest checkpoint when interrupted, skipped when done. Returns {'hf'
    (relative to run), 'steps', 'seconds', 'eval' (the last held-out step accuracy, AUC, loss)}."""
    done = workdir / "done.json"
    if done.is_file():
        return _read_json(done)
    p, q = prm_recipe.default_config(), c.search.prm
    p.workdir, p.seed = str(workdir), c.seed
    p.model.path, p.tokenizer = str(init), str(run / "tokenizer")
    p.data.files, p.data.separator, p.data.seed = [str(train)], SEARCH_SEPARATOR, c.seed
    p.eval_data.files = [str(held)] if held is not None else []
    p.seq_len, p.batch_size = q.seq_len, q.batch_size
    p.num_steps = p.optim.total_steps = q.steps
    p.optim.lr, p.optim.warmup_steps, p.optim.weight_decay = q.lr, min(q.warmup_steps, q.steps - 1), 0.0
    p.checkpoint.every, p.checkpoint.keep = max(1, q.steps // 2), 1
    p.log_every, p.eval_every = max(1, q.steps // 4), (q.steps if held is not None else 0)
    p.tensorboard, p.peak_flops = False, c.peak_flops
    if (workdir / "hf").exists():  # an export cut short: redone from the final checkpoint
        shutil.rmtree(workdir / "hf")
    t0 = time.perf_counter()
    prm_recipe.run(p)
    evals = [r for _, r in jsonl.read(workdir / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]
    out = {"hf": str((workdir / "hf").relative_to(run)), "steps": q.steps, "seconds": time.perf_counter() - t0,
           "eval": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}}
    _write_json(done, out)
    return out


def search_config(c, run: Path, policy: Path, prm_dir: Path) -> ml_collections.ConfigDict:
    """The evaluate config of the comparison: the first search.questions test questions (their
    raw prompts, as the models were trained), the policy sampled as the sample stage samples, the
    four selection methods at each k of search.ks."""
    s = c.search
    e = evaluate.default_config()
    e.dataset, e.limit, e.few_shot, e.num_few_shot = str(run / "data" / "test.jsonl"), s.questions, "", 0
    e.jsonl.question_field, e.jsonl.answer_field, e.jsonl.id_field = "prompt", "answer", "id"
    e.ks, e.fallback, e.n_boot, e.output_dir = tuple(s.ks), False, c.n_boot, str(run / "search" / "eval")
    g = e.generate
    g.model, g.prompt_format, g.instruction, g.seed = str(policy), "raw", "", c.seed + 300
    g.sampling.temperature, g.sampling.top_p = c.sampling.temperature, c.sampling.top_p
    g.sampling.max_new_tokens = c.sampling.max_new_tokens
    e.selection = tuple(search_lib.SELECTIONS)
    e.search.prm, e.search.aggregation, e.search.separator = str(prm_dir), s.aggregation, SEARCH_SEPARATOR
    e.search.expansions, e.search.max_steps = s.expansions, s.max_steps
    e.search.calibration_questions, e.search.calibration_samples = s.calibration_questions, s.calibration_samples
    return e


def stage_search(c, run: Path, results: dict, progress: Progress) -> dict:
    best = best_finetuned(results)
    if best is None:
        return {"skipped": "no fine-tuned model (every dataset was empty)"}
    d, seconds = run / "search", {}
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lc = checker_labels.default_config()
    lc.solutions.update(stepwise.demo_fields(run, ("wc", "se")))
    lc.output, lc.grade_answer, lc.progress = str(d / "step_labels.jsonl"), True, False
    labels = checker_labels.run(lc)  # resumes from what it wrote
    questions = [r["id"] for _, r in jsonl.read(run / "data" / "questions.jsonl")]
    split = split_heldout(d / "step_labels.jsonl", c.search.heldout, questions, d / "prm_train.jsonl",
                          d / "prm_heldout.jsonl")
    seconds["labels"] = time.perf_counter() - t0
    progress.say(f"        step labels: {labels['solutions']} solutions, {labels['steps']} steps, "
                 f"{labels['correct_step_fraction']:.2f} correct; {split['heldout_questions']} questions held out")
    q = c.search.prm
    progress.say(f"        PRM from {best['model']} on {best['data']}: {q.steps} steps x {q.batch_size} solutions")
    prm_run = train_prm(d / "prm", run / best["hf"], d / "prm_train.jsonl",
                        d / "prm_heldout.jsonl" if split["heldout_solutions"] else None, c, run)
    seconds["prm"] = prm_run["seconds"]
    ev = prm_run["eval"]
    progress.say("        PRM held-out: " + (", ".join(f"{k} {v:.3f}" if k != "steps" else f"steps {v:.0f}"
                                                 for k, v in ev.items()) or "none"))
    t0 = time.perf_counter()
    metrics_path = d / "eval" / "metrics.json"
    if metrics_path.is_file():
        m = _read_json(metrics_path)
    else:
        progress.say(f"        {c.search.questions} test questions, k in {tuple(c.search.ks)}: "
                     f"{', '.join(search_lib.SELECTIONS)} at matched FLOPs")
        m = evaluate.run(search_config(c, run, run / best["hf"], run / prm_run["hf"]), should_stop=progress.should_stop)
        if m.get("stopped"):
            cli_lib.exit_preempted(m["kept"])
        m = json.loads(json.dumps(m, default=str))  # as it is read back
    seconds["compare"] = time.perf_counter() - t0
    sel = m["selection"]
    for lv in sel["levels"]:
        progress.say(f"        k={lv['level']}: " + ", ".join(f"{name} {v['accuracy']['value']:.3f} "
                                                          f"({v['flops_over_budget']:.2f}x budget)"
                                                          for name, v in lv["methods"].items()))
    return {"policy": f"{best['model']}-on-{best['data']}", "policy_accuracy": best["accuracy"],
            "labels": {k: labels[k] for k in ("solutions", "steps", "correct_steps", "correct_step_fraction",
                                              "solutions_all_steps_correct")}, "split": split,
            "prm": prm_run, "questions": m["problems"], "selection": sel, "seconds": seconds}


def stage_rounds(c, run: Path, results: dict, progress: Progress) -> dict:
    if c.rounds < 1:
        raise ValueError(f"rounds={c.rounds}: expected >= 1")
    b = c.finetune.budget
    n = samples_per_question(c)[b]["wc"]
    first = next(r for r in results["finetune"]["runs"] if r["model"] == "wc" and r["data"] == f"wc-{b}")
    data = results["filter"]["datasets"][f"wc-{b}"]
    flops = next(f for f in results["sample"]["flops"] if f["dataset"] == f"wc-{b}")["realised_flops"]
    rounds = [{"round": 1, "kept": data["kept"], "coverage": data["coverage"], "sampling_flops": flops,
               "train_flops": first.get("train_flops", 0.0), "accuracy": first.get("accuracy"),
               "skipped": first.get("skipped")}]
    base = run / "finetune" / f"wc-on-wc-{b}" / "hf"
    for r in range(2, c.rounds + 1):
        if rounds[-1]["skipped"]:
            break
        d = run / "rounds" / f"round{r}"
        progress.say(f"        round {r}: sample {n} per question from round {r - 1}'s model, filter, fine-tune")
        rows = sample_model(base, d / "samples.jsonl", n, c.seed + 1000 + r, run, c, progress, f"round {r}",
                            should_stop=progress.should_stop)
        side = _read_json(d / "samples.jsonl.json")
        kept = keep_correct(rows, run, d / "kept.jsonl")
        res = finetune(base, d / "kept.jsonl", d / "model", c, c.seed + 1000 + r, run)
        correct = correct_by_question(rows)
        rounds.append({"round": r, "kept": kept, "coverage": _coverage(correct, min(map(len, correct)), c.n_boot),
                       "sampling_flops": realised_flops("wc", rows, side["prompt_lengths"], c)["total"],
                       "train_flops": res.get("train_flops", 0.0), "accuracy": res.get("accuracy"),
                       "skipped": res.get("skipped")})
        base = d / "model" / "hf"
    total = 0.0
    for r in rounds:
        total += r["sampling_flops"] + r["train_flops"]
        r["cumulative_flops"] = total
    return {"base_accuracy": results["pretrain"]["models"]["wc"]["accuracy"], "samples_per_question": n, "rounds": rounds}


def stage_report(c, run: Path, results: dict, progress: Progress) -> dict:
    text = pipeline_report.write(run, c, results)
    print(pipeline_report.console_summary(results), flush=True)
    return {"report": "report.md", "chars": len(text)}


STAGE_FNS = {"data": stage_data, "pretrain": stage_pretrain, "sample": stage_sample, "filter": stage_filter,
             "finetune": stage_finetune, "grpo": stage_grpo, "search": stage_search, "rounds": stage_rounds,
             "report": stage_report}
DESCRIPTIONS = {
    "data": "synthetic word problems, splits and tokenizer",
    "pretrain": "train WC, SE and the student from scratch on gold solutions",
    "sample": "compute-matched sampling on the training questions",
    "filter": "grade, filter; coverage, diversity, false-positive rate",
    "finetune": "fine-tune: student, self-improvement, weak-to-strong",
    "grpo": "GRPO from the best fine-tuned model",
    "search": "PRM on step-checker labels; majority vs PRM best-of-N, weighted vote, beam search at matched FLOPs",
    "rounds": "self-improvement rounds with compute accounting",
    "report": "report.md and plots",
}


def _check_config(c, run: Path) -> None:
    saved = run / "config.json"
    now = c.to_dict()
    now.pop("workdir")
    if saved.is_file():
        before = _read_json(saved)
        flat_now, flat_before = _flatten(json.loads(json.dumps(now))), _flatten(before)
        diff = sorted(k for k in set(flat_now) | set(flat_before) if flat_now.get(k) != flat_before.get(k))
        if diff:
            raise ValueError(f"{run} holds a run with another config (fields {', '.join(diff)} differ); "
                             "use a new workdir, or delete it to start over")
    else:
        _write_json(saved, now)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(c: ml_collections.ConfigDict) -> dict:
    """Run (or resume) every stage; returns {stage: its results}. SIGTERM (a preemption notice) stops
    the run with exit status 75 (SystemExit): a training run at its next step, after saving it
    (reasonax.train.preempt), a sampling job after its decode block in flight (sample_model), any
    other stage when it ends; a rerun continues from what is on disk."""
    with cli_lib.Sigterm("finishing the step or decode block in flight, saving what is finished, then exiting") \
            as notice:
        return _run(c, notice)


def _run(c: ml_collections.ConfigDict, notice: cli_lib.Sigterm) -> dict:
    if not c.workdir:
        raise ValueError("config.workdir is required")
    run_dir = Path(c.workdir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_config(c, run_dir)
    s = samples_per_question(c)
    if any(s[b]["wc"] < 1 or s[b]["se"] < 1 for b in BUDGETS):
        raise ValueError(f"sampling.se_samples gives {s}: every budget needs >= 1 sample per model")
    progress = Progress(notice)
    progress.say(f"reasonax pipeline -> {run_dir}  (WC {matmul_params('wc', c):,} / SE {matmul_params('se', c):,} "
                 f"matmul params; samples per question {s})")
    results = {}
    for i, name in enumerate(STAGES, 1):
        path = run_dir / "stages" / f"{name}.json"
        if path.is_file():
            results[name] = _read_json(path)
            progress.say(f"stage {i}/{len(STAGES)} {name}: done earlier ({path}), skipped")
            continue
        if progress.should_stop():
            cli_lib.exit_preempted(f"stages {', '.join(STAGES[:i - 1]) or '(none)'} done in {run_dir / 'stages'}")
        progress.say(f"stage {i}/{len(STAGES)} {name}: {DESCRIPTIONS[name]}")
        t0 = time.perf_counter()
        out = STAGE_FNS[name](c, run_dir, results, progress)
        out["stage_seconds"] = time.perf_counter() - t0
        _write_json(path, out)
        results[name] = _read_json(path)  # as a later run reads it back
    progress.say(f"done: {run_dir / 'report.md'}")
    return results


def main(argv):
    c = flag_config(argv, "configs/demo.py")
    require_workdir(c)
    run(c)


def cli() -> None:
    """The `reasonax-demo` command (also `python -m reasonax.pipeline`)."""
    from absl import app
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/demo.py); override any "
                                    "field with --config.<path>=value")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    cli()
