"""CLI: solutions -> step labels from the step checker, in TRL's stepwise format (JSONL).

    python -m reasonax.eval.checker_labels --config=configs/checker_labels_demo.py \\
        --config.output=runs/demo/step_labels/wc-checker.jsonl

Each solution is split at the separator (blank steps dropped) and labelled by the rules of
reasonax.eval.step_labels.checker_labels (a step is correct when every equation in it checks, a
step with none is correct unless it follows an error, every step after the first wrong one is
wrong). Output lines: {id, prompt, completions, labels (bools), gold?, kept input fields,
verdicts (the checker's own verdict per step: true / false / null for no equation)}; a summary
(<output>.summary.json) counts solutions, steps and correct steps. Records are appended (fsynced)
every `chunk` solutions, so a rerun skips the solutions already written and ends with the file an
uninterrupted run writes. No JAX: this runs anywhere the grader does.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ml_collections

from reasonax import jsonl, typed
from reasonax.cli import flag_config
from reasonax.eval import grader, step_labels, stepwise


@dataclasses.dataclass(frozen=True)
class CheckerLabelsConfig:
    """Every field of a step-checker labelling job, with its default and meaning."""

    solutions: stepwise.SolutionFields = stepwise.SolutionFields()  # what to read (files, fields, separator)
    output: str = ""           # stepwise JSONL written (appended to: a rerun resumes); <output>.summary.json next to it
    grade_answer: bool = False  # also mark the last step wrong when the final answer is not the gold one
                               # (needs a gold per solution); off: the rule, equations only
    chunk: int = 256           # solutions labelled and appended per write
    max_records: int = 0       # stop after this many new records (0 = all): a partial run, resumed later
    progress: bool = True      # progress bar

    def problems(self) -> list[str]:
        out = [] if self.output else ["output is required"]
        if self.chunk < 1 or self.max_records < 0:
            out.append(f"chunk={self.chunk} must be >= 1 and max_records={self.max_records} >= 0")
        return out


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of CheckerLabelsConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(CheckerLabelsConfig())


def label(sol: stepwise.Solution, answer_correct: bool | None = None) -> dict:
    """The stepwise record of one solution."""
    verdicts = step_labels.step_verdicts(sol.steps)
    labels = step_labels.checker_labels(sol.steps, answer_correct)
    fields = {"verdicts": verdicts}
    if answer_correct is not None:
        fields["answer_correct"] = bool(answer_correct)
    return stepwise.record(sol, labels, **fields)


def summarize(output: Path) -> dict:
    solutions = steps = correct = all_correct = 0
    for _, rec in stepwise.read_stepwise(output):
        solutions += 1
        steps += len(rec["labels"])
        correct += sum(bool(v) for v in rec["labels"])
        all_correct += all(rec["labels"])
    return {"output": str(output), "labeller": "step_checker", "solutions": solutions, "steps": steps,
            "correct_steps": correct, "correct_step_fraction": correct / steps if steps else None,
            "solutions_all_steps_correct": all_correct}


def run(config: ml_collections.ConfigDict | CheckerLabelsConfig) -> dict:
    """Label per config (converted once into a CheckerLabelsConfig); returns the summary it writes."""
    cfg = typed.from_config(CheckerLabelsConfig, config)
    sols = stepwise.read_solutions(cfg.solutions, need_gold=cfg.grade_answer)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    todo, done = stepwise.pending(sols, output)
    if cfg.max_records:
        todo = todo[:cfg.max_records]
    from tqdm import tqdm

    with tqdm(total=len(sols), initial=done, desc="step-checker labels", unit="solution",
              disable=not cfg.progress) as bar:
        for lo in range(0, len(todo), cfg.chunk):
            part = todo[lo:lo + cfg.chunk]
            verdicts = [None] * len(part)
            if cfg.grade_answer:
                texts = [cfg.solutions.separator.join(s.steps) for s in part]
                verdicts = grader.grade_batch(texts, [s.gold for s in part])
            jsonl.append(output, [label(s, v) for s, v in zip(part, verdicts)])
            bar.update(len(part))
    summary = {**summarize(output), "solutions_in_input": len(sols), "skipped_as_done": done,
               "written_now": len(todo), "separator": cfg.solutions.separator, "grade_answer": cfg.grade_answer}
    jsonl.write_json(str(output) + ".summary.json", summary, indent=1)
    return summary


def main(argv):
    import json

    summary = run(flag_config(argv, "configs/checker_labels_demo.py"))
    print(json.dumps({k: summary[k] for k in ("solutions", "steps", "correct_step_fraction", "written_now")}))


def cli() -> None:
    """The `reasonax-checker-labels` command (also `python -m reasonax.eval.checker_labels`)."""
    from absl import app
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/checker_labels_demo.py).")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    cli()
