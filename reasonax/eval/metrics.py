"""Sampling metrics with bootstrap confidence intervals (resampling problems, seeded).

* ``pass_at_k(n, c, k)``: the unbiased estimator 1 - C(n-c, k) / C(n, k), computed as the
  numerically stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i); 1.0 when n - c < k.
* ``coverage_at_k``: mean of pass@k over problems.
* ``maj_at_k``: majority vote over the first k extracted answers (ties: the earliest answer),
  answers grouped into equivalence classes, the winner compared with the gold answer.
* ``diversity_at_k``: unique correct solutions (after whitespace normalisation) among the
  first k samples, averaged over all problems and over solved problems.
* ``fpr``: among solutions with a correct final answer, the share whose reasoning is wrong --
  from any per-solution labels (step checker, humans, a judge).

Every metric returns an :class:`Estimate` (value plus a percentile bootstrap interval from
resampling problems with replacement).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from reasonax.eval import grader
from reasonax.eval.labels import SolutionLabel

__all__ = [
    "Estimate",
    "bootstrap_ratio",
    "coverage_at_k",
    "diversity_at_k",
    "fpr",
    "maj_at_k",
    "majority_vote",
    "pass_at_k",
]


@dataclass(frozen=True)
class Estimate:
    """A metric over problems with a (1 - alpha) bootstrap interval."""

    value: float
    low: float
    high: float
    n: int  # problems contributing
    n_boot: int
    alpha: float

    def __float__(self) -> float:
        return self.value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"n, c, k must be integers, got {n!r}, {c!r}, {k!r}")
    if n < 1 or k < 1 or k > n or not 0 <= c <= n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> Estimate:
    """sum(num) / sum(den) with a percentile interval from resampling the problems (rows)."""
    num_a = np.asarray(num, dtype=np.float64)
    den_a = np.asarray(den, dtype=np.float64)
    if num_a.shape != den_a.shape or num_a.ndim != 1:
        raise ValueError(f"num and den must be 1-D of equal length, got {num_a.shape} and {den_a.shape}")
    n = len(num_a)
    total = den_a.sum()
    value = float(num_a.sum() / total) if total > 0 else float("nan")
    if n == 0 or n_boot <= 0:
        return Estimate(value, float("nan"), float("nan"), n, n_boot, alpha)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    nums, dens = num_a[idx].sum(axis=1), den_a[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(dens > 0, nums / np.where(dens > 0, dens, 1.0), np.nan)
    if np.all(np.isnan(ratios)):
        return Estimate(value, float("nan"), float("nan"), n, n_boot, alpha)
    low, high = np.nanpercentile(ratios, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Estimate(value, float(low), float(high), n, n_boot, alpha)


def _mean(values: Sequence[float], **boot: float | int) -> Estimate:
    return bootstrap_ratio(values, [1.0] * len(values), **boot)  # type: ignore[arg-type]


def coverage_at_k(correct: Sequence[Sequence[bool]], k: int, *, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> Estimate:
    """Mean over problems of pass@k; ``correct[i]`` holds problem i's per-sample verdicts."""
    vals = []
    for i, row in enumerate(correct):
        n = len(row)
        if n < k:
            raise ValueError(f"problem {i} has {n} samples, fewer than k={k}")
        vals.append(pass_at_k(n, int(sum(bool(x) for x in row)), k))
    return _mean(vals, n_boot=n_boot, seed=seed, alpha=alpha)


def _default_key(ans: str) -> str | None:
    return grader.answer_key(ans)


def group_answers(answers: Sequence[str | None], *, key: Callable[[str], object] | None = None,
                  same: Callable[[str, str], bool] | None = None) -> tuple[list[str], list[list[int]]]:
    """(representatives, groups): answers grouped as majority votes group them, each group the
    indices of its answers, in order of first appearance; None answers (and answers whose key is
    None) abstain.

    Answers are grouped by ``same(a, b)`` when given (e.g. ``grader.is_equivalent``: each answer
    joins the first earlier group it matches), else by ``key`` (default:
    :func:`reasonax.eval.grader.answer_key`, normalised strings with exact number values).
    """
    groups: list[list[int]] = []
    reps: list[str] = []
    by_key: dict[object, int] = {}
    keyfn = key or _default_key
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        gi = None
        if same is not None:
            gi = next((g for g, rep in enumerate(reps) if same(rep, ans)), None)
        else:
            kk = keyfn(ans)
            if kk is None:
                continue
            gi = by_key.get(kk)
            if gi is None:
                by_key[kk] = len(groups)
        if gi is None:
            groups.append([i])
            reps.append(ans)
        else:
            groups[gi].append(i)
    return reps, groups


def majority_vote(answers: Sequence[str | None], *, key: Callable[[str], object] | None = None,
                  same: Callable[[str, str], bool] | None = None) -> str | None:
    """The most frequent answer (None answers abstain); ties go to the answer seen first. Answers
    are grouped by group_answers (``same``, else ``key``)."""
    reps, groups = group_answers(answers, key=key, same=same)
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda g: (len(groups[g]), -groups[g][0]))
    return reps[best]


def maj_at_k(answers: Sequence[Sequence[str | None]], golds: Sequence[str], k: int, *,
             equivalent: Callable[[str, str], bool] | None = None,
             key: Callable[[str], object] | None = None, same: Callable[[str, str], bool] | None = None,
             n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """Share of problems whose majority answer among the first k samples equals the gold.

    ``equivalent(gold, answer)`` decides correctness (default :func:`grader.is_equivalent`).
    """
    if len(answers) != len(golds):
        raise ValueError(f"{len(answers)} answer lists but {len(golds)} golds")
    if equivalent is None:
        equivalent = grader.is_equivalent
    vals = []
    for i, (row, gold) in enumerate(zip(answers, golds)):
        if len(row) < k:
            raise ValueError(f"problem {i} has {len(row)} samples, fewer than k={k}")
        winner = majority_vote(list(row[:k]), key=key, same=same)
        vals.append(1.0 if winner is not None and equivalent(gold, winner) else 0.0)
    return _mean(vals, n_boot=n_boot, seed=seed, alpha=alpha)


def _norm_ws(text: str) -> str:
    return " ".join(text.split())


def diversity_at_k(solutions: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]], k: int, *,
                   n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Estimate]:
    """Unique correct solutions among the first k samples (whitespace-normalised), as
    ``{"all": mean over all problems, "solved": mean over problems with a correct sample}``."""
    if len(solutions) != len(correct):
        raise ValueError(f"{len(solutions)} solution lists but {len(correct)} verdict lists")
    counts = []
    for i, (sols, ok) in enumerate(zip(solutions, correct)):
        if len(sols) != len(ok):
            raise ValueError(f"problem {i}: {len(sols)} solutions but {len(ok)} verdicts")
        if len(sols) < k:
            raise ValueError(f"problem {i} has {len(sols)} samples, fewer than k={k}")
        counts.append(float(len({_norm_ws(s) for s, c in zip(sols[:k], ok[:k]) if c})))
    solved = [c for c in counts if c > 0]
    boot = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
    return {"all": _mean(counts, **boot), "solved": _mean(solved, **boot)}


def fpr(labels: Iterable[SolutionLabel], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """False-positive rate of answer-only grading: among solutions whose final answer is
    correct and whose reasoning was judged, the share with wrong reasoning. Resamples problems."""
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for lab in labels:
        if not lab.answer_correct or lab.reasoning_correct is None:
            continue
        den[lab.problem_id] += 1.0
        num[lab.problem_id] += 0.0 if lab.reasoning_correct else 1.0
    pids = sorted(den)
    return bootstrap_ratio([num[p] for p in pids], [den[p] for p in pids], n_boot=n_boot, seed=seed, alpha=alpha)
