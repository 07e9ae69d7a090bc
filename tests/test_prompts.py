"""Prompt formats and stop tokens per family, checked against the families' chat markup."""

import pytest

from reasonax import model
from reasonax.model import prompts
from reasonax.sample import stops


def test_qwen_chat_matches_chatml():
    text = prompts.get_format("qwen-chat").render("What is 2+3?")
    assert text == ("<|im_start|>system\nPlease reason step by step, and put your final answer within "
                    "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")


def test_gemma_chat_has_no_system_turn():
    text = prompts.get_format("gemma-chat").render("What is 2+3?")
    assert text.startswith("<start_of_turn>user\nPlease reason step by step")
    assert text.endswith("What is 2+3?<end_of_turn>\n<start_of_turn>model\n")
    assert "system" not in text


def test_few_shot_blocks():
    shots = [prompts.Example("1+1?", "1+1=2. The answer is 2.")]
    text = prompts.get_format("few-shot").render("2+2?", few_shot=shots)
    assert text == "Question: 1+1?\nAnswer: 1+1=2. The answer is 2.\n\nQuestion: 2+2?\nAnswer:"


def test_raw_is_the_question_as_it_is_as_data_template_raw_starts_an_example(tmp_path):
    from reasonax.tasks import word_problems
    from reasonax.train import data as data_lib

    raw = prompts.get_format("raw")
    assert raw.stop_strings == () and raw.render("Pia has 3 apples.\n", instruction="ignored") == "Pia has 3 apples.\n"
    shots = [prompts.Example("1+1?\n", "1 + 1 = 2.")]
    assert raw.render("2+2?\n", few_shot=shots) == "1+1?\n1 + 1 = 2.\n2+2?\n"
    # what the sampler feeds (the tokenizer call: BOS, then the text) is how a raw-template example starts
    tok = word_problems.save_tokenizer(tmp_path / "tok")
    text = "Pia has 3 apples. How many?\n"
    ids = tok(raw.render(text))["input_ids"]
    assert ids == data_lib.prompt_tokens(text, data_lib.DataConfig(template="raw"), tok) and ids[0] == tok.bos_token_id
    assert data_lib.TEMPLATES.count("raw") == 1


@pytest.mark.parametrize("preset,fmt", [("qwen2.5-math-1.5b", "qwen-chat"), ("gemma3-1b", "gemma-chat"),
                                        ("gemma2-2b", "gemma-chat")])
def test_default_format_per_family(preset, fmt):
    assert prompts.default_format(model.get_preset(preset)).name == fmt


class _Tok:
    eos_token_id = 1
    vocab = {"<eos>": 1, "<end_of_turn>": 106, "hello": 7, "\n": 9, "\n\n": 108, "\n\n\n": 109, ".\n\n": 382,
             ".\n": 13}

    def get_vocab(self):
        return self.vocab

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[text]] if text in self.vocab else [7] * len(text)

    def batch_decode(self, seqs, **kw):
        text = {i: t for t, i in self.vocab.items()}
        return ["".join(text[i] for i in seq) for seq in seqs]


def test_stop_token_ids_include_turn_end_and_eos():
    ids = stops.stop_token_ids(_Tok(), prompts.get_format("gemma-chat").stop_strings, model.get_preset("gemma3-1b"))
    assert ids == (1, 106)


def test_few_shot_stops_at_every_token_holding_a_blank_line():
    ids = stops.stop_token_ids(_Tok(), prompts.get_format("few-shot").stop_strings)
    assert ids == (1, 108, 109, 382)  # EOS, "\n\n", and the tokens containing it ("\n" and ".\n" do not)
    assert stops.stop_token_ids(_Tok(), ["\n\nQuestion:"]) == (1,)  # several tokens: the engine finds it in text
    assert stops.cut_at_stop("x = 4.\nQuestion: 5+5?\nAnswer:", prompts.get_format("few-shot").stop_strings) == (
        "x = 4.", True)  # a made-up next block after a single newline ends the answer too
    assert stops.stop_token_ids(_Tok(), [""]) == (1,)  # an empty stop string stops nothing
    assert stops.cut_at_stop("a\n\nb", ["", "\n\n"]) == ("a", True)
    assert stops.cut_at_stop("ab", [""]) == ("ab", False)


def test_unknown_format_is_named():
    with pytest.raises(KeyError, match="unknown prompt format 'alpaca'"):
        prompts.get_format("alpaca")
