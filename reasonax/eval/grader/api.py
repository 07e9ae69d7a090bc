"""Public API: :func:`is_equivalent` / :func:`is_equivalent_batch` (caps, normalisation,
alignment, fast path, then the worker pool), :func:`grade` / :func:`grade_batch` (extraction,
then equivalence) and :func:`math_verify_batch` (math-verify's own verdicts, for comparison).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from reasonax.eval.grader.caps import MAX_INPUT_CHARS, _over_caps
from reasonax.eval.grader.counters import _count
from reasonax.eval.grader.extract import extract_answer
from reasonax.eval.grader.fast import _align, _fast_compare
from reasonax.eval.grader.normalize import normalize_answer
from reasonax.eval.grader.pool import _config, _get_pool
from reasonax.eval.grader.text import _clean_text


def _prepare(gold: Any, pred: Any) -> tuple[str, str] | bool:
    """Normalise a pair, or decide it: False for bad input, True/False from the fast path."""
    if not isinstance(gold, str) or not isinstance(pred, str):
        _count("rejected_inputs")
        return False
    if len(gold) > MAX_INPUT_CHARS or len(pred) > MAX_INPUT_CHARS:
        _count("rejected_inputs")
        return False
    g, p = normalize_answer(gold), normalize_answer(pred)
    if not g or not p:
        _count("rejected_inputs")
        return False
    g, p = _align(g, p)
    fast = _fast_compare(g, p)
    if fast is not None:
        _count("fast_path")
        return fast
    if _over_caps(g) or _over_caps(p):
        _count("rejected_inputs")
        return False
    return g, p


def _slow(kind: str, g: str, p: str, timeout: float) -> bool:
    _count("slow_path")
    status, value = _get_pool().run([kind, g, p], timeout)
    if status == "crash":  # a worker that died while idle: retry once on a fresh one
        _count("worker_crashes")
        status, value = _get_pool().run([kind, g, p], timeout)
    if status == "timeout":
        _count("timeouts")
        return False
    if status == "crash":
        _count("worker_crashes")
        return False
    if status != "ok":
        _count("worker_errors")
        return False
    verdict, why = value
    if why == "parse_failure":
        _count("parse_failures")
    return bool(verdict)


def _timeout(timeout: float | None) -> float:
    return float(_config["timeout"] if timeout is None else timeout)


def is_equivalent(gold: str, pred: str, *, timeout: float | None = None) -> bool:
    """Whether ``pred`` is exactly the same answer as ``gold``. Never raises, never hangs:
    parse failures, caps and the wall-clock limit (default 5 s, per comparison) give False."""
    _count("calls")
    try:
        prep = _prepare(gold, pred)
        if isinstance(prep, bool):
            return prep
        return _slow("eq", prep[0], prep[1], _timeout(timeout))
    except Exception:  # noqa: BLE001
        _count("errors")
        return False


def _run_batch(kind: str, golds: Sequence[Any], preds: Sequence[Any], timeout: float | None, fast: bool) -> list[bool]:
    if len(golds) != len(preds):
        raise ValueError(f"golds and preds differ in length: {len(golds)} != {len(preds)}")
    _count("calls", len(golds))
    limit = _timeout(timeout)
    out: list[bool] = [False] * len(golds)
    todo: list[tuple[int, str, str]] = []
    for i, (g, p) in enumerate(zip(golds, preds)):
        try:
            if fast:
                prep = _prepare(g, p)
            elif isinstance(g, str) and isinstance(p, str) and max(len(g), len(p)) <= MAX_INPUT_CHARS:
                if kind == "mv":  # math-verify sees raw text
                    prep = (_clean_text(g).strip(), _clean_text(p).strip())
                else:
                    prep = _align(normalize_answer(g), normalize_answer(p))
                if _over_caps(prep[0]) or _over_caps(prep[1]):
                    _count("rejected_inputs")
                    prep = False
            else:
                _count("rejected_inputs")
                prep = False
        except Exception:  # noqa: BLE001
            _count("errors")
            prep = False
        if isinstance(prep, bool):
            out[i] = prep
        else:
            todo.append((i, prep[0], prep[1]))
    if todo:
        pool = _get_pool()

        def one(item: tuple[int, str, str]) -> tuple[int, bool]:
            try:
                return item[0], _slow(kind, item[1], item[2], limit)
            except Exception:  # noqa: BLE001
                _count("errors")
                return item[0], False

        with ThreadPoolExecutor(max_workers=min(pool.size, len(todo)), thread_name_prefix="grader") as ex:
            for i, verdict in ex.map(one, todo):
                out[i] = verdict
    return out


def is_equivalent_batch(golds: Sequence[str], preds: Sequence[str], *, timeout: float | None = None,
                        fast: bool = True) -> list[bool]:
    """:func:`is_equivalent` over pairs; sympy work spread over the worker processes.

    ``fast=False`` skips the in-process fast path (every pair is parsed by the workers): for
    benchmarking and testing the sympy path only.
    """
    return _run_batch("eq", golds, preds, timeout, fast)


def math_verify_batch(golds: Sequence[str], preds: Sequence[str], *, timeout: float | None = None) -> list[bool]:
    """math-verify's own verdicts (default tolerances) on normalised pairs, run in the killable
    workers. For measuring where it is more lenient than :func:`is_equivalent`; not a grader."""
    return _run_batch("mv", golds, preds, timeout, fast=False)


def grade(completion: str, gold: str, fallback: bool = False, *, timeout: float | None = None) -> bool:
    """Reward: the completion's extracted final answer is equivalent to ``gold``."""
    pred = extract_answer(completion, fallback=fallback)
    if pred is None:
        _count("calls")
        return False
    return is_equivalent(gold, pred, timeout=timeout)


def grade_batch(completions: Sequence[str], golds: Sequence[str], fallback: bool = False, *,
                timeout: float | None = None) -> list[bool]:
    """:func:`grade` over many pairs in parallel worker processes."""
    if len(completions) != len(golds):
        raise ValueError(f"completions and golds differ in length: {len(completions)} != {len(golds)}")
    preds = [extract_answer(c, fallback=fallback) for c in completions]
    idx = [i for i, p in enumerate(preds) if p is not None]
    out = [False] * len(completions)
    _count("calls", len(completions) - len(idx))
    verdicts = is_equivalent_batch([golds[i] for i in idx], [preds[i] for i in idx], timeout=timeout)
    for i, v in zip(idx, verdicts):
        out[i] = v
    return out
