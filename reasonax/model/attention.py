"""Attention: masks from slot indices and segment ids, and the attention kernels.

Einsum letters: B batch, T query positions, S key positions, N query heads, K kv heads,
G query heads per kv head (N = K * G), H head dim.

Masking is by *slot* (index in the sequence / KV cache), segment id (0 = padding or empty
cache slot; packed examples get distinct ids) and sliding window (q_slot - k_slot < window).
For left-padded rows and packed segments slot distances equal position distances, so this is
the mask transformers builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonax.model.config import ModelConfig

_MASKED = float(jnp.finfo(jnp.float32).min)


def make_mask(q_slots: jax.Array, k_slots: jax.Array, q_seg: jax.Array, k_seg: jax.Array,
              window: int | None = None) -> jax.Array:
    """Boolean [B, T, S]: causal, same non-zero segment, and (optionally) within the window.

    q_slots [T] (shared by the rows) or [B, T] (each row writes at its own cache column), k_slots [S].
    """
    q = q_slots if q_slots.ndim == 2 else q_slots[None]
    causal = k_slots[None, None, :] <= q[:, :, None]
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    mask = causal & same
    if window:
        mask &= (q[:, :, None] - k_slots[None, None, :]) < window
    return mask


def attend(cfg: ModelConfig, q: jax.Array, k, v, mask: jax.Array) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] (or tuples of column blocks [B,S_i,K,H], concatenated along S),
    mask [B,T,S] -> [B,T,N,H]."""
    if cfg.attention_impl == "einsum":
        if q.shape[1] == 1:
            return _attend_decode(cfg, q, k, v, mask)
        return _attend_einsum(cfg, q, *(jnp.concatenate(x, axis=1) if isinstance(x, tuple) else x for x in (k, v)),
                              mask)
    k, v = (jnp.concatenate(x, axis=1) if isinstance(x, tuple) else x for x in (k, v))
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=cfg.attn_scale,
                                        implementation=None if cfg.attention_impl == "xla" else "cudnn")


def _finish_scores(cfg: ModelConfig, scores, mask):
    scores = scores * cfg.attn_scale
    if cfg.attn_softcap:
        scores = jnp.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    return jnp.where(mask, scores, _MASKED)


def _attend_einsum(cfg: ModelConfig, q, k, v, mask):
    """Reference path: plain einsums, scores and softmax in float32, softcap before the mask."""
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)  # query head n uses kv head n // G, as transformers' repeat_kv
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(_finish_scores(cfg, scores, mask[:, None, None]), axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(B, T, N, H)


def _attend_decode(cfg: ModelConfig, q, k, v, mask):
    """One query per row (a decode step): the same math as _attend_einsum, with the keys as the
    large operand of the score matmul ('BSKH,BKGH->BKSG'): XLA's CPU dot runs that 5-10x faster
    than 'BKGH,BSKH->BKGS', whose M is only the G query heads of a kv head. k / v may be tuples of
    column blocks (separate arrays, so a decode reading the first blocks of a longer cache copies
    nothing)."""
    B, _, N, H = q.shape
    ks, vs = (x if isinstance(x, tuple) else (x,) for x in (k, v))
    K = ks[0].shape[2]
    q = q.reshape(B, K, N // K, H)
    scores = [jnp.swapaxes(jnp.einsum("BSKH,BKGH->BKSG", kb, q, preferred_element_type=jnp.float32), 2, 3)
              for kb in ks]
    scores = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)  # [B, K, G, S]
    probs = jax.nn.softmax(_finish_scores(cfg, scores, mask[:, :, None, :]), axis=-1).astype(vs[0].dtype)
    out, lo = 0, 0
    for vb in vs:
        out = out + jnp.einsum("BKGS,BSKH->BKGH", probs[..., lo:lo + vb.shape[1]], vb)
        lo += vb.shape[1]
    return out.reshape(B, 1, N, H)
