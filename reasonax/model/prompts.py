"""Math prompt formats per model family (their stop strings are data here; the stop-token ids
and the cut are reasonax.sample.stops, tokenizer loading reasonax.model.tokenizer).

Formats:
  qwen-chat    ChatML with the Qwen2.5-Math chain-of-thought system prompt (\\boxed{} answer)
  gemma-chat   Gemma turns (<start_of_turn>user ... <end_of_turn>); Gemma has no system role,
               so the instruction is prepended to the user turn
  few-shot     plain "Question: ... / Answer: ..." blocks for base models
  raw          the question as it is (worked examples, if any, each its question then its answer
               and a newline, before it): models trained on data.template='raw', as the demo's
               are (their prompt already ends the way their completions start); no stop strings
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from reasonax.model.config import ModelConfig, family

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
        if self.name == "raw":
            return "".join(f"{ex.question}{ex.answer}\n" for ex in few_shot) + question
        raise ValueError(f"unknown prompt format {self.name!r}")


FORMATS = {
    "qwen-chat": PromptFormat("qwen-chat", ("<|im_end|>", "<|endoftext|>")),
    "gemma-chat": PromptFormat("gemma-chat", ("<end_of_turn>", "<eos>")),
    # answers in few-shot blocks never contain a blank line, so one ends the answer; so does a
    # made-up next block ("...\nQuestion: ...") written after a single newline
    "few-shot": PromptFormat("few-shot", ("\n\n", "\nQuestion:")),
    "raw": PromptFormat("raw", ()),  # the completion ends at EOS
}


def get_format(name: str) -> PromptFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown prompt format {name!r}; known: {', '.join(FORMATS)}") from None


def default_format(cfg: ModelConfig) -> PromptFormat:
    """Chat format of the model's family (model.config.FAMILIES; few-shot for Llama-style models)."""
    return FORMATS[family(cfg.model_type).chat_format]
