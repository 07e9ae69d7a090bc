"""Normalisation: the canonical surface form of an answer string (:func:`normalize_answer`):
wrappers, spacing, units, currency, percent signs, unicode operators and matrix spellings
removed or made uniform. Plain string work, linear time, no parsing.
"""

from __future__ import annotations

import re

from reasonax.eval.grader.extract import _BOX_CMD_RE, _braced_group
from reasonax.eval.grader.text import _clean_text

_UNICODE_MAP = {
    "−": "-", "–": "-", "—": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "√": "\\sqrt",
    "π": "\\pi ", "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "\u00a0": " ",
    "\u2009": " ", "\u202f": " ", "°": "^\\circ", "∪": "\\cup ", "∩": "\\cap ", "∅": "\\emptyset ",
    "²": "^{2}", "³": "^{3}",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE_MAP)))
_WRAPPERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_SIZE_CMD_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg|middle)(?![A-Za-z])"
)
_SPACE_CMD_RE = re.compile(  # \\ (a row break) is matched so that it is kept whole
    r"\\\\|\\(?:[,;:! ]|(?:quad|qquad|displaystyle|textstyle)(?![A-Za-z]))|~"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z])|\\text\{\s*degrees?\s*\}")
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|operatorname)"
_WHOLE_TEXT_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_TRAILING_UNIT_RE = re.compile(r"(?<=\S)\s*" + _TEXT_CMD + r"\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?[23]\}?)?\s*$")
_UNIT_WORDS = (
    "dollars?|cents?|units?|square\\s+(?:feet|foot|inches|inch|meters?|units?|centimeters?|cm|m|ft)|"
    "sq\\s*(?:ft|m|cm|in|units)|cm|mm|km|meters?|metres?|miles?|inches|inch|feet|foot|ft|yards?|"
    "seconds?|minutes?|hours?|days?|weeks?|months?|years?|degrees?|pounds?|ounces?|kg|grams?|"
    "liters?|litres?|gallons?|mph|percent"
)
_TRAILING_UNIT_WORD_RE = re.compile(r"(?<=[\d}])\s*(?:" + _UNIT_WORDS + r")\s*(?:\^\s*\{?[23]\}?)?$", re.IGNORECASE)
_NUMBER_THEN_WORDS_RE = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?) (?:[A-Za-z]{3,})(?:[ -][A-Za-z]+)*$")  # "42 apples"
_CURRENCY_PREFIX_RE = re.compile(r"^(-?)\s*(?:\\\$|\$|€|£|¥|\\euro|USD|Rs\.?)\s*")
# "1,000.99€", "2,74 $" (a lone unescaped $ after a number is a currency sign, not a delimiter)
_CURRENCY_SUFFIX_RE = re.compile(r"(?<=[\d}])\s*(?:€|£|¥|\\\$|\\euro|EUR|USD|euros?)$")
_CURRENCY_SUFFIX_ENDS = frozenset("€£¥$oRDs")
_DOLLAR_SUFFIX_RE = re.compile(r"(?<=\d)\s*(?<!\\)\$$")
# "1,000.99m²": a length unit squared or cubed with a superscript sign is a unit; a bare "m^2"
# after a number may be an expression in m and is left alone
_SQUARE_UNIT_RE = re.compile(r"(?<=[\d}])\s*(?:m|cm|mm|km|dm|ft|in|yd)\s*[²³]\s*\.?\s*$")
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
_PERCENT_SUFFIX_RE = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\percent)\s*$")


def _canon_matrices(s: str) -> str:
    """Matrix spellings as pmatrix: ``bmatrix``, and ``array`` / ``matrix`` inside brackets or
    parentheses (``\\left[\\begin{array}{cc}...\\end{array}\\right]``). ``vmatrix`` (a
    determinant) and a bare ``array`` are left alone. Linear: str.find from a moving position."""
    if "\\begin{" not in s:
        return s
    s = s.replace("\\begin{bmatrix}", "\\begin{pmatrix}").replace("\\end{bmatrix}", "\\end{pmatrix}")
    for env in ("array", "matrix"):
        begin, end = "\\begin{%s}" % env, "\\end{%s}" % env
        pos = 0
        while True:
            i = s.find(begin, pos)
            if i == -1:
                break
            pos = i + len(begin)
            j = s.find(end, pos)
            if j == -1:
                break
            lo = i - 1 if s[i - 1 : i] == " " else i  # spaces are single by now
            after = j + len(end)
            hi = after + 1 if s[after : after + 1] == " " else after
            opener, closer = s[lo - 1 : lo], s[hi : hi + 1]
            if (opener, closer) not in (("[", "]"), ("(", ")")):
                continue
            body_start = pos
            if env == "array" and s.startswith("{", pos):
                spec = _braced_group(s[pos : pos + 42], 0)  # a column spec: {cc}, {c|c}
                if spec is None:
                    continue
                body_start = pos + spec[1]
            body = s[body_start:j]
            s = s[: lo - 1] + "\\begin{pmatrix}" + body + "\\end{pmatrix}" + s[hi + 1 :]
            pos = lo - 1
    return s


def _unwrap_once(s: str) -> str:
    for open_, close in _WRAPPERS:
        if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
            return s[len(open_) : len(s) - len(close)].strip()
    m = _BOX_CMD_RE.match(s)
    if m:
        arg = s[m.end() :].lstrip()
        if arg.startswith("{"):
            got = _braced_group(arg, 0)
            if got is not None and got[1] == len(arg):
                return got[0].strip()
    m = _WHOLE_TEXT_RE.fullmatch(s)
    if m:
        return m.group(1).strip()
    return s


def _squash_spaces(s: str) -> str:
    """Collapse whitespace; keep one space only where it separates two letters (``\\pi r``) or
    two digits (``1 000``), or follows a comma between digits (``32, 349`` is a list, never the
    thousands-separated 32349), where removing it would change the meaning."""
    s = re.sub(r"\s+", " ", s).strip()
    if " " not in s:
        return s
    out = []
    for i, ch in enumerate(s):
        if ch == " ":
            prev, nxt = s[i - 1], s[i + 1]
            if (prev.isalpha() and nxt.isalpha()) or (prev.isdigit() and nxt.isdigit()) or prev == "\\" or (
                prev == "," and i >= 2 and s[i - 2].isdigit() and nxt.isdigit()
            ):
                out.append(" ")
            continue
        out.append(ch)
    return "".join(out)


_WS_RE = re.compile(r"\s+")
_SIMPLE_NUMBER_RE = re.compile(r"-?\d{1,400}(?:\.\d{1,400})?")
_COMMA_BANG_RE = re.compile(r",\s?\\!\s?")
_DFRAC_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_VARNOTHING_RE = re.compile(r"\\varnothing(?![A-Za-z])")
_BRACED_THOUSANDS_RE = re.compile(r"(?<=(?<!\\)\{)(\d{1,3}(?:,\d{3})+)(?=\})")
_FRAC_SHORTHAND_RE = re.compile(r"\\frac(?![A-Za-z])(?!\s*\{)\s*(\\[A-Za-z]+|\w)\s*(\\[A-Za-z]+|\w)")
_LEQ_RE = re.compile(r"\\(?:leq|leqslant)(?![A-Za-z])")
_GEQ_RE = re.compile(r"\\(?:geq|geqslant)(?![A-Za-z])")
_NEQ_RE = re.compile(r"\\neq(?![A-Za-z])")
_CHOICE_RE = re.compile(r"^\(\s*([A-Za-z])\s*\)$")  # multiple-choice "(C)"


def normalize_answer(ans: str) -> str:
    """Canonical surface form of an answer string (no parsing, linear time, never raises on str).

    Used for the identical-string fast path, for the strings sent to the LaTeX parser and for
    grouping answers in maj@k (see :func:`answer_key`).
    """
    s = _clean_text(ans)
    if _SIMPLE_NUMBER_RE.fullmatch(s):  # "72", "-3.5": every step below leaves these alone
        return s
    s = _WS_RE.sub(" ", s).strip()  # single spaces from here on: no long runs to backtrack over
    if "²" in s or "³" in s:
        s = _SQUARE_UNIT_RE.sub("", s).strip() or s
    s = _UNICODE_RE.sub(lambda m: _UNICODE_MAP[m.group(0)], s)
    if s.count("$") >= 2:
        dollars = len(_UNESCAPED_DOLLAR_RE.findall(s))
        if dollars >= 2 and dollars % 2 == 0:  # "$28$ percent": math delimiters inside the answer
            s = _WS_RE.sub(" ", _UNESCAPED_DOLLAR_RE.sub(" ", s)).strip()
    s = _SIZE_CMD_RE.sub("", s)
    if "\\!" in s:  # 10,\!000 and 111, \! 111: \! cancels the space, a thousands separator
        s = _COMMA_BANG_RE.sub(",", s)
    s = _SPACE_CMD_RE.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = _DFRAC_RE.sub(r"\\frac", s)
    s = _VARNOTHING_RE.sub(r"\\emptyset", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("{,}", ",")
    s = _BRACED_THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), s)
    s = _FRAC_SHORTHAND_RE.sub(r"\\frac{\1}{\2}", s)
    s = _LEQ_RE.sub(r"\\le", s)
    s = _GEQ_RE.sub(r"\\ge", s)
    s = _NEQ_RE.sub(r"\\ne", s)
    s = _canon_matrices(s).strip()
    for _ in range(8):
        prev = s
        s = s.strip().rstrip(".").rstrip()
        s = _unwrap_once(s)
        s = _DEGREE_RE.sub("", s)
        s = _TRAILING_UNIT_RE.sub("", s).strip() or s
        s = _TRAILING_UNIT_WORD_RE.sub("", s).strip() or s
        s = _PERCENT_SUFFIX_RE.sub("", s).strip() or s
        s = _CURRENCY_PREFIX_RE.sub(r"\1", s).strip() or s
        if s[-1:] in _CURRENCY_SUFFIX_ENDS:
            s = _CURRENCY_SUFFIX_RE.sub("", s).strip() or s
            if s.count("$") == 1:
                s = _DOLLAR_SUFFIX_RE.sub("", s).strip() or s
        s = _NUMBER_THEN_WORDS_RE.sub(r"\1", s)
        if s == prev:
            break
    s = _CHOICE_RE.sub(r"\1", s)  # multiple-choice "(C)"
    return _squash_spaces(s)
