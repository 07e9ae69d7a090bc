"""reasonax.eval.grader on the ways real completions state answers (issue 16).

Every family of accepted styles comes with must-be-false twins: a different number in the same
style, one box of two, a hedge ("5 or 7"), a wrong last right-hand side.
"""

from __future__ import annotations

import pytest

from reasonax.eval import grader

# ----------------------------------------------------------------------------- extraction

EXTRACT = [
    # (completion, expected answer with fallback off)
    # several boxes joined by a comma / "and" / "or" are one answer
    (r"so \boxed{(1, 2)}, \boxed{(2, 1)}.", "(1, 2), (2, 1)"),
    (r"\boxed{1} and \boxed{2}", "1, 2"),
    (r"$\boxed{1}$ and $\boxed{2}$", "1, 2"),
    (r"\boxed{1}, \boxed{2}, and \boxed{3}", "1, 2, 3"),
    (r"\boxed{3}\text{ and }\boxed{4}", "3, 4"),
    (r"\boxed{5} or \boxed{7}", "5, 7"),  # a hedge becomes a list: never equal to one gold
    # ... but words between boxes make the last box the answer
    (r"first \boxed{3}, corrected: \boxed{4}", "4"),
    (r"\boxed{3}. Checking again, \boxed{4}", "4"),
    (r"\boxed{\boxed{5}}", "5"),
    # the answer stated in a sentence
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: the number of apples is 12", "12"),
    ("Final Answer: The largest $n$ is $34$.", "34"),
    ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5"),
    ("So 34 is the answer.", "34"),
    (r"Hence \(x = 2\) is the final answer", "x = 2"),
    ("The solution is $x = 3$.", "x = 3"),
    (r"so $$\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}$$ is the answer",
     r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"),
    # ... and its hedges and ambiguities are not cut down to one number
    ("The answer is 5 or 7.", "5 or 7"),
    ("The answer is 5 and 7", "5 and 7"),
    ("The answer is $5$ or $7$.", "5, 7"),
    ("Final Answer: The largest $n$ is 34 or 35.", "The largest $n$ is 34 or 35"),
    ("Final Answer: The value is 34 when $n$ is 2.", "The value is 34 when $n$ is 2"),
    ("Therefore $x \\geq 5$ or $x \\leq 1$ is the solution.", "x \\geq 5, x \\leq 1"),
    ("So 2 + 3 is the answer.", None),
    # a completion that ends in a statement of its value (Gemma 3 270M on MATH-500)
    ("The degree of $f$ is 3.", "3"),
    ("So the remaining 24 liters is 15 liters.", "15"),
    (r"The value is $\frac{1}{2}$.", r"\frac{1}{2}"),
    ("The degree is 3 or 4.", None),  # a hedge
    ("Is the degree 3?", None),  # a question
    ("...if he makes and sells 20 candles?", None),  # the question restated
    ("The degree of $f$ is 3 when $x$ is 2.", None),  # two values
    ("The sum is 12 more than the product.", None),  # not the end of the sentence
    ("The degree of $f$ is 3. Then we add 1.", None),  # not the last sentence
    ("The degree of $f$ is 3.\nQuestion: what is 4?", None),
    # a completion that is nothing but its answer (after "Answer:" in the prompt)
    (" 3/20", "3/20"), (" 42.", "42"), (r" $\frac{3}{20}$", r"\frac{3}{20}"),
    ("3/20 or 1/5", None), ("3 + 4", None), ("5\n6", None), ("42 apples", None),
    ("The solution is as follows: first 3, then 4", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer_styles(text, expected):
    assert grader.extract_answer(text, fallback=False) == expected


def test_decimal_comma_in_the_last_number_fallback():
    assert grader.extract_answer("Soucis : 2,74 $", fallback=True) == "2,74"
    assert grader.extract_answer("Soucis : 2,74 $", fallback=False) is None  # no stated answer
    assert grader.extract_answer("It costs 1,250 in all", fallback=True) == "1,250"


# ----------------------------------------------------------------------------- grading completions

GRADE = [
    # (completion, gold, fallback, expected)
    (r"\boxed{(1, 2)}, \boxed{(2, 1)}", "(1,2),(2,1)", False, True),
    (r"\boxed{(1, 2)}, \boxed{(2, 2)}", "(1,2),(2,1)", False, False),  # a different pair
    (r"\boxed{(2, 1)}", "(1,2),(2,1)", False, False),  # one box of two
    (r"\boxed{(1, 2)}. Or rather \boxed{(2, 1)}", "(1,2),(2,1)", False, False),
    (r"\boxed{1} and \boxed{2}", "1, 2", False, True),
    (r"\boxed{1} and \boxed{3}", "1, 2", False, False),
    (r"\boxed{2}", "1, 2", False, False),
    (r"\boxed{5} or \boxed{7}", "5", False, False),  # hedges
    (r"\boxed{5} or \boxed{7}", "7", False, False),
    ("The answer is 5 or 7.", "5", False, False),
    ("The answer is $5$ or $7$.", "7", False, False),
    ("Final Answer: The largest $n$ is 34.", "34", False, True),
    ("Final Answer: The largest $n$ is 35.", "34", False, False),
    ("Final Answer: The largest $n$ is 34 or 35.", "34", False, False),
    ("Final Answer: The value is 34 when $n$ is 2.", "2", False, False),
    ("Therefore $x \\geq 5$ is the solution.", r"x \ge 5", False, True),
    ("Therefore $x \\geq 6$ is the solution.", r"x \ge 5", False, False),
    ("Therefore $x > 5$ is the solution.", r"x \ge 5", False, False),
    ("Therefore $x \\geq 5$ or $x \\leq 1$ is the solution.", r"x \ge 5", False, False),
    ("So 2 + 3 is the answer.", "3", False, False),
    ("$x = 5+5+1 = 11$", "11", True, True),
    (r"\boxed{x = 5+5+1 = 11}", "11", False, True),
    (r"\boxed{x = 5+5+1 = 12}", "11", False, False),  # a wrong last right-hand side
    ("The degree of $f$ is 3.", "3", False, True),
    ("The degree of $f$ is 4.", "3", False, False),
    ("The degree of $f$ is 3 or 4.", "3", False, False),
    ("The degree of $f$ is 3 when $x$ is 2.", "2", False, False),
    (" 3/20", "0.15", False, True),
    (" 3/21", "0.15", False, False),
    ("3/20 or 1/5", "0.15", False, False),
    ("Answer: = 4cm", "4", False, True),
    ("Answer: = 5cm", "4", False, False),
    ("So the answer is 30-12= 18.", "18", False, True),
    ("So the answer is 30-3= 24.", "24", False, False),  # 30-3 is not 24
    ("So the answer is 30-3= 24.", "27", False, False),
    (r"\boxed{(3,2)}", "(p,q)=(3,2)", False, True),
    (r"\boxed{(2,3)}", "(p,q)=(3,2)", False, False),
    (r"\boxed{4, 5}", "AB=4,CD=5", False, True),
    (r"\boxed{5, 4}", "AB=4,CD=5", False, False),
    (r"\boxed{11:21}", "V_1:V_2=11:21", False, True),
    (r"\boxed{21:11}", "V_1:V_2=11:21", False, False),
    (r"\boxed{1000,99}", "1000.99", False, True),
    (r"\boxed{1000,98}", "1000.99", False, False),
    ("Soucis : 2,74 $", "2.74", True, True),
    ("Soucis : 2,75 $", "2.74", True, False),
    ("Soucis : 2,74 $", "274", True, False),
    (r"\boxed{1,000.99€}", "1000.99", False, True),
    (r"\boxed{1,000.98€}", "1000.99", False, False),
    (r"\boxed{1,000.99m²}", "1000.99", False, True),
    (r"\boxed{1,000.99m²}", "100099", False, False),
    (r"\boxed{125\textnormal{ miles}}", "125", False, True),
    (r"\boxed{126\textnormal{ miles}}", "125", False, False),
    (r"\boxed{$28$ percent}", r"28\%", False, True),
    (r"\boxed{$29$ percent}", r"28\%", False, False),
    ("The answer is $28$ percent.", r"28\%", False, True),
    (r"\boxed{32, 349}", "32349", False, False),  # a comma and a space separate list items
    (r"\boxed{32,349}", "32349", False, True),  # a comma before three digits separates thousands
]


@pytest.mark.parametrize("completion,gold,fallback,expected", GRADE)
def test_grade_styles(completion, gold, fallback, expected):
    assert grader.grade(completion, gold, fallback=fallback) is expected


def test_grade_batch_agrees_on_styles():
    comps, golds = [c for c, _, f, _ in GRADE if not f], [g for _, g, f, _ in GRADE if not f]
    assert grader.grade_batch(comps, golds) == [e for _, _, f, e in GRADE if not f]


# ----------------------------------------------------------------------------- equivalence

PM = r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"

STYLE_TRUE = [
    # golds in assignment or ratio form against a bare value, and the reverse
    ("(p,q)=(3,2)", "(3,2)"), ("(p,q)=(3,2)", "(p, q) = (3, 2)"), (r"(p,q)=(\frac{1}{2},3)", "(0.5, 3)"),
    ("AB=4,CD=5", "4, 5"), ("AB=4,CD=5", "(4, 5)"), ("AB=4,CD=5", "CD=5, AB=4"), (r"AB=\frac12,CD=5", "0.5, 5"),
    ("V_1:V_2=11:21", "11:21"), ("V_1:V_2=11:21", "V_1 : V_2 = 11:21"), ("k=7", "7"), ("7", "k = 7"),
    ("5, 7", "x=5, x=7"),
    # chained equalities: the last right-hand side (constant sides before it agree with it)
    ("11", "x = 5+5+1 = 11"), ("11", "n = 22/2 = 11"), (r"\frac{1}{2}", "p = 2/4 = 0.5"), ("4", "x = 2y = 4"),
    ("18", "30-12=18"), ("18", r"\frac{36}{2} = 18"), ("2", r"\sqrt{4} = 2"), ("18", "30 - 12 = 18 = 18"),
    # matrix spellings
    (PM, r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"),
    (PM, r"\left[\begin{array}{cc} 1 & 2 \\ 3 & 4 \end{array}\right]"),
    (PM, r"\left[\begin{array}{c|c} 1 & 2 \\ 3 & 4 \end{array}\right]"),
    (PM, r"\left(\begin{matrix} 1 & 2 \\ 3 & 4 \end{matrix}\right)"),
    (r"\left[\begin{array}{cc} 1 & 2 \\ 3 & 4 \end{array}\right]", PM),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}"),
    # decimal commas, thousands, units, currency
    ("1000.99", "1000,99"), ("2.74", "2,74"), ("2.74", "2,74 $"), ("1.5", "1,5"), ("-0.25", "-0,25"),
    ("1000.99", "1,000.99€"), ("1000.99", "€1,000.99"), ("1000.99", "1,000.99m²"), ("12", "12 cm²"),
    ("125", r"125\textnormal{ miles}"), (r"28\%", "$28$ percent"), ("28", "28 percent"), ("5", "5 euros"),
    ("1000", "1,000"), ("10000", r"10,\!000"), ("32349", "32,349"), (r"111, \! 111, \! 111", "111111111"),
]

STYLE_FALSE = [
    # assignment and ratio twins: other values, other order, one of two
    ("(p,q)=(3,2)", "(2,3)"), ("(p,q)=(3,2)", "(3,3)"), ("(p,q)=(3,2)", "(q,p)=(3,2)"), ("(p,q)=(3,2)", "3"),
    ("AB=4,CD=5", "5, 4"), ("AB=4,CD=5", "4, 6"), ("AB=4,CD=5", "4"), ("AB=4,CD=5", "AB=5, CD=4"),
    ("AB=4,CD=5", "4, 5, 6"), ("V_1:V_2=11:21", "21:11"), ("V_1:V_2=11:21", "11:20"), ("k=7", "8"),
    ("5", "x=5, x=7"), ("3", "x = 3, y = 4"), ("x=3", "y=3"),
    # chains: a wrong last right-hand side; equations that are not assignments
    ("11", "x = 5+5+1 = 12"), ("11", "x = 11 = 12"), ("5", "2+2=5"), ("4", "2+2=5"), ("11", "5+5+1 = 12"),
    ("11", "x = 5+5+2 = 11"), ("24", "30-3=24"), ("27", "30-3=24"), ("x+1", "x+1=x+1"),
    # matrices: another entry, the transpose, a determinant, the flattened entries
    (PM, r"\begin{bmatrix} 1 & 2 \\ 3 & 5 \end{bmatrix}"),
    (PM, r"\left[\begin{array}{cc} 1 & 3 \\ 2 & 4 \end{array}\right]"),
    (PM, r"\begin{vmatrix} 1 & 2 \\ 3 & 4 \end{vmatrix}"),
    (PM, r"\left[\begin{array}{cccc} 1 & 2 & 3 & 4 \end{array}\right]"),
    # decimal commas: other digits, and never on the gold side (a gold "1,3" is a list)
    ("1000.99", "1000,98"), ("274", "2,74"), ("1", "1,000"), ("1000.99", "1,000,99"), ("1,3", "1.3"),
    ("2.74", "2, 74"), ("13", "1,3"),
    # a comma and a space separate list items, never thousands
    ("32349", "32, 349"), ("1000", "1, 000"), ("32349", r"\boxed{32, 349}"), ("32349", r"\{32, 349\}"),
    (r"45^\circ, 135^\circ", "45135"),  # accepted before as 45,135 (MATH's damaged answer field has "45135")
    # units: other numbers, and a bare letter after a number is not a unit
    ("1000.99", "1,000.98m²"), ("2", "2m^2"), ("2", "2t"), ("125", r"126\textnormal{ miles}"),
    (r"28\%", "$29$ percent"), ("0.28", "$28$ percent"), ("2.74", "2,75 $"),
]


def test_style_pairs_are_equal():
    got = grader.is_equivalent_batch([g for g, _ in STYLE_TRUE], [p for _, p in STYLE_TRUE])
    assert [pair for pair, ok in zip(STYLE_TRUE, got) if not ok] == []


def test_style_twins_are_not_equal():
    got = grader.is_equivalent_batch([g for g, _ in STYLE_FALSE], [p for _, p in STYLE_FALSE])
    assert [pair for pair, ok in zip(STYLE_FALSE, got) if ok] == []


def test_style_twins_are_not_equal_on_the_sympy_path_either():
    got = grader.is_equivalent_batch([g for g, _ in STYLE_FALSE], [p for _, p in STYLE_FALSE], fast=False)
    assert [pair for pair, ok in zip(STYLE_FALSE, got) if ok] == []


def test_twins_outnumber_accepted_styles():
    assert len(STYLE_FALSE) >= len(STYLE_TRUE)
    assert sum(not e for *_, e in GRADE) >= sum(e for *_, e in GRADE) - 2


def test_decimal_comma_reads_the_prediction_only():
    assert grader.is_equivalent("2.74", "2,74") is True
    assert grader.is_equivalent("2,74", "2.74") is False  # a gold "2,74" is the list {2, 74}
    assert grader.is_equivalent("2,74", "2,74") is True


@pytest.mark.parametrize("raw,norm", [
    (r"10,\!000", "10,000"),
    ("32, 349", "32, 349"),
    (r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}", r"\begin{pmatrix}1\\ 2\end{pmatrix}"),
    (r"\left[\begin{array}{cc} 1 & 2 \end{array}\right]", r"\begin{pmatrix}1&2\end{pmatrix}"),
    (r"\begin{array}{cc} 1 & 2 \end{array}", r"\begin{array}{cc}1&2\end{array}"),  # bare: left alone
    ("$28$ percent", "28"),
    ("1,000.99€", "1,000.99"),
    ("2,74 $", "2,74"),
    ("1,000.99m²", "1,000.99"),
    ("x²", "x^{2}"),
])
def test_normalize_answer_styles(raw, norm):
    assert grader.normalize_answer(raw) == norm


def test_math_golds_stay_the_last_box_alone():
    """Reference solutions box equivalent forms and partial answers ("$\\boxed{x+11}$ or
    $\\boxed{11+x}$"); a MATH gold is the last box, as the data's own answer field has it."""
    from reasonax.eval import datasets

    assert datasets.math_gold(r"This yields $\boxed{x+11}$ or $\boxed{11+x}$.") == "11+x"
    assert grader.extract_answer(r"This yields $\boxed{x+11}$ or $\boxed{11+x}$.") == "x+11, 11+x"
    assert grader.grade(r"This yields $\boxed{x+11}$ or $\boxed{11+x}$.", "11+x") is True  # one value twice
    assert grader.grade(r"This yields $\boxed{x+12}$ or $\boxed{11+x}$.", "11+x") is False
