"""reasonax.eval.metrics: pass@k / coverage, maj@k, diversity, FPR, bootstrap intervals."""

from __future__ import annotations

import math

import pytest

from reasonax.eval import grader, metrics
from reasonax.eval.labels import SolutionLabel


def _comb_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_matches_the_binomial_definition():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert metrics.pass_at_k(n, c, k) == pytest.approx(_comb_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_cases():
    assert metrics.pass_at_k(10, 0, 3) == 0.0
    assert metrics.pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k
    assert metrics.pass_at_k(10, 10, 10) == 1.0
    assert metrics.pass_at_k(5, 1, 1) == pytest.approx(0.2)
    big = metrics.pass_at_k(10_000, 3, 100)  # stable where C(n, k) overflows floats
    assert 0.0 < big < 1.0 and math.isfinite(big)
    for bad in [(0, 0, 1), (5, 6, 1), (5, 1, 0), (5, 1, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            metrics.pass_at_k(*bad)


def test_coverage_cases_from_algorithms_md():
    # 4 samples per problem, c = {1, 0, 4}
    correct = [[True, False, False, False], [False] * 4, [True] * 4]
    assert metrics.coverage_at_k(correct, 2).value == pytest.approx(0.5)  # mean(0.5, 0, 1)
    assert metrics.coverage_at_k(correct, 4).value == pytest.approx(2 / 3)
    assert metrics.coverage_at_k(correct, 1).value == pytest.approx((0.25 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="fewer than k"):
        metrics.coverage_at_k(correct, 5)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_is_seeded_and_brackets_the_value():
    correct = [[i % 3 == 0, i % 5 == 0, True, False] for i in range(40)]
    a = metrics.coverage_at_k(correct, 2, seed=1)
    b = metrics.coverage_at_k(correct, 2, seed=1)
    c = metrics.coverage_at_k(correct, 2, seed=2)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low <= a.value <= a.high
    assert a.high - a.low > 0
    assert a.n == 40


def test_bootstrap_interval_collapses_when_every_problem_is_the_same():
    est = metrics.coverage_at_k([[True, False]] * 30, 1)
    assert est.low == est.high == est.value == pytest.approx(0.5)


def test_bootstrap_interval_narrows_with_more_problems():
    rows = [[True, False, False, False], [False] * 4, [True] * 4]
    small = metrics.coverage_at_k(rows * 3, 2)
    large = metrics.coverage_at_k(rows * 300, 2)
    assert large.value == pytest.approx(small.value)
    assert large.high - large.low < small.high - small.low


# ----------------------------------------------------------------------------- maj@k


def test_majority_vote_ties_go_to_the_earliest_answer():
    assert metrics.majority_vote(["3", "4", "4", "3"]) == "3"
    assert metrics.majority_vote(["3", "4", "4"]) == "4"
    assert metrics.majority_vote([None, "5", None]) == "5"
    assert metrics.majority_vote([None, None]) is None
    assert metrics.majority_vote([]) is None


def test_majority_vote_groups_equivalent_answers():
    # 0.5, \frac{1}{2} and 1/2 are one answer (3 votes); as strings each would have 1 vote
    assert metrics.majority_vote(["0.25", "0.5", r"\frac{1}{2}", "1/2", "0.25"]) == "0.5"
    assert metrics.majority_vote(["0.25", "0.5", r"\frac{1}{2}", "0.25"]) == "0.25"  # 2-2 tie: earliest
    same = metrics.majority_vote([r"2\sqrt{2}", "3", r"\sqrt{8}", "3", r"\sqrt 8"], same=grader.is_equivalent)
    assert same == r"2\sqrt{2}"
    by_string = metrics.majority_vote([r"2\sqrt{2}", "3", r"\sqrt{8}", "3", r"\sqrt 8"])
    assert by_string == "3"


def test_maj_at_k():
    answers = [["1", "2", "2", None], ["7", "7", "x", "8"], [None] * 4, ["0.5", r"\frac12", "3", "3"]]
    golds = ["2", "8", "1", "0.5"]
    # winners: 2 (right), 7 (wrong), none (wrong), 0.5 (right: tie 2-2, earliest)
    assert metrics.maj_at_k(answers, golds, 4).value == pytest.approx(0.5)
    # first two samples: 1 (tie, earliest; wrong), 7 (wrong), none, 0.5 (right)
    assert metrics.maj_at_k(answers, golds, 2).value == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.maj_at_k(answers, golds[:2], 2)


# ----------------------------------------------------------------------------- diversity


def test_diversity_cases_from_algorithms_md():
    # correct solutions per problem: ["A", "A", "B"], [], ["C"] among 4 samples each
    solutions = [["A", "A ", "B", "wrong"], ["w1", "w2", "w3", "w4"], ["C", "x", "y", "z"]]
    correct = [[True, True, True, False], [False] * 4, [True, False, False, False]]
    div = metrics.diversity_at_k(solutions, correct, 4)
    assert div["all"].value == pytest.approx(1.0)  # (2 + 0 + 1) / 3
    assert div["solved"].value == pytest.approx(1.5)  # (2 + 1) / 2
    assert div["solved"].n == 2


def test_diversity_dedups_whitespace_only_and_respects_k():
    solutions = [["a  b", "a b\n", "a b c", "a\tb"]]
    correct = [[True, True, True, True]]
    assert metrics.diversity_at_k(solutions, correct, 4)["all"].value == 2.0
    assert metrics.diversity_at_k(solutions, correct, 2)["all"].value == 1.0


# ----------------------------------------------------------------------------- FPR


def _lab(pid: str, i: int, ans: bool, reasoning: bool | None) -> SolutionLabel:
    return SolutionLabel(pid, i, ans, reasoning, "test")


def test_fpr_counts_only_correct_answers_with_judged_reasoning():
    labels = [
        _lab("p1", 0, True, True), _lab("p1", 1, True, False), _lab("p1", 2, False, False),
        _lab("p2", 0, True, True), _lab("p2", 1, True, None), _lab("p3", 0, False, True),
    ]
    est = metrics.fpr(labels)
    assert est.value == pytest.approx(1 / 3)  # p1: 1 bad of 2, p2: 0 of 1; p3 has no correct answers
    assert est.n == 2
    assert est.low <= est.value <= est.high


def test_fpr_without_judged_correct_answers_is_nan():
    assert math.isnan(metrics.fpr([_lab("p", 0, False, False), _lab("q", 0, True, None)]).value)
