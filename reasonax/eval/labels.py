"""Per-solution correctness labels and their import from JSONL (human annotation files).

A :class:`SolutionLabel` says, for one sampled solution, whether its final answer is correct
and whether its reasoning is correct (None: not judged). Labels may come from the arithmetic
step checker (:mod:`reasonax.eval.step_check`), from humans (:func:`load_labels`), or from an LLM
judge added later; :func:`reasonax.eval.metrics.fpr` accepts any of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonax import jsonl

__all__ = ["LabelFormatError", "SolutionLabel", "load_labels"]

_TRUE = {"true", "yes", "y", "1", "correct", "right", "valid"}
_FALSE = {"false", "no", "n", "0", "incorrect", "wrong", "invalid"}


@dataclass(frozen=True)
class SolutionLabel:
    problem_id: str
    sample_index: int
    answer_correct: bool
    reasoning_correct: bool | None
    source: str = "unknown"


class LabelFormatError(jsonl.JsonlError):
    """A bad label line; the message names the file, the line and the field."""


def _as_bool(value: Any, field: str, where: str, allow_none: bool) -> bool | None:
    if value is None:
        if allow_none:
            return None
        raise LabelFormatError(f"{where}: field {field!r} is null")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        if allow_none and low in ("", "none", "null", "unknown", "n/a", "na", "skip"):
            return None
    raise LabelFormatError(f"{where}: field {field!r} is not a boolean label: {value!r}")


def _field(rec: dict[str, Any], dotted: str, where: str) -> Any:
    return jsonl.field(rec, dotted, where, error=LabelFormatError)


def load_labels(
    path: str | os.PathLike[str],
    *,
    problem_field: str = "problem_id",
    sample_field: str | None = "sample_index",
    answer_field: str = "answer_correct",
    reasoning_field: str = "reasoning_correct",
    source: str = "human",
) -> list[SolutionLabel]:
    """Labels from a JSONL file, one object per line, with configurable (dotted) field names.

    Booleans may be JSON booleans, 0/1, or words (true/false, yes/no, correct/incorrect);
    ``reasoning_correct`` may be null (not judged). Without ``sample_field`` samples are
    numbered by order of appearance within each problem. Duplicate (problem, sample) pairs
    and malformed lines raise :class:`LabelFormatError` with file and line number.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such label file: {p}")
    out: list[SolutionLabel] = []
    seen: dict[tuple[str, int], int] = {}
    counters: dict[str, int] = {}
    for line_no, rec in jsonl.read(p, error=LabelFormatError):
        where = f"{p}:{line_no}"
        pid = _field(rec, problem_field, where)
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise LabelFormatError(f"{where}: field {problem_field!r} should be a string or integer, got {pid!r}")
        pid = str(pid)
        if sample_field is None:
            idx = counters.get(pid, 0)
            counters[pid] = idx + 1
        else:
            idx = _field(rec, sample_field, where)
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise LabelFormatError(
                    f"{where}: field {sample_field!r} should be a non-negative integer, got {idx!r}")
        key = (pid, idx)
        if key in seen:
            raise LabelFormatError(
                f"{where}: duplicate label for problem {pid!r} sample {idx} (first on line {seen[key]})")
        seen[key] = line_no
        answer = _as_bool(_field(rec, answer_field, where), answer_field, where, allow_none=False)
        reasoning = _as_bool(_field(rec, reasoning_field, where), reasoning_field, where, allow_none=True)
        out.append(SolutionLabel(pid, idx, bool(answer), reasoning, source))
    return out
