"""A byte-level HF tokenizer built offline: every UTF-8 byte is one token, plus a few specials.

It is a real transformers PreTrainedTokenizerFast (save_pretrained / AutoTokenizer round-trip),
so tiny models trained on synthetic tasks use the same code paths as real checkpoints.
Ids 0-255 are bytes; then SPECIALS in order. Like Gemma's, tokenizer(text) starts with BOS
(encode(..., add_special_tokens=False) does not).
"""

from __future__ import annotations

import os

SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")
VOCAB_SIZE = 256 + len(SPECIALS)
PAD_ID, BOS_ID, EOS_ID = 256, 257, 258


def byte_tokenizer(save_dir: str | os.PathLike | None = None):
    """The tokenizer (written to save_dir when given, for AutoTokenizer.from_pretrained)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[1]} $A",
                                                       special_tokens=[(SPECIALS[1], BOS_ID)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIALS[0],
                                                bos_token=SPECIALS[1], eos_token=SPECIALS[2])
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def _byte_of(ch: str) -> int:
    """The byte GPT-2's byte-to-unicode table maps to `ch`."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    if ord(ch) in printable:
        return ord(ch)
    others = [b for b in range(256) if b not in printable]
    return others[ord(ch) - 256]
