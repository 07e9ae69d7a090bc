"""TRL's stepwise format and the solutions the labelling CLIs read (I/O; the rules are step_labels).

A stepwise record (one JSON line per solution):

    {"id": ..., "prompt": "...", "completions": ["step 1", "step 2", ...], "labels": [...], ...}

labels: one per step, bool or a number in [0, 1]. The separator is not part of the steps: a PRM
inserts it after each step at tokenization (reasonax.model.prm.join_steps).

Solutions are read from JSONL files (SolutionFields says which fields):

* a generic file with a prompt and a completion per line (`prompt`, `completion`, `id`,
  `answer` by default): the completion is a string split at the separator (blank steps
  dropped), or already a list of steps (TRL's stepwise `completions`; an empty step is an error,
  and `labels`, if present, must have one per step);
* the demo's sampled solutions (runs/<run>/samples/<model>.jsonl: prompt_id, sample_index, text,
  gold, correct, ...), whose prompts are in the run's data/questions.jsonl (id, prompt, answer):
  SolutionFields(questions=...) looks each one's prompt (and gold, if it has none) up by its
  question id. demo_fields(run, model) gives those settings.

Every error names the file and line (and the field). Outputs are appended whole records at a
time (reasonax.jsonl.append), so a crash leaves complete lines; done_ids reads back what an
interrupted run wrote, validated, so a rerun skips it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from reasonax import jsonl
from reasonax.eval import step_labels


@dataclasses.dataclass(frozen=True)
class SolutionFields:
    """Where the solutions come from and how a record is read (both labelling CLIs)."""

    files: tuple[str, ...] = ()  # solution JSONL(.gz) files, read in order
    separator: str = "\n"        # step separator in a completion string (blank steps are dropped)
    completion_field: str = "completion"  # the solution: a string (split at separator) or a list of steps
    prompt_field: str = "prompt"  # the prompt text (not read when `questions` is set)
    id_fields: tuple[str, ...] = ("id",)  # fields whose values, joined by "/", make a solution's unique id
                                 # (empty: "<file name>:<line>")
    gold_field: str = "answer"   # the gold final answer (Monte Carlo labels need it; the checker's grade_answer too)
    questions: str = ""          # optional JSONL of questions (id, prompt, answer), e.g. a demo run's
                                 # data/questions.jsonl: a solution's prompt (and gold when it has no
                                 # gold_field) come from the question it names in question_id_field
    question_id_field: str = "prompt_id"  # with questions: the solution's field holding its question's id
    file_in_id: bool = False     # prefix each id with its file's name and ":" (several files whose ids repeat,
                                 # e.g. a demo run's samples/wc.jsonl and samples/se.jsonl)
    keep_fields: tuple[str, ...] = ()  # input fields copied into each output record as they are

    def problems(self) -> list[str]:
        out = []
        if not self.files:
            out.append("files: at least one solutions file is required")
        if not self.separator:
            out.append("separator must not be empty")
        return out


@dataclasses.dataclass(frozen=True)
class Solution:
    id: str
    prompt: str
    steps: list[str]
    gold: str | None
    where: str  # "file:line"
    extra: dict  # keep_fields


def demo_fields(run: str | os.PathLike, models: tuple[str, ...] = ("wc",)) -> dict:
    """SolutionFields (as a dict, for a config) reading a demo run's sampled solutions of `models`
    (wc, se): runs/<run>/samples/<model>.jsonl with the prompts of data/questions.jsonl; ids are
    "<prompt_id>/<sample_index>", prefixed with the file name ("wc.jsonl:...") when there are
    several files. The word problems' solutions state one equation per sentence on one line
    ("7 + 3 = 10. 10 * 2 = 20. The answer is \\boxed{20}."), so the separator is ". "."""
    run = Path(run)
    if isinstance(models, str):
        models = (models,)
    return dict(files=tuple(str(run / "samples" / f"{m}.jsonl") for m in models), separator=". ",
                completion_field="text", file_in_id=len(models) > 1,
                id_fields=("prompt_id", "sample_index"), gold_field="gold",
                questions=str(run / "data" / "questions.jsonl"),
                question_id_field="prompt_id", keep_fields=("prompt_id", "sample_index", "correct", "steps_ok"))


def _questions(path: str) -> dict[str, tuple[str, str | None]]:
    out = {}
    for lineno, rec in jsonl.read(path):
        qid = str(jsonl.field(rec, "id", path, lineno))
        prompt = jsonl.field(rec, "prompt", path, lineno)
        if not isinstance(prompt, str):
            raise jsonl.JsonlError(f"{path}:{lineno}: field 'prompt' is not a string")
        gold = rec.get("answer")
        out[qid] = (prompt, None if gold is None else str(gold))
    return out


def steps_of(value, separator: str, where: str, field: str) -> list[str]:
    """A completion's steps: a string split at the separator (blank steps dropped) or a list of
    non-empty strings; JsonlError naming where and the field otherwise, or when there is no step."""
    if isinstance(value, str):
        steps = step_labels.split_steps(value, separator)
    elif isinstance(value, list):
        for i, s in enumerate(value):
            if not isinstance(s, str):
                raise jsonl.JsonlError(f"{where}: field {field!r}: step {i} is {type(s).__name__}, expected a string")
            if not s.strip():
                raise jsonl.JsonlError(f"{where}: field {field!r}: step {i} is empty")
        steps = list(value)
    else:
        raise jsonl.JsonlError(f"{where}: field {field!r} is {type(value).__name__}, expected a string or a "
                               "list of steps")
    if not steps:
        raise jsonl.JsonlError(f"{where}: field {field!r} has no step (empty solution)")
    return steps


def read_solutions(f: SolutionFields, need_gold: bool = False) -> list[Solution]:
    """The solutions of f.files in order; JsonlError naming file and line for a malformed record,
    a missing field (gold too, with need_gold), an empty step, labels that do not match the steps
    in number, a duplicate id or an unknown question."""
    questions = _questions(f.questions) if f.questions else None
    out, seen = [], {}
    for file in f.files:
        for lineno, rec in jsonl.read(file):
            where = f"{file}:{lineno}"
            if f.id_fields:
                sid = "/".join(str(jsonl.field(rec, k, file, lineno)) for k in f.id_fields)
            else:
                sid = str(lineno)
            if f.file_in_id or not f.id_fields:
                sid = f"{Path(file).name}:{sid}"
            if sid in seen:
                raise jsonl.JsonlError(f"{where}: duplicate solution id {sid!r} (first at {seen[sid]})")
            seen[sid] = where
            gold = rec.get(f.gold_field)
            if questions is not None:
                qid = str(jsonl.field(rec, f.question_id_field, file, lineno))
                if qid not in questions:
                    raise jsonl.JsonlError(f"{where}: question {qid!r} ({f.question_id_field}) is not in {f.questions}")
                prompt, qgold = questions[qid]
                gold = qgold if gold is None else gold
            else:
                prompt = jsonl.field(rec, f.prompt_field, file, lineno)
                if not isinstance(prompt, str):
                    raise jsonl.JsonlError(f"{where}: field {f.prompt_field!r} is {type(prompt).__name__}, "
                                           "expected a string")
            if need_gold and (gold is None or not str(gold).strip()):
                src = f"field {f.gold_field!r}" + (" or the question's answer" if questions is not None else "")
                raise jsonl.JsonlError(f"{where}: missing gold answer ({src})")
            steps = steps_of(jsonl.field(rec, f.completion_field, file, lineno), f.separator, where,
                             f.completion_field)
            if "labels" in rec and isinstance(rec[f.completion_field], list):
                check_labels(rec["labels"], len(steps), where)
            extra = {k: jsonl.field(rec, k, file, lineno) for k in f.keep_fields}
            out.append(Solution(sid, prompt, steps, None if gold is None else str(gold), where, extra))
    return out


def check_labels(labels, n_steps: int, where: str) -> None:
    """labels: a list of n_steps bools or numbers in [0, 1]; JsonlError naming where otherwise."""
    if not isinstance(labels, list):
        raise jsonl.JsonlError(f"{where}: field 'labels' is {type(labels).__name__}, expected a list")
    if len(labels) != n_steps:
        raise jsonl.JsonlError(f"{where}: {len(labels)} labels for {n_steps} steps (one label per step)")
    for i, v in enumerate(labels):
        if isinstance(v, bool):
            continue
        if not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise jsonl.JsonlError(f"{where}: label {i} is {v!r}, expected a bool or a number in [0, 1]")


def read_stepwise(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line, record) of a stepwise file, each validated: prompt a string, completions a non-empty
    list of non-empty steps, labels one per step; JsonlError naming file and line otherwise."""
    for lineno, rec in jsonl.read(path):
        where = f"{path}:{lineno}"
        if not isinstance(jsonl.field(rec, "prompt", path, lineno), str):
            raise jsonl.JsonlError(f"{where}: field 'prompt' is not a string")
        steps = jsonl.field(rec, "completions", path, lineno)
        if not isinstance(steps, list):
            raise jsonl.JsonlError(f"{where}: field 'completions' is {type(steps).__name__}, expected a list of steps")
        steps_of(steps, "\n", where, "completions")
        check_labels(jsonl.field(rec, "labels", path, lineno), len(steps), where)
        yield lineno, rec


def done_ids(path: str | os.PathLike) -> list[str]:
    """Ids of the records an earlier run wrote to `path` (none if it does not exist), after
    dropping a line a crash cut; every record is validated (read_stepwise)."""
    path = Path(path)
    if not path.exists():
        return []
    jsonl.drop_partial_tail(path)
    return [str(jsonl.field(rec, "id", path, lineno)) for lineno, rec in read_stepwise(path)]


def record(sol: Solution, labels: list, **fields) -> dict:
    """The stepwise record of a labelled solution: id, prompt, completions, labels, the kept
    input fields, then `fields` (the labeller's own, e.g. rollout counts)."""
    if len(labels) != len(sol.steps):
        raise ValueError(f"{sol.where}: {len(labels)} labels for {len(sol.steps)} steps")
    return {"id": sol.id, "prompt": sol.prompt, "completions": list(sol.steps), "labels": list(labels),
            **({"gold": sol.gold} if sol.gold is not None else {}), **sol.extra, **fields}


def pending(solutions: list[Solution], output: str | os.PathLike) -> tuple[list[Solution], int]:
    """(solutions not yet in output, how many are): what a rerun still has to label. The records
    written must be the first ones of the solutions, in order (as a run of these CLIs writes them);
    otherwise the output belongs to other inputs and a ValueError says so."""
    done = done_ids(output)
    if len(done) > len(solutions):
        raise ValueError(f"{output}: {len(done)} records for {len(solutions)} solutions: the output was written "
                         "from other solutions (remove it or pick another output)")
    for n, (got, sol) in enumerate(zip(done, solutions), 1):
        if got != sol.id:
            raise ValueError(f"{output}: record {n} has id {got!r} but solution {n} ({sol.where}) is {sol.id!r}: "
                             "the output was written from other solutions (remove it or pick another output)")
    return solutions[len(done):], len(done)
