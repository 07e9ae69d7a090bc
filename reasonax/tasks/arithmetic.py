"""Multi-step integer arithmetic word problems with worked solutions ending in \\boxed{answer}.

    records(n=1000, seed=0) -> [{'id', 'question', 'prompt', 'completion', 'answer'}]

Each problem chains `steps` additions, subtractions or multiplications by a small factor; the
solution writes one intermediate result per step, so a model must carry state to be right.
The same seed gives the same records on every machine (numpy's PCG64).
"""

from __future__ import annotations

import numpy as np

OPS = ("+", "-", "*")


def problem(rng: np.random.Generator, steps: int = 2, max_value: int = 99) -> dict:
    value = int(rng.integers(2, max_value + 1))
    terms, lines = [str(value)], []
    for _ in range(steps):
        op = OPS[int(rng.integers(len(OPS)))]
        operand = int(rng.integers(2, 10)) if op == "*" else int(rng.integers(1, max_value + 1))
        result = value + operand if op == "+" else value - operand if op == "-" else value * operand
        lines.append(f"{value} {op} {operand} = {result}.")
        terms.append(f"{op} {operand}")
        value = result
    question = f"Compute {' '.join(terms)}, working left to right."
    return {"question": question, "completion": " ".join(lines) + f" The answer is \\boxed{{{value}}}.",
            "answer": str(value)}


def records(n: int = 1000, seed: int = 0, steps: int = 2, max_value: int = 99) -> list[dict]:
    """n problems; 'prompt' is the question followed by a newline (raw template)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = problem(rng, steps, max_value)
        out.append({"id": f"arith-{seed}-{i}", "prompt": p["question"] + "\n", **p})
    return out


JUNK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$%&@!?~^"


def add_noise(recs: list[dict], share: float, seed: int = 0, span: tuple[int, int] = (3, 10)) -> list[dict]:
    """Copies of `recs` whose completions carry random junk spans (one space after each) inserted
    between words, sized so that noise is `share` of each completion's characters (to within one
    character). Each copy records its count in 'noise_chars'. share = 0 returns plain copies."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"noise share {share}: expected 0 <= share < 1")
    rng = np.random.default_rng(seed)
    out = []
    for rec in recs:
        words = rec["completion"].split(" ")
        target = round(share / (1.0 - share) * len(rec["completion"]))
        spans = [[] for _ in words]  # junk inserted before word i
        added = 0
        while added < target:
            n = min(int(rng.integers(span[0], span[1] + 1)), max(target - added - 1, 1))
            junk = "".join(JUNK[j] for j in rng.integers(len(JUNK), size=n))
            spans[int(rng.integers(len(words)))].append(junk + " ")
            added += n + 1
        text = "".join("".join(s) + w + (" " if i + 1 < len(words) else "")
                       for i, (s, w) in enumerate(zip(spans, words)))
        out.append({**rec, "completion": text, "noise_chars": added})
    return out


def stepwise_records(n: int = 1000, seed: int = 0, steps: int = 3, max_value: int = 9,
                     error_rate: float = 0.5) -> list[dict]:
    """n solutions in TRL's stepwise format for a PRM: {'prompt', 'completions': one 'a op b = c.'
    per step, 'labels'}. With probability error_rate a solution has one wrong result (off by 1 to
    3) at a random step, carried on by the later steps; labels follow PRM800K's first-error
    convention (every step from the first wrong one on is False)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        value = int(rng.integers(2, max_value + 1))
        terms, completions, labels = [str(value)], [], []
        bad = int(rng.integers(steps)) if rng.random() < error_rate else -1
        for s in range(steps):
            op = OPS[int(rng.integers(2))]  # + or -: results a small model can check
            operand = int(rng.integers(1, max_value + 1))
            result = value + operand if op == "+" else value - operand
            if s == bad:
                result += int(rng.choice([-3, -2, -1, 1, 2, 3]))
            completions.append(f"{value} {op} {operand} = {result}.")
            labels.append(bad < 0 or s < bad)
            terms.append(f"{op} {operand}")
            value = result
        out.append({"id": f"arith-steps-{seed}-{i}", "prompt": f"Compute {' '.join(terms)}, working left to right.\n",
                    "completions": completions, "labels": labels})
    return out
