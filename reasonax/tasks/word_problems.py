"""Multi-step arithmetic word problems with checkable worked solutions (the demo's task).

    records(n, split="train", level=2, seed=0) -> [{'id', 'level', 'split', 'question', 'prompt',
                                                    'completion', 'answer', 'equations'}]

A problem starts with a count ("Ava has 7 pens.") and changes it `steps` times: buys / finds /
gets more (+), gives away / loses / sells some (-), or ends up with k times as many (*). The
solution states one equation per change, e.g. "7 + 3 = 10. 10 * 2 = 20. The answer is
\\boxed{20}.", so every equation can be checked exactly (reasonax.eval.step_check) and the final
answer graded against the gold one. Counts never go negative.

Difficulty levels (LEVELS) set the number of changes, the largest starting count / operand and
the largest factor. Train and test are disjoint by question text: a question belongs to the test
split when a hash of its text falls in the lowest `test_permille` of 1000 buckets, so the split
of a question never depends on the seed or on how many records were drawn. The same (n, split,
level, seed) gives the same records on every machine (numpy's PCG64, sha256).

The tokenizer of the demo models is the byte-level one (reasonax.tasks.byte_tokenizer), saved as
an HF tokenizer.json by save_tokenizer so models load it through the normal path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from reasonax.tasks.byte_tokenizer import byte_tokenizer


@dataclasses.dataclass(frozen=True)
class Level:
    steps: int       # changes to the starting count (equations in the solution)
    max_value: int   # largest starting count and added / subtracted amount
    max_factor: int  # largest k in "ends up with k times as many"


LEVELS = {
    1: Level(steps=1, max_value=9, max_factor=3),
    2: Level(steps=2, max_value=9, max_factor=3),
    3: Level(steps=2, max_value=20, max_factor=4),
    4: Level(steps=3, max_value=50, max_factor=5),
    5: Level(steps=4, max_value=99, max_factor=9),
}
SPLITS = ("train", "test")
MAX_MISSES = 20_000  # draws in a row without a new problem of the split: the level is exhausted
NAMES = ("Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jia", "Kai", "Lena", "Milo", "Nia",
         "Omar", "Pia")
ITEMS = ("apples", "pens", "coins", "books", "cards", "eggs", "stamps", "shells")
MORE = ("buys {b} more.", "finds {b} more.", "gets {b} more.")
LESS = ("gives away {b}.", "loses {b}.", "sells {b}.")
TIMES = ("ends up with {b} times as many.",)


def split_of(question: str, test_permille: int = 100) -> str:
    """'test' for the questions whose sha256 lands in the lowest test_permille of 1000 buckets."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 1000
    return "test" if bucket < test_permille else "train"


def problem(rng: np.random.Generator, level: Level) -> dict:
    """One problem drawn from rng: question, solution, answer and its (a, op, b, result) equations."""
    name, item = NAMES[int(rng.integers(len(NAMES)))], ITEMS[int(rng.integers(len(ITEMS)))]
    value = int(rng.integers(2, level.max_value + 1))
    sentences, equations = [f"{name} has {value} {item}."], []
    for _ in range(level.steps):
        op = "+-*"[int(rng.integers(3))]
        if op == "-" and value < 1:
            op = "+"
        if op == "*":
            b = int(rng.integers(2, level.max_factor + 1))
            result, template = value * b, TIMES[int(rng.integers(len(TIMES)))]
        elif op == "-":
            b = int(rng.integers(1, min(value, level.max_value) + 1))
            result, template = value - b, LESS[int(rng.integers(len(LESS)))]
        else:
            b = int(rng.integers(1, level.max_value + 1))
            result, template = value + b, MORE[int(rng.integers(len(MORE)))]
        sentences.append(f"{name} {template.format(b=b)}")
        equations.append((value, op, b, result))
        value = result
    sentences.append(f"How many {item} does {name} have now?")
    solution = " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in equations)
    return {"question": " ".join(sentences), "completion": f"{solution} The answer is \\boxed{{{value}}}.",
            "answer": str(value), "equations": [list(e) for e in equations]}


def records(n: int, split: str = "train", level: int = 2, seed: int = 0, test_permille: int = 100) -> list[dict]:
    """n distinct problems of one split and level. 'prompt' is the question and a newline (the raw
    template the demo trains and samples with); 'completion' the worked solution."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if level not in LEVELS:
        raise ValueError(f"level={level}; expected one of {sorted(LEVELS)}")
    if not 0 < test_permille < 1000:
        raise ValueError(f"test_permille={test_permille}; expected 0 < test_permille < 1000")
    rng = np.random.default_rng([seed, level])
    out, seen, misses = [], set(), 0
    while len(out) < n:
        p = problem(rng, LEVELS[level])
        if p["question"] in seen or split_of(p["question"], test_permille) != split:
            misses += 1
            if misses > MAX_MISSES:
                raise ValueError(f"level {level} {split} split: {MAX_MISSES} draws in a row gave no new problem "
                                 f"after {len(out)} of the {n} requested (ask for fewer or a harder level)")
            continue
        misses = 0
        seen.add(p["question"])
        out.append({"id": f"words-{split}-L{level}-{seed}-{len(out)}", "level": level, "split": split,
                    "prompt": p["question"] + "\n", **p})
    return out


def save_tokenizer(out_dir: str | os.PathLike):
    """Write the byte-level tokenizer (tokenizer.json + config) to out_dir; returns it."""
    return byte_tokenizer(out_dir)


def write(out_dir: str | os.PathLike, num_train: int, num_test: int, level: int = 2, seed: int = 0) -> dict:
    """train.jsonl, test.jsonl (fields id, question, prompt, completion, answer, ...) and the byte
    tokenizer under out_dir/tokenizer; returns {name: path}."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", num_train), ("test", num_test)):
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in records(n, split, level, seed)))
    save_tokenizer(out / "tokenizer")
    paths["tokenizer"] = out / "tokenizer"
    return paths


def main(argv):
    from absl import flags

    del argv
    f = flags.FLAGS
    for name, path in write(f.out_dir, f.num_train, f.num_test, f.level, f.seed).items():
        print(f"{name}: {path}")


def cli() -> None:
    """The `reasonax-word-problems` command (also `python -m reasonax.tasks.word_problems`)."""
    from absl import app, flags

    flags.DEFINE_string("out_dir", None, "directory for train.jsonl, test.jsonl and tokenizer/", required=True)
    flags.DEFINE_integer("num_train", 2000, "train-split problems")
    flags.DEFINE_integer("num_test", 200, "test-split problems")
    flags.DEFINE_integer("level", 2, f"difficulty level, one of {sorted(LEVELS)}")
    flags.DEFINE_integer("seed", 0, "generator seed")
    app.run(main)


if __name__ == "__main__":
    cli()
