"""reasonax.eval: answer extraction and grading, metrics, datasets, step checking.

Depends on nothing else in reasonax and imports no JAX; sympy / math-verify are imported only
inside the grader's worker processes.

    from reasonax.eval import grader, metrics, datasets, step_check
    grader.grade(completion, gold)                  # reward (no last-number fallback)
    grader.is_equivalent_batch(golds, preds)        # thousands of pairs on worker processes
    metrics.coverage_at_k(correct, k)               # Estimate(value, low, high, ...)
"""

from reasonax.eval import datasets, grader, labels, metrics, step_check
from reasonax.eval.datasets import Problem
from reasonax.eval.grader import extract_answer, grade, grade_batch, is_equivalent, is_equivalent_batch
from reasonax.eval.labels import SolutionLabel
from reasonax.eval.metrics import Estimate

__all__ = [
    "Estimate",
    "Problem",
    "SolutionLabel",
    "datasets",
    "extract_answer",
    "grade",
    "grade_batch",
    "grader",
    "is_equivalent",
    "is_equivalent_batch",
    "labels",
    "metrics",
    "step_check",
]
