"""Caps: the size limits on inputs and on the normalised answers sent to sympy, and
:func:`_over_caps`, which says why an answer is too big (length, nesting, long integers,
power towers, huge powers and factorials).
"""

from __future__ import annotations

import math
import re

MAX_INPUT_CHARS = 10_000  # either side longer than this: rejected outright
MAX_ANSWER_CHARS = 1_000  # normalised answers longer than this never reach sympy
MAX_BRACE_DEPTH = 40
MAX_INT_DIGITS = 5_000  # integer literals, and estimated digits of a^b
MAX_FACTORIAL_ARG = 5_000

_POW_RE = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_FACT_RE = re.compile(r"(\d+)\s*!")
_TOWER_RE = re.compile(r"\^\s*\{[^{}a-zA-Z]*\^|\^\s*\d\s*\^|\^\s*\{[^{}]*\{")
_LONG_INT_RE = re.compile(r"\d{%d,}" % (MAX_INT_DIGITS + 1))


def _over_caps(s: str) -> str | None:
    """Why a normalised answer is too big for sympy (None if it is fine)."""
    if len(s) > MAX_ANSWER_CHARS:
        return "length"
    depth = max_depth = 0
    for ch in s:
        if ch == "{":
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch == "}":
            depth -= 1
    if max_depth > MAX_BRACE_DEPTH:
        return "nesting"
    if _LONG_INT_RE.search(s):
        return "integer literal"
    if "**" in s:
        return "python power"
    if _TOWER_RE.search(s):
        return "power tower"
    for m in _POW_RE.finditer(s):
        base = float(m.group(1))
        exp = abs(int(m.group(2) or m.group(3)))
        if base > 1 and exp * math.log10(base) > MAX_INT_DIGITS:
            return "power size"
    for m in _FACT_RE.finditer(s):
        if len(m.group(1)) > 6 or int(m.group(1)) > MAX_FACTORIAL_ARG:
            return "factorial size"
    if re.search(r"[)}]\s*!", s) and "^" in s:
        return "factorial of a power"
    return None
