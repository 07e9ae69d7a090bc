"""Fast path, in the calling process: assignment alignment (:func:`_align`), exact comparison
of plain numbers as :class:`fractions.Fraction` and of base-``b`` numerals
(:func:`_fast_compare`), and the maj@k grouping key (:func:`answer_key`). No sympy, no floats.
"""

from __future__ import annotations

import re
from fractions import Fraction

from reasonax.eval.grader.normalize import normalize_answer

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUM_RE = re.compile(rf"([+-]?)({_NUM})")
_THOUSANDS_RE = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?")
_FRAC_RE = re.compile(rf"([+-]?)\\frac\{{([+-]?{_NUM})\}}\{{([+-]?{_NUM})\}}")
_FRAC_SHORT_RE = re.compile(r"([+-]?)\\frac(\d)(\d)")
_SLASH_RE = re.compile(rf"([+-]?)({_NUM})/({_NUM})")
_MIXED_RE = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_SCI_RE = re.compile(rf"([+-]?)({_NUM})(?:\\times|\\cdot)10\^(?:\{{([+-]?\d{{1,4}})\}}|(\d))")
_MAX_SCI_EXP = 1000


def _sign(s: str) -> int:
    return -1 if s == "-" else 1


def _as_number(s: str) -> Fraction | None:
    """Exact value of a plain numeric answer, or None when s is anything else."""
    if len(s) > 400:
        return None
    try:
        m = _PLAIN_NUM_RE.fullmatch(s)
        if m:
            return _sign(m.group(1)) * Fraction(m.group(2))
        m = _THOUSANDS_RE.fullmatch(s)
        if m:
            digits = m.group(2).replace(",", "").replace(" ", "") + (m.group(3) or "")
            return _sign(m.group(1)) * Fraction(digits)
        m = _FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s) or _SLASH_RE.fullmatch(s)
        if m:
            den = Fraction(m.group(3))
            return None if den == 0 else _sign(m.group(1)) * Fraction(m.group(2)) / den
        m = _MIXED_RE.fullmatch(s)
        if m:
            den = int(m.group(4))
            if den == 0:
                return None
            return _sign(m.group(1)) * (int(m.group(2)) + Fraction(int(m.group(3)), den))
        m = _SCI_RE.fullmatch(s)
        if m:
            exp = int(m.group(3) or m.group(4))
            if abs(exp) > _MAX_SCI_EXP:
                return None
            return _sign(m.group(1)) * Fraction(m.group(2)) * Fraction(10) ** exp
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


_BASE_NUM_RE = re.compile(r"([+-]?)([0-9A-Za-z]+)(?:\.([0-9A-Za-z]+))?_\{?(\d{1,2})\}?")
_DIGIT_SUBSCRIPT_RE = re.compile(r"(?<![A-Za-z0-9\\])\d+(?:\.\d+)?_")


def _digits_value(int_part: str, frac_part: str, base: int) -> Fraction | None:
    """Exact value of digits written in ``base`` (2..36), None if a digit is out of range."""
    try:
        whole = int(int_part, base)
        frac = Fraction(int(frac_part, base), base ** len(frac_part)) if frac_part else Fraction(0)
    except ValueError:
        return None
    return whole + frac


def _as_base_number(s: str) -> tuple[Fraction, int] | None:
    """``1011_2`` / ``A2_{16}`` / ``0.0011_{2}`` -> (exact value, base)."""
    m = _BASE_NUM_RE.fullmatch(s)
    if not m:
        return None
    base = int(m.group(4))
    if not 2 <= base <= 36:
        return None
    val = _digits_value(m.group(2), m.group(3) or "", base)
    return None if val is None else (_sign(m.group(1)) * val, base)


def _compare_bases(g: str, p: str) -> bool | None:
    """Answers in base notation. The LaTeX parser drops the subscript (``12_3`` -> 12), so
    these are decided here: a bare numeral is read in the base of the other side; anything
    else that puts a subscript on digits is unequal."""
    gb, pb = _as_base_number(g), _as_base_number(p)
    if gb is not None and pb is not None:
        return gb[0] == pb[0]
    if gb is not None:  # gold in base b: a bare numeral in the prediction is read in base b
        m = re.fullmatch(r"([+-]?)([0-9A-Za-z]+)(?:\.([0-9A-Za-z]+))?", p)
        if m is None:
            return False
        val = _digits_value(m.group(2), m.group(3) or "", gb[1])
        return val is not None and _sign(m.group(1)) * val == gb[0]
    if pb is not None:  # gold is a plain decimal number
        val = _as_number(g)
        return val is not None and val == pb[0]
    if _DIGIT_SUBSCRIPT_RE.search(g) or _DIGIT_SUBSCRIPT_RE.search(p):
        return False
    return None


_PLAIN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z ]*")
_DECIMAL_COMMA_RE = re.compile(r"([+-]?)(\d+),(\d+)")


def _as_decimal_comma(s: str) -> Fraction | None:
    """``1000,99`` / ``2,74`` read with a decimal comma: one comma, no space, and not a
    thousands-separated number (``1,000`` is one thousand). Used for the prediction only, and
    only against a gold that is a single number (a gold ``1,3`` is a list)."""
    m = _DECIMAL_COMMA_RE.fullmatch(s) if len(s) <= 400 else None
    if m is None or _THOUSANDS_RE.fullmatch(s):
        return None
    return _sign(m.group(1)) * Fraction(f"{m.group(2)}.{m.group(3)}")


def _split_top(s: str, sep: str) -> list[str] | None:
    """s split at the ``sep`` characters outside brackets and braces; None when unbalanced."""
    parts: list[str] = []
    depth = start = i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "\\":
            if i + 1 < n and s[i + 1] in "{}":
                depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    if depth != 0:
        return None
    parts.append(s[start:])
    return parts


# Names that may stand left of "=" in an answer: x, AB, V_1, a_{n}, \alpha, f'; a tuple of
# names "(p,q)"; a ratio of names "V_1:V_2". Normalised strings carry no spaces here.
_NAME = r"(?:[A-Za-z]{1,4}|\\[A-Za-z]{2,12})(?:_(?:\{[A-Za-z0-9]{1,4}\}|[A-Za-z0-9]))?'{0,2}"
_LHS_RE = re.compile(rf"{_NAME}|\({_NAME}(?:,{_NAME})+\)|{_NAME}(?::{_NAME})+")
_NOT_ASSIGNMENT = ("<", ">", "\\le", "\\ge", "\\ne", "\\approx", "\\pm", "\\mp", "\\in", "\\sim", "\\equiv")


_CONST_CMD_RE = re.compile(r"\\(?:frac|cdot|times|div|sqrt|pi)(?![A-Za-z])")
_LETTER_RE = re.compile(r"[A-Za-z]")


def _is_constant(s: str) -> bool:
    """Arithmetic on numbers only (no variables): ``5+5+1``, ``\\frac{48}{2}``, ``2\\sqrt{2}``."""
    return bool(s) and _LETTER_RE.search(_CONST_CMD_RE.sub("", s)) is None


def _constant_chain(s: str) -> list[str] | None:
    """The sides of ``30-12=18`` / ``5+5+1=11`` (equalities between constants), else None."""
    if "=" not in s or any(t in s for t in _NOT_ASSIGNMENT):
        return None
    sides = _split_top(s, "=")
    if sides is None or len(sides) < 2 or len(sides) > 16:
        return None
    sides = [x.strip() for x in sides]
    return sides if all(map(_is_constant, sides)) else None


def _assignments(s: str) -> list[tuple[str, str]] | None:
    """``x=3`` -> [(x, 3)]; ``AB=4,CD=5`` -> [(AB, 4), (CD, 5)]; a chain ``x=5+5+1=11`` ->
    [(x, 11)] (its last right-hand side); None for anything else, equations included."""
    if "=" not in s or any(t in s for t in _NOT_ASSIGNMENT):
        return None
    items = _split_top(s, ",")
    if items is None or len(items) > 16:
        return None
    out = []
    for item in items:
        sides = _split_top(item, "=")
        if sides is None or len(sides) < 2 or not all(x.strip() for x in sides):
            return None
        if len(items) > 1 and len(sides) > 2:  # chains only stand alone
            return None
        lhs = sides[0].strip()
        if not _LHS_RE.fullmatch(lhs):
            return None
        rest = [x.strip() for x in sides[1:]]
        # x = 5+5+1 = 11: the last right-hand side, and the constant sides before it must agree
        out.append((lhs, "=".join(rest) if len(rest) > 1 and all(map(_is_constant, rest)) else rest[-1]))
    return out


def _tuple_items(s: str) -> list[str] | None:
    """Items of a bare list ``4,5`` or of one parenthesised tuple ``(4,5)``."""
    items = _split_top(s, ",")
    if items is not None and len(items) == 1 and s.startswith("(") and s.endswith(")"):
        items = _split_top(s[1:-1], ",")
    return items if items and all(x.strip() for x in items) else None


def _align(g: str, p: str) -> tuple[str, str]:
    """Strip the names off assignments so that values meet values (normalised strings in and
    out, gold first):

    * gold ``x=3`` / ``(p,q)=(3,2)`` / ``V_1:V_2=11:21`` against a bare value: the right-hand side;
      against an assignment to the same name: both right-hand sides; other equations: unchanged;
    * a prediction ``x=3`` or a chain ``x=5+5+1=11`` against a bare gold: its (last) right-hand
      side, with the constant sides before it kept (``5+5+1=11``: every side must equal the gold);
    * gold ``AB=4,CD=5`` (distinct names): the ordered tuple ``(4,5)``, against the prediction's
      values in the gold's order of names (``CD=5,AB=4``) or a bare list / tuple in its own order;
    * ``x=5,x=7`` (one name throughout): the list of values ``5,7`` (compared as a set).
    """
    ga, pa = _assignments(g), _assignments(p)
    if ga is None and pa is None:
        return g, p
    if ga is not None and len(ga) == 1:
        lhs, rhs = ga[0]
        if pa is None:
            return (g, p) if "=" in p else (rhs, p)
        if len(pa) == 1 and pa[0][0] == lhs:
            return rhs, pa[0][1]
        return g, p
    if ga is not None:
        names = [name for name, _ in ga]
        if len(set(names)) == 1:
            values = ",".join(v for _, v in ga)
            if pa is None:
                return (g, p) if "=" in p else (values, p)
            if all(name == names[0] for name, _ in pa):
                return values, ",".join(v for _, v in pa)
            return g, p
        if len(set(names)) < len(names):
            return g, p
        ordered = "(" + ",".join(v for _, v in ga) + ")"
        if pa is not None:
            got = dict(pa)
            if len(got) == len(pa) == len(ga) and set(got) == set(names):
                return ordered, "(" + ",".join(got[n] for n in names) + ")"
            return g, p
        items = None if "=" in p else _tuple_items(p)
        if items is not None and len(items) == len(ga):
            return ordered, "(" + ",".join(items) + ")"
        return g, p
    assert pa is not None
    if "=" in g:
        return g, p
    if len(pa) == 1:
        return g, pa[0][1]
    if all(name == pa[0][0] for name, _ in pa):
        return g, ",".join(v for _, v in pa)
    return g, p


def _fast_compare(g: str, p: str) -> bool | None:
    """Decide cheaply where that is exact; None means 'ask the worker'. Takes aligned strings
    (:func:`_align`)."""
    if g == p:
        return True
    gv, pv = _as_number(g), _as_number(p)
    if gv is not None and pv is not None:
        return gv == pv
    if gv is not None:
        comma = _as_decimal_comma(p)
        if comma is not None:
            return gv == comma
        if "=" in p:  # 30-12=18 against a number gold: every side must equal it (sympy unless plain)
            sides = _constant_chain(p)
            values = [_as_number(x) for x in sides] if sides is not None else [None]
            if all(v is not None for v in values):
                return all(v == gv for v in values)
    based = _compare_bases(g, p)
    if based is not None:
        return based
    if _PLAIN_TEXT_RE.fullmatch(g) and _PLAIN_TEXT_RE.fullmatch(p) and g.lower() == p.lower():
        return True
    return None


def answer_key(ans: str | None) -> str | None:
    """A hashable key under which equivalent *simple* answers collide (maj@k grouping):
    plain numbers map to their exact value (``0.5``, ``1/2``, ``\\frac{1}{2}`` -> ``1/2``),
    everything else to its normalised string."""
    if ans is None:
        return None
    try:
        norm = normalize_answer(ans)
    except Exception:  # noqa: BLE001
        return None
    got = _assignments(norm)
    val = _as_number(got[0][1] if got is not None and len(got) == 1 else norm)
    return f"#{val}" if val is not None else norm
