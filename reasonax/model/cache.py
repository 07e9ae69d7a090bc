"""Fixed-size KV cache, stacked over layers like the params.

k, v        [L, B, S, K, H]  keys after RoPE, values; columns in the order each row wrote them
                             (or per layer, a tuple of column blocks [B, S_i, K, H]: see per_layer)
segment_ids [B, S]           0 for empty or padding columns (never attended to)
lengths     [B]              next column each row writes: a chunk of T tokens goes to columns
                             lengths .. lengths + T - 1 of its row
next_pos    [B]              position of each row's next token

Rows are independent: each has its own write column, so a decode slot can hold a prompt of any
length next to slots in other phases (the rollout engine, reasonax.sample.engine). A row's real
tokens sit in consecutive columns (padding, if any, only before them), so column distance is
position distance and the causal / sliding-window masks work on columns.
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
    lengths: jax.Array
    next_pos: jax.Array

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]


def block_widths(columns: int, block: int, widest: int = 2048) -> tuple[int, ...]:
    """Column widths of a per-layer cache of `columns` columns (a multiple of `block`): block, block,
    2 block, 4 block, ... up to `widest`, then `widest` each, the last one cut at `columns`. Every
    block * 2^k (and `columns`) is a block boundary, so a decode attending to the first A columns
    (engine.attention_length) reads whole blocks, and the long ones are few, wide arrays, which
    XLA's CPU dots read faster than many narrow ones (one layer's decode attention over 1,024
    columns: 6.95 ms in these blocks against 9.86 ms in eight of 128, bench/decode_ops.py)."""
    if columns % block:
        raise ValueError(f"a cache of {columns} columns does not split into blocks of {block}")
    out, lo = [], 0
    while lo < columns:
        w = min(columns - lo, max(block, min(lo, widest)))
        out.append(w)
        lo += w
    return tuple(out)


def per_layer(cache: KVCache, block: int) -> KVCache:
    """The cache with k and v as tuples (one per layer) of column blocks [B, w_i, K, H] of
    block_widths(columns, block): what a decode over unstacked layers (transformer.unstack_layers)
    reads in place. On XLA's CPU backend a layer sliced out of a stacked cache, or its first
    columns sliced out of a longer one, is a copy (and a slow dot) on every step; separate arrays
    are read where they are."""
    widths = block_widths(cache.max_len, block)
    starts = [sum(widths[:i]) for i in range(len(widths))]

    def split(a):
        return tuple(tuple(a[i, :, lo:lo + w] for lo, w in zip(starts, widths)) for i in range(a.shape[0]))

    return dataclasses.replace(cache, k=split(cache.k), v=split(cache.v))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32, mesh=None) -> KVCache:
    """An empty cache; with a mesh, rows are sharded over the data axes and kv heads over tensor."""
    kv_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)

    def make():
        return KVCache(k=jnp.zeros(kv_shape, dtype), v=jnp.zeros(kv_shape, dtype),
                       segment_ids=jnp.zeros((batch, max_len), jnp.int32),
                       lengths=jnp.zeros((batch,), jnp.int32), next_pos=jnp.zeros((batch,), jnp.int32))

    if mesh is None:
        return make()
    return jax.jit(make, out_shardings=cache_shardings(cfg, mesh, batch, max_len))()


def cache_shardings(cfg: ModelConfig, mesh, batch: int, max_len: int) -> KVCache:
    kv_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    kv = sharding.named_sharding(mesh, KV_AXES, kv_shape)
    row = sharding.named_sharding(mesh, ("batch",), (batch,))
    return KVCache(k=kv, v=kv, segment_ids=sharding.named_sharding(mesh, ("batch", None), (batch, max_len)),
                   lengths=row, next_pos=row)


def kv_bytes_per_row(cfg: ModelConfig, max_len: int, dtype) -> int:
    """Bytes of keys and values one row of a max_len cache holds (all layers)."""
    return 2 * cfg.num_layers * max_len * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize


def write_columns(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """buf [B, S, ...] with new [B, T, ...] written at columns start[b] .. start[b] + T - 1 of each row
    (a scatter: in place inside jitted loops); columns past S are dropped."""
    B, T = new.shape[:2]
    rows = jnp.arange(B, dtype=jnp.int32)[:, None]
    cols = start.astype(jnp.int32)[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
    return buf.at[rows, cols].set(new.astype(buf.dtype), mode="drop")
