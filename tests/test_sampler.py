"""The sampler against transformers' generate, against a full forward, and against exact probabilities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import model, sample
from reasonax.sample import sampler
from tests import hf_reference as R


@functools.cache
def _checkpoint(family: str, root: str):
    from pathlib import Path

    ref = R.save_hf_model(family, Path(root) / family, seed=11)
    cfg, params = model.load_hf(Path(root) / family)
    return ref, cfg, params


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sampler"))


def _prompts(lengths, seed=0, vocab=R.VOCAB):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("family", R.FAMILIES)
def test_greedy_matches_transformers_generate(family, root):
    ref, cfg, params = _checkpoint(family, root)
    prompts = _prompts([9, 3, 14])
    res = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=24, temperature=0.0),
                          eos_ids=(), seed=0)
    assert res.tokens == R.hf_greedy(ref, prompts, 24)
    assert res.finish_reasons == ["length"] * 3


@pytest.mark.parametrize("sp", [sample.SamplingParams(max_new_tokens=12, temperature=1.0, n=3),
                                sample.SamplingParams(max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9,
                                                      n=2),
                                sample.SamplingParams(max_new_tokens=12, temperature=0.0)])
def test_logprobs_equal_full_forward(sp, root):
    _, cfg, params = _checkpoint("gemma2", root)
    prompts = _prompts([5, 11], seed=1)
    res = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=3)
    for row, toks in enumerate(res.tokens):
        prompt = prompts[res.prompt_index[row]]
        seq = np.asarray(prompt + toks, np.int32)[None]
        logits = model.forward(params, seq, cfg)[0, len(prompt) - 1:-1]  # predicts each generated token
        model_lp = np.asarray(jax.nn.log_softmax(logits))[np.arange(len(toks)), toks]
        np.testing.assert_allclose(res.model_logprobs[row], model_lp, atol=1e-4)
        if sp.greedy:
            np.testing.assert_allclose(res.logprobs[row], model_lp, atol=1e-4)
        else:
            samp = jax.nn.log_softmax(sampler.sampling_logits(logits, sp))
            np.testing.assert_allclose(res.logprobs[row], np.asarray(samp)[np.arange(len(toks)), toks], atol=1e-4)
            assert all(np.isfinite(res.logprobs[row]))  # never a token outside the kept set


PROBS = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


def _exact(sp):
    p = PROBS ** (1 / sp.temperature)
    p = p / p.sum()
    order = np.argsort(-p)
    keep = np.zeros(len(p), bool)
    if sp.top_k:
        keep[order[:sp.top_k]] = True
    else:
        keep[:] = True
    q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
    if sp.top_p < 1:
        cum = np.cumsum(q[order])
        nucleus = order[: int(np.searchsorted(cum, sp.top_p - 1e-12)) + 1]
        keep &= np.isin(np.arange(len(p)), nucleus)
    q = np.where(keep, q, 0)
    q = q / q.sum()
    if sp.min_p:
        keep &= q >= sp.min_p * q.max()
    q = np.where(keep, q, 0)
    return q / q.sum()


@pytest.mark.parametrize("sp", [
    sample.SamplingParams(temperature=1.0),
    sample.SamplingParams(temperature=0.5),
    sample.SamplingParams(temperature=2.0),
    sample.SamplingParams(temperature=1.0, top_k=2),
    sample.SamplingParams(temperature=1.0, top_p=0.8),
    sample.SamplingParams(temperature=1.0, top_p=0.7),
    sample.SamplingParams(temperature=0.8, top_k=4, top_p=0.9),
    sample.SamplingParams(temperature=1.0, min_p=0.3),
])
def test_sampling_frequencies_within_three_standard_errors(sp):
    draws = 10_000
    logits = jnp.tile(jnp.log(jnp.asarray(PROBS, jnp.float32)), (draws, 1))
    keys = sampler.row_keys(7, np.arange(draws), np.zeros(draws))
    tok, lp, model_lp = jax.jit(sampler.select_tokens, static_argnames="sp")(logits, keys, jnp.int32(0), sp=sp)
    tok = np.asarray(tok)
    want = _exact(sp)
    freq = np.bincount(tok, minlength=len(PROBS)) / draws
    se = np.sqrt(want * (1 - want) / draws)
    assert np.all(np.abs(freq - want) <= 3 * se + 1e-12), (freq, want)
    assert np.all(freq[want == 0] == 0)
    np.testing.assert_allclose(np.asarray(lp), np.log(want[tok]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model_lp), np.log(PROBS[tok]), atol=1e-5)


def test_n_samples_share_one_prefill_and_keys_do_not_depend_on_batching(root):
    _, cfg, params = _checkpoint("qwen3", root)
    prompts = _prompts([6, 8, 7], seed=2)
    sp = sample.SamplingParams(max_new_tokens=10, temperature=1.0, n=4)
    res = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=5)
    assert res.prompt_index == [0] * 4 + [1] * 4 + [2] * 4 and res.sample_index == [0, 1, 2, 3] * 3
    assert len({tuple(t) for t in res.tokens[:4]}) > 1  # samples of one prompt differ
    again = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=5)
    assert again.tokens == res.tokens  # reproducible
    # tiny memory budget: one row per chunk, prompts re-prefilled per chunk; same rows, same tokens
    split = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=5, memory_budget_bytes=1)
    assert split.tokens == res.tokens
    np.testing.assert_allclose(np.concatenate(split.logprobs), np.concatenate(res.logprobs), atol=1e-5)
    other = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=6)
    assert other.tokens != res.tokens
    greedy = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=10, temperature=0.0, n=3),
                             eos_ids=())
    assert greedy.tokens[0] == greedy.tokens[1] == greedy.tokens[2]


def test_eos_is_kept_and_ends_the_row(root):
    _, cfg, params = _checkpoint("llama", root)
    prompts = _prompts([5, 7], seed=4)
    free = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=16, temperature=0.0), eos_ids=())
    stop = free.tokens[0][3]  # make the 4th greedy token of row 0 an EOS
    res = sample.generate(params, cfg, prompts, sample.SamplingParams(max_new_tokens=16, temperature=0.0),
                          eos_ids=(stop,))
    assert res.tokens[0] == free.tokens[0][:free.tokens[0].index(stop) + 1]
    assert res.finish_reasons[0] == "eos" and res.tokens[0][-1] == stop
    row1 = free.tokens[1]
    if stop in row1:
        assert res.tokens[1] == row1[:row1.index(stop) + 1]
    else:
        assert res.tokens[1] == row1 and res.finish_reasons[1] == "length"


def test_prompt_lengths_in_one_bucket_compile_once(root):
    _, cfg, params = _checkpoint("gemma", root)
    sp = sample.SamplingParams(max_new_tokens=4, temperature=0.0)
    sample.generate(params, cfg, _prompts([10, 12]), sp, eos_ids=())
    compiled = sampler._generate_chunk._cache_size()
    for lengths in ([20, 3], [31, 17], [32, 1]):  # all in the 32 bucket, same row bucket
        sample.generate(params, cfg, _prompts(lengths), sp, eos_ids=())
    assert sampler._generate_chunk._cache_size() == compiled
    sample.generate(params, cfg, _prompts([33, 50]), sp, eos_ids=())  # both in the 64 bucket: one more program
    assert sampler._generate_chunk._cache_size() == compiled + 1


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_sharded_greedy_equals_single_device(family, root):
    from pathlib import Path

    _, cfg, params = _checkpoint(family, root)
    mesh = model.make_mesh(data=2, fsdp=2, tensor=2)
    _, sharded = model.load_hf(Path(root) / family, mesh=mesh)
    prompts = _prompts([9, 3, 14, 6, 5], seed=8)
    sp = sample.SamplingParams(max_new_tokens=12, temperature=0.0, n=2)
    want = sample.generate(params, cfg, prompts, sp, eos_ids=())
    got = sample.generate(sharded, cfg, prompts, sp, eos_ids=())
    assert got.tokens == want.tokens
    np.testing.assert_allclose(np.concatenate(got.model_logprobs), np.concatenate(want.model_logprobs), atol=1e-4)


def test_bad_requests_are_named(root):
    _, cfg, params = _checkpoint("qwen3", root)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample.generate(params, cfg, [[5], []], sample.SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside \[0, 101\)"):
        sample.generate(params, cfg, [[5, 500]], sample.SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="top_p must be in"):
        sample.SamplingParams(top_p=0.0)


def test_unstacked_decode_equals_scanned(root):
    """The CPU decode path over per-layer weights gives the scanned path's tokens and log-probs."""
    _, cfg, params = _checkpoint("gemma3", root)
    prompts = _prompts([7, 12], seed=9)
    sp = sample.SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, n=2)
    a = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1, unstack_layers=False)
    b = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1, unstack_layers=True)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), atol=1e-5)
