"""The rollout engine against transformers' generate, a full forward, a cache-free reference and exact probabilities."""

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
    tok, lp, model_lp = jax.jit(sampler.draw_tokens, static_argnames="sp")(logits, keys, jnp.int32(0), sp=sp)
    tok = np.asarray(tok)
    want = _exact(sp)
    freq = np.bincount(tok, minlength=len(PROBS)) / draws
    se = np.sqrt(want * (1 - want) / draws)
    assert np.all(np.abs(freq - want) <= 3 * se + 1e-12), (freq, want)
    assert np.all(freq[want == 0] == 0)
    np.testing.assert_allclose(np.asarray(lp), np.log(want[tok]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model_lp), np.log(PROBS[tok]), atol=1e-5)


def test_argmax_is_jnp_argmax_with_first_index_ties():
    rng = np.random.default_rng(0)
    for V in (262144, 151936, 101, 4096):
        x = rng.normal(size=(5, V)).astype(np.float32)
        x[1, [3, V // 2, V - 1]] = 50.0  # ties: the first index wins
        x[2, :] = 1.0  # all equal
        x[3, V - 1] = 60.0  # the last chunk
        x[4, [0, V - 2]] = -np.inf
        np.testing.assert_array_equal(np.asarray(sampler.argmax(jnp.asarray(x))), np.argmax(x, axis=-1))
    assert np.argmax(x, -1)[1] == 3


def test_sampling_distribution_hand_cases_of_docs_algorithms():
    """docs/ALGORITHMS.md section 1: greedy ties, temperature, top-p and min-p on hand cases."""
    assert int(sampler.argmax(jnp.asarray([[1.0, 3.0, 3.0]]))[0]) == 1

    def probs(logits, **kw):
        sp = sample.SamplingParams(temperature=kw.pop("temperature", 1.0), **kw)
        return np.asarray(jax.nn.softmax(sampler.sampling_logits(jnp.asarray([logits], jnp.float32), sp)))[0]

    np.testing.assert_allclose(probs([0.0, np.log(2.0)], temperature=0.5), [0.2, 0.8], rtol=1e-6)
    p = np.log([0.1, 0.6, 0.3])
    np.testing.assert_allclose(probs(p, top_p=0.5), [0, 1, 0], atol=1e-7)
    np.testing.assert_allclose(probs(p, top_p=0.7), [0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(probs(p, min_p=0.4), [0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(probs(p, min_p=0.6), [0, 1, 0], atol=1e-7)


def _fmix32(x):
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    return x ^ (x >> np.uint64(16))


def _race_noise(seeds, vocab):
    """docs/ALGORITHMS.md's Exp(1) noise in numpy (uint64 arithmetic, float64): seeds [B, >= 2] uint32."""
    i = np.arange(vocab, dtype=np.uint64)[None]
    s = np.asarray(seeds).astype(np.uint64)
    h = _fmix32((_fmix32(i ^ s[:, :1]) + s[:, 1:2]) & np.uint64(0xFFFFFFFF))
    return -np.log(((h >> np.uint64(8)).astype(np.float64) + 0.5) / 2 ** 24)


def test_race_hand_cases_of_docs_algorithms():
    """docs/ALGORITHMS.md section 1: the token with the largest p_i / E_i wins; no mass, no win;
    the noise is the counter hash of the docs, computed here in numpy (uint64 arithmetic)."""
    def win(probs, E):
        tok, lse = sampler.race(jnp.log(jnp.asarray([probs], jnp.float32)), jnp.asarray([E], jnp.float32))
        np.testing.assert_allclose(float(lse[0]), np.log(np.sum(probs)), atol=1e-6)
        return int(tok[0])

    p = [0.1, 0.6, 0.3]
    assert win(p, [1.0, 1.0, 1.0]) == 1  # equal noise: the most likely token
    assert win(p, [0.01, 1.0, 1.0]) == 0  # 0.1 / 0.01 = 10 > 0.6
    assert win(p, [1.0, 3.0, 1.0]) == 2  # 0.3 > 0.6 / 3 = 0.2
    assert win([0.5, 0.0, 0.5], [1.0, 1e-30, 2.0]) == 0  # the token without mass never wins
    seeds = np.asarray([[1, 2], [0xDEADBEEF, 7]], np.uint32)
    np.testing.assert_allclose(np.asarray(sampler.race_noise(jnp.asarray(seeds), 5)), _race_noise(seeds, 5), rtol=1e-6)


@pytest.mark.parametrize("sp", [sample.SamplingParams(temperature=1.0),
                                sample.SamplingParams(temperature=0.7, top_k=5, top_p=0.8)])
def test_draws_are_the_race_with_the_row_key_folded_with_the_step(sp):
    """The engine's draw rule: token t of a row wins the exponential race of its masked
    distribution against race_noise(the key data of fold_in(row key, t)); checked in float64."""
    logits = jax.random.normal(jax.random.key(3), (64, 300)) * 3
    keys = sampler.row_keys(2, np.arange(64), np.arange(64) % 3)
    steps = jnp.arange(64, dtype=jnp.int32) * 7
    tok, lp, model_lp = jax.jit(sampler.draw_tokens, static_argnames="sp")(logits, keys, steps, sp=sp)
    masked = np.asarray(sampler.sampling_logits(logits, sp), np.float64)
    seeds = np.asarray(jax.vmap(lambda k, t: jax.random.key_data(jax.random.fold_in(k, t)))(keys, steps))
    score = np.exp(masked - masked.max(-1, keepdims=True)) / _race_noise(seeds, 300)
    np.testing.assert_array_equal(np.asarray(tok), np.argmax(score, -1))
    rows = np.arange(64)
    tok = np.asarray(tok)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(jax.nn.log_softmax(jnp.asarray(masked, jnp.float32)))[rows, tok],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(model_lp), np.asarray(jax.nn.log_softmax(logits))[rows, tok], atol=1e-5)


def _reference_rows(params, cfg, prompts, sp, eos, seed, key_ids):
    """The sampler's definition, row by row without a cache: a full forward over prompt + tokens so far,
    then draw_tokens with the row's key and the token's index."""
    T = max(map(len, prompts)) + sp.max_new_tokens
    out = []
    for i, p in enumerate(prompts):
        keys = sampler.row_keys(seed, np.full(sp.n, key_ids[i]), np.arange(sp.n))
        for j in range(sp.n):
            seq = list(p)
            toks = []
            while len(toks) < sp.max_new_tokens:
                ids = np.zeros((1, T), np.int32)
                seg = np.zeros((1, T), np.int32)
                ids[0, :len(seq)], seg[0, :len(seq)] = seq, 1
                logits = model.forward(params, ids, cfg, segment_ids=seg)[:, len(seq) - 1]
                tok = int(sampler.draw_tokens(logits, keys[j:j + 1], jnp.int32(len(toks)), sp)[0][0])
                toks.append(tok)
                seq.append(tok)
                if tok in eos:
                    break
            out.append(toks)
    return out


def test_engine_equals_the_reference_whatever_the_slots_and_arrival_order(root):
    """Continuous batching is invisible in the output: every slot count (one slot, fewer slots
    than samples, more), block size and arrival order gives the reference's tokens for every row,
    with rows of very different lengths (EOS) refilling slots mid-run."""
    _, cfg, params = _checkpoint("qwen3", root)
    prompts = _prompts([6, 30, 3, 12, 7], seed=2)
    sp = sample.SamplingParams(max_new_tokens=14, temperature=1.0, n=3)
    eos = (4, 9, 17)
    want = _reference_rows(params, cfg, prompts, sp, eos, seed=5, key_ids=list(range(5)))
    lengths = sorted({len(t) for t in want})
    assert len(lengths) >= 4 and lengths[0] < 6 and lengths[-1] == 14  # heavy-tailed rows
    for slots, block in ((1, 16), (2, 3), (4, 1), (8, 5), (32, 16)):
        res = sample.generate(params, cfg, prompts, sp, eos_ids=eos, seed=5, num_slots=slots, block_steps=block)
        assert res.tokens == want, (slots, block)
        assert res.stats["num_slots"] == slots
        assert res.finish_reasons == ["eos" if t[-1] in eos else "length" for t in want]
    # arrival order: the prompts reversed, with their key ids, give the same rows
    order = [4, 3, 2, 1, 0]
    rev = sample.generate(params, cfg, [prompts[i] for i in order], sp, eos_ids=eos, seed=5, key_ids=order,
                          num_slots=4, block_steps=4)
    assert rev.tokens == [want[i * 3 + j] for i in order for j in range(3)]
    assert rev.prompt_index == [i for i in range(5) for _ in range(3)] and rev.sample_index == [0, 1, 2] * 5
    other = sample.generate(params, cfg, prompts, sp, eos_ids=eos, seed=6)
    assert other.tokens != want


def test_slot_accounting_and_refill(root):
    """Slot-steps add up: live slot-steps are the decode steps the rows needed (every token but the
    first, drawn at insertion); refilling, then draining into fewer slots, takes fewer slot-steps
    than one static batch."""
    _, cfg, params = _checkpoint("llama", root)
    prompts = _prompts([5, 9, 4, 11, 6, 8, 3, 10], seed=3)
    sp = sample.SamplingParams(max_new_tokens=20, temperature=1.0, n=2)
    free = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1)
    eos = tuple(sorted({t[k] for t, k in zip(free.tokens, range(1, 17))}))[:6]  # rows end at varied lengths
    res = sample.generate(params, cfg, prompts, sp, eos_ids=eos, seed=1, num_slots=4, block_steps=2)
    st = res.stats
    assert st["rows_done"] == st["rows"] == 16 and st["tokens"] == res.generated_tokens == st["drawn"]
    assert st["live_slot_steps"] == sum(len(t) - 1 for t in res.tokens)
    assert st["live_slot_steps"] <= st["slot_steps"] and st["shrinks"] >= 1
    static = len(res.tokens) * max(map(len, res.tokens))  # every row waits for the longest, all at once
    assert st["slot_steps"] < static
    assert st["prefills"] >= 1 and st["prefill_tokens"] == sum(map(len, prompts))


class _CharTokenizer:
    """id -> one character: ids divisible by 5 are newlines, the rest letters."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("\n" if i % 5 == 0 else chr(97 + i % 26) for i in ids)


def test_stop_strings_end_rows_after_the_token_that_completes_them(root):
    """With a stop string the engine gives each row the free-running row cut after the token that
    completes the stop (finish reason "stop"), here a blank line written as two tokens; rows
    without one are unchanged."""
    from reasonax.sample import StopStrings

    _, cfg, params = _checkpoint("gemma", root)
    prompts = _prompts([4, 8, 6], seed=6)
    sp = sample.SamplingParams(max_new_tokens=30, temperature=1.0, n=4)
    free = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=2)
    stop = StopStrings(_CharTokenizer(), ("\n\n",))
    cuts = [stop.cut(t) for t in free.tokens]
    assert sum(c is not None for c in cuts) >= 3 and any(c is None for c in cuts)
    for block in (1, 4, 16):
        res = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=2, stop=stop, num_slots=4, block_steps=block)
        for row, c, got, reason in zip(free.tokens, cuts, res.tokens, res.finish_reasons):
            assert got == (row if c is None else row[:c])
            assert reason == ("length" if c is None else "stop")
            assert c is None or got[-1] % 5 == 0 == got[-2] % 5  # the two newlines are kept
        assert res.stats["drawn"] - res.stats["tokens"] <= block * len(res.tokens)


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


def test_requests_in_the_same_buckets_compile_nothing_new(root):
    from reasonax.sample import engine

    _, cfg, params = _checkpoint("gemma", root)
    sp = sample.SamplingParams(max_new_tokens=4, temperature=0.0)
    # the 32 bucket (short rows and the bucket's longest): every attention length the bucket needs
    for lengths in ([10, 12], [31, 17]):
        sample.generate(params, cfg, _prompts(lengths), sp, eos_ids=(), num_slots=2)
    programs = [f._cache_size() for f in (engine._prefill, engine._insert, engine._decode_block)]
    for lengths in ([20, 3], [9, 2], [32, 1]):  # all in the 32 bucket, same slot count
        sample.generate(params, cfg, _prompts(lengths), sp, eos_ids=(), num_slots=2)
    assert [f._cache_size() for f in (engine._prefill, engine._insert, engine._decode_block)] == programs
    sample.generate(params, cfg, _prompts([33, 50]), sp, eos_ids=(), num_slots=2)  # the 64 bucket
    assert engine._prefill._cache_size() == programs[0] + 1


def test_slot_count_follows_the_kv_budget(root):
    from reasonax.model.cache import kv_bytes_per_row
    from reasonax.sample import engine

    _, cfg, params = _checkpoint("qwen2", root)
    C = engine.cache_columns(7, 8, engine.BLOCK if jax.default_backend() == "cpu" else 1)
    assert C == 128 or jax.default_backend() != "cpu"  # the 32 bucket + 8, in whole 128-column blocks
    per_slot = kv_bytes_per_row(cfg, C, "float32") + engine.step_bytes_per_slot(cfg)
    assert engine.plan_slots(cfg, C, "float32", 5 * per_slot) == 4  # a power of two that fits
    assert engine.plan_slots(cfg, C, "float32", 5 * per_slot, batch_shards=2) == 8  # per device
    assert engine.plan_slots(cfg, C, "float32", 100 * per_slot, rows=3) == 4  # no more than the rows need
    assert engine.plan_slots(cfg, C, "float32", 1) == 1
    res = sample.generate(params, cfg, _prompts([5, 6, 7]), sample.SamplingParams(max_new_tokens=8, n=3),
                          eos_ids=(), kv_budget_bytes=5 * per_slot)
    assert res.stats["num_slots"] == 4 and res.stats["kv_bytes_per_device"] == 4 * kv_bytes_per_row(cfg, C, "float32")
    assert res.stats["cache_columns"] == C


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
    with pytest.raises(ValueError, match="num_slots must be >= 1, got 0"):
        sample.generate(params, cfg, [[5]], sample.SamplingParams(max_new_tokens=2), num_slots=0)
    with pytest.raises(ValueError, match="block_steps must be >= 1, got 0"):
        sample.generate(params, cfg, [[5]], sample.SamplingParams(max_new_tokens=2), block_steps=0)


def test_unstacked_decode_equals_scanned(root):
    """The CPU decode path over per-layer weights gives the scanned path's tokens and log-probs."""
    _, cfg, params = _checkpoint("gemma3", root)
    prompts = _prompts([7, 12], seed=9)
    sp = sample.SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, n=2)
    a = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1, unstack_layers=False)
    b = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1, unstack_layers=True)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The prefix cache (blocks of 8 tokens here; the tiny models' sliding window is 5)

_PB = 8  # prefix-cache block
_PREFIX_SP = sample.SamplingParams(max_new_tokens=8, temperature=1.0, n=2)


def _shared_prefix_prompts(seed):
    """Prompts sharing prefixes of every length relative to the block: shorter than a block, exactly
    one block, several blocks plus a remainder, a prompt that is exactly blocks, and repeats."""
    rng = np.random.default_rng(seed)
    head = rng.integers(3, R.VOCAB, size=3 * _PB + 5).tolist()
    tail = lambda n: rng.integers(3, R.VOCAB, size=n).tolist()  # noqa: E731
    return [head[:5] + tail(4), head[:_PB] + tail(3), head[:2 * _PB + 3] + tail(6), head[:2 * _PB],
            head[:_PB] + tail(9), head + tail(2), head[:2 * _PB + 3] + tail(1), head[:5] + tail(7), head + tail(2)]


def _cache_blocks(cfg, blocks):
    """A PrefixCache holding `blocks` blocks of the tiny model."""
    from reasonax.sample import engine

    per_block = engine.PrefixCache(1, _PB).block_bytes(cfg, "float32")
    return engine.PrefixCache(blocks * per_block / (1 << 30), _PB)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_prefix_cache_gives_the_tokens_of_no_cache(family, root):
    """With a prefix cache the rows are token for token those without one (sampled, every prefix
    length relative to the block, a sliding window across the cached boundary for gemma3), in a
    cold call, a warm one, and under eviction pressure (a pool of 3 blocks); the prompt tokens
    split into cached + prefilled, with few compiled programs."""
    from reasonax.sample import engine

    _, cfg, params = _checkpoint(family, root)
    prompts = _shared_prefix_prompts(seed=12)
    sp = _PREFIX_SP
    want = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=4, num_slots=4)
    programs = engine._prefill._cache_size()
    cache = _cache_blocks(cfg, 64)
    total = sum(map(len, prompts))
    for call in ("cold", "warm"):
        got = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=4, num_slots=4, prefix_cache=cache,
                              params_version=0)
        assert got.tokens == want.tokens, call
        np.testing.assert_allclose(np.concatenate(got.model_logprobs), np.concatenate(want.model_logprobs),
                                   atol=1e-5)
        st = got.stats
        assert st["cached_tokens"] + st["prefill_tokens"] == total and st["cached_tokens"] > 0, call
    # warm: every usable whole block is cached (and some prompts share the start of another's next block)
    usable = sum((len(p) - 1) // _PB * _PB for p in prompts)
    assert usable <= st["cached_tokens"] < total - len(prompts) + 1 and st["prefix_hit_rate"] > usable / total / 2
    small = _cache_blocks(cfg, 3)
    tight = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=4, num_slots=4, prefix_cache=small,
                            params_version=0)
    assert tight.tokens == want.tokens and small.evictions > 0 and tight.stats["cached_tokens"] > 0
    assert engine._prefill._cache_size() - programs <= 4  # continuation buckets x prompt batch buckets


def test_prefix_cache_shares_a_prefix_to_the_token(root):
    """A prefix that ends inside a cached block, or is shorter than one, is read from the cache to
    the token (the matching head of the block), and the rows are those without a cache."""
    _, cfg, params = _checkpoint("qwen3", root)
    a = _prompts([2 * _PB + 4], seed=15)[0]  # whole blocks 0 and 1 get cached
    b = a[:_PB + 3] + _prompts([6], seed=16)[0]  # block 0, then 3 tokens of a's block 1
    c = a[:5] + _prompts([4], seed=17)[0]  # 5 tokens of a's block 0
    cache = _cache_blocks(cfg, 64)
    sample.generate(params, cfg, [a], _PREFIX_SP, eos_ids=(), num_slots=4, prefix_cache=cache, params_version=0)
    got = sample.generate(params, cfg, [b, c], _PREFIX_SP, eos_ids=(), num_slots=4, prefix_cache=cache,
                          params_version=0)
    assert got.stats["cached_tokens"] == (_PB + 3) + 5
    assert got.tokens == sample.generate(params, cfg, [b, c], _PREFIX_SP, eos_ids=(), num_slots=4).tokens


def test_prefix_cache_on_8_devices_equals_one_device(root):
    """Params sharded over 8 fake devices (data x fsdp x tensor), with the prefix cache: the
    single-device rows without one."""
    from pathlib import Path

    _, cfg, params = _checkpoint("gemma3", root)
    _, sharded = model.load_hf(Path(root) / "gemma3", mesh=model.make_mesh(data=2, fsdp=2, tensor=2))
    prompts = _shared_prefix_prompts(seed=12)
    want = sample.generate(params, cfg, prompts, _PREFIX_SP, eos_ids=(), seed=4, num_slots=4)
    cache = _cache_blocks(cfg, 4)  # evictions too
    for _ in range(2):
        got = sample.generate(sharded, cfg, prompts, _PREFIX_SP, eos_ids=(), seed=4, num_slots=4, prefix_cache=cache,
                              params_version=7)
        assert got.tokens == want.tokens and got.stats["cached_tokens"] > 0


def test_a_new_params_version_empties_the_prefix_cache(root):
    """KV cached under one params version is never read under another: after a weight update with
    a new version the rows are the new weights' own; had the version stayed (the misuse the
    version prevents), the stale prefix KV would change them. Bad uses are named."""
    from reasonax.sample import engine

    _, cfg, params = _checkpoint("qwen3", root)
    prompts, sp = _shared_prefix_prompts(seed=12), _PREFIX_SP  # the programs of the tests above
    updated = jax.tree.map(lambda a: a * 1.3, params)
    want = sample.generate(updated, cfg, prompts, sp, eos_ids=(), num_slots=4)
    cache = _cache_blocks(cfg, 64)
    sample.generate(params, cfg, prompts, sp, eos_ids=(), num_slots=4, prefix_cache=cache, params_version=1)
    got = sample.generate(updated, cfg, prompts, sp, eos_ids=(), num_slots=4, prefix_cache=cache, params_version=2)
    assert got.tokens == want.tokens
    stale = sample.generate(params, cfg, prompts, sp, eos_ids=(), num_slots=4, prefix_cache=cache,
                            params_version=1)  # back to version 1: the cache holds version 2's KV, so it empties
    assert stale.tokens == sample.generate(params, cfg, prompts, sp, eos_ids=(), num_slots=4).tokens
    misuse = sample.generate(updated, cfg, prompts, sp, eos_ids=(), num_slots=4, prefix_cache=cache,
                             params_version=1)  # new weights, old version: reads version 1's KV
    assert misuse.tokens != want.tokens
    with pytest.raises(ValueError, match="prefix_cache needs params_version"):
        sample.generate(params, cfg, prompts, sp, prefix_cache=cache)
    with pytest.raises(ValueError, match="params_version must be an int"):
        sample.generate(params, cfg, prompts, sp, prefix_cache=cache, params_version=True)
    _, other_cfg, other = _checkpoint("llama", root)
    with pytest.raises(ValueError, match="another model's KV"):
        sample.generate(other, other_cfg, [[5, 6]], sp, prefix_cache=cache, params_version=1)
    with pytest.raises(ValueError, match="leave nothing of kv_budget_bytes"):
        sample.generate(params, cfg, prompts, sp, prefix_cache=engine.PrefixCache(1.0), params_version=0,
                        kv_budget_bytes=1 << 20)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_chunked_prefill_gives_the_tokens_of_one_prefill(family, root):
    """Prompts longer than prefill_chunk prefill alone, chunk by chunk (each chunk attending to the
    KV of the ones before; gemma3's sliding window of 5 crosses the chunk boundaries): the rows are
    those of one prefill per prompt, with and without a prefix cache in front of the chunks."""
    _, cfg, params = _checkpoint(family, root)
    prompts = _shared_prefix_prompts(seed=12)  # 9 to 34 tokens
    want = sample.generate(params, cfg, prompts, _PREFIX_SP, eos_ids=(), seed=4, num_slots=4)
    got = sample.generate(params, cfg, prompts, _PREFIX_SP, eos_ids=(), seed=4, num_slots=4, prefill_chunk=7)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(np.concatenate(got.model_logprobs), np.concatenate(want.model_logprobs), atol=1e-5)
    assert got.stats["prefill_chunks"] >= sum((len(p) - 1) // 7 for p in prompts) // 2
    assert got.stats["prefill_tokens"] == sum(map(len, prompts))
    cache = _cache_blocks(cfg, 64)
    chunks = []
    for call in ("cold", "warm"):
        hit = sample.generate(params, cfg, prompts, _PREFIX_SP, eos_ids=(), seed=4, num_slots=4, prefill_chunk=7,
                              prefix_cache=cache, params_version=0)
        assert hit.tokens == want.tokens, call
        chunks.append(hit.stats["prefill_chunks"])
    assert hit.stats["cached_tokens"] > 0 and chunks[0] > 0  # cold: chunks after cached prefixes; warm: fewer
