"""Norms, rotary embeddings and the gated MLP as pure functions.

Einsum letters: B batch, T query positions, D hidden, F mlp hidden, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model.config import ModelConfig, RopeConfig


def rms_norm(x: jax.Array, w: jax.Array, eps: float, plus_one: bool) -> jax.Array:
    """RMSNorm over the last axis, statistics in float32.

    plus_one (Gemma): (x_hat * (1 + w)) computed in float32, then cast to x.dtype.
    otherwise (Llama/Qwen): w * x_hat.astype(x.dtype).
    """
    xf = x.astype(jnp.float32)
    x_hat = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if plus_one:
        return (x_hat * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * x_hat.astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float32) for one RoPE config."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.type == "linear":
        inv_freq = inv_freq / np.float32(rope.factor)
    elif rope.type == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = ((rope.original_max_position_embeddings / wavelen - rope.low_freq_factor)
                  / (rope.high_freq_factor - rope.low_freq_factor))
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(positions: jax.Array, rope: RopeConfig, head_dim: int, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim // 2] for integer positions [B, T], in `dtype`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(rope, head_dim))
    return jnp.cos(freqs).astype(dtype), jnp.sin(freqs).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, heads, H] with half-split pairs (i, i + H/2), as transformers does."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    if cfg.activation == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.silu(x)


def mlp(cfg: ModelConfig, p: dict, x: jax.Array) -> jax.Array:
    """Gated MLP: down(act(gate(x)) * up(x))."""
    gate = jnp.einsum("BTD,FD->BTF", x, p["gate"])
    up = jnp.einsum("BTD,FD->BTF", x, p["up"])
    return jnp.einsum("BTF,DF->BTD", activation(cfg, gate) * up, p["down"])
