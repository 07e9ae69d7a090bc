"""Stop strings: text that ends a completion, checked on the host as tokens arrive, and the token
ids that end generation outright (stop_token_ids).

A stop string may span several tokens (few-shot's blank line written as "\\n" + "\\n"), so it is
found in decoded text, not in token ids. The engine calls `StopStrings.cut` at the end of every
decode block with the tokens the row has so far; a row whose text contains a stop string ends
after the token that completes it (it is then finished as EOS would finish it), so no row runs
more than one block past its stop.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasonax.model.config import ModelConfig


def stop_token_ids(tokenizer, stop_strings: Sequence[str], cfg: ModelConfig | None = None) -> tuple[int, ...]:
    """Token ids that end generation: EOS, every stop string the tokenizer encodes as one token
    (special tokens like <end_of_turn>, or "\n\n"), and every token whose text contains a stop
    string (Gemma's "\n\n\n", Qwen's ".\n\n"), found by decoding the vocabulary (about 2 s for
    262k tokens). A stop string spread over several tokens is found in the decoded text between
    decode blocks (reasonax.sample.StopStrings)."""
    ids = set(cfg.eos_token_ids if cfg is not None else ())
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for s in stop_strings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    if stops := [s for s in stop_strings if s]:  # an empty string would be in every token
        vocab = sorted(set(tokenizer.get_vocab().values()))
        texts = tokenizer.batch_decode([[i] for i in vocab], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        ids.update(i for i, text in zip(vocab, texts) if any(s in text for s in stops))
    return tuple(sorted(ids))


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the first stop string, whether one was found); empty stop strings are ignored."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopStrings:
    """Where a row's tokens reach one of `strings`, by decoding them with `tokenizer` (special
    tokens and `skip_ids`, e.g. EOS, left out, as completion texts are written)."""

    def __init__(self, tokenizer, strings: Sequence[str], skip_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.strings = tuple(s for s in strings if s)  # an empty string would stop everything
        self.skip = frozenset(int(t) for t in skip_ids)

    def __bool__(self) -> bool:
        return bool(self.strings)

    def _stopped(self, tokens: Sequence[int], k: int) -> bool:
        text = self.tokenizer.decode([t for t in tokens[:k] if t not in self.skip], skip_special_tokens=True)
        return cut_at_stop(text, self.strings)[1]

    def cut(self, tokens: Sequence[int], checked: int = 0) -> int | None:
        """How many of `tokens` to keep: up to and including the token that completes the first stop
        string, or None when they hold none. tokens[:checked] are known to hold none (an earlier
        call); the answer is found by bisection over decoded prefixes."""
        if not self.strings or len(tokens) <= checked or not self._stopped(tokens, len(tokens)):
            return None
        lo, hi = checked + 1, len(tokens)  # stopped(hi) holds; find the smallest such k
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._stopped(tokens, mid) else (mid + 1, hi)
        return lo
