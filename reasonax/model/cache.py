"""Fixed-size KV cache, stacked over layers like the params.

k, v        [L, B, S, K, H]  keys after RoPE, values
segment_ids [B, S]           0 for empty or padding slots (never attended to)
next_pos    [B]              position of the next token of each row
index       []               next slot to write (shared by all rows: prompts are left-padded)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from reasonax.model import sharding
from reasonax.model.config import ModelConfig

KV_AXES = ("layers", "batch", None, "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    next_pos: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32, mesh=None) -> KVCache:
    """An empty cache; with a mesh, rows are sharded over the data axes and kv heads over tensor."""
    kv_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)

    def make():
        return KVCache(k=jnp.zeros(kv_shape, dtype), v=jnp.zeros(kv_shape, dtype),
                       segment_ids=jnp.zeros((batch, max_len), jnp.int32),
                       next_pos=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))

    if mesh is None:
        return make()
    return jax.jit(make, out_shardings=cache_shardings(cfg, mesh, batch, max_len))()


def cache_shardings(cfg: ModelConfig, mesh, batch: int, max_len: int) -> KVCache:
    kv_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    kv = sharding.named_sharding(mesh, KV_AXES, kv_shape)
    return KVCache(k=kv, v=kv,
                   segment_ids=sharding.named_sharding(mesh, ("batch", None), (batch, max_len)),
                   next_pos=sharding.named_sharding(mesh, ("batch",), (batch,)),
                   index=sharding.named_sharding(mesh, (), ()))
