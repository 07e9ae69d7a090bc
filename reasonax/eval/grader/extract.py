"""Answer extraction: the final answer a completion states (:func:`extract_answer`) and its
last ``\\boxed{}`` answer (:func:`boxed_answer`). Boxes, ``####`` lines, answer phrases, a
final sentence that states one value, and (fallback only) the last number.
"""

from __future__ import annotations

import re

from reasonax.eval.grader.counters import _count
from reasonax.eval.grader.text import _clean_text, _strip_chat_tokens, _strip_think

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
