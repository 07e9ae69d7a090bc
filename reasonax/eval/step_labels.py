"""Step labels for process reward models: the two labelling rules, pure (no I/O, no JAX).

A solution is split into steps at a separator (split_steps); each step gets one label, in TRL's
stepwise format {prompt, completions: [step, ...], labels: [...]} (reasonax.eval.stepwise writes
it). Two sources:

* The step checker (reasonax.eval.step_check), with PRM800K's first-error convention (Lightman
  et al. 2023, "Let's Verify Step by Step", arXiv 2305.20050): a step is correct when every
  equation it states checks; a step that states no equation is correct unless it comes after an
  error; every step after the first wrong one is wrong:

      ok_i    = all equations of step i check          (True when step i states none)
      label_i = ok_1 and ok_2 and ... and ok_i          (checker_labels)

* Monte Carlo estimation (Math-Shepherd, Wang et al. 2024, arXiv 2312.08935): from the prefix
  prompt + steps 1..i the policy completes the solution k times; with c_i of the k reaching the
  gold answer,

      soft_i = c_i / k          hard_i = [c_i > 0]     (i < n)
      label_n = [the solution's own final answer is the gold one]   (graded, not sampled)

  (mc_labels; the rollouts themselves are reasonax.sample.mc_labels).
"""

from __future__ import annotations

from collections.abc import Sequence

from reasonax.eval import step_check

__all__ = ["MODES", "checker_labels", "first_error", "mc_label", "mc_labels", "split_steps", "step_verdicts"]

MODES = ("soft", "hard")


def split_steps(text: str, separator: str = "\n") -> list[str]:
    """The steps of a solution: text split at every separator, steps that are blank (empty or
    whitespace only, e.g. between two newlines) dropped; the others keep their text as written.

    >>> split_steps("7 + 3 = 10.\\n\\n10 * 2 = 20.\\n", "\\n")
    ['7 + 3 = 10.', '10 * 2 = 20.']
    """
    if not separator:
        raise ValueError("the step separator is empty")
    return [s for s in text.split(separator) if s.strip()]


def first_error(ok: Sequence[bool]) -> list[bool]:
    """PRM800K's convention: each step's own verdict, then every step from the first wrong one on
    is wrong. [True, False, True] -> [True, False, False]."""
    out, good = [], True
    for v in ok:
        good = good and bool(v)
        out.append(good)
    return out


def step_verdicts(steps: Sequence[str]) -> list[bool | None]:
    """Per step, the step checker's verdict on that step alone: True when it states equations and
    all of them check, False when one does not, None when it states none."""
    return [step_check.steps_ok(s) for s in steps]


def checker_labels(steps: Sequence[str], answer_correct: bool | None = None) -> list[bool]:
    """Step-checker labels (see the module docstring): a step without an equation counts as
    correct, then first_error. answer_correct=False (the solution's final answer graded wrong)
    also marks the last step wrong; None or True leave the rule as it is."""
    ok = [v is not False for v in step_verdicts(steps)]
    if answer_correct is False and ok:
        ok[-1] = False
    return first_error(ok)


def mc_label(correct: int, k: int, mode: str) -> float | bool:
    """One step's Monte Carlo label from `correct` of its k rollouts reaching the gold: soft
    c / k, hard c > 0."""
    if k < 1 or not 0 <= correct <= k:
        raise ValueError(f"need k >= 1 and 0 <= correct <= k, got correct={correct}, k={k}")
    if mode == "soft":
        return correct / k
    if mode == "hard":
        return correct > 0
    raise ValueError(f"label mode {mode!r}; expected one of {MODES}")


def mc_labels(correct: Sequence[int], k: int, last_correct: bool, mode: str) -> list[float | bool]:
    """Monte Carlo labels of a solution of len(correct) + 1 steps: steps 1..n-1 from their
    rollouts' correct counts, the last step from the solution's own graded answer (1.0 / 0.0
    soft, True / False hard)."""
    last = mc_label(int(bool(last_correct)), 1, mode)
    return [mc_label(int(c), k, mode) for c in correct] + [last]
