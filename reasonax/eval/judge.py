"""LLM-judge labels for the false-positive rate: ask a (stronger) model whether a solution's
reasoning is correct.

The judge is any function from prompt texts to completion texts, so this module depends on
nothing else in reasonax; `reasonax.evaluate` builds one from the sampler. Verdicts are
parsed strictly: a reply must state VERDICT: CORRECT or VERDICT: INCORRECT (the last such
line counts); anything else is "not judged" (None) and is left out of the FPR, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from reasonax.eval.labels import SolutionLabel

JUDGE_TEMPLATE = (
    "You are checking a student's solution to a math problem. The final answer is already known "
    "to be correct; decide whether every step of the reasoning is also correct (no arithmetic "
    "errors, no unjustified or wrong steps that happen to reach the right answer).\n\n"
    "Problem:\n{problem}\n\nReference answer: {gold}\n\nStudent solution:\n{solution}\n\n"
    "Reply with a short justification, then a last line that is exactly "
    "\"VERDICT: CORRECT\" or \"VERDICT: INCORRECT\".\n")

_VERDICT = re.compile(r"VERDICT\s*:\s*(CORRECT|INCORRECT)\b", re.IGNORECASE)


def judge_prompt(problem: str, solution: str, gold: str, template: str = JUDGE_TEMPLATE) -> str:
    return template.format(problem=problem, solution=solution, gold=gold)


def parse_verdict(reply: str) -> bool | None:
    """True (reasoning correct), False (incorrect) or None (no clear verdict)."""
    found = _VERDICT.findall(reply or "")
    return None if not found else found[-1].upper() == "CORRECT"


def judge_labels(items: Sequence[tuple[str, int, str, str, str]], generate_fn: Callable[[list[str]], list[str]],
                 template: str = JUDGE_TEMPLATE) -> list[SolutionLabel]:
    """Labels for (problem_id, sample_index, problem, solution, gold) items whose answer is correct.

    generate_fn maps a list of judge prompts to the judge's replies (same order).
    """
    prompts = [judge_prompt(problem, solution, gold, template) for _, _, problem, solution, gold in items]
    replies = generate_fn(prompts) if prompts else []
    if len(replies) != len(prompts):
        raise ValueError(f"judge returned {len(replies)} replies for {len(prompts)} prompts")
    return [SolutionLabel(pid, idx, True, parse_verdict(reply), "llm-judge")
            for (pid, idx, *_), reply in zip(items, replies)]
