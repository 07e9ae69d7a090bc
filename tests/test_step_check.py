"""reasonax.eval.step_check (arithmetic step checker) and reasonax.eval.labels (label import)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from reasonax.eval import datasets, metrics, step_check
from reasonax.eval.labels import LabelFormatError, SolutionLabel, load_labels

RIGHT = [
    "12 * 4 = 48",
    "48 / 2 = 24",
    r"$3 \times 5 = 15$",
    r"so $12 \div 4 = 3$ apples",
    "1,200 ÷ 4 = 300",
    "16 - 3 - 4 = 9",
    "9 × 2 = $18",
    r"\frac{48}{2} = 24",
    "2^{10} = 1024",
    "2(3+4) = 14",
    "The loss was -5 + 3 = -2 dollars.",
    "7/3 = 2.33",  # correctly rounded to the written decimals
    "5 - 1 - 1/2 = 3 1/2 hours",
    "$350 000 x 5/100 = $17500",
    "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs",
    "0.1 + 0.2 = 0.3",
]
WRONG = [
    "12 * 4 = 50",
    "48 / 2 = 23",
    r"$3 \times 5 = 16$",
    "1,200 ÷ 4 = 30",
    "7/3 = 2.34",
    "so 3 + 4 = 7 = 8",
    "She sells 16 - 3 - 4 = <<16-3-4=8>>8 eggs",
    "0.1 + 0.2 = 0.30000000000000004",
    "2^{10} = 1000",
    "100001 - 1 = 10000",
]
NOT_STEPS = [
    "x = 5",
    "48 = 48",
    "20% = 10",
    "3x + 4 - 4 = 28 - 4",
    "2x - 4 = 6",
    "9 hours * 2/3 = 6 hours",  # the left expression is cut by a word; not checkable
    "a <= 5",
    '__import__("os") = 1',
    "no equations here",
]


@pytest.mark.parametrize("text", RIGHT)
def test_right_steps(text):
    found = step_check.check_steps(text)
    assert found and all(s.ok for s in found)
    assert step_check.steps_ok(text) is True


@pytest.mark.parametrize("text", WRONG)
def test_wrong_steps(text):
    found = step_check.check_steps(text)
    assert found and not all(s.ok for s in found)
    assert step_check.steps_ok(text) is False


@pytest.mark.parametrize("text", NOT_STEPS)
def test_not_steps(text):
    assert step_check.check_steps(text) == []
    assert step_check.steps_ok(text) is None


def test_rounding_can_be_turned_off():
    assert step_check.steps_ok("7/3 = 2.33", allow_rounding=False) is False
    assert step_check.steps_ok("7/3 = 2.33", allow_rounding=True) is True


def test_evaluate_is_exact_and_refuses_code():
    assert step_check.evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert step_check.evaluate(r"\frac{1}{3} \times 3") == 1
    assert step_check.evaluate("1,000,000 / 3") == Fraction(1_000_000, 3)
    assert step_check.evaluate("-2^{2}") == -4
    for bad in ['__import__("os")', "2 ** 1000", "1/0", "9**9**9", "open('x')", "1" * 40, "(1"]:
        with pytest.raises(ValueError):
            step_check.evaluate(bad)


def test_gsm8k_reference_solutions_are_almost_all_clean():
    """The reference solutions state ~7,800 steps; a handful are genuinely wrong or sloppy
    (e.g. '$32 - $20 = $300'), and the checker must not flag much more than that."""
    probs = datasets.load_gsm8k()
    checked = [step_check.check_steps(p.meta["solution"]) for p in probs]
    n_steps = sum(len(c) for c in checked)
    flagged = sum(1 for c in checked if any(not s.ok for s in c))
    assert n_steps > 5 * len(probs)
    assert flagged <= 0.01 * len(probs)


def test_false_positive_labels_and_rate():
    right = "12 * 4 = 48, so \\boxed{48}"
    lucky = "12 * 4 = 50 ... anyway \\boxed{48}"  # right answer, wrong step: a false positive
    wrong = "12 * 4 = 48, so \\boxed{49}"
    plain = "\\boxed{48}"  # no steps: not judged
    labels = step_check.label_solutions(["p1", "p2"], [[right, lucky, wrong], [plain, right]], ["48", "48"])
    by_key = {(lab.problem_id, lab.sample_index): lab for lab in labels}
    assert by_key[("p1", 1)] == SolutionLabel("p1", 1, True, False, "step_checker")
    assert by_key[("p1", 2)].answer_correct is False
    assert by_key[("p2", 0)].reasoning_correct is None
    assert metrics.fpr(labels).value == pytest.approx(1 / 3)  # 1 of the 3 judged correct answers


# ----------------------------------------------------------------------------- labels


def test_load_labels_with_custom_fields(tmp_path):
    f = tmp_path / "human.jsonl"
    rows = [
        {"pid": "a", "k": 0, "ans": True, "why": {"ok": "yes"}},
        {"pid": "a", "k": 1, "ans": "correct", "why": {"ok": "no"}},
        {"pid": 7, "k": 0, "ans": 0, "why": {"ok": None}},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    labels = load_labels(f, problem_field="pid", sample_field="k", answer_field="ans", reasoning_field="why.ok")
    assert labels == [
        SolutionLabel("a", 0, True, True, "human"),
        SolutionLabel("a", 1, True, False, "human"),
        SolutionLabel("7", 0, False, None, "human"),
    ]
    assert metrics.fpr(labels).value == pytest.approx(0.5)


def test_load_labels_numbers_samples_when_no_sample_field(tmp_path):
    f = tmp_path / "l.jsonl"
    f.write_text("\n".join(json.dumps({"problem_id": p, "answer_correct": True, "reasoning_correct": True})
                           for p in ["a", "b", "a"]), encoding="utf-8")
    assert [(x.problem_id, x.sample_index) for x in load_labels(f, sample_field=None)] == [("a", 0), ("b", 0), ("a", 1)]


@pytest.mark.parametrize("line,message", [
    ("{oops", r":2: invalid JSON"),
    ('{"problem_id": "a", "sample_index": 1, "reasoning_correct": true}', r":2: missing field 'answer_correct'"),
    ('{"problem_id": "a", "sample_index": 1, "answer_correct": "maybe", "reasoning_correct": true}',
     r":2: field 'answer_correct' is not a boolean label: 'maybe'"),
    ('{"problem_id": "a", "sample_index": -1, "answer_correct": true, "reasoning_correct": true}',
     r":2: field 'sample_index' should be a non-negative integer"),
    ('{"problem_id": "a", "sample_index": 0, "answer_correct": true, "reasoning_correct": true}',
     r":2: duplicate label for problem 'a' sample 0 \(first on line 1\)"),
    ('{"problem_id": null, "sample_index": 1, "answer_correct": true, "reasoning_correct": true}',
     r":2: field 'problem_id' should be a string or integer"),
])
def test_load_labels_errors_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    good = '{"problem_id": "a", "sample_index": 0, "answer_correct": true, "reasoning_correct": false}'
    f.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(LabelFormatError, match=str(f).replace(".", r"\.") + message):
        load_labels(f)
