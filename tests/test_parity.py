"""Logits parity with transformers (eager attention, float32) for a tiny random model of each family."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import model
from tests import hf_reference as R

TOL = 1e-4


@functools.cache
def _checkpoint(family: str, tmp_root: str):
    from pathlib import Path

    path = Path(tmp_root) / family
    ref = R.save_hf_model(family, path, seed=hash(family) % 1000)
    cfg, params = model.load_hf(path)
    return ref, cfg, params


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("parity"))


def _tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(3, R.VOCAB, size=shape).astype(np.int32)


@pytest.mark.parametrize("family", R.FAMILIES)
def test_full_sequence_logits(family, tmp_root):
    ref, cfg, params = _checkpoint(family, tmp_root)
    tokens = _tokens((2, 3 * R.WINDOW))  # longer than the sliding window
    want = R.hf_logits(ref, tokens)
    got = np.asarray(model.forward(params, tokens, cfg))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    assert np.abs(want).max() > 0.5  # logits are not trivially small


@pytest.mark.parametrize("family", R.FAMILIES)
def test_cached_decode_matches_full_forward(family, tmp_root):
    """Prefill longer than the window, then one token at a time, against transformers' full forward."""
    ref, cfg, params = _checkpoint(family, tmp_root)
    prefill, steps = 2 * R.WINDOW - 1, 5
    tokens = _tokens((2, prefill + steps), seed=1)
    want = R.hf_logits(ref, tokens)
    cache = model.init_cache(cfg, batch=2, max_len=32)
    logits, cache = model.decode(params, tokens[:, :prefill], cfg, cache)
    got = [np.asarray(logits)]
    for t in range(prefill, prefill + steps):
        logits, cache = model.decode(params, tokens[:, t:t + 1], cfg, cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    np.testing.assert_array_equal(np.asarray(cache.lengths), [prefill + steps] * 2)
    np.testing.assert_array_equal(np.asarray(cache.next_pos), [prefill + steps] * 2)


@pytest.mark.parametrize("family", R.FAMILIES)
def test_left_padded_batch(family, tmp_root):
    """Rows of different lengths, left-padded, give each row's unpadded logits on valid positions."""
    ref, cfg, params = _checkpoint(family, tmp_root)
    lengths = [3 * R.WINDOW, 7, 2]
    T = max(lengths)
    rows = [_tokens((1, n), seed=10 + i)[0] for i, n in enumerate(lengths)]
    tokens = np.zeros((len(rows), T), np.int32)
    segments = np.zeros((len(rows), T), np.int32)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = r
        segments[i, T - len(r):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
    got = np.asarray(model.forward(params, tokens, cfg, positions=positions, segment_ids=segments))
    got_default_pos = np.asarray(model.forward(params, tokens, cfg, segment_ids=segments))
    # transformers on the same padded batch, with its attention mask
    want_padded = R.hf_logits(ref, tokens, attention_mask=segments, position_ids=positions)
    for i, r in enumerate(rows):
        want = R.hf_logits(ref, r[None])[0]
        assert np.abs(got[i, T - len(r):] - want).max() <= TOL
        assert np.abs(got_default_pos[i, T - len(r):] - want).max() <= TOL
        assert np.abs(want_padded[i, T - len(r):] - want).max() <= TOL


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_left_padded_cached_decode(family, tmp_root):
    """Left-padded prefill into the cache, then decode: each row equals its own unpadded forward."""
    ref, cfg, params = _checkpoint(family, tmp_root)
    lengths, steps = [2 * R.WINDOW, 3], 4
    T = max(lengths)
    rows = [_tokens((1, n + steps), seed=20 + i)[0] for i, n in enumerate(lengths)]
    tokens = np.zeros((2, T), np.int32)
    segments = np.zeros((2, T), np.int32)
    for i, (r, n) in enumerate(zip(rows, lengths)):
        tokens[i, T - n:] = r[:n]
        segments[i, T - n:] = 1
    cache = model.init_cache(cfg, batch=2, max_len=T + steps)
    logits, cache = model.decode(params, tokens, cfg, cache, segment_ids=segments)
    outs = [[np.asarray(logits[i, -1])] for i in range(2)]
    for s in range(steps - 1):
        nxt = np.array([[r[n + s]] for r, n in zip(rows, lengths)], np.int32)
        logits, cache = model.decode(params, nxt, cfg, cache)
        for i in range(2):
            outs[i].append(np.asarray(logits[i, 0]))
    for i, (r, n) in enumerate(zip(rows, lengths)):
        want = R.hf_logits(ref, r[None, :n + steps - 1])[0, n - 1:]
        assert np.abs(np.stack(outs[i]) - want).max() <= TOL


def test_packed_segments_do_not_attend_across():
    """Two examples packed in one row give the same logits as each alone."""
    cfg = model.get_preset("qwen3-0.6b").replace(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                 num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    params = model.init_params(cfg, __import__("jax").random.key(0), std=0.3)
    a, b = _tokens((1, 5), 3) % 64, _tokens((1, 6), 4) % 64
    packed = np.concatenate([a, b], axis=1)
    seg = np.array([[1] * 5 + [2] * 6], np.int32)
    got = np.asarray(model.forward(params, jnp.asarray(packed), cfg, segment_ids=seg))
    np.testing.assert_allclose(got[:, :5], model.forward(params, a, cfg), atol=1e-5)
    np.testing.assert_allclose(got[:, 5:], model.forward(params, b, cfg), atol=1e-5)


@pytest.mark.parametrize("family", R.FAMILIES)
def test_continued_prefill_equals_full_prefill(family, tmp_root):
    """Prefill that continues a cached prefix (what the rollout engine's prefix cache runs): rows
    whose prefixes end at different columns, right-padded continuations attending to the cached
    columns and causally to each other, the sliding window across the boundary, give the full
    forward's logits within 1e-5 (float32), with the einsum kernel, and the blockwise kernel (what
    long prompts run) on the sliding-window families."""
    import dataclasses

    _, cfg, params = _checkpoint(family, tmp_root)
    prefix, rest = [2 * R.WINDOW, 3], [R.WINDOW + 2, 2 * R.WINDOW + 1]
    rows = [_tokens((p + r,), seed=30 + i) for i, (p, r) in enumerate(zip(prefix, rest))]

    def right_padded(chunks, T=2 * R.WINDOW + 1):  # one width for both chunks: one compiled decode
        tokens, segments = np.zeros((len(chunks), T), np.int32), np.zeros((len(chunks), T), np.int32)
        for i, c in enumerate(chunks):
            tokens[i, :len(c)], segments[i, :len(c)] = c, 1
        return tokens, segments

    tokens, segments = right_padded(rows, T=max(map(len, rows)))
    want = np.asarray(model.forward(params, tokens, cfg, segment_ids=segments))
    for impl in ("einsum", "blockwise") if cfg.sliding_window else ("einsum",):
        c = dataclasses.replace(cfg, attention_impl=impl, attention_block=4)
        cache = model.init_cache(c, batch=2, max_len=32)
        tokens, segments = right_padded([r[:p] for r, p in zip(rows, prefix)])
        _, cache = model.decode(params, tokens, c, cache, segment_ids=segments)
        # the rows continue after their own prefixes (decode donates the cache: two arrays)
        cache = dataclasses.replace(cache, lengths=jnp.asarray(prefix, jnp.int32),
                                    next_pos=jnp.asarray(prefix, jnp.int32))
        tokens, segments = right_padded([r[p:] for r, p in zip(rows, prefix)])
        logits, cache = model.decode(params, tokens, c, cache, segment_ids=segments)
        for i, (p, r) in enumerate(zip(prefix, rest)):
            np.testing.assert_allclose(np.asarray(logits[i, :r]), want[i, p:p + r], atol=1e-5, rtol=0, err_msg=impl)
