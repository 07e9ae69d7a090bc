"""Text hygiene before extraction: invalid code points and NULs dropped, chat / control tokens
removed (an end-of-turn token ends the completion), ``<think>`` blocks cut out.
"""

from __future__ import annotations

import re


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
