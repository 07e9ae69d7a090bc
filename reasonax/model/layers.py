"""Norms, rotary embeddings, the gated MLP and the LoRA term of a projection, as pure functions.

Einsum letters: B batch, T query positions, D hidden, F mlp hidden, H head dim, R LoRA rank,
I / O a projection's (flattened) input / output features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model.config import ModelConfig, RopeConfig
from reasonax.model.params import ADAPTERS


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


def lora(cfg: ModelConfig, y: jax.Array, x: jax.Array, p: dict, name: str) -> jax.Array:
    """y + cfg.lora.scale * (x A) B for projection `name` when the layer params p carry its adapter
    (p["lora"][name]: a [R, I...], b [O..., R]); y unchanged otherwise. x [B,T,I] is the input and
    y [B,T,O] the base output of the projection, both with flattened features. The merged weight
    W + scale B A is never formed; the term is added in y's dtype."""
    adapters = p.get(ADAPTERS)
    if adapters is None:
        return y
    if cfg.lora is None or set(adapters) != set(cfg.lora.targets):
        raise ValueError(f"params carry LoRA adapters for {sorted(adapters)} but cfg.lora is {cfg.lora}: give the "
                         "config the adapters' settings (cfg.replace(lora=LoraConfig(...)))")
    if name not in adapters:
        return y
    a, b = adapters[name]["a"], adapters[name]["b"]
    r = cfg.lora.r
    a, b = a.reshape(a.shape[0], -1), b.reshape(-1, b.shape[-1])
    if a.shape != (r, x.shape[-1]) or b.shape != (y.shape[-1], r):
        raise ValueError(f"LoRA adapter {name}: a {a.shape} and b {b.shape} (flattened), expected "
                         f"a {(r, x.shape[-1])} and b {(y.shape[-1], r)} for rank {r}")
    xa = jnp.einsum("BTI,RI->BTR", x, a) * cfg.lora.scale
    return y + jnp.einsum("BTR,OR->BTO", xa, b).astype(y.dtype)


def mlp(cfg: ModelConfig, p: dict, x: jax.Array) -> jax.Array:
    """Gated MLP: down(act(gate(x)) * up(x)), with LoRA terms where p carries adapters."""
    gate = lora(cfg, jnp.einsum("BTD,FD->BTF", x, p["gate"]), x, p, "gate")
    up = lora(cfg, jnp.einsum("BTD,FD->BTF", x, p["up"]), x, p, "up")
    h = activation(cfg, gate) * up
    return lora(cfg, jnp.einsum("BTF,DF->BTD", h, p["down"]), h, p, "down")
