"""Arithmetic step checker: the equations a solution states, each checked exactly.

A solution whose final answer is right but whose stated arithmetic is wrong is a *false
positive* of answer-only grading. This module finds equations such as ``12 * 4 = 48``,
``48 / 2 = 24``, ``$3 \\times 5 = 15$``, ``1,200 ÷ 4 = 300`` or GSM8K's ``<<16-3-4=9>>`` and
evaluates both sides with :class:`fractions.Fraction` over a small tokenizer and
recursive-descent parser written here. It is written here, not taken from sympy, because a
checker that runs over every sampled solution must never evaluate model text as Python
(``sympify``/``parse_expr`` do), must be fast, and must cap sizes itself: numbers are limited
to :data:`MAX_DIGITS` digits, exponents to :data:`MAX_EXPONENT`, expressions to
:data:`MAX_EXPR_CHARS` characters.

Rules: a step is checked only when both sides parse and at least one side has an operator
(``x = 5`` and ``48 = 48`` are not steps); a side with ``%`` is skipped (``20% = 10`` is
shorthand, not an equation); a decimal right-hand side counts as correct when it is the left
side correctly rounded to the written number of decimals (``7/3 = 2.33``). Chains
``a = b = c`` are checked pair by pair.

The per-solution label (:func:`label_solution`) pairs this with the grader's verdict on the
final answer; :func:`reasonax.eval.metrics.fpr` turns labels from any source (this checker,
imported human labels, a future LLM judge) into a false-positive rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

from reasonax.eval import grader
from reasonax.eval.labels import SolutionLabel

__all__ = [
    "MAX_DIGITS",
    "MAX_EXPONENT",
    "MAX_EXPR_CHARS",
    "Step",
    "check_steps",
    "evaluate",
    "label_solution",
    "label_solutions",
    "steps_ok",
]

MAX_DIGITS = 30
MAX_EXPONENT = 64
MAX_EXPR_CHARS = 200
MAX_TEXT_CHARS = 200_000


@dataclass(frozen=True)
class Step:
    """One checked equation ``left = right`` with both sides' exact values."""

    left: str
    right: str
    left_value: Fraction
    right_value: Fraction
    ok: bool


class _ParseError(ValueError):
    pass


# ----------------------------------------------------------------------------- tokenizer

_TOKEN_RE = re.compile(
    r"\s+"
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|\d{1,3}(?: \d{3})+(?![\d/])|\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<frac>\\[dt]?frac(?![A-Za-z]))"
    r"|(?P<mul>\*\*|\\times(?![A-Za-z])|\\cdot(?![A-Za-z])|[*×·])"
    r"|(?P<div>\\div(?![A-Za-z])|[/÷])"
    r"|(?P<add>[+])"
    r"|(?P<sub>[-−–])"
    r"|(?P<pow>\^)"
    r"|(?P<lp>[({\[]|\\left[(\[]|\\\{)"
    r"|(?P<rp>[)}\]]|\\right[)\]]|\\\})"
    r"|(?P<pct>\\?%)"
    r"|(?P<skip>\\\$|\$|\\[,;!: ]|\\quad|\\left\.|\\right\.|\\displaystyle)"
)

Token = tuple[str, str, int, int]  # kind, text, start, end (offsets in the scanned string)


def _tokenize(s: str, *, partial: str | None = None) -> list[Token]:
    """Tokens of s; any character outside the whitelist raises _ParseError, or with
    ``partial="suffix"`` restarts after it, with ``partial="prefix"`` stops before it."""
    out: list[Token] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.end() == pos:
            if partial == "suffix":
                out = []
                pos += 1
                continue
            if partial == "prefix":
                break
            raise _ParseError(f"unexpected {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is None or kind == "skip":
            continue
        text = m.group(0)
        if kind == "mul" and text == "**":
            kind = "pow"
        out.append((kind, text, m.start(), m.end()))
    return out


# ----------------------------------------------------------------------------- parser


def _number(text: str) -> Fraction:
    digits = text.replace(",", "").replace(" ", "")
    if len(digits.replace(".", "")) > MAX_DIGITS:
        raise _ParseError("number too long")
    return Fraction(digits)


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := '-' unary | power ; power := atom ('^' unary)? ; atom := num '%'? | '(' expr ')' |
    \\frac atom atom."""

    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.i = 0
        self.ops = 0
        self.has_pct = False

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise _ParseError(f"expected {kind}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def parse(self) -> Fraction:
        val = self.expr()
        if self.i != len(self.toks):
            raise _ParseError("trailing tokens")
        return val

    def expr(self) -> Fraction:
        val = self.term()
        while self.peek() in ("add", "sub"):
            op = self.take(self.peek())  # type: ignore[arg-type]
            self.ops += 1
            rhs = self.term()
            val = val + rhs if op == "+" else val - rhs
        return val

    def term(self) -> Fraction:
        val = self.unary()
        while self.peek() in ("mul", "div", "lp", "frac"):
            kind = self.peek()
            if kind in ("mul", "div"):
                self.i += 1
            self.ops += 1
            rhs = self.unary()
            if kind == "div":
                if rhs == 0:
                    raise _ParseError("division by zero")
                val = val / rhs
            else:
                val = val * rhs
        return val

    def unary(self) -> Fraction:
        if self.peek() == "sub":
            self.i += 1
            return -self.unary()
        if self.peek() == "add":
            self.i += 1
            return self.unary()
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek() == "pow":
            self.i += 1
            self.ops += 1
            exp = self.unary()
            if exp.denominator != 1 or abs(exp) > MAX_EXPONENT:
                raise _ParseError("exponent not a small integer")
            if base == 0 and exp < 0:
                raise _ParseError("division by zero")
            return base ** int(exp)
        return base

    def _mixed_follows(self, whole: str) -> bool:
        kinds = [t[0] for t in self.toks[self.i : self.i + 3]]
        return kinds == ["num", "div", "num"] and whole.isdigit() and self.toks[self.i][1].isdigit()

    def atom(self) -> Fraction:
        kind = self.peek()
        if kind == "num":
            text = self.take("num")
            val = _number(text)
            if self.peek() == "num" and self._mixed_follows(text):  # 3 1/2
                whole = val
                num = _number(self.take("num"))
                self.take("div")
                den = _number(self.take("num"))
                if den == 0:
                    raise _ParseError("division by zero")
                val = whole + num / den
            if self.peek() == "pct":
                self.i += 1
                self.has_pct = True
                val = val / 100
            return val
        if kind == "lp":
            self.i += 1
            val = self.expr()
            self.take("rp")
            return val
        if kind == "frac":
            self.i += 1
            self.ops += 1
            num = self.atom()
            den = self.atom()
            if den == 0:
                raise _ParseError("division by zero")
            return num / den
        raise _ParseError("expected a number")


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression (numbers, + - * / × ÷ ^, parentheses,
    ``\\frac``, ``\\times``, ``\\cdot``, thousands separators, ``$``). Raises ValueError naming
    the problem for anything else -- nothing is ever evaluated as code."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    toks = _tokenize(expr)
    if not toks:
        raise ValueError("empty expression")
    return _Parser(toks).parse()


# ----------------------------------------------------------------------------- finding equations

_RUN_RE = re.compile(
    r"(?:[\d \t+\-−–*/×÷·().,$%^{}\[\]=]|\\(?:[dt]?frac|times|cdot|div|left|right|[,;!: $%{}])(?![A-Za-z]))+"
)
_CALC_RE = re.compile(r"<<([^<>\n]{1,200})>>")
_TIMES_X_RE = re.compile(r"(?<=[\d)])[ \t]*x[ \t]*(?=[\d(.$])")  # "20 x 20/100"
_GLUE = set("_^\\({[")


def _parse_side(tokens: list[Token]) -> tuple[Fraction, int, bool] | None:
    try:
        p = _Parser(tokens)
        val = p.parse()
    except (_ParseError, ZeroDivisionError, OverflowError, ValueError):
        return None
    return val, p.ops, p.has_pct


_OP_CHARS = set("+-−–*/×÷·^")
_OP_COMMANDS = ("times", "cdot", "div", "frac", "dfrac", "tfrac", "pm", "mp")


def _cut_before(text: str, start: int) -> bool:
    """Whether the expression starting at ``start`` continues to the left: an operator,
    digit, closing bracket, single-letter variable or LaTeX operator precedes it."""
    j = start - 1
    while j >= 0 and text[j] in " \t$":
        j -= 1
    if j < 0:
        return False
    c = text[j]
    if c in _OP_CHARS or c.isdigit() or c in ")]}":
        return True
    if c.isalpha():
        k = j
        while k > 0 and text[k - 1].isalpha():
            k -= 1
        word = text[k : j + 1]
        if k > 0 and text[k - 1] == "\\":
            return word in _OP_COMMANDS
        return len(word) == 1
    return False


def _cut_after(text: str, end: int) -> bool:
    """Whether the expression ending at ``end`` continues to the right."""
    j = end
    while j < len(text) and text[j] in " \t$":
        j += 1
    if j >= len(text):
        return False
    c = text[j]
    if c in _OP_CHARS or c.isdigit() or c in "([{":
        return True
    if c == "\\":
        m = re.match(r"\\([A-Za-z]+)", text[j : j + 12])
        return bool(m and m.group(1) in _OP_COMMANDS)
    if c.isalpha():
        k = j
        while k + 1 < len(text) and text[k + 1].isalpha():
            k += 1
        return k == j  # a single letter: a variable ("= 3 x")
    return False


def _left_side(text: str, lo: int, hi: int) -> tuple[list[Token], tuple[Fraction, int, bool]] | None:
    """Longest parsable token suffix of text[lo:hi], or None when that expression is only
    the tail of a longer one (``hours * 2/3``, ``3x + 4 - 4``, ``(1/2) 278 + 11``)."""
    seg = text[lo:hi]
    if not seg.strip() or len(seg) > MAX_EXPR_CHARS:
        return None
    toks = _tokenize(seg, partial="suffix")
    for i in range(len(toks)):
        got = _parse_side(toks[i:])
        if got is None:
            continue
        start = lo + toks[i][2]
        before = text[start - 1] if start > 0 else " "
        if before.isalnum() or before in _GLUE or toks[i][0] in ("add", "mul", "div", "pow"):
            return None
        if _cut_before(text, start):
            return None
        return toks[i:], got
    return None


def _right_side(text: str, lo: int, hi: int) -> tuple[list[Token], tuple[Fraction, int, bool]] | None:
    """Longest parsable token prefix of text[lo:hi], or None when the expression goes on."""
    seg = text[lo:hi]
    if not seg.strip() or len(seg) > MAX_EXPR_CHARS:
        return None
    toks = _tokenize(seg, partial="prefix")
    for j in range(len(toks), 0, -1):
        got = _parse_side(toks[:j])
        if got is None:
            continue
        end = lo + toks[j - 1][3]
        after = text[end] if end < len(text) else " "
        if after.isalnum() or after in _GLUE or _cut_after(text, end):
            return None
        return toks[:j], got
    return None


def _detokenize(tokens: list[Token]) -> str:
    return " ".join(t[1] for t in tokens)


def _rounded_ok(left: Fraction, right_tokens: list[Token], right: Fraction) -> bool:
    """right is a single decimal literal equal to left rounded to its written decimals."""
    kinds = [t[0] for t in right_tokens]
    if kinds not in (["num"], ["sub", "num"]):
        return False
    literal = right_tokens[-1][1].replace(",", "").replace(" ", "")
    if "." not in literal:
        return False
    decimals = len(literal.split(".", 1)[1])
    return abs(left - right) <= Fraction(1, 2 * 10**decimals)


def _check_chain(text: str, lo: int, hi: int, allow_rounding: bool) -> list[Step]:
    """Steps of the chain ``a = b = c`` in text[lo:hi]; checked when any side has an operator."""
    cuts = [lo] + [i for i in range(lo, hi) if text[i] == "="] + [hi]
    sides = []
    for k in range(len(cuts) - 2):
        a_lo, a_hi = cuts[k] + (k > 0), cuts[k + 1]
        b_lo, b_hi = cuts[k + 1] + 1, cuts[k + 2]
        sides.append((_left_side(text, a_lo, a_hi), _right_side(text, b_lo, b_hi)))
    if not any((lhs and lhs[1][1]) or (rhs and rhs[1][1]) for lhs, rhs in sides):
        return []
    steps = []
    for left, right in sides:
        if left is None or right is None:
            continue
        (ltoks, (lval, _, lpct)), (rtoks, (rval, _, rpct)) = left, right
        if lpct or rpct:
            continue
        ok = lval == rval or (allow_rounding and _rounded_ok(lval, rtoks, rval))
        steps.append(Step(_detokenize(ltoks), _detokenize(rtoks), lval, rval, ok))
    return steps


def check_steps(text: str, *, allow_rounding: bool = True) -> list[Step]:
    """Every checkable arithmetic equation the text states, in order. Never raises on str."""
    if not isinstance(text, str):
        return []
    text = text[:MAX_TEXT_CHARS]
    steps: list[Step] = []
    for m in _CALC_RE.finditer(text):  # GSM8K calculator annotations <<48/2=24>>
        inner = _TIMES_X_RE.sub(" * ", m.group(1))
        steps += _check_chain(inner, 0, len(inner), allow_rounding)
    text = _TIMES_X_RE.sub(" * ", _CALC_RE.sub(" ", text))
    for m in _RUN_RE.finditer(text):
        run = m.group(0)
        if "=" not in run or "==" in run:
            continue
        steps += _check_chain(text, m.start(), m.end(), allow_rounding)
    return steps


def steps_ok(text: str, *, allow_rounding: bool = True) -> bool | None:
    """True when every stated step is right, False when one is wrong, None with no steps."""
    steps = check_steps(text, allow_rounding=allow_rounding)
    if not steps:
        return None
    return all(s.ok for s in steps)


def label_solution(problem_id: str, sample_index: int, completion: str, gold: str,
                   *, answer_correct: bool | None = None) -> SolutionLabel:
    """A :class:`SolutionLabel` from the grader (final answer) and this checker (reasoning).

    ``reasoning_correct`` is None when the solution states no checkable step.
    """
    if answer_correct is None:
        answer_correct = grader.grade(completion, gold)
    return SolutionLabel(
        problem_id=problem_id,
        sample_index=sample_index,
        answer_correct=bool(answer_correct),
        reasoning_correct=steps_ok(completion),
        source="step_checker",
    )


def label_solutions(problem_ids: Iterable[str], completions: Iterable[list[str]],
                    golds: Iterable[str]) -> list[SolutionLabel]:
    """Labels for several samples per problem; final answers graded in one batch."""
    rows = [(pid, i, c, g) for pid, comps, g in zip(problem_ids, completions, golds) for i, c in enumerate(comps)]
    verdicts = grader.grade_batch([r[2] for r in rows], [r[3] for r in rows])
    return [label_solution(pid, i, c, g, answer_correct=v) for (pid, i, c, g), v in zip(rows, verdicts)]
