"""The acceptance entry points of docs/ARCHITECTURE.md, called exactly as written there."""

import numpy as np

from reasonax import model, sample
from reasonax.eval import grader, metrics
from tests import hf_reference as R


def test_model_and_sampler_entry_points(tmp_path):
    R.save_hf_model("gemma3", tmp_path / "hf")
    cfg, params = model.load_hf(tmp_path / "hf", dtype="float32")
    model.save_hf(params, cfg, tmp_path / "out")
    tokens = np.array([[2, 5, 7, 9]], np.int32)
    logits = model.forward(params, tokens, cfg)
    assert logits.shape == (1, 4, cfg.vocab_size) and logits.dtype == np.float32
    prompts = [[2, 5, 7], [2, 9]]
    res = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=32, temperature=0.0),
                          eos_ids=(1,), seed=0)
    assert len(res.tokens) == len(res.logprobs) == 2
    for toks, lps in zip(res.tokens, res.logprobs):
        assert len(toks) == len(lps) and 1 <= len(toks) <= 32
        assert 1 not in toks[:-1]  # EOS only ever last (kept)
    assert sample.budget.compute_matched_samples(27e9, 9e9, 10) == 30


def test_eval_entry_points():
    assert grader.extract_answer("so the answer is \\boxed{42}.") == "42"
    assert grader.is_equivalent("1/2", "0.5") is True
    assert grader.is_equivalent("5000", "50") is False
    assert grader.grade("... #### 18", "18") is True
    assert metrics.pass_at_k(4, 1, 2) == 0.5
