"""Answer extraction and strict answer equivalence: the GRPO reward and the data filter.

A wrong "yes" here trains a model to be wrong and a hang here stalls a pod, so the grader is
built around three rules: (1) it never accepts an answer that is not exactly equal to the gold
one, (2) it never runs model text as code, (3) it never raises and never hangs.

Pipeline of :func:`is_equivalent` (all in the calling process unless said otherwise):

1. *Caps.* Inputs longer than :data:`MAX_INPUT_CHARS` are rejected (False, counted).
2. *Normalisation* (:func:`normalize_answer`, plain string work): ``$..$``/``\\boxed``
   wrappers (and ``$`` delimiters inside an answer: ``$28$ percent``), ``\\left``/``\\right``,
   ``\\dfrac``, spacing commands, ``\\text{units}``, squared units (``m²``), degrees, currency
   before or after the number (``1,000.99€``), percent signs, trailing dots, unicode operators,
   matrix spellings (``bmatrix``, ``array``/``matrix`` in brackets -> ``pmatrix``). A comma
   followed by a space stays a list separator (``32, 349`` is never 32349).
   Then *alignment* (:func:`_align`): the names come off assignments so that values meet values
   (gold ``(p,q)=(3,2)`` / ``V_1:V_2=11:21`` vs a bare value; gold ``AB=4,CD=5`` vs ``4, 5`` in
   the gold's order; a chain ``x = 5+5+1 = 11`` by its last right-hand side). A chain of
   constants (``30-12 = 18``) states a number only when every side equals it (``2+2=5`` is
   not 5), decided here for plain numbers and in the workers otherwise.
3. *Fast path* (:func:`_fast_compare`): identical normalised strings, or two plain numbers
   (integers, decimals, thousands separators, ``a/b``, ``\\frac{a}{b}``, mixed numbers,
   ``x \\times 10^{k}``) compared exactly as :class:`fractions.Fraction` -- no sympy, no
   floats. A prediction ``1000,99`` / ``2,74`` (one comma, not followed by exactly three digits)
   is read with a decimal comma against a gold that is one number; a gold is never read so
   (MATH golds such as ``1,3`` are lists). This is written here rather than taken from
   math-verify because math-verify decides numbers with sympy Floats rounded to 6 decimals
   (``0.333333 == 1/3``) and is ~30x slower; GSM8K-style rewards need >= 500 pairs/s on two
   cores (``bench/grader.py``: GSM8K golds at ~29,000 pairs/s in process, ~1,000 pairs/s
   through the sympy workers).
4. *Slow path* in a pool of worker processes (:class:`GraderPool`): LaTeX is parsed by
   math-verify (``math_verify.parse`` with a LaTeX-only extraction config: its ANTLR LaTeX
   parser, never ``parse_expr``/``sympify`` on model text) and compared by the strict
   structural comparator :func:`_w_equal` below. The comparator follows math-verify's strategy
   (assignment unwrapping, relation flipping, interval/relation conversion, unordered sets)
   but decides with exact arithmetic, because math-verify's ``verify`` is lenient where a
   reward must not be (``tests/test_grader.py::test_math_verify_is_lenient_where_we_are_not``
   pins the cases): with its default tolerances it accepts
   ``1/2004! == 1/2006!`` and ``10^{-20} == 2*10^{-20}`` (``evalf(chop=True)``),
   ``1/3 == 0.333333`` and ``\\sqrt2 == 1.41421356`` (6-decimal float rounding),
   ``(1,2) == \\{1,2\\}`` (interval vs set), ``5 == "2+2=5"`` (any equation's last side),
   ``9 == 9\\%`` and ``0.5 == 50\\%`` both, and, through its unit stripping, ``2 == 2t`` and
   ``f(x) == f'(x)``. Here decimals become exact rationals, constant differences are proved
   zero (simplify / minimal polynomial) or refuted numerically relative to the operands'
   size, and equations are equal only up to a constant factor.

The pool is written here (not ``concurrent.futures`` / ``multiprocessing.Pool``) because a
comparison that exceeds its wall-clock limit must have its worker *killed and replaced*;
``signal.alarm`` (math-verify's own timeout) only works on the main thread, so math-verify runs
inside the workers with its signal timeouts disabled. Workers are ``subprocess`` children
(fork+exec: safe from a threaded parent, and unlike ``multiprocessing`` spawn/forkserver they
never re-import the caller's ``__main__``, which in a trainer would import JAX and grab the
accelerator) speaking one JSON message per line over pipes; each has an address-space cap. The
pool is safe to call from many threads at once and from non-main threads.

Public API: :func:`extract_answer`, :func:`normalize_answer`, :func:`answer_key`,
:func:`is_equivalent`, :func:`is_equivalent_batch`, :func:`grade`, :func:`grade_batch`,
:func:`stats`, :func:`reset_stats`, :func:`configure`, :func:`shutdown`,
:func:`math_verify_batch` (math-verify's own verdicts, for comparison only).
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import queue
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any, Sequence

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "GraderPool",
    "answer_key",
    "configure",
    "extract_answer",
    "grade",
    "grade_batch",
    "is_equivalent",
    "is_equivalent_batch",
    "math_verify_batch",
    "normalize_answer",
    "reset_stats",
    "shutdown",
    "stats",
]

DEFAULT_TIMEOUT_S = 5.0
MAX_INPUT_CHARS = 10_000  # either side longer than this: rejected outright
MAX_ANSWER_CHARS = 1_000  # normalised answers longer than this never reach sympy
MAX_BRACE_DEPTH = 40
MAX_INT_DIGITS = 5_000  # integer literals, and estimated digits of a^b
MAX_FACTORIAL_ARG = 5_000
WORKER_START_TIMEOUT_S = 120.0
WORKER_MEM_MB = int(os.environ.get("REASONAX_GRADER_MEM_MB", "4096"))

# ----------------------------------------------------------------------------- counters

_STATS_KEYS = (
    "calls",
    "fast_path",
    "slow_path",
    "timeouts",
    "parse_failures",
    "worker_crashes",
    "worker_errors",
    "rejected_inputs",
    "errors",
    "workers_started",
)
_stats: collections.Counter[str] = collections.Counter()
_stats_lock = threading.Lock()


def _count(key: str, n: int = 1) -> None:
    with _stats_lock:
        _stats[key] += n


def stats() -> dict[str, int]:
    """Counters since import (or :func:`reset_stats`): calls, fast_path, slow_path, timeouts,
    parse_failures, worker_crashes, worker_errors, rejected_inputs, errors, workers_started."""
    with _stats_lock:
        return {k: int(_stats[k]) for k in _STATS_KEYS}


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()


# ----------------------------------------------------------------------------- text hygiene


def _clean_text(text: str) -> str:
    """Drop lone surrogates / invalid code points and NULs so every later step sees valid text."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "")


# Chat/control tokens that leak into decoded text. An end-of-turn token ends the answer.
_END_TOKEN_RE = re.compile(
    r"<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end_of_text\|>|<\|end\|>|<end_of_turn>|<eos>|</s>"
)
_OTHER_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|</?(?:start_of_turn|bos|pad|s|unk)>")


def _strip_chat_tokens(text: str) -> str:
    """Cut at the first end-of-turn token that follows some content; drop other chat tokens."""
    pos = 0
    for m in _END_TOKEN_RE.finditer(text):
        if text[pos : m.start()].strip():
            text = text[pos : m.start()]
            break
        pos = m.end()
    else:
        text = text[pos:]
    return _OTHER_TOKEN_RE.sub(" ", text)


def _strip_think(text: str) -> str | None:
    """Text outside reasoning blocks; None when the model never left an unclosed <think>.

    Linear scan with str.find (a lazy ``<think>.*?</think>`` regex is quadratic on many
    unclosed tags).
    """
    if "</think>" not in text and "<think>" not in text:
        return text
    parts = []
    pos = 0
    while True:
        start = text.find("<think>", pos)
        if start == -1:
            parts.append(text[pos:])
            break
        parts.append(text[pos:start])
        end = text.find("</think>", start + 7)
        if end == -1:  # unclosed: everything after it is unfinished reasoning
            outside = "".join(parts)
            return outside if outside.strip() else None
        pos = end + 8
    text = "".join(parts)
    if "</think>" in text:  # opening tag was in the prompt: the answer follows the last close
        text = text.rsplit("</think>", 1)[1]
    return text


# ----------------------------------------------------------------------------- extraction

_BOX_CMD_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_MAX_BOX_CANDIDATES = 64
_MAX_JOINED = 16  # boxes (or math spans) joined into one answer
_MAX_GAP_CHARS = 40


def _braced_group(text: str, start: int) -> tuple[str, int] | None:
    """Content of the balanced {...} opening at text[start]; escaped braces do not count."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _boxed_argument(text: str, pos: int) -> tuple[str, int] | None:
    """The argument of the box command that ends at ``pos``, and the index after it."""
    i = pos
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        return _braced_group(text, i)
    m = re.match(r"[^\s$]+", text[i : i + 200])  # \boxed 5
    return (m.group(0), i + m.end()) if m else None


# What may stand between two boxes (or two math spans) that state one answer together: a comma,
# a semicolon, "and" or "or", with math delimiters, spacing and \text{...} around them. The parts
# are joined with ", ", so "or" gives a list like math-verify's: a hedge "5 or 7" never equals a
# single gold. Anything else between them (", corrected:", ".") keeps only the last box.
_GAP_NOISE_RE = re.compile(
    r"\\[()\[\]]|\$|\\(?:quad|qquad)(?![A-Za-z])|\\[,;:! ]|~|\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{|\}"
)
_JOINERS = frozenset({",", ";", "and", "or", ", and", ", or", "; and"})


def _is_joiner(gap: str) -> bool:
    if len(gap) > _MAX_GAP_CHARS or gap.count("\n") > 1:
        return False
    return " ".join(_GAP_NOISE_RE.sub(" ", gap).split()).lower().replace(" ,", ",") in _JOINERS


def _last_boxed(text: str) -> str | None:
    """The content of the last complete non-empty box, alone (how MATH golds are derived from
    reference solutions: ``reasonax.eval.datasets.math_gold``)."""
    return _last_boxed_group(text, max_joined=1)


def _last_boxed_group(text: str, max_joined: int = _MAX_JOINED) -> str | None:
    """The last complete non-empty box, joined with the boxes right before it that a joiner
    (``\\boxed{1} and \\boxed{2}``, ``\\boxed{(1,2)}, \\boxed{(2,1)}``) ties to it."""
    starts = list(_BOX_CMD_RE.finditer(text))[-_MAX_BOX_CANDIDATES:]
    group: list[tuple[int, str]] = []  # (start of the box command, argument)
    for m in reversed(starts):
        got = _boxed_argument(text, m.end())
        if got is None or not got[0].strip():
            if group:
                break
            continue
        if group and not (got[1] <= group[0][0] <= got[1] + _MAX_GAP_CHARS and _is_joiner(text[got[1] : group[0][0]])):
            break  # nested in the later box, or separated from it by words
        group.insert(0, (m.start(), got[0].strip()))
        if len(group) >= max_joined:
            break
    return ", ".join(arg for _, arg in group) if group else None


_GSM_RE = re.compile(r"####[ \t]*([^\n]*)")
# Bounded repetitions only: nested \s* runs backtrack polynomially on long whitespace.
_ANSWER_PHRASE_RE = re.compile(
    r"(?i)\b(?:final\s{1,3}answer|the\s{1,3}answer|answer)\s{0,3}(?:\*\*)?\s{0,3}(?:is\b|:|=)"
    r"[ \t]{0,3}:?[ \t]{0,3}(?:\*\*)?[ \t]{0,3}(?:=[ \t]{0,3})?"  # "Answer: = 4cm"
)
# "the solution is $x \ge 5$": only a math span or a number right after it counts
_SOLUTION_PHRASE_RE = re.compile(
    r"(?i)\bthe[ \t]{1,3}(?:final[ \t]{1,3})?solutions?[ \t]{1,3}(?:is|are)\b[ \t]{0,3}:?[ \t]{0,3}"
)
# "$x \ge 5$ is the solution.", "so 34 is the final answer": the answer stands before the phrase
_IS_THE_ANSWER_RE = re.compile(
    r"(?i)[ \t]{0,3}\b(?:is|are)[ \t]{1,3}(?:the|our|my)[ \t]{1,3}(?:final[ \t]{1,3}|correct[ \t]{1,3})?"
    r"(?:answer|solution)s?\b"
)
# "Final Answer: The largest $n$ is 34.": the value after "is" (one such value, not two)
_COPULA_RE = re.compile(r"\b(?:is|are|equals|was)[ \t]{1,3}(?:equal[ \t]{1,3}to[ \t]{1,3})?")
_NUMBER_TOKEN = (
    r"[-−]?[ \t]{0,2}(?:(?:\\\$|\$|€|£|¥)[ \t]{0,2})?"
    # 1,234 (thousands: groups of exactly three digits) | 2,74 (decimal comma) | 1234
    r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+,\d{1,2}(?![\d,])|\d+)(?:\.\d+)?"
    r"(?:[ \t]{0,2}/[ \t]{0,2}\d+(?:\.\d+)?)?(?:[ \t]{0,2}(?:\\%|%|€|£|¥))?"
)
# the number must be the whole answer: not the start of "18-20", "1, 2", "18 \times 2", "18x"
# or of a hedge ("5 or 7", "5 and 7")
_LEADING_NUMBER_RE = re.compile(
    _NUMBER_TOKEN
    + r"(?![\w^{/\\.]|[.,][ \t]{0,2}\d|[ \t]{0,2}[-+*/×÷^=−\\]|[ \t]{1,3}(?:or|and|to|plus|minus|times)\b)"
)
_ANY_NUMBER_RE = re.compile(r"(?<![\w.])" + _NUMBER_TOKEN)
_OPERATOR_CHARS = frozenset("+-*/^×÷·−\\({[")
_TRAILING_NUMBER_RE = re.compile(r"(?<![\w.,\\])" + _NUMBER_TOKEN + r"$")


def _math_span_at(text: str, pos: int = 0) -> tuple[str, int] | None:
    """If text[pos:] starts with a math delimiter: the delimited content and the index after it."""
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if text.startswith(open_, pos):
            start = pos + len(open_)
            end = text.find(close, start)
            while end != -1 and close == "$" and text[end - 1] == "\\":
                end = text.find(close, end + 1)
            if end == -1:
                return None
            return text[start:end].strip(), end + len(close)
    return None


_SPAN_OPEN_RE = re.compile(r"\$|\\\(|\\\[")


def _leading_spans(text: str) -> str | None:
    """The math span text starts with, joined with the spans a joiner ties to it
    (``$5$ or $7$`` -> ``5, 7``)."""
    got = _leading_spans_at(text)
    return None if got is None else got[0]


def _leading_spans_at(text: str) -> tuple[str, int] | None:
    """:func:`_leading_spans` and the index after the last span."""
    got = _math_span_at(text)
    if got is None or not got[0]:
        return None
    parts, pos = [got[0]], got[1]
    while len(parts) < _MAX_JOINED:
        m = _SPAN_OPEN_RE.search(text, pos, pos + _MAX_GAP_CHARS + 1)
        if m is None or not _is_joiner(text[pos : m.start()]):
            break
        nxt = _math_span_at(text, m.start())
        if nxt is None or not nxt[0]:
            break
        parts.append(nxt[0])
        pos = nxt[1]
    return ", ".join(parts), pos


def _span_ending_at(text: str, end: int) -> tuple[str, int] | None:
    """The math span whose closing delimiter ends at ``end``: (content, index of its opener)."""
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if text.endswith(close, 0, end) and not (close == "$" and text.endswith("\\$", 0, end)):
            start = text.rfind(open_, max(0, end - 2000), end - len(close))
            while start > 0 and open_ == "$" and text[start - 1] == "\\":
                start = text.rfind(open_, max(0, end - 2000), start)
            if start == -1 or (open_ == "$" and "\n" in text[start:end]):
                return None
            return text[start + len(open_) : end - len(close)].strip(), start
    return None


def _spans_before(text: str, pos: int) -> str | None:
    """The math span (or number) right before ``pos``, joined with the spans a joiner ties to it
    (``$x = 1$ or $x = 2$ are the solutions`` -> ``x = 1, x = 2``)."""
    end = len(text[max(0, pos - 2000) : pos].rstrip()) + max(0, pos - 2000)
    got = _span_ending_at(text, end)
    if got is None:  # "so 34 is the answer", but not "2 + 3 is the answer"
        m = _TRAILING_NUMBER_RE.search(text, max(0, end - 60), end)
        if m is None or text[max(0, m.start() - 40) : m.start()].rstrip()[-1:] in _OPERATOR_CHARS:
            return None
        return m.group(0).strip()
    if not got[0]:
        return None
    parts, start = [got[0]], got[1]
    while len(parts) < _MAX_JOINED:
        lo = max(0, start - _MAX_GAP_CHARS - 1)
        closers = [text.rfind(c, lo, start) + len(c) for c in ("$", "\\)", "\\]") if text.rfind(c, lo, start) != -1]
        if not closers:
            break
        prev_end = max(closers)
        if not _is_joiner(text[prev_end:start]):
            break
        prev = _span_ending_at(text, prev_end)
        if prev is None or not prev[0]:
            break
        parts.insert(0, prev[0])
        start = prev[1]
    return ", ".join(parts)


def _after_phrase(tail: str, strict: bool) -> str | None:
    """The answer stated right after an answer phrase (``tail`` starts after it)."""
    spans = _leading_spans(tail)
    if spans:
        return spans
    line = tail.split("\n", 1)[0].strip()
    if not line:
        return None
    num = _LEADING_NUMBER_RE.match(line)
    if num:
        return num.group(0).strip()
    if strict:
        return None
    sentence = re.split(r"\.\s|\.$", line, maxsplit=1)[0].strip().rstrip(".")
    value = _copula_value(sentence, tight=False)  # "Final Answer: The largest $n$ is 34."
    if value:
        return value
    if sentence and len(sentence) <= 200:
        return sentence
    return None


_TRAILING_WORD_RE = re.compile(r"[ \t]{0,3}(?:[A-Za-z]{1,20}\.?)?[ \t]{0,3}")


def _copula_value(sentence: str, tight: bool) -> str | None:
    """The value after the one "is" / "are" / "equals" / "was" of a sentence that has a value
    after it (two such values are ambiguous: None). ``tight``: the value must end the sentence,
    one word (a unit) aside: "is 15 liters", not "is 12 more than the product"."""
    values = []
    for verb in list(_COPULA_RE.finditer(sentence))[:8]:
        rest = sentence[verb.end() :]
        spans = _leading_spans_at(rest)
        num = None if spans else _LEADING_NUMBER_RE.match(rest)
        if spans is None and num is None:
            continue
        value, end = spans if spans else (num.group(0).strip(), num.end())
        values.append((value, _TRAILING_WORD_RE.fullmatch(rest, end) is not None))
    if len(values) != 1 or (tight and not values[0][1]):
        return None
    return values[0][0]


def _final_sentence_answer(text: str) -> str | None:
    """A completion that ends in a statement of its value: "The degree of $f$ is 3." (the last
    sentence, one "is" with a value that ends the sentence; not a question); or a completion
    that is nothing but one number or one math span (" 3/20" after "Answer:")."""
    whole = text.strip()
    if len(whole) <= 200 and "\n" not in whole:
        spans = _leading_spans_at(whole)
        if spans is not None and spans[1] == len(whole):
            return spans[0]
        bare = whole.rstrip(".").rstrip()
        num = _LEADING_NUMBER_RE.match(bare)
        if num is not None and num.end() == len(bare):
            return num.group(0).strip()
    line = text[-1000:].rstrip().rsplit("\n", 1)[-1].strip()
    if not line or line.endswith(("?", ":", ",", ";")):
        return None
    sentence = re.split(r"(?<=[.!?])\s+", line)[-1].rstrip(".").strip()
    if not sentence or len(sentence) > 300 or sentence.endswith("?"):
        return None
    return _copula_value(sentence, tight=True)


def _phrase_answer(text: str) -> str | None:
    """The answer of the last answer phrase: after "the answer is" / "final answer:" / "the
    solution is", or before "is the answer" / "is the solution"."""
    found: list[tuple[int, str, int]] = []
    found += [(m.start(), "after", m.end()) for m in list(_ANSWER_PHRASE_RE.finditer(text))[-16:]]
    found += [(m.start(), "strict", m.end()) for m in list(_SOLUTION_PHRASE_RE.finditer(text))[-16:]]
    found += [(m.start(), "before", m.start()) for m in list(_IS_THE_ANSWER_RE.finditer(text))[-16:]]
    for _, kind, pos in sorted(found, reverse=True):
        if kind == "before":
            ans = _spans_before(text, pos)
        else:
            ans = _after_phrase(text[pos : pos + 2000], strict=kind == "strict")
        if ans:
            return ans
    return None


def _last_number(text: str) -> str | None:
    found = None
    for found in _ANY_NUMBER_RE.finditer(text):  # noqa: B007 - keep the last match
        pass
    return None if found is None else found.group(0).strip()


def boxed_answer(text: str) -> str | None:
    """The completion's last complete, non-empty \\boxed{} answer (with the boxes a joiner ties to
    it), or None: what a format reward checks for, without the stated-answer phrases that
    extract_answer also reads."""
    return _last_boxed_group(_clean_text(text)) if isinstance(text, str) else None


def extract_answer(text: str, fallback: bool = True) -> str | None:
    """The final answer a completion states, or None.

    Looks, in this order, for the last complete ``\\boxed{...}`` / ``\\boxed 5`` / ``\\fbox``
    (with the boxes a comma, "and" or "or" ties to it: ``\\boxed{1} and \\boxed{2}`` -> ``1, 2``),
    the last GSM8K ``#### 42`` line, the last answer phrase ("the answer is ...", "final answer:
    ...", "the solution is $...$", "$x \\ge 5$ is the solution", "Final Answer: The largest $n$
    is 34"), a last sentence that states one value ("The degree of $f$ is 3.", not a question,
    not "is 3 or 4", not "is 12 more than ..."), a completion that is only its answer (" 3/20")
    and -- only when ``fallback`` is true (turn it off for rewards) -- the last number (``2,74``
    with a decimal comma). A number followed by "or" / "and" is not cut out of its hedge. Text
    inside ``<think>`` blocks is ignored (an unclosed block means no answer) and chat tokens
    (``<|im_end|>``, ``<end_of_turn>``, ``<eos>``, ...) end the completion. Never raises.
    """
    try:
        if not isinstance(text, str):
            return None
        text = _clean_text(text)
        text = _strip_chat_tokens(text)
        body = _strip_think(text)
        if body is None:
            return None
        for finder in (_last_boxed_group, _gsm_answer, _phrase_answer, _final_sentence_answer):
            ans = finder(body)
            if ans:
                return ans
        if fallback:
            return _last_number(body)
        return None
    except Exception:  # noqa: BLE001 - extraction must never take a pod down
        _count("errors")
        return None


def _gsm_answer(text: str) -> str | None:
    last = None
    for m in _GSM_RE.finditer(text):
        if m.group(1).strip():
            last = m.group(1).strip()
    return last


# ----------------------------------------------------------------------------- normalisation

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


# ----------------------------------------------------------------------------- fast path

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


# ----------------------------------------------------------------------------- caps

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


# ----------------------------------------------------------------------------- worker side
# Everything prefixed _w_ runs inside a worker process only (sympy is imported there).

_W_CACHE: dict[str, Any] = {}
_W_CACHE_MAX = 4096


def _w_latex_config():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    # units=False: math-verify's unit stripper removes single letters after numbers ("2t" -> 2)
    # and basic_latex removes quotes ("f'(x)" -> f(x)); units are stripped by normalize_answer.
    return LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )


_W_CFG: list[Any] = []


def _w_parse(s: str) -> Any:
    """LaTeX -> sympy through math-verify (LaTeX parser only; no signals); None on failure."""
    if s in _W_CACHE:
        return _W_CACHE[s]
    from math_verify import parse

    if not _W_CFG:
        _W_CFG.append(_w_latex_config())
    text = re.sub(r"(?<![\\'])'", r"^{\\prime}", s)  # keep primes: f'(x) is not f(x)
    res = parse("\\boxed{" + text + "}", extraction_config=[_W_CFG[0]], fallback_mode="no_fallback",
                parsing_timeout=None, raise_on_error=False)
    out = next((r for r in res if not isinstance(r, str)), None)
    if out is not None:
        out = _w_prep(_w_set_assignment(out))
    if len(_W_CACHE) >= _W_CACHE_MAX:
        _W_CACHE.clear()
    _W_CACHE[s] = out
    return out


def _w_set_assignment(e: Any) -> Any:
    """``x \\in (1, 2)`` and ``x = \\pm 2`` parse as Eq(x, <set>); the answer is the set.
    (Rebuilding Eq(x, <set>) with real symbols would evaluate it to False.)"""
    from sympy import Eq, Set, Symbol

    if isinstance(e, Eq) and isinstance(e.rhs, Set) and isinstance(e.lhs, Symbol):
        return e.rhs
    return e


def _w_prep(e: Any) -> Any:
    """Exact rationals for decimals, uniform real symbols, i -> I, unevaluated ops evaluated."""
    import sympy
    from sympy import Float, ImmutableMatrix, MatrixBase, Rational, Symbol

    if isinstance(e, MatrixBase):
        e = ImmutableMatrix(e)
    if not isinstance(e, sympy.Basic):
        return e
    floats = {f: Rational(str(f)) for f in e.atoms(Float)}
    syms = {s: (sympy.I if s.name == "i" else Symbol(s.name, real=True)) for s in e.atoms(Symbol)}
    e = e.xreplace({**floats, **syms})
    try:
        e = e.doit()
    except Exception:  # noqa: BLE001
        pass
    if e.atoms(Float):  # doit can create floats from exact input only via float literals
        e = e.xreplace({f: Rational(str(f)) for f in e.atoms(Float)})
    return e


def _w_is_rel(e: Any) -> bool:
    from sympy import And
    from sympy.core.relational import Relational

    if isinstance(e, Relational):
        return True
    return isinstance(e, And) and len(e.args) > 0 and all(isinstance(a, Relational) for a in e.args)


def _w_rel_args(e: Any) -> list[Any]:
    return list(getattr(e, "_unsorted_args", None) or e.args)


def _w_is_assignment(e: Any) -> bool:
    from sympy import And, Eq, Symbol
    from sympy.core.function import AppliedUndef

    if isinstance(e, And):
        args = _w_rel_args(e)
        return all(isinstance(a, Eq) for a in args) and _w_is_assignment(args[0])
    return isinstance(e, Eq) and isinstance(e.lhs, (Symbol, AppliedUndef))


def _w_last_rhs(e: Any) -> Any:
    from sympy import And

    if isinstance(e, And):
        return _w_last_rhs(_w_rel_args(e)[-1])
    return e.rhs


def _w_bad(e: Any) -> bool:
    from sympy import nan, zoo

    try:
        return bool(e.has(nan) or e.has(zoo))
    except Exception:  # noqa: BLE001
        return True


def _w_abs_num(e: Any, subs: dict[Any, Any] | None = None, prec: int = 40) -> Any:
    v = e.evalf(prec, subs=subs) if subs else e.evalf(prec)
    if not v.is_number or _w_bad(v):
        return None
    return abs(v)


def _w_clearly_nonzero(d: Any, a: Any, b: Any, subs: dict[Any, Any] | None = None) -> bool:
    """True when |a - b| (at the point ``subs``) is far above the evaluation error relative
    to |a| and |b|.

    Sound as a refutation: sympy's evalf targets ~40 correct digits, so a true zero never
    evaluates to more than 1e-15 of the operands' magnitude.
    """
    from sympy import Float

    try:
        dv, av, bv = _w_abs_num(d, subs), _w_abs_num(a, subs), _w_abs_num(b, subs)
        if dv is None or av is None or bv is None:
            return False
        scale = max(av, bv)
        if scale == 0:
            return bool(dv > 0)
        return bool(dv > Float("1e-15", 40) * scale)
    except Exception:  # noqa: BLE001
        return False


def _w_proved_zero(d: Any) -> bool:
    import sympy

    if d == 0:
        return True
    steps = (sympy.expand, sympy.cancel, sympy.radsimp, sympy.sqrtdenest, sympy.simplify)
    for step in steps:
        try:
            r = step(d)
        except Exception:  # noqa: BLE001
            continue
        if r == 0:
            return True
    if not d.free_symbols:
        try:
            if d.is_algebraic:
                x = sympy.Dummy("x")
                return sympy.minimal_polynomial(d, x) == x
        except Exception:  # noqa: BLE001
            return False
    return False


_W_POINTS = ((7, 3), (11, 5), (13, 17))


def _w_expr_equal(a: Any, b: Any) -> bool:
    import sympy
    from sympy import Rational

    if a == b:
        return True
    if _w_bad(a) or _w_bad(b):
        return False
    if a.has(sympy.oo) or b.has(sympy.oo) or a.has(-sympy.oo) or b.has(-sympy.oo):
        return False
    d = a - b
    if d == 0:
        return True
    syms = sorted(d.free_symbols, key=lambda s: s.name)
    if not syms:
        if _w_clearly_nonzero(d, a, b):
            return False
        return _w_proved_zero(d)
    for k in range(2):  # refute numerically at rational points before trying to simplify
        point = {s: Rational(*_W_POINTS[(i + k) % len(_W_POINTS)]) for i, s in enumerate(syms)}
        if _w_clearly_nonzero(d, a, b, point):
            return False
    return _w_proved_zero(d)


def _w_constant_ratio(a: Any, b: Any) -> Any:
    """a / b when that is a finite nonzero constant, else None."""
    import sympy

    if b == 0 or a == 0:
        return None
    try:
        r = sympy.simplify(sympy.cancel(a / b))
    except Exception:  # noqa: BLE001
        return None
    if r.free_symbols or _w_bad(r) or r == 0 or not r.is_number or r.has(sympy.oo, -sympy.oo):
        return None
    return r


def _w_canonical_ineq(e: Any) -> tuple[Any, bool] | None:
    """x > 3 -> (x - 3, strict); x <= 3 -> (3 - x, non-strict); Eq/Ne -> None."""
    from sympy import GreaterThan, LessThan, StrictGreaterThan, StrictLessThan

    if isinstance(e, StrictGreaterThan):
        return e.lhs - e.rhs, True
    if isinstance(e, GreaterThan):
        return e.lhs - e.rhs, False
    if isinstance(e, StrictLessThan):
        return e.rhs - e.lhs, True
    if isinstance(e, LessThan):
        return e.rhs - e.lhs, False
    return None


def _w_single_var_set(e: Any) -> Any:
    syms = e.free_symbols
    if len(syms) != 1:
        return None
    try:
        return e.as_set()
    except Exception:  # noqa: BLE001
        return None


def _w_rel_equal(g: Any, p: Any) -> bool:
    from sympy import And, Eq, Ne

    if isinstance(g, And) or isinstance(p, And):
        if isinstance(g, And) and isinstance(p, And):
            ga, pa = _w_rel_args(g), _w_rel_args(p)
            if len(ga) == len(pa) and all(_w_rel_equal(x, y) for x, y in zip(ga, pa)):
                return True
        gs, ps = _w_single_var_set(g), _w_single_var_set(p)
        return gs is not None and ps is not None and g.free_symbols == p.free_symbols and _w_set_equal(gs, ps)
    if (isinstance(g, Eq) and isinstance(p, Eq)) or (isinstance(g, Ne) and isinstance(p, Ne)):
        dg, dp = g.lhs - g.rhs, p.lhs - p.rhs
        if _w_expr_equal(dg, dp) or _w_expr_equal(dg, -dp):
            return True
        return _w_constant_ratio(dg, dp) is not None
    cg, cp = _w_canonical_ineq(g), _w_canonical_ineq(p)
    if cg is not None and cp is not None:
        if cg[1] == cp[1]:
            if _w_expr_equal(cg[0], cp[0]):
                return True
            r = _w_constant_ratio(cg[0], cp[0])
            if r is not None and bool(r > 0):
                return True
        gs, ps = _w_single_var_set(g), _w_single_var_set(p)
        return gs is not None and ps is not None and g.free_symbols == p.free_symbols and _w_set_equal(gs, ps)
    return False


def _w_set_parts(s: Any) -> list[Any]:
    from sympy import Union

    return list(s.args) if isinstance(s, Union) else [s]


def _w_sort_key(s: Any) -> tuple:
    from sympy import FiniteSet, Interval

    try:
        if isinstance(s, Interval):
            return (0, float(s.start), float(s.end))
        if isinstance(s, FiniteSet) and len(s) > 0:
            return (1, float(min(s.args, key=lambda v: float(v))), 0.0)
    except Exception:  # noqa: BLE001
        pass
    return (2, 0.0, 0.0)


def _w_unordered_equal(ga: Sequence[Any], pa: Sequence[Any]) -> bool:
    if len(ga) != len(pa):
        return False
    used = [False] * len(pa)
    for x in ga:
        for j, y in enumerate(pa):
            if not used[j] and _w_equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _w_set_equal(g: Any, p: Any) -> bool:
    from sympy import EmptySet, FiniteSet, Interval, Set, Tuple, Union

    if isinstance(g, FiniteSet) and not isinstance(p, Set):
        return len(g) == 1 and _w_equal(g.args[0], p)
    if isinstance(p, FiniteSet) and not isinstance(g, Set):
        return len(p) == 1 and _w_equal(g, p.args[0])
    if isinstance(g, Interval) and isinstance(p, Interval):
        return (g.left_open == p.left_open and g.right_open == p.right_open
                and _w_equal(g.start, p.start) and _w_equal(g.end, p.end))
    for a, b in ((g, p), (p, g)):  # "(1,2)" parses as an open interval but may mean a point
        if isinstance(a, Interval) and isinstance(b, Tuple):
            return a.left_open and a.right_open and len(b) == 2 and _w_equal(a.start, b[0]) and _w_equal(a.end, b[1])
    if isinstance(g, FiniteSet) and isinstance(p, FiniteSet):
        return _w_unordered_equal(g.args, p.args)
    if g is EmptySet or p is EmptySet:
        return g is p
    if isinstance(g, Union) or isinstance(p, Union):
        gp, pp = _w_set_parts(g), _w_set_parts(p)
        if len(gp) != len(pp) or any(not isinstance(x, (Interval, FiniteSet)) for x in gp + pp):
            return False
        gp.sort(key=_w_sort_key)
        pp.sort(key=_w_sort_key)
        return all(_w_set_equal(x, y) for x, y in zip(gp, pp))
    try:
        return bool(g == p)
    except Exception:  # noqa: BLE001
        return False


def _w_matrix_equal(g: Any, p: Any) -> bool:
    from sympy import Interval, MatrixBase, Tuple

    def flat(m: Any) -> tuple[tuple[int, int], list[Any]] | None:
        if isinstance(m, MatrixBase):
            return m.shape, list(m)
        if isinstance(m, Tuple):
            return (len(m), 1), list(m)
        if isinstance(m, Interval) and m.left_open and m.right_open:  # "(1,2)" written for a vector
            return (2, 1), [m.start, m.end]
        return None

    fg, fp = flat(g), flat(p)
    if fg is None or fp is None:
        return False
    (gs, gv), (ps, pv) = fg, fp
    vector = 1 in gs and 1 in ps  # a row/column vector may be written as a tuple
    if gs != ps and not (vector and len(gv) == len(pv)):
        return False
    return all(_w_equal(x, y) for x, y in zip(gv, pv))


def _w_equal(g: Any, p: Any, depth: int = 0) -> bool:
    """Strict equality of two parsed answers (gold first)."""
    import sympy
    from sympy import Expr, MatrixBase, Set, Tuple

    if depth > 6:
        return False
    g_rel, p_rel = _w_is_rel(g), _w_is_rel(p)
    if p_rel and not g_rel and _w_is_assignment(p):  # "x = 3" vs gold "3"
        return _w_equal(g, _w_last_rhs(p), depth + 1)
    if g_rel and not p_rel and _w_is_assignment(g):  # gold "y = 2x + 1" vs "2x + 1"
        return _w_equal(_w_last_rhs(g), p, depth + 1)
    if g_rel and p_rel:
        return _w_rel_equal(g, p)
    if g_rel or p_rel:
        rel, other = (g, p) if g_rel else (p, g)
        if isinstance(other, Set):
            as_set = _w_single_var_set(rel)
            return as_set is not None and _w_set_equal(as_set, other)
        return False
    if isinstance(g, MatrixBase) or isinstance(p, MatrixBase):
        return _w_matrix_equal(g, p)
    if isinstance(g, Set) or isinstance(p, Set):
        return _w_set_equal(g, p)
    if isinstance(g, Tuple) or isinstance(p, Tuple):
        if not (isinstance(g, Tuple) and isinstance(p, Tuple)) or len(g) != len(p):
            return False
        return all(_w_equal(x, y, depth + 1) for x, y in zip(g, p))
    if isinstance(g, Expr) and isinstance(p, Expr):
        return _w_expr_equal(g, p)
    if isinstance(g, sympy.Basic) and isinstance(p, sympy.Basic):
        return g == p
    return False


def _w_compare(gold: str, pred: str) -> tuple[bool, str]:
    chain = _constant_chain(pred) if "=" not in gold else None
    if chain is not None:  # "30-12=18" states 18 only when every side is 18 ("2+2=5" is not 5)
        g = _w_parse(gold)
        sides = [_w_parse(x) for x in chain]
        if g is None or any(x is None for x in sides):
            return False, "parse_failure"
        return all(_w_equal(g, x) for x in sides), "ok"
    g = _w_parse(gold)
    p = _w_parse(pred)
    if g is None or p is None:
        return False, "parse_failure"
    return bool(_w_equal(g, p)), "ok"


def _w_math_verify(gold: str, pred: str) -> tuple[bool, str]:
    """math-verify's own verdict with its default tolerances (diagnostics only)."""
    from math_verify import LatexExtractionConfig, parse, verify

    g = parse("\\boxed{" + gold + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
              parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
              parsing_timeout=None)
    if not g or not p:
        return False, "parse_failure"
    return bool(verify(g, p, timeout_seconds=None)), "ok"


_W_HANDLERS = {"eq": _w_compare, "mv": _w_math_verify}


def _w_setup() -> None:
    import logging

    logging.disable(logging.WARNING)  # math-verify warns about disabled signal timeouts
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(max(MAX_INT_DIGITS * 4, 20_000))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4000))
    try:
        import resource

        limit = WORKER_MEM_MB * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        _w_compare("\\frac{1}{2}", "x+1")  # warm the ANTLR parser and sympy caches
    except Exception:  # noqa: BLE001
        pass
    _W_CACHE.clear()


def _worker_main() -> None:
    """Worker loop over stdin/stdout, one JSON message per line.

    Receives ``[kind, gold, pred]``; replies ``["ok", [verdict, status]]`` or
    ``["error", exception_name]``. Exits when stdin closes (the parent died or killed it).
    """
    import json
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    _w_setup()
    out.write(json.dumps(["ready", os.getpid()]) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            kind, gold, pred = json.loads(line)
            reply: list[Any] = ["ok", list(_W_HANDLERS[kind](gold, pred))]
        except BaseException as exc:  # noqa: BLE001 - MemoryError, RecursionError, anything
            reply = ["error", type(exc).__name__]
        try:
            out.write(json.dumps(reply) + "\n")
            out.flush()
        except (OSError, ValueError):
            return


# ----------------------------------------------------------------------------- process pool

_WORKER_CODE = "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); " \
    "from reasonax.eval.grader import _worker_main; _worker_main()"


class _Worker:
    """One worker process, started with subprocess (fork+exec: safe from a threaded parent,
    and unlike multiprocessing it never re-imports the caller's __main__ module)."""

    __slots__ = ("proc", "_buf")

    def __init__(self) -> None:
        import json
        import subprocess

        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, json.dumps(paths)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, env=env,
        )
        self._buf = b""
        greeting = self.recv(WORKER_START_TIMEOUT_S)
        if not greeting or greeting[0] != "ready":
            self.kill()
            raise RuntimeError("grader worker did not start")

    def send(self, msg: list[Any]) -> None:
        import json

        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> list[Any] | None:
        """The next reply line, or None on timeout. Raises EOFError when the worker died."""
        import json
        import select
        import time

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not poller.poll(max(1, int(left * 1000))):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("grader worker exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class GraderPool:
    """Worker processes with a hard per-task wall-clock limit.

    A slot queue holds either an idle worker or ``None`` (a free slot: start a worker). A call
    checks a slot out, runs one task, and checks it back in; a task over its limit gets its
    worker killed and the slot freed. Thread-safe; usable from any thread.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.size = max(1, int(workers or os.cpu_count() or 1))
        self.pid = os.getpid()
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(self.size):
            self._slots.put(None)
        self._closed = False
        self._all: set[_Worker] = set()
        self._all_lock = threading.Lock()

    def _checkout(self) -> _Worker:
        slot = self._slots.get()
        if slot is not None:
            if slot.proc.poll() is None:
                return slot
            slot.kill()  # died while idle (OOM killer, external kill): start a fresh one
            with self._all_lock:
                self._all.discard(slot)
            _count("worker_crashes")
        try:
            w = _Worker()
        except BaseException:
            self._slots.put(None)
            raise
        _count("workers_started")
        with self._all_lock:
            self._all.add(w)
        return w

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._all_lock:
            self._all.discard(w)
        self._slots.put(None)

    def _checkin(self, w: _Worker) -> None:
        if self._closed:
            self._discard(w)
        else:
            self._slots.put(w)

    def run(self, task: list[str], timeout: float) -> tuple[str, Any]:
        """("ok", result) | ("timeout", None) | ("crash", None) | ("error", name)."""
        if self._closed:
            return "error", "PoolClosed"
        try:
            w = self._checkout()
        except Exception as exc:  # noqa: BLE001
            return "error", f"WorkerStart:{type(exc).__name__}"
        try:
            w.send(task)
            reply = w.recv(timeout)
        except (EOFError, OSError, ValueError):
            self._discard(w)
            return "crash", None
        except BaseException:
            self._discard(w)
            raise
        if reply is None:
            self._discard(w)
            return "timeout", None
        self._checkin(w)
        return reply[0], reply[1]

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.kill()


_pool: GraderPool | None = None
_pool_lock = threading.Lock()
_config = {"timeout": DEFAULT_TIMEOUT_S, "workers": int(os.environ.get("REASONAX_GRADER_WORKERS", "0")) or None}


def configure(*, timeout: float | None = None, workers: int | None = None) -> None:
    """Set the default per-comparison limit (seconds) and/or the worker count (restarts the pool)."""
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        _config["timeout"] = float(timeout)
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        _config["workers"] = int(workers)
        shutdown()


def _get_pool() -> GraderPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid() or _pool._closed:
            _pool = GraderPool(_config["workers"])
        return _pool


def shutdown() -> None:
    """Kill the worker processes (a later call starts new ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown)


# ----------------------------------------------------------------------------- public API


def _prepare(gold: Any, pred: Any) -> tuple[str, str] | bool:
    """Normalise a pair, or decide it: False for bad input, True/False from the fast path."""
    if not isinstance(gold, str) or not isinstance(pred, str):
        _count("rejected_inputs")
        return False
    if len(gold) > MAX_INPUT_CHARS or len(pred) > MAX_INPUT_CHARS:
        _count("rejected_inputs")
        return False
    g, p = normalize_answer(gold), normalize_answer(pred)
    if not g or not p:
        _count("rejected_inputs")
        return False
    g, p = _align(g, p)
    fast = _fast_compare(g, p)
    if fast is not None:
        _count("fast_path")
        return fast
    if _over_caps(g) or _over_caps(p):
        _count("rejected_inputs")
        return False
    return g, p


def _slow(kind: str, g: str, p: str, timeout: float) -> bool:
    _count("slow_path")
    status, value = _get_pool().run([kind, g, p], timeout)
    if status == "crash":  # a worker that died while idle: retry once on a fresh one
        _count("worker_crashes")
        status, value = _get_pool().run([kind, g, p], timeout)
    if status == "timeout":
        _count("timeouts")
        return False
    if status == "crash":
        _count("worker_crashes")
        return False
    if status != "ok":
        _count("worker_errors")
        return False
    verdict, why = value
    if why == "parse_failure":
        _count("parse_failures")
    return bool(verdict)


def _timeout(timeout: float | None) -> float:
    return float(_config["timeout"] if timeout is None else timeout)


def is_equivalent(gold: str, pred: str, *, timeout: float | None = None) -> bool:
    """Whether ``pred`` is exactly the same answer as ``gold``. Never raises, never hangs:
    parse failures, caps and the wall-clock limit (default 5 s, per comparison) give False."""
    _count("calls")
    try:
        prep = _prepare(gold, pred)
        if isinstance(prep, bool):
            return prep
        return _slow("eq", prep[0], prep[1], _timeout(timeout))
    except Exception:  # noqa: BLE001
        _count("errors")
        return False


def _run_batch(kind: str, golds: Sequence[Any], preds: Sequence[Any], timeout: float | None, fast: bool) -> list[bool]:
    if len(golds) != len(preds):
        raise ValueError(f"golds and preds differ in length: {len(golds)} != {len(preds)}")
    _count("calls", len(golds))
    limit = _timeout(timeout)
    out: list[bool] = [False] * len(golds)
    todo: list[tuple[int, str, str]] = []
    for i, (g, p) in enumerate(zip(golds, preds)):
        try:
            if fast:
                prep = _prepare(g, p)
            elif isinstance(g, str) and isinstance(p, str) and max(len(g), len(p)) <= MAX_INPUT_CHARS:
                if kind == "mv":  # math-verify sees raw text
                    prep = (_clean_text(g).strip(), _clean_text(p).strip())
                else:
                    prep = _align(normalize_answer(g), normalize_answer(p))
                if _over_caps(prep[0]) or _over_caps(prep[1]):
                    _count("rejected_inputs")
                    prep = False
            else:
                _count("rejected_inputs")
                prep = False
        except Exception:  # noqa: BLE001
            _count("errors")
            prep = False
        if isinstance(prep, bool):
            out[i] = prep
        else:
            todo.append((i, prep[0], prep[1]))
    if todo:
        pool = _get_pool()

        def one(item: tuple[int, str, str]) -> tuple[int, bool]:
            try:
                return item[0], _slow(kind, item[1], item[2], limit)
            except Exception:  # noqa: BLE001
                _count("errors")
                return item[0], False

        with ThreadPoolExecutor(max_workers=min(pool.size, len(todo)), thread_name_prefix="grader") as ex:
            for i, verdict in ex.map(one, todo):
                out[i] = verdict
    return out


def is_equivalent_batch(golds: Sequence[str], preds: Sequence[str], *, timeout: float | None = None,
                        fast: bool = True) -> list[bool]:
    """:func:`is_equivalent` over pairs; sympy work spread over the worker processes.

    ``fast=False`` skips the in-process fast path (every pair is parsed by the workers): for
    benchmarking and testing the sympy path only.
    """
    return _run_batch("eq", golds, preds, timeout, fast)


def math_verify_batch(golds: Sequence[str], preds: Sequence[str], *, timeout: float | None = None) -> list[bool]:
    """math-verify's own verdicts (default tolerances) on normalised pairs, run in the killable
    workers. For measuring where it is more lenient than :func:`is_equivalent`; not a grader."""
    return _run_batch("mv", golds, preds, timeout, fast=False)


def grade(completion: str, gold: str, fallback: bool = False, *, timeout: float | None = None) -> bool:
    """Reward: the completion's extracted final answer is equivalent to ``gold``."""
    pred = extract_answer(completion, fallback=fallback)
    if pred is None:
        _count("calls")
        return False
    return is_equivalent(gold, pred, timeout=timeout)


def grade_batch(completions: Sequence[str], golds: Sequence[str], fallback: bool = False, *,
                timeout: float | None = None) -> list[bool]:
    """:func:`grade` over many pairs in parallel worker processes."""
    if len(completions) != len(golds):
        raise ValueError(f"completions and golds differ in length: {len(completions)} != {len(golds)}")
    preds = [extract_answer(c, fallback=fallback) for c in completions]
    idx = [i for i, p in enumerate(preds) if p is not None]
    out = [False] * len(completions)
    _count("calls", len(completions) - len(idx))
    verdicts = is_equivalent_batch([golds[i] for i in idx], [preds[i] for i in idx], timeout=timeout)
    for i, v in zip(idx, verdicts):
        out[i] = v
    return out
