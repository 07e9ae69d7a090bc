"""Math prompt formats and stop tokens per model family, and tokenizer loading.

Formats:
  qwen-chat    ChatML with the Qwen2.5-Math chain-of-thought system prompt (\\boxed{} answer)
  gemma-chat   Gemma turns (<start_of_turn>user ... <end_of_turn>); Gemma has no system role,
               so the instruction is prepended to the user turn
  few-shot     plain "Question: ... / Answer: ..." blocks for base models
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from reasonax.model.config import ModelConfig

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class Example:
    question: str
    answer: str  # a full worked solution, ending in the final answer


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    name: str
    stop_strings: tuple[str, ...]  # text that ends a completion (the engine stops the row there)

    def render(self, question: str, few_shot: Sequence[Example] = (), instruction: str = BOXED_INSTRUCTION) -> str:
        if self.name == "qwen-chat":
            turns = [f"<|im_start|>system\n{instruction}<|im_end|>\n"]
            for ex in few_shot:
                turns.append(f"<|im_start|>user\n{ex.question}<|im_end|>\n"
                             f"<|im_start|>assistant\n{ex.answer}<|im_end|>\n")
            turns.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
            return "".join(turns)
        if self.name == "gemma-chat":
            turns = []
            for i, ex in enumerate(few_shot):
                q = f"{instruction}\n\n{ex.question}" if i == 0 and instruction else ex.question
                turns.append(f"<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{ex.answer}<end_of_turn>\n")
            q = f"{instruction}\n\n{question}" if instruction and not few_shot else question
            turns.append(f"<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n")
            return "".join(turns)
        if self.name == "few-shot":
            blocks = [f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in few_shot]
            return "".join(blocks) + f"Question: {question}\nAnswer:"
        raise ValueError(f"unknown prompt format {self.name!r}")


FORMATS = {
    "qwen-chat": PromptFormat("qwen-chat", ("<|im_end|>", "<|endoftext|>")),
    "gemma-chat": PromptFormat("gemma-chat", ("<end_of_turn>", "<eos>")),
    # answers in few-shot blocks never contain a blank line, so one ends the answer; so does a
    # made-up next block ("...\nQuestion: ...") written after a single newline
    "few-shot": PromptFormat("few-shot", ("\n\n", "\nQuestion:")),
}


def get_format(name: str) -> PromptFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown prompt format {name!r}; known: {', '.join(FORMATS)}") from None


def default_format(cfg: ModelConfig) -> PromptFormat:
    """Chat format of the model's family (few-shot for Llama-style models)."""
    if cfg.model_type.startswith("qwen"):
        return FORMATS["qwen-chat"]
    if cfg.model_type.startswith("gemma"):
        return FORMATS["gemma-chat"]
    return FORMATS["few-shot"]


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


def load_tokenizer(path: str | os.PathLike):
    """transformers tokenizer from a model directory (HF dir, or the tokenizer/ of an Orbax checkpoint)."""
    import json

    import transformers

    from reasonax.model.convert import tokenizer_path

    path = tokenizer_path(path)
    tok_cfg = path / "tokenizer_config.json"
    generic = ("TokenizersBackend", "PreTrainedTokenizerFast")
    if tok_cfg.is_file() and json.loads(tok_cfg.read_text()).get("tokenizer_class") in generic:
        # a plain tokenizer.json (e.g. reasonax.tasks.byte_tokenizer): AutoTokenizer would pick the
        # class of config.json's model_type, which may add tokens of its own (Qwen2's unk)
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
    return transformers.AutoTokenizer.from_pretrained(str(path))
