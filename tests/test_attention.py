"""The attention kernels against the einsum reference: values and gradients (blockwise, splash in
Pallas interpret mode, blockwise decode), at the kernel and at the model level."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import model
from reasonax.model import attention, hf
from reasonax.model.config import FULL, SLIDING, ModelConfig
from tests import hf_reference as R


def _cfg(heads=4, kv_heads=2, head_dim=8, softcap=None, window=None, block=8):
    return ModelConfig(model_type="llama", vocab_size=16, hidden_size=heads * head_dim, intermediate_size=8,
                       num_layers=1, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                       attn_softcap=softcap, sliding_window=window, attention_block=block)


def _segments(T, rng):
    """Rows [4, T]: no padding; left padding; three packed examples then padding; right padding."""
    seg = np.ones((4, T), np.int32)
    seg[1, :rng.integers(1, T - 1)] = 0
    seg[2] = np.repeat([1, 2, 3, 0], [T // 3, T // 4, T // 4, T - T // 3 - 2 * (T // 4)])
    seg[3, T - T // 3:] = 0
    return seg


def _qkv(B, T, S, cfg, seed=0, scale=1.0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (B, T, cfg.num_heads, cfg.head_dim)) * scale
    k = jax.random.normal(ks[1], (B, S, cfg.num_kv_heads, cfg.head_dim)) * scale
    v = jax.random.normal(ks[2], (B, S, cfg.num_kv_heads, cfg.head_dim))
    return q, k, v


def _compare(cfg, spec, q, k, v, valid, impl, atol=2e-5):
    """Values on the query rows that see a key, and gradients of a loss on them, impl vs einsum."""
    w = jax.random.normal(jax.random.key(9), q.shape) * valid[:, :, None, None]

    def run(c):
        def loss(q, k, v):
            out = attention.attend(c, q, k, v, spec)
            return jnp.sum(out * w), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, want), g_want = run(cfg.replace(attention_impl="einsum"))
    (_, got), g_got = run(cfg.replace(attention_impl=impl))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=atol, rtol=1e-5)
    for a, b in zip(g_got, g_want):
        assert np.abs(np.asarray(b)).max() > 1e-3  # the gradient is not trivially zero
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("heads,kv_heads,softcap,window", [
    (4, 2, None, None),   # GQA, causal
    (4, 1, 50.0, 13),     # MQA, Gemma 2 softcap, a sliding window over more than one block
])
def test_blockwise_matches_einsum(heads, kv_heads, softcap, window):
    T, block = 37, 8  # T not a multiple of the block
    cfg = _cfg(heads, kv_heads, softcap=softcap, window=window, block=block)
    seg = _segments(T, np.random.default_rng(0))
    B = seg.shape[0]
    slots = jnp.arange(T, dtype=jnp.int32)
    spec = attention.MaskSpec(slots, slots, jnp.asarray(seg), jnp.asarray(seg), window=window, aligned=True)
    q, k, v = _qkv(B, T, T, cfg, scale=3.0 if softcap else 1.0)  # large scores: the softcap matters
    _compare(cfg, spec, q, k, v, seg != 0, "blockwise")


def test_blockwise_with_cache_slots_and_traced_window():
    """Per-row query slots (a chunk written after each row's cached columns, as prefill/decode
    into a cache), and the window switched on by a traced bool (a scanned layer type)."""
    B, T, S, window = 2, 11, 40, 9
    cfg = _cfg(4, 2, window=window, block=8)
    lengths = np.array([5, 29])
    q_slots = jnp.asarray(lengths[:, None] + np.arange(T)[None])
    k_seg = np.zeros((B, S), np.int32)
    for b, n in enumerate(lengths):
        k_seg[b, :n + T] = 1
    q_seg = np.ones((B, T), np.int32)
    q, k, v = _qkv(B, T, S, cfg, seed=1)
    spec = attention.MaskSpec(q_slots, jnp.arange(S, dtype=jnp.int32), jnp.asarray(q_seg), jnp.asarray(k_seg),
                              window=window, sliding=jnp.asarray(True))
    _compare(cfg, spec, q, k, v, q_seg != 0, "blockwise")


def test_blockwise_skips_blocks_outside_the_causal_and_window_range():
    slots = jnp.arange(64, dtype=jnp.int32)
    qs, ks = slots.reshape(1, 8, 8), slots.reshape(8, 8)
    lo, hi = attention._key_ranges(qs, ks, jnp.int32(attention._NO_WINDOW))
    np.testing.assert_array_equal(lo, [0] * 8)
    np.testing.assert_array_equal(hi, np.arange(1, 9))  # causal: key blocks up to the diagonal
    lo, hi = attention._key_ranges(qs, ks, jnp.int32(10))
    # query block i (slots 8i..8i+7) sees keys down to 8i - 9: key blocks i-2 (i >= 2) .. i
    np.testing.assert_array_equal(lo, np.maximum(np.arange(8) - 2, 0))
    np.testing.assert_array_equal(hi, np.arange(1, 9))


@pytest.mark.parametrize("tuple_blocks", [False, True])
def test_blockwise_decode_matches_einsum_decode(tuple_blocks):
    B, S, window = 3, 48, 20
    cfg = _cfg(4, 2, softcap=30.0, window=window, block=16)
    lengths = np.array([3, 30, 47])
    k_seg = np.zeros((B, S), np.int32)
    k_seg[0, :4] = 1
    k_seg[1, 10:31] = 1  # left padding before the row
    k_seg[2, :48] = 1
    q, k, v = _qkv(B, 1, S, cfg, seed=2, scale=2.0)
    spec = attention.MaskSpec(jnp.asarray(lengths[:, None]), jnp.arange(S, dtype=jnp.int32),
                              jnp.ones((B, 1), jnp.int32), jnp.asarray(k_seg), window=window)
    if tuple_blocks:
        k, v = (tuple(x[:, i:i + 16] for i in range(0, S, 16)) for x in (k, v))
    def run(impl):
        return jax.jit(lambda q, k, v: attention.attend(cfg.replace(attention_impl=impl), q, k, v, spec))(q, k, v)

    want, got = run("einsum"), run("blockwise")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_auto_picks_per_backend_and_length():
    cfg = _cfg(softcap=None)
    spec = attention.MaskSpec(jnp.arange(4), jnp.arange(4), jnp.ones((1, 4)), jnp.ones((1, 4)), aligned=True)
    cached = attention.MaskSpec(jnp.arange(4)[None], jnp.arange(4), jnp.ones((1, 4)), jnp.ones((1, 4)))
    long, short = attention.LONG_ROWS, attention.LONG_ROWS // 2
    assert attention.resolve_impl(cfg, short, short, spec, "cpu") == "einsum"
    assert attention.resolve_impl(cfg, long, long, spec, "cpu") == "blockwise"
    assert attention.resolve_impl(cfg, long, long, spec, "tpu") == "splash"
    assert attention.resolve_impl(cfg, long, long, cached, "tpu") == "blockwise"  # a cache: per-row slots
    assert attention.resolve_impl(cfg, long, long, spec, "gpu") == "cudnn"
    assert attention.resolve_impl(cfg.replace(attn_softcap=50.0), long, long, spec, "gpu") == "blockwise"
    assert attention.resolve_impl(cfg, 1, attention.LONG_DECODE - 1, cached, "cpu") == "einsum"
    assert attention.resolve_impl(cfg, 1, attention.LONG_DECODE, cached, "cpu") == "blockwise"


def test_splash_interpret_matches_einsum():
    """Splash in Pallas interpret mode (the TPU kernel's semantics on CPU): packed segments, GQA,
    softcap and a local mask; T padded up to the kernel's 128-row blocks."""
    T, window = 150, 40
    cfg = _cfg(4, 2, head_dim=128, softcap=20.0, window=window)
    seg = _segments(T, np.random.default_rng(0))[2:3]  # packed, then padding
    slots = jnp.arange(T, dtype=jnp.int32)
    q, k, v = _qkv(1, T, T, cfg, seed=3)
    spec = attention.MaskSpec(slots, slots, jnp.asarray(seg), jnp.asarray(seg), window=window, aligned=True)
    _compare(cfg, spec, q, k, v, seg != 0, "splash", atol=1e-4)


def test_model_blockwise_matches_einsum():
    """Whole-model logits and parameter gradients with blockwise attention (blocks of 8 over rows of
    21) equal the einsum reference's, left padding included: the tiny Gemma 2 alternates sliding
    and global layers (the layer type a scanned value, as Gemma 3's 5:1) and has the attention softcap."""
    cfg = hf.config_from_hf(R.tiny_hf_config("gemma2")).replace(attention_block=8, num_layers=2,
                                                                 layer_types=(SLIDING, FULL))
    assert cfg.attn_softcap
    params = R.random_jax_params(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(3, R.VOCAB, size=(2, 21)).astype(np.int32)
    seg = np.ones_like(tokens)
    seg[1, :6] = 0
    weight = seg[:, 1:] * seg[:, :-1]  # targets of real tokens

    @functools.partial(jax.jit, static_argnums=1)
    def loss(p, c):
        logits = model.forward(p, tokens, c, segment_ids=seg)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.sum(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0] * weight), logits

    (_, want), g0 = jax.value_and_grad(loss, has_aux=True)(params, cfg.replace(attention_impl="einsum"))
    (_, got), g1 = jax.value_and_grad(loss, has_aux=True)(params, cfg.replace(attention_impl="blockwise"))
    np.testing.assert_allclose(np.asarray(got)[seg == 1], np.asarray(want)[seg == 1], atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g1, g0)


def test_cudnn_refuses_softcap_naming_the_field():
    with pytest.raises(ValueError, match="attention softcap is not supported by attention_impl='cudnn'"):
        _cfg(softcap=50.0).replace(attention_impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl 'xla' not in"):
        _cfg().replace(attention_impl="xla")
