"""The decoder: embed -> lax.scan over stacked layers -> norm -> unembed. One function for all families.

Einsum letters: B batch, T positions, D hidden, N query heads, K kv heads, H head dim, V vocab.

Per-layer differences (sliding vs global attention, local vs global RoPE) are data: RoPE tables
are built once per *layer type* and each scanned layer indexes them by its type id; the mask is
one attention.MaskSpec (slots, segment ids, window) whose window each layer switches on by its
type, so compile time stays flat in depth.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model import attention, layers
from reasonax.model.cache import KVCache, write_columns
from reasonax.model.config import SLIDING, ModelConfig
from reasonax.model.sharding import constrain

ACT_AXES = ("batch", None, "embed")


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment [B, T]; restarts at 0 where the segment id changes."""
    T = segment_ids.shape[1]
    idx = jnp.arange(T, dtype=jnp.int32)[None, :]
    prev = jnp.pad(segment_ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    starts = jnp.where(segment_ids != prev, idx, 0)
    return idx - jax.lax.cummax(starts, axis=1)


def _layer_type_tables(cfg: ModelConfig, positions, dtype):
    """Stacked cos/sin [Y,B,T,H/2], per-layer type ids [L] and the Y layer types used (sorted)."""
    types = sorted(set(cfg.layer_types))
    coss, sins = [], []
    for t in types:
        rope = cfg.rope_local if (t == SLIDING and cfg.rope_local is not None) else cfg.rope
        cos, sin = layers.rope_tables(positions, rope, cfg.head_dim, dtype)
        coss.append(cos)
        sins.append(sin)
    type_ids = jnp.asarray(np.array([types.index(t) for t in cfg.layer_types], np.int32))
    return jnp.stack(coss), jnp.stack(sins), type_ids, types


def _norm(cfg: ModelConfig, x, w):
    return layers.rms_norm(x, w, cfg.rms_norm_eps, cfg.norm_plus_one)


def _project_in(cfg: ModelConfig, h, p, name):
    """'BTD,NHD->BTNH' by the weight p[name] as a 2-D matmul over flattened heads (X = N*H): the
    reshapes are free, and XLA's CPU dot runs an order of magnitude faster on [X, D] than on an
    [N, H, D] operand (bench/decode_ops.py). Plus the LoRA term when p carries adapters."""
    w = p[name]
    B, T, D = h.shape
    y = jnp.einsum("BTD,XD->BTX", h, w.reshape(-1, D))
    return layers.lora(cfg, y, h, p, name).reshape(B, T, *w.shape[:-1])


def _project_out(cfg: ModelConfig, a, p, name):
    """'BTNH,DNH->BTD' by the weight p[name] as a 2-D matmul over flattened heads (see _project_in)."""
    w = p[name]
    B, T = a.shape[:2]
    a = a.reshape(B, T, -1)
    return layers.lora(cfg, jnp.einsum("BTX,DX->BTD", a, w.reshape(w.shape[0], -1)), a, p, name)


def _first_blocks(blocks: tuple, columns: int) -> tuple:
    """The column blocks that hold the first `columns` columns (a whole number of blocks)."""
    n, width = 0, 0
    while width < columns:
        width += blocks[n].shape[1]
        n += 1
    return blocks[:n]


def _write_blocks(blocks: tuple, new, rows, cols, columns: int) -> tuple:
    """new [B,T,...] written at columns cols [B,T] of a row of column blocks; only the blocks of
    the first `columns` columns can take a write (the caller's bound on every row's columns)."""
    out, lo = [], 0
    for i, b in enumerate(blocks):
        w = b.shape[1]
        if lo < columns:
            local = cols - lo
            local = jnp.where((local >= 0) & (local < w), local, w)  # elsewhere: past the block, dropped
            b = b.at[rows, local].set(new.astype(b.dtype), mode="drop")
        out.append(b)
        lo += w
    return tuple(out)


def _decoder_layer(cfg: ModelConfig, x, p, cos, sin, spec, kv, layer, cols, attn_len):
    """One pre-norm decoder layer.

    spec: the layer's attention.MaskSpec. kv: None (keys are this chunk) or the whole cache (k, v),
    each stacked [L,B,S,K,H] or a tuple of per-layer [B,S,K,H] arrays; this chunk's keys and values are written at [layer, b, cols[b]] in
    place, and the layer's first attn_len columns are attended to.
    """
    h = _norm(cfg, x, p["pre_attn_norm"])
    q, k, v = (_project_in(cfg, h, p, name) for name in ("q", "k", "v"))
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if cfg.qk_norm:
        q, k = _norm(cfg, q, p["q_norm"]), _norm(cfg, k, p["k_norm"])
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    if kv is not None:
        rows = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
        if isinstance(kv[0], tuple):  # per layer, column blocks (cache.per_layer): no copies
            kv = tuple(c[:layer] + (_write_blocks(c[layer], new, rows, cols, attn_len),) + c[layer + 1:]
                       for c, new in zip(kv, (k, v)))
            k, v = (_first_blocks(c[layer], attn_len) for c in kv)
        else:
            kv = tuple(c.at[layer, rows, cols].set(new.astype(c.dtype), mode="drop") for c, new in zip(kv, (k, v)))
            k, v = (jax.lax.dynamic_index_in_dim(c, layer, axis=0, keepdims=False)[:, :attn_len] for c in kv)
    out = _project_out(cfg, attention.attend(cfg, q, k, v, spec), p, "o")
    if cfg.o_bias:
        out = out + p["o_bias"]
    if cfg.sandwich_norm:
        out = _norm(cfg, out, p["post_attn_norm"])
    x = x + out
    h = layers.mlp(cfg, p, _norm(cfg, x, p["pre_mlp_norm"]))
    if cfg.sandwich_norm:
        h = _norm(cfg, h, p["post_mlp_norm"])
    return constrain(x + h, ACT_AXES), kv


_REMAT = {"full": jax.checkpoint_policies.nothing_saveable,
          "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def embed(params: dict, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    # gather rows from a table whose hidden dim is whole (FSDP all-gathers it), so the rows come out
    # batch-sharded without resharding the lookup result
    table = constrain(params["embed"], ("vocab", None))
    x = jnp.take(table, tokens, axis=0)
    if cfg.embed_scale:  # sqrt(D) rounded to the activation dtype, as the reference does
        x = x * jnp.asarray(cfg.hidden_size**0.5, dtype=table.dtype)
    return constrain(x, ACT_AXES)


def hidden_states(params: dict, tokens: jax.Array, cfg: ModelConfig, *, positions=None, segment_ids=None,
                  cache: KVCache | None = None, attn_len: int | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states [B,T,D] (and the updated cache when one is given).

    tokens int32 [B,T]; segment_ids [B,T] (0 = padding, default all 1); positions [B,T] (default:
    index within the segment, continuing from cache.next_pos when a cache is given). With a cache,
    row b's chunk is written at columns cache.lengths[b] onwards and attends to the cache's first
    attn_len columns (default all; a static bound on every row's lengths + T, so decode reads only
    the filled part of the cache).
    """
    B, T = tokens.shape
    dtype = params["embed"].dtype
    segment_ids = jnp.ones((B, T), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    if positions is None:
        positions = positions_from_segments(segment_ids)
        if cache is not None:
            positions = positions + cache.next_pos[:, None]
    positions = positions.astype(jnp.int32)

    if cache is None:
        slots = jnp.arange(T, dtype=jnp.int32)
        q_slots, k_slots, k_seg, cols, attn_len = slots, slots, segment_ids, None, None
    else:
        attn_len = cache.max_len if attn_len is None else min(attn_len, cache.max_len)
        q_slots = cols = cache.lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
        k_slots = jnp.arange(attn_len, dtype=jnp.int32)
        k_seg = write_columns(cache.segment_ids, segment_ids, cache.lengths)
    coss, sins, type_ids, types = _layer_type_tables(cfg, positions, dtype)
    # the mask as slots and segment ids (each kernel builds what it needs from them); the window
    # applies on sliding layers: a bool when all layers have one type, else the scanned type id
    spec = attention.MaskSpec(q_slots, k_slots, segment_ids, k_seg if cache is None else k_seg[:, :attn_len],
                              window=cfg.sliding_window if SLIDING in types else None, aligned=cache is None)
    single_type = len(types) == 1

    def body(carry, xs):  # the cache rides in the carry so each layer updates it in place
        x, kv = carry
        p, tid, layer = xs
        pick = (lambda a: a[0]) if single_type else (lambda a: a[tid])
        sliding = types[0] == SLIDING if single_type else tid == types.index(SLIDING)
        return _decoder_layer(cfg, x, p, pick(coss), pick(sins), spec.with_sliding(sliding), kv, layer, cols,
                              attn_len), None

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat])
    carry = (embed(params, tokens, cfg), None if cache is None else (cache.k, cache.v))
    if isinstance(params["layers"], (list, tuple)):  # unstacked (see unstack_layers): unrolled loop
        for i, p in enumerate(params["layers"]):
            carry, _ = body(carry, (p, types.index(cfg.layer_types[i]), i))  # a static type: no selects
    else:
        layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        carry, _ = jax.lax.scan(body, carry, (params["layers"], type_ids, layer_ids))
    x, kv = carry
    x = _norm(cfg, x, params["final_norm"])
    if cache is None:
        return x, None
    return x, KVCache(k=kv[0], v=kv[1], segment_ids=k_seg, lengths=cache.lengths + T,
                      next_pos=positions[:, -1] + 1)


def unstack_layers(params: dict) -> dict:
    """Params whose layers are a tuple of per-layer dicts (hidden_states then unrolls the layers).

    Inside a jitted decode loop, call this once before the loop: on CPU, XLA copies each
    scanned layer's weights out of the stacked arrays on every step, while per-layer arrays are
    read in place (1.5-2x faster decode steps, bench/decode_ops.py). Costs one copy of the layer
    weights per call.
    """
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n))}


def unembed(params: dict, h: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Logits in float32 (final softcap applied). For training use the chunked loss instead."""
    head = params["embed"] if cfg.tie_embeddings else params["lm_head"]
    logits = jnp.einsum("BTD,VD->BTV", h, head, preferred_element_type=jnp.float32)
    if cfg.final_softcap:
        logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params: dict, tokens: jax.Array, cfg: ModelConfig, positions=None, segment_ids=None) -> jax.Array:
    """Full-sequence logits float32 [B,T,V] for int32 tokens [B,T]."""
    h, _ = hidden_states(params, tokens, cfg, positions=positions, segment_ids=segment_ids)
    return unembed(params, h, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode(params: dict, tokens: jax.Array, cfg: ModelConfig, cache: KVCache, positions=None,
           segment_ids=None) -> tuple[jax.Array, KVCache]:
    """Run a chunk (a prefill, or one token per row) through the model, reading and writing `cache`."""
    h, cache = hidden_states(params, tokens, cfg, positions=positions, segment_ids=segment_ids, cache=cache)
    return unembed(params, h, cfg), cache
