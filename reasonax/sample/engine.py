"""The rollout engine: continuous batching over a fixed number of decode slots.

    res = engine.generate(params, cfg, prompts, SamplingParams(...), eos_ids, seed,
                          stop=StopStrings(tokenizer, ("\\n\\n",)))

Device state: `num_slots` rows of one KV cache [L, S, C, K, H], C = the longest prompt's length
bucket + max_new_tokens, and per slot its last token, PRNG key and token count. The host runs a
scheduler loop over the request's rows (prompt, sample), in request order:

1. admit: free slots take the next pending rows. Each distinct prompt is prefilled once, in a
   batch of prompts right-padded to a length bucket, where the first token of each of its
   samples is drawn; its KV stays on the device (the store) until every sample of it that goes
   on has a slot, and is copied into each sample's slot. With a prefix cache (PrefixCache), a
   prompt's longest cached prefix (whole blocks, then the matching head of a cached next block)
   is copied into its store row first and only the rest is prefilled, attending to it; the
   batch's new whole blocks then go to the cache. A prompt whose next uncached block another
   prompt of the batch is computing waits for the next batch (the first few-shot prompt
   computes the shared blocks once, the others read them). A prompt with more than
   prefill_chunk (default 4096) tokens left to prefill goes alone, chunk by chunk (chunked
   prefill: each chunk attends to the KV of the ones before it, as a cached prefix is attended).
2. decode: a jitted block of up to `block_steps` steps over all slots (a lax.while_loop). It
   leaves early when a slot finishes while rows are waiting, so that slot is refilled at once.
3. collect: tokens go to their rows; a row ends at EOS, at max_new_tokens, or after the token
   that completes a stop string (checked here, at block boundaries: a row never runs more than
   block_steps tokens past one).
4. drain: once no row waits, the live rows move into the smallest power-of-two slot array that
   holds them whenever that is a quarter of the slots or less, so the longest rows do not decode
   beside empty slots.

Attention reads only the filled part of the cache: each block attends to the first A columns,
A a power of two (times 128 columns on CPU, capped at C) above the longest live slot +
block_steps. Bucketed lengths, not pages: slots are rows of dense arrays, so the step is plain
einsums with static shapes on every backend (no paged-attention kernel, no gather of pages per
step), and the work per step follows the live lengths within a factor of two; a paged layout
would only save the memory of slots reserved at full length, which the slot count budgets for.
On CPU (layers unstacked) each layer's cache is a tuple of column blocks of 128, 128, 256, 512,
1024, then 2048 columns (cache.block_widths), so the first A columns are whole arrays read in
place: XLA:CPU copies a slice of a larger cache on every step, and its dot on the copy runs 2-4x
slower than on whole arrays; and a few wide blocks, not many 128-column ones, because its dot
reads a wide block faster (bench/decode_ops.py).

Compiled programs: prefill per (prompt batch bucket, length bucket) and, continuing cached
prefixes, per (prompt batch bucket, continuation length bucket, length bucket); a long prompt's
full chunks per length bucket (and how the first chunk starts: empty or cached); insert (a copy)
per (row bucket, store shape); the prefix cache's block write per block-count bucket; decode
block per (slot count, attention length A); nothing recompiles per request.

On a mesh the prefix cache's blocks are whole on every data shard (kv heads split over the
tensor axis like the slots'): a prefill batch, sharded over the data axes, reads its rows'
blocks locally, and the rows' new blocks are gathered to every data shard once, when written.

Rows keep their (seed, prompt key id, sample index) keys, and a row's t-th token is drawn with
fold_in(key, t) (reasonax.sample.sampler.draw_tokens), so the tokens of a row do not depend on
the slot count, the arrival order or what shares its block.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model import transformer
from reasonax.model.cache import KV_AXES, KVCache, cache_shardings, init_cache, kv_bytes_per_row, per_layer
from reasonax.model.config import ModelConfig
from reasonax.model.sharding import batch_shards, constrain, named_sharding
from reasonax.sample.sampler import GenerateResult, SamplingParams, bucket, row_keys, draw_tokens
from reasonax.sample.stops import StopStrings

DEFAULT_KV_BUDGET = 2 << 30  # bytes per device for the slots' KV cache and decode temporaries
MAX_SLOTS = 256
BLOCK = 128  # cache columns per block of a per-layer cache (the unstacked decode; see cache.per_layer)
PREFILL_TOKENS = 16384  # prompt tokens per prefill call (P * T), at least one prompt
PREFILL_CHUNK = 4096  # a prompt with more uncached tokens prefills alone, this many tokens per call


# ----------------------------------------------------------------------------------------------
# Device state and programs


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Slots:
    cache: KVCache  # [L, S, C, K, H]; lengths = columns filled (the last token is not yet written)
    last: jax.Array  # [S] int32: last drawn token, fed at the next step
    keys: jax.Array  # [S, ...] raw PRNG key data of the slot's row
    steps: jax.Array  # [S] int32: tokens drawn so far (the index of the next draw)


def _constrain_kv(a):
    if isinstance(a, tuple):
        return jax.tree.map(lambda x: constrain(x, KV_AXES[1:]), a)
    return constrain(a, KV_AXES)


def _constrain_slots(s: _Slots) -> _Slots:
    c = s.cache
    cache = KVCache(k=_constrain_kv(c.k), v=_constrain_kv(c.v),
                    segment_ids=constrain(c.segment_ids, ("batch", None)),
                    lengths=constrain(c.lengths, ("batch",)), next_pos=constrain(c.next_pos, ("batch",)))
    return _Slots(cache=cache, last=constrain(s.last, ("batch",)), keys=constrain(s.keys, ("batch", None)),
                  steps=constrain(s.steps, ("batch",)))


@functools.partial(jax.jit, static_argnames=("cfg", "slots", "columns", "dtype", "layered"))
def _init_slots(cfg: ModelConfig, slots: int, columns: int, dtype, layered: bool = False) -> _Slots:
    """Empty slots; layered: the cache as per-layer arrays (for a decode over unstacked layers)."""
    key_data = jax.random.key_data(jax.random.key(0))
    cache = init_cache(cfg, slots, columns, dtype)
    return _constrain_slots(_Slots(cache=per_layer(cache, BLOCK) if layered else cache,
                                   last=jnp.zeros((slots,), jnp.int32),
                                   keys=jnp.zeros((slots, *key_data.shape), key_data.dtype),
                                   steps=jnp.zeros((slots,), jnp.int32)))


def _prompt_kv(params, tokens, segments, prefix, cfg: ModelConfig, columns: int):
    """Prompt tokens [P, T] through the model into a cache of `columns` columns -> (final hidden
    states [P, T, D], the cache, the columns each row had before these tokens [P]). prefix: None
    (an empty cache), the prefix cache's blocks (see _prefill), or a KVCache: the store of the
    prompt's earlier chunks, which these tokens continue."""
    P, T = tokens.shape
    if isinstance(prefix, KVCache):
        cache, cached = prefix, prefix.lengths
    else:
        cache = init_cache(cfg, P, columns, params["embed"].dtype)
        cached = jnp.zeros((P,), jnp.int32)
    if prefix is not None and not isinstance(prefix, KVCache):
        pool_k, pool_v, ids, cached = prefix
        M, B = ids.shape[1], pool_k.shape[2]

        def fill(buf, pool):  # blocks ids[p, :] laid side by side in row p's first columns
            blocks = jnp.take(pool, ids, axis=1)  # [L, P, M, B, K, H]
            flat = blocks.reshape(buf.shape[0], P, M * B, *buf.shape[3:])[:, :, :columns]
            return buf.at[:, :, :flat.shape[2]].set(flat)

        seg = (jnp.arange(columns, dtype=jnp.int32)[None, :] < cached[:, None]).astype(jnp.int32)
        cache = KVCache(k=fill(cache.k, pool_k), v=fill(cache.v, pool_v), segment_ids=seg, lengths=cached,
                        next_pos=cached)
    h, cache = transformer.hidden_states(params, tokens, cfg, segment_ids=segments, cache=cache)
    return h, cache, cached


@functools.partial(jax.jit, static_argnames=("cfg", "columns"))
def _prefill_chunk(params, tokens, prefix, cfg: ModelConfig, columns: int) -> KVCache:
    """One full chunk [1, T] of a long prompt (no padding): its KV appended to the store of the
    chunks before it (prefix: a KVCache), or to the cached prefix / an empty cache for the first
    chunk (prefix: as in _prefill). No logits: only the last chunk's (in _prefill) draw tokens."""
    _, cache, _ = _prompt_kv(params, tokens, jnp.ones(tokens.shape, jnp.int32), prefix, cfg, columns)
    return dataclasses.replace(cache, k=constrain(cache.k, KV_AXES), v=constrain(cache.v, KV_AXES))


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "columns"))
def _prefill(params, tokens, segments, key_data, prefix, cfg: ModelConfig, sp: SamplingParams, columns: int):
    """Right-padded prompt tokens [P, T] (segments 1 on real tokens), each row continuing its cached
    prefix -> (the store: the prompts' KV [L, P, columns, K, H] with lengths = next_pos = prompt
    length, and the first token of each of their sp.n samples, drawn from the prompt's last logits
    with the row keys key_data [P * n]: tokens, log-probs, model log-probs [P * n]).

    prefix: None (nothing cached: tokens are the whole prompts), or (pool k, pool v [L, NB, B, K, H],
    block ids [P, ceil(columns / B)], cached [P]): row p's first cached[p] columns (any number) are
    copied from those pool blocks laid side by side and its tokens continue at column / position
    cached[p], attending to the cached columns and causally to each other (transformer.hidden_states
    with a cache), or a KVCache: the store of a long prompt's earlier chunks (_prefill_chunk), which
    these tokens, its last chunk, continue."""
    P, T = tokens.shape
    h, cache, cached = _prompt_kv(params, tokens, segments, prefix, cfg, columns)
    new = jnp.sum(segments != 0, axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(h, (new - 1)[:, None, None], axis=1)
    logits = jnp.repeat(transformer.unembed(params, last, cfg)[:, 0], sp.n, axis=0)
    first = draw_tokens(logits, jax.random.wrap_key_data(key_data), jnp.zeros((P * sp.n,), jnp.int32), sp)
    n = cached + new
    store = dataclasses.replace(cache, k=constrain(cache.k, KV_AXES), v=constrain(cache.v, KV_AXES),
                                lengths=n, next_pos=n)
    return store, *first


@functools.partial(jax.jit, donate_argnames=("slots",))
def _insert(slots: _Slots, store: KVCache, src, dst, key_data, first):
    """Copy store rows src [F] into slots dst [F] (an index past the slots is skipped), whose rows
    drew their first token `first` [F] at the prefill and have keys key_data [F]."""
    T = store.max_len
    c = slots.cache

    def put(buf, val):
        if not isinstance(buf, tuple):
            return buf.at[:, dst, :T].set(val[:, src], mode="drop")
        out = []
        for layer, blocks in enumerate(buf):  # per layer, column blocks: the first T columns from the store
            new, lo = [], 0
            for b in blocks:
                w = min(b.shape[1], T - lo)
                new.append(b.at[dst, :w].set(val[layer, src, lo:lo + w], mode="drop") if w > 0 else b)
                lo += b.shape[1]
            out.append(tuple(new))
        return tuple(out)

    cache = KVCache(k=put(c.k, store.k), v=put(c.v, store.v),
                    segment_ids=c.segment_ids.at[dst, :T].set(store.segment_ids[src], mode="drop"),
                    lengths=c.lengths.at[dst].set(store.lengths[src], mode="drop"),
                    next_pos=c.next_pos.at[dst].set(store.next_pos[src], mode="drop"))
    slots = _Slots(cache=cache, last=slots.last.at[dst].set(first, mode="drop"),
                   keys=slots.keys.at[dst].set(key_data, mode="drop"),
                   steps=slots.steps.at[dst].set(1, mode="drop"))
    return _constrain_slots(slots)


POOL_AXES = ("layers", None, None, "kv_heads", "head_dim")  # prefix blocks: whole on every data shard


@functools.partial(jax.jit, static_argnames=("cfg", "blocks", "block", "dtype"))
def _init_pool(cfg: ModelConfig, blocks: int, block: int, dtype):
    """The prefix cache's blocks: keys and values [L, NB, block, K, H], zeros."""
    shape = (cfg.num_layers, blocks, block, cfg.num_kv_heads, cfg.head_dim)
    return constrain(jnp.zeros(shape, dtype), POOL_AXES), constrain(jnp.zeros(shape, dtype), POOL_AXES)


@functools.partial(jax.jit, donate_argnames=("pool",))
def _put_blocks(pool, store: KVCache, rows, blocks, dst):
    """Copy column block blocks[f] of store row rows[f] into pool block dst[f] [F] (an index past
    the pool is skipped). The store's rows are sharded over the data axes, the pool is whole on
    each data shard: XLA gathers the F blocks to every shard."""
    pool_k, pool_v = pool
    B = pool_k.shape[2]
    cols = blocks[:, None] * B + jnp.arange(B, dtype=jnp.int32)[None, :]  # [F, B]

    def put(buf, kv):
        new = kv[:, rows[:, None], cols]  # [L, F, B, K, H]
        return constrain(buf.at[:, dst].set(new, mode="drop"), POOL_AXES)

    return put(pool_k, store.k), put(pool_v, store.v)


@jax.jit
def _gather_slots(slots: _Slots, idx) -> _Slots:
    """The slots at idx [S'] (a smaller slot array when rows drain: the same rows, fewer slot-steps)."""
    c = slots.cache
    take = lambda a, axis=0: jnp.take(a, idx, axis=axis)  # noqa: E731
    kv = lambda a: jax.tree.map(take, a) if isinstance(a, tuple) else take(a, 1)  # noqa: E731
    cache = KVCache(k=kv(c.k), v=kv(c.v), segment_ids=take(c.segment_ids), lengths=take(c.lengths),
                    next_pos=take(c.next_pos))
    return _constrain_slots(_Slots(cache=cache, last=take(slots.last), keys=take(slots.keys), steps=take(slots.steps)))


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "eos_ids", "steps", "attn_len"),
                   donate_argnames=("slots",))
def _decode_block(params, slots: _Slots, live, exit_early, cfg: ModelConfig, sp: SamplingParams,
                  eos_ids: tuple[int, ...], steps: int, attn_len: int):
    """Up to `steps` decode steps over every slot; live [S] marks the slots holding unfinished rows.
    Leaves after the step in which a live slot finishes when exit_early. Returns (slots, tokens,
    logprobs, model logprobs [S, steps], steps run); column i holds step i's draw of every slot."""
    S = live.shape[0]
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    keys = jax.random.wrap_key_data(slots.keys)
    out = (jnp.zeros((S, steps), jnp.int32), jnp.zeros((S, steps), jnp.float32), jnp.zeros((S, steps), jnp.float32))

    def cond(carry):
        i, _, live, finished, _ = carry
        return (i < steps) & jnp.any(live) & ~(exit_early & finished)

    def body(carry):
        i, s, live, finished, bufs = carry
        h, cache = transformer.hidden_states(params, s.last[:, None], cfg, cache=s.cache, attn_len=attn_len)
        tok, lp, mlp = draw_tokens(transformer.unembed(params, h, cfg)[:, 0], keys, s.steps, sp)
        ends = live & (jnp.isin(tok, eos) | (s.steps + 1 >= sp.max_new_tokens))
        # a slot without a live row keeps its columns and positions (it wrote into its own row)
        cache = dataclasses.replace(cache, lengths=jnp.where(live, cache.lengths, s.cache.lengths),
                                    next_pos=jnp.where(live, cache.next_pos, s.cache.next_pos))
        s = _Slots(cache=cache, last=tok, keys=s.keys, steps=s.steps + live.astype(jnp.int32))
        bufs = tuple(jax.lax.dynamic_update_index_in_dim(b, x, i, axis=1) for b, x in zip(bufs, (tok, lp, mlp)))
        return i + 1, s, live & ~ends, finished | jnp.any(ends), bufs

    init = (jnp.zeros((), jnp.int32), slots, live, jnp.zeros((), bool), out)
    n, slots, _, _, out = jax.lax.while_loop(cond, body, init)
    out = tuple(constrain(b, (None, None)) for b in out)  # replicated: every process reads all slots
    return (slots, *out, n)


# ----------------------------------------------------------------------------------------------
# Sizing


@dataclasses.dataclass
class EngineStats:
    """Counters of one generate call, updated after every decode block (see `progress`)."""

    rows: int = 0  # (prompt, sample) rows requested
    rows_done: int = 0
    num_slots: int = 0
    cache_columns: int = 0  # C: the longest prompt bucket + max_new_tokens
    kv_bytes_per_device: int = 0  # the slots' KV cache on one device
    step_bytes_per_device: int = 0  # the decode step's per-slot temporaries (logits, sampling) on one device
    tokens: int = 0  # tokens kept in finished rows (useful tokens)
    drawn: int = 0  # tokens drawn (kept + those past a stop string + rows in flight)
    slot_steps: int = 0  # decode steps x slots
    live_slot_steps: int = 0  # of which a slot held an unfinished row
    blocks: int = 0
    shrinks: int = 0  # times the draining rows moved into fewer slots
    prefills: int = 0
    prefill_chunks: int = 0  # full chunks of long prompts prefilled before their last part (_prefill_chunk)
    prefill_tokens: int = 0  # prompt tokens prefilled (each distinct prompt once; padding, cached prefixes excluded)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    prefix_blocks_written: int = 0  # blocks this call added to the prefix cache
    prefix_cache_bytes_per_device: int = 0
    prefill_s: float = 0.0  # wall time of the prefill calls (to their first tokens; compilation included)
    attn_lengths: dict = dataclasses.field(default_factory=dict)  # decode blocks per attention length
    elapsed_s: float = 0.0
    stopped: bool = False  # should_stop ended the call with rows unfinished (their finish_reason is None)

    @property
    def slot_use(self) -> float:
        """Live slot-steps over all slot-steps."""
        return self.live_slot_steps / self.slot_steps if self.slot_steps else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens read from the prefix cache over all prompt tokens."""
        total = self.cached_tokens + self.prefill_tokens
        return self.cached_tokens / total if total else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.drawn / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "slot_use": self.slot_use, "tokens_per_s": self.tokens_per_s,
                "prefix_hit_rate": self.prefix_hit_rate}


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _pow2_at_most(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def step_bytes_per_slot(cfg: ModelConfig) -> int:
    """Decode-step temporaries per slot: float32 logits and ~5 vocabulary-sized sampling buffers."""
    return 6 * cfg.vocab_size * 4


def plan_slots(cfg: ModelConfig, columns: int, dtype, kv_budget_bytes: int, batch_shards: int = 1,
               rows: int | None = None) -> int:
    """Decode slots for a cache of `columns` columns: as many as the per-device budget holds (KV
    cache + step temporaries per slot) times the devices the slots shard over, as a power of two
    (one compiled program per count), at most MAX_SLOTS and at most the rows (rounded up)."""
    per_slot = kv_bytes_per_row(cfg, columns, dtype) + step_bytes_per_slot(cfg)
    per_device = max(1, kv_budget_bytes // per_slot)
    slots = _pow2_at_most(min(MAX_SLOTS, per_device * batch_shards))
    if rows is not None:
        slots = min(slots, _pow2_at_least(max(rows, batch_shards)))
    return max(1, slots)


def cache_columns(longest_prompt: int, max_new_tokens: int, block: int = 1) -> int:
    """C: the longest prompt's length bucket + max_new_tokens, rounded up to whole column blocks."""
    return -(-(bucket(longest_prompt) + max_new_tokens) // block) * block


def attention_length(longest: int, block_steps: int, columns: int, block: int = 1) -> int:
    """Columns a decode block attends to: a power of two of column blocks holding longest +
    block_steps columns, at most all columns."""
    return min(columns, block * _pow2_at_least(-(-(longest + block_steps) // block)))


def compile_decode_block(abstract_params, cfg: ModelConfig, mesh, num_slots: int, columns: int,
                         sp: SamplingParams, block_steps: int = 16):
    """The decode block compiled for sharded abstract params (ShapeDtypeStructs) and `num_slots`
    slots of `columns` columns, attending to all of them (the longest block): for memory
    estimates (the dry run) without allocating anything."""
    dtype = abstract_params["embed"].dtype
    kv_shape = (cfg.num_layers, num_slots, columns, cfg.num_kv_heads, cfg.head_dim)
    cs = cache_shardings(cfg, mesh, num_slots, columns)
    sds = jax.ShapeDtypeStruct
    row = named_sharding(mesh, ("batch",), (num_slots,))
    key_shape = jax.random.key_data(jax.random.key(0)).shape
    slots = _Slots(cache=KVCache(k=sds(kv_shape, dtype, sharding=cs.k), v=sds(kv_shape, dtype, sharding=cs.v),
                                 segment_ids=sds((num_slots, columns), jnp.int32, sharding=cs.segment_ids),
                                 lengths=sds((num_slots,), jnp.int32, sharding=row),
                                 next_pos=sds((num_slots,), jnp.int32, sharding=row)),
                   last=sds((num_slots,), jnp.int32, sharding=row),
                   keys=sds((num_slots, *key_shape), jnp.uint32,
                            sharding=named_sharding(mesh, ("batch", None), (num_slots, *key_shape))),
                   steps=sds((num_slots,), jnp.int32, sharding=row))
    live = sds((num_slots,), bool, sharding=row)
    with jax.set_mesh(mesh):
        return _decode_block.lower(abstract_params, slots, live, sds((), bool), cfg=cfg, sp=sp,
                                   eos_ids=tuple(cfg.eos_token_ids), steps=block_steps,
                                   attn_len=columns).compile()


# ----------------------------------------------------------------------------------------------
# Host side


def _validate(prompts, cfg: ModelConfig, sp: SamplingParams):
    if not prompts:
        raise ValueError("no prompts")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in p if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size}): {bad[:5]}")
        if len(p) + sp.max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"prompt {i}: {len(p)} tokens + max_new_tokens {sp.max_new_tokens} exceed the "
                             f"model's {cfg.max_position_embeddings} positions")


def _mesh_of(params):
    """The mesh params live on, or None on a single device."""
    mesh = getattr(getattr(params["embed"], "sharding", None), "mesh", None)
    return mesh if mesh is not None and mesh.size > 1 else None


PREFIX_BLOCK = 128  # tokens per prefix-cache block (every backend)


def prefix_digests(tokens: Sequence[int], block: int) -> list[bytes]:
    """The keys of a prompt's whole blocks: digest i hashes the prompt's first (i + 1) * block
    tokens (chained: blake2b(digest i-1 + block i's tokens)), so equal keys mean equal prefixes,
    as the path to a node of a radix tree. Deterministic across processes (unlike hash())."""
    arr = np.asarray(tokens, np.int64)
    out, d = [], b""
    for i in range(len(arr) // block):
        d = hashlib.blake2b(d + arr[i * block:(i + 1) * block].tobytes(), digest_size=16).digest()
        out.append(d)
    return out


class PrefixCache:
    """KV of prompt prefixes, kept from one generate call to the next at fixed weights.

        cache = PrefixCache(gb=1.0)
        generate(params, cfg, prompts, sp, prefix_cache=cache, params_version=step)

    Blocks of `block` prompt tokens, each keyed by the digest of the whole prefix up to its end
    (prefix_digests), live in one device array per k / v [L, NB, block, K, H] of at most `gb`
    GiB per device (taken out of generate's kv_budget_bytes), allocated when the first block is. On a
    mesh the blocks are whole on every data shard (kv heads split like the slots'), so a prefill
    batch sharded over the data axes reads its rows' blocks locally; new blocks are gathered from
    the store's shards once, when written.

    Every call passes params_version, an int that changes whenever the weights do (the optimizer
    step or the weight sync bumps it): a call with another version than the cache's empties the
    index first, so KV computed under other weights is never read. A cache serves one model
    (cfg, dtype, mesh); another raises. Eviction: least recently used first, never a block the
    prefill batch in flight reads; a hit touches its blocks deepest first, so a prefix's root
    outlives its leaves.
    """

    def __init__(self, gb: float, block: int = PREFIX_BLOCK):
        if not gb >= 0:
            raise ValueError(f"prefix cache gb must be >= 0, got {gb}")
        if block < 1:
            raise ValueError(f"prefix cache block must be >= 1, got {block}")
        self.gb, self.block = gb, block
        self.version: int | None = None
        self.model = None  # (cfg, dtype, mesh) the pool was made for
        self.pool = None  # (k, v) on the device(s)
        self.num_blocks = 0
        self.index: collections.OrderedDict[bytes, int] = collections.OrderedDict()  # LRU first
        self.tokens: dict[bytes, np.ndarray] = {}  # a cached block's tokens
        self.children: dict[bytes, set[bytes]] = {}  # a prefix's digest (b"": empty) -> its cached next blocks
        self.parent: dict[bytes, bytes] = {}
        self.free: list[int] = []
        self.evictions = 0

    def block_bytes(self, cfg: ModelConfig, dtype) -> int:
        return kv_bytes_per_row(cfg, self.block, dtype)

    def bytes_per_device(self, cfg: ModelConfig, dtype) -> int:
        """The pool's bytes on one device (at most: kv heads split over a tensor axis take less)."""
        return int(self.gb * (1 << 30)) // self.block_bytes(cfg, dtype) * self.block_bytes(cfg, dtype)

    def clear(self) -> None:
        self.index.clear()
        self.tokens.clear()
        self.children.clear()
        self.parent.clear()
        self.free = list(range(self.num_blocks))

    def bind(self, cfg: ModelConfig, dtype, mesh, params_version: int) -> None:
        """Ready the cache for a call on these weights (see the class docstring)."""
        if isinstance(params_version, bool) or not isinstance(params_version, (int, np.integer)):
            raise ValueError(f"params_version must be an int that changes with the weights, got {params_version!r}")
        model = (cfg, jnp.dtype(dtype).name, mesh)
        if self.model is None:
            self.model = model
            self.num_blocks = self.bytes_per_device(cfg, dtype) // self.block_bytes(cfg, dtype)
            self.clear()
        elif model != self.model:
            raise ValueError("this prefix cache holds another model's KV (cfg, dtype or mesh differ); "
                             "use one PrefixCache per model")
        if self.version != int(params_version):
            self.clear()
            self.version = int(params_version)

    def ensure_pool(self) -> None:
        """Allocate the blocks (at the first block written: short prompts never need them)."""
        if self.pool is None:
            cfg, dtype, mesh = self.model
            with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
                self.pool = _init_pool(cfg, self.num_blocks, self.block, jnp.dtype(dtype))

    def match(self, digests: Sequence[bytes], tokens: Sequence[int], limit: int) -> tuple[list[bytes], int]:
        """The cached blocks that hold the longest cached prefix of a prompt (tokens, its whole
        blocks' digests) of at most `limit` tokens, and its length: the leading whole blocks that
        are cached, then the cached next block (one that follows the same prefix) sharing the most
        leading tokens with the prompt's next block, of which those tokens are used (the KV of a
        position depends only on the tokens up to it). So prompts that share a prefix ending
        inside a block share it to the token, and a prefix shorter than a block is shared too."""
        B = self.block
        h = 0
        while h < min(len(digests), limit // B) and digests[h] in self.index:
            h += 1
        want = np.asarray(tokens[h * B:min((h + 1) * B, limit)], np.int64)
        best, m = None, 0
        for child in self.children.get(digests[h - 1] if h else b"", ()):
            same = want == self.tokens[child][:len(want)]
            k = len(want) if same.all() else int(np.argmin(same))
            if k > m:
                best, m = child, k
        return list(digests[:h]) + ([best] if best is not None else []), h * B + m

    def take(self, digests: Sequence[bytes]) -> list[int]:
        """The pool blocks of cached digests, touched deepest first (most recent: the root)."""
        for d in reversed(digests):
            self.index.move_to_end(d)
        return [self.index[d] for d in digests]

    def add(self, digest: bytes, parent: bytes, tokens: np.ndarray, block: int) -> None:
        """Register pool block `block` as holding the block `tokens` after the prefix `parent`."""
        self.index[digest] = block
        self.tokens[digest], self.parent[digest] = tokens, parent
        self.children.setdefault(parent, set()).add(digest)

    def allocate(self, n: int, pinned: set[int]) -> list[int]:
        """Up to n free blocks, evicting the least recently used ones outside pinned."""
        out = [self.free.pop() for _ in range(min(n, len(self.free)))]
        if len(out) < n:
            for d in [d for d, b in self.index.items() if b not in pinned][:n - len(out)]:
                out.append(self.index.pop(d))
                del self.tokens[d]
                self.children[self.parent[d]].discard(d)
                del self.parent[d]
                self.evictions += 1
        return out


def option_problems(num_slots: int, block_steps: int, kv_budget_gb: float, prefix_cache_gb: float,
                    prefix_block: int) -> list[str]:
    """What is wrong with the engine options a CLI or recipe config exposes (its problems() list)."""
    out = []
    if num_slots < 0 or block_steps < 1 or kv_budget_gb <= 0:
        out.append(f"num_slots={num_slots} (>= 0), block_steps={block_steps} (>= 1), "
                   f"kv_budget_gb={kv_budget_gb} (> 0)")
    if not 0 <= prefix_cache_gb < kv_budget_gb or prefix_block < 1:
        out.append(f"prefix_cache_gb={prefix_cache_gb} (>= 0 and < kv_budget_gb={kv_budget_gb}), "
                   f"prefix_block={prefix_block} (>= 1)")
    return out


def prefix_cache_options(gb: float, block: int = PREFIX_BLOCK) -> dict:
    """generate's keywords for a fresh prefix cache of gb GiB per device (0: none), for one call
    (params version 0) -- what a CLI that calls generate once passes."""
    return dict(prefix_cache=PrefixCache(gb, block), params_version=0) if gb > 0 else {}


@dataclasses.dataclass
class Completion:
    """A finished row, as `on_complete` receives it."""

    prompt: int  # index into the request's prompts
    sample: int
    tokens: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"


@dataclasses.dataclass
class _Row:
    prompt: int
    sample: int
    key: np.ndarray  # raw key data
    tokens: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    model_logprobs: list = dataclasses.field(default_factory=list)
    reason: str | None = None
    checked: int = 0  # tokens known to hold no stop string


class _Run:
    """One generate call's scheduler state (see the module docstring)."""

    def __init__(self, params, cfg, prompts, sp, eos, key_data, stop, num_slots, block_steps, mesh, progress,
                 on_complete, columns: int, block: int, prefix: PrefixCache | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, should_stop=None):
        self.should_stop = should_stop
        self.prefix = prefix if prefix is not None and prefix.num_blocks else None
        self.digests: dict[int, list[bytes]] = {}  # prompt -> prefix_digests
        self.params, self.cfg, self.prompts, self.sp, self.eos = params, cfg, prompts, sp, eos
        self.stop, self.block_steps, self.mesh, self.progress = stop, block_steps, mesh, progress
        self.on_complete = on_complete
        self.eos_set = frozenset(eos)
        self.rows = [_Row(i, j, key_data[i * sp.n + j]) for i in range(len(prompts)) for j in range(sp.n)]
        self.columns, self.block = columns, block  # block > 1: a per-layer cache of column blocks
        self.chunk = prefill_chunk
        self.S = num_slots
        self.slot_row = [-1] * self.S  # row id per slot, -1 when free
        self.slot_len = [0] * self.S  # cache columns filled per slot
        self.queue = collections.deque(range(len(prompts)))  # prompts not yet prefilled
        self.cached_lengths = [0] * len(prompts)  # per prompt: tokens read from the prefix cache
        self.store = None
        self.store_rows: collections.deque = collections.deque()  # (row id, store row, first token) waiting
        self.stats = EngineStats(rows=len(self.rows), num_slots=self.S, cache_columns=self.columns)
        self.min_slots = min(self.S, batch_shards(mesh))
        self.t0 = time.perf_counter()

    def _shrink(self) -> None:
        """Nothing waits and at most a quarter of the slots are live: move the live rows into the
        smallest power-of-two slot array that holds them, so the drain decodes fewer slot-steps (by
        factors of 4 or more: each slot count is one more compiled decode block)."""
        live = [s for s in range(self.S) if self.slot_row[s] >= 0]
        S = max(self.min_slots, _pow2_at_least(len(live)))
        if 4 * S > self.S or self.store_rows or self.queue:
            return
        idx = live + [s for s in range(self.S) if self.slot_row[s] < 0][:S - len(live)]
        self.slots = self._call(_gather_slots, self.slots, np.asarray(idx, np.int32))
        self.slot_row = [self.slot_row[s] for s in idx]
        self.slot_len = [self.slot_len[s] for s in idx]
        self.S = S
        self.stats.shrinks += 1

    def _finish(self, r: int, reason: str) -> None:
        row = self.rows[r]
        row.reason = reason
        self.stats.rows_done += 1
        self.stats.tokens += len(row.tokens)
        if self.on_complete is not None:
            self.on_complete(Completion(row.prompt, row.sample, row.tokens, row.logprobs, row.model_logprobs, reason))

    def _add(self, r: int, toks, lps, mlps) -> tuple[bool, int]:
        """Append drawn tokens to row r up to where it ends. Returns (whether it ended, how many of
        toks the device drew for it: up to its EOS or max_new_tokens, wherever a stop string cut)."""
        row = self.rows[r]
        reason, used = None, len(toks)
        for i, (t, lp, mlp) in enumerate(zip(toks, lps, mlps)):
            row.tokens.append(int(t))
            row.logprobs.append(float(lp))
            row.model_logprobs.append(float(mlp))
            if int(t) in self.eos_set or len(row.tokens) >= self.sp.max_new_tokens:
                reason, used = "eos" if int(t) in self.eos_set else "length", i + 1
                break
        if self.stop:
            k = self.stop.cut(row.tokens, row.checked)
            if k is not None:
                del row.tokens[k:], row.logprobs[k:], row.model_logprobs[k:]
                reason = "stop"
            else:
                row.checked = len(row.tokens)
        if reason is not None:
            self._finish(r, reason)
        return reason is not None, used

    def _cached(self, i: int) -> tuple[list[bytes], int, int, list[bytes], int]:
        """Prompt i's whole blocks' digests, how many of them a prefill may take from the cache (all
        but what holds its last token, whose logits draw the first tokens), how many leading ones
        are cached, and the cached blocks and tokens of its longest cached prefix (PrefixCache.match)."""
        if self.prefix is None:
            return [], 0, 0, [], 0
        if i not in self.digests:
            self.digests[i] = prefix_digests(self.prompts[i], self.prefix.block)
        d, p = self.digests[i], self.prompts[i]
        used, cached = self.prefix.match(d, p, len(p) - 1)
        return d, (len(p) - 1) // self.prefix.block, cached // self.prefix.block, used, cached

    def _prefill_next(self, free: int) -> None:
        """Prefill the next prompts (enough for `free` slots, one length bucket's token budget), each
        from its longest cached prefix on. A prompt whose next uncached block another prompt of the
        batch writes waits for the next batch, where it reads that block. A prompt with more than
        `prefill_chunk` tokens to prefill goes alone, in chunks: full chunks through _prefill_chunk,
        each continuing the store of the ones before, then the rest through _prefill."""
        want = max(1, math.ceil(free / self.sp.n))
        batch = [self.queue.popleft()]
        d, _, h, _, c = self._cached(batch[0])
        long = len(self.prompts[batch[0]]) - c > self.chunk
        writing = set(d[h:])
        T = bucket(len(self.prompts[batch[0]]))
        while self.queue and len(batch) < want and not long:
            T2 = bucket(max(T, len(self.prompts[self.queue[0]])))
            if _pow2_at_least(len(batch) + 1) * T2 > max(PREFILL_TOKENS, T2):
                break
            d, usable, h, _, c = self._cached(self.queue[0])
            if len(self.prompts[self.queue[0]]) - c > self.chunk:
                break
            if h < usable and d[h] in writing:
                break
            writing.update(d[h:])
            batch.append(self.queue.popleft())
            T = T2
        P, n = _pow2_at_least(len(batch)), self.sp.n
        pc = self.prefix
        hits = [self._cached(i) for i in batch]
        cached = np.zeros((P,), np.int32)
        prefix, pinned = None, set()
        if any(c for *_, c in hits):
            ids = np.zeros((P, -(-T // pc.block)), np.int32)
            for b, (_, _, _, used, c) in enumerate(hits):
                ids[b, :len(used)] = pc.take(used)
                cached[b] = c
                pinned.update(ids[b, :len(used)].tolist())
            prefix = (*pc.pool, ids, cached)
        t0 = time.perf_counter()
        start = cached.copy()  # where each row's tokens for _prefill begin
        if long:
            i, p = batch[0], self.prompts[batch[0]]
            while len(p) - start[0] > self.chunk:
                chunk = np.asarray(p[start[0]:start[0] + self.chunk], np.int32)[None]
                prefix = self._call(_prefill_chunk, self.params, chunk, prefix, cfg=self.cfg, columns=T)
                start[0] += self.chunk
                self.stats.prefill_chunks += 1
        Tc = bucket(max(len(self.prompts[i]) - c for i, c in zip(batch, start)))
        tokens = np.zeros((P, Tc), np.int32)
        segments = np.zeros((P, Tc), np.int32)
        segments[:, 0] = 1  # dummy rows: one valid token so their attention is well defined
        keys = np.zeros((P * n, *self.rows[0].key.shape), self.rows[0].key.dtype)
        for b, i in enumerate(batch):
            p = np.asarray(self.prompts[i][start[b]:], np.int32)
            tokens[b, :len(p)] = p
            segments[b, :len(p)] = 1
            keys[b * n:(b + 1) * n] = [self.rows[i * n + j].key for j in range(n)]
            self.stats.prefill_tokens += len(self.prompts[i]) - int(cached[b])
            self.stats.cached_tokens += int(cached[b])
            self.cached_lengths[i] = int(cached[b])
        self.store, *first = self._call(_prefill, self.params, tokens, segments, keys, prefix, cfg=self.cfg,
                                        sp=self.sp, columns=T)
        if pc is not None and pc.num_blocks:
            self._write_blocks(batch, hits, pinned)
        tok, lp, mlp = jax.device_get(first)
        self.stats.prefill_s += time.perf_counter() - t0
        self.stats.prefills += 1
        self.store_rows = collections.deque()
        for b, i in enumerate(batch):
            for j in range(n):
                f = b * n + j
                self.stats.drawn += 1
                if not self._add(i * n + j, tok[f:f + 1], lp[f:f + 1], mlp[f:f + 1])[0]:
                    self.store_rows.append((i * n + j, b, int(tok[f])))  # needs a slot to go on

    def _write_blocks(self, batch: list[int], hits, pinned: set[int]) -> None:
        """Copy the whole blocks the prefill computed, not yet cached, from the store to the cache."""
        pc, todo, seen = self.prefix, [], set()
        for b, (d, _, h, _, _) in enumerate(hits):
            for j in range(h, len(d)):
                if d[j] not in pc.index and d[j] not in seen:
                    seen.add(d[j])
                    todo.append((b, j, d[j]))
        dst = pc.allocate(len(todo), pinned) if todo else []
        if not dst:
            return
        pc.ensure_pool()
        todo = todo[:len(dst)]  # a prompt's blocks in order: a short pool keeps the roots
        F = _pow2_at_least(len(todo))
        rows, blocks = np.zeros((F,), np.int32), np.zeros((F,), np.int32)
        to = np.full((F,), pc.num_blocks, np.int32)  # past the pool: skipped
        for f, ((b, j, _), blk) in enumerate(zip(todo, dst)):
            rows[f], blocks[f], to[f] = b, j, blk
        pc.pool = self._call(_put_blocks, pc.pool, self.store, rows, blocks, to)
        B = pc.block
        for (b, j, dg), blk in reversed(list(zip(todo, dst))):  # deepest first: the root most recent
            d = hits[b][0]
            pc.add(dg, d[j - 1] if j else b"", np.asarray(self.prompts[batch[b]][j * B:(j + 1) * B], np.int64), blk)
        self.stats.prefix_blocks_written += len(todo)

    def _insert(self, pairs: list[tuple[int, tuple[int, int, int]]]) -> None:
        """Give each (slot, (row, store row, first token)) its slot."""
        F = min(self.S, _pow2_at_least(len(pairs)))
        src = np.zeros((F,), np.int32)
        dst = np.full((F,), self.S, np.int32)  # past the slots: skipped
        first = np.zeros((F,), np.int32)
        keys = np.stack([self.rows[pairs[0][1][0]].key] * F)
        for f, (slot, (r, b, tok)) in enumerate(pairs):
            src[f], dst[f], keys[f], first[f] = b, slot, self.rows[r].key, tok
            self.slot_row[slot] = r
            self.slot_len[slot] = len(self.prompts[self.rows[r].prompt])
        self.slots = self._call(_insert, self.slots, self.store, src, dst, keys, first)

    def _admit(self) -> None:
        while True:
            free = [s for s in range(self.S) if self.slot_row[s] < 0]
            if not free or not (self.store_rows or self.queue):
                return
            if not self.store_rows:
                self._prefill_next(len(free))
            pairs = [(free[i], self.store_rows.popleft()) for i in range(min(len(free), len(self.store_rows)))]
            if pairs:
                self._insert(pairs)

    def _call(self, fn, *args, **static):
        if self.mesh is None:
            return fn(*args, **static)
        with jax.set_mesh(self.mesh):
            return fn(*args, **static)

    def run(self, decode_params) -> None:
        self.slots = self._call(_init_slots, cfg=self.cfg, slots=self.S, columns=self.columns,
                                dtype=self.params["embed"].dtype, layered=self.block > 1)
        st = self.stats
        while True:
            self._admit()
            self._shrink()
            live = [s for s in range(self.S) if self.slot_row[s] >= 0]
            if not live:
                break
            A = attention_length(max(self.slot_len[s] for s in live), self.block_steps, self.columns, self.block)
            live_mask = np.zeros((self.S,), bool)
            live_mask[live] = True
            waiting = bool(self.store_rows or self.queue)
            self.slots, tok, lp, mlp, n = self._call(
                _decode_block, decode_params, self.slots, live_mask, np.bool_(waiting), cfg=self.cfg, sp=self.sp,
                eos_ids=self.eos, steps=self.block_steps, attn_len=A)
            tok, lp, mlp, n = jax.device_get((tok, lp, mlp, n))
            n = int(n)
            st.blocks += 1
            st.slot_steps += self.S * n
            st.attn_lengths[A] = st.attn_lengths.get(A, 0) + 1
            for s in live:
                ended, used = self._add(self.slot_row[s], tok[s, :n], lp[s, :n], mlp[s, :n])
                st.live_slot_steps += used
                st.drawn += used
                self.slot_len[s] += used
                if ended:
                    self.slot_row[s] = -1
            st.elapsed_s = time.perf_counter() - self.t0
            if self.progress is not None:
                self.progress(st)
            if self.should_stop is not None and self.should_stop():  # between blocks: finished rows are out
                st.stopped = True
                break
        st.elapsed_s = time.perf_counter() - self.t0


_unstack = jax.jit(transformer.unstack_layers)


def generate(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
             eos_ids: Sequence[int] | None = None, seed: int = 0, *, key_ids: Sequence[int] | None = None,
             stop: StopStrings | None = None, num_slots: int | None = None,
             kv_budget_bytes: int = DEFAULT_KV_BUDGET, block_steps: int = 16, unstack_layers: bool | None = None,
             progress: Callable[[EngineStats], None] | None = None,
             on_complete: Callable[[Completion], None] | None = None, prefix_cache: PrefixCache | None = None,
             params_version: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
             should_stop: Callable[[], bool] | None = None) -> GenerateResult:
    """Generate `sampling.n` completions for each prompt (token id lists). See the module docstring.

    eos_ids: token ids that end a row (default: cfg.eos_token_ids). key_ids: a stable id per prompt
    (default its index) from which its rows' PRNG keys derive, so a prompt gets the same samples in
    any call. stop: stop strings (checked once per block). num_slots: decode slots (default: as
    many as kv_budget_bytes per device holds, see plan_slots). progress: called with the
    EngineStats after every decode block; on_complete: with each row as it finishes (to write
    results as they come). Params sharded on a mesh shard the slots over the
    mesh's data axes. unstack_layers: decode over per-layer copies of the weights
    (transformer.unstack_layers), which XLA's CPU backend runs 1.5-2x faster than the scanned
    stack (bench/decode_ops.py); default: on CPU only (one copy of the layer weights while
    generating). prefix_cache: KV of prompt prefixes shared across prompts and kept across calls
    (PrefixCache; its memory comes out of kv_budget_bytes), with params_version an int that
    changes whenever the weights do (required with a cache: a new version empties it). The
    tokens are the same with or without a cache. prefill_chunk: a prompt with more tokens than this
    to prefill (after its cached prefix) prefills alone, chunk by chunk, each chunk attending to
    the KV of the ones before, so a 16k prompt is never one program; the tokens are the same.
    should_stop: asked after every decode block (once
    the block's finished rows went to on_complete); True ends the call there (a SIGTERM notice,
    reasonax.cli.Sigterm): the unfinished rows come back with finish_reason None and
    stats['stopped'] is True. A later call with the same seed and key_ids redraws them identically.
    """
    sp = sampling
    _validate(prompts, cfg, sp)
    if block_steps < 1:
        raise ValueError(f"block_steps must be >= 1, got {block_steps}")
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
    key_ids = list(range(len(prompts))) if key_ids is None else [int(k) for k in key_ids]
    if len(key_ids) != len(prompts):
        raise ValueError(f"key_ids has {len(key_ids)} entries for {len(prompts)} prompts")
    eos = tuple(sorted(set(cfg.eos_token_ids if eos_ids is None else eos_ids)))
    mesh = _mesh_of(params)
    dtype = params["embed"].dtype
    unstack = jax.default_backend() == "cpu" if unstack_layers is None else unstack_layers
    block = BLOCK if unstack else 1
    columns = cache_columns(max(map(len, prompts)), sp.max_new_tokens, block)
    rows = len(prompts) * sp.n
    pool_bytes = 0
    if prefix_cache is not None:
        if params_version is None:
            raise ValueError("prefix_cache needs params_version: an int that changes whenever the weights do")
        pool_bytes = prefix_cache.bytes_per_device(cfg, dtype)
        if pool_bytes >= kv_budget_bytes:
            raise ValueError(f"the prefix cache's {pool_bytes} bytes per device (gb={prefix_cache.gb}) leave nothing "
                             f"of kv_budget_bytes={kv_budget_bytes} for the decode slots")
        prefix_cache.bind(cfg, dtype, mesh, params_version)
    if num_slots is None:
        num_slots = plan_slots(cfg, columns, dtype, kv_budget_bytes - pool_bytes, batch_shards(mesh), rows)
    elif num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    keys = np.asarray(jax.random.key_data(row_keys(seed, np.repeat(np.asarray(key_ids), sp.n),
                                                   np.tile(np.arange(sp.n), len(prompts)))))
    t0 = time.perf_counter()
    decode_params = _unstack(params) if unstack else params
    run = _Run(params, cfg, prompts, sp, eos, keys, stop, num_slots, block_steps, mesh, progress, on_complete,
               columns, block, prefix_cache, prefill_chunk, should_stop)
    run.stats.prefix_cache_bytes_per_device = pool_bytes
    shards = batch_shards(mesh)
    run.stats.kv_bytes_per_device = kv_bytes_per_row(cfg, columns, dtype) * math.ceil(num_slots / shards)
    run.stats.step_bytes_per_device = step_bytes_per_slot(cfg) * math.ceil(num_slots / shards)
    run.run(decode_params)
    return GenerateResult(tokens=[r.tokens for r in run.rows], logprobs=[r.logprobs for r in run.rows],
                          model_logprobs=[r.model_logprobs for r in run.rows],
                          finish_reasons=[r.reason for r in run.rows], prompt_index=[r.prompt for r in run.rows],
                          sample_index=[r.sample for r in run.rows], prompt_lengths=[len(p) for p in prompts],
                          cached_lengths=run.cached_lengths,
                          wall_time_s=time.perf_counter() - t0, stats=run.stats.as_dict())


def tqdm_progress(bar) -> Callable[[EngineStats], None]:
    """A progress callback that advances a tqdm bar by finished rows and shows tokens/s, slot use and
    the prefix cache's hit rate."""
    seen = [0]

    def update(st: EngineStats) -> None:
        bar.update(st.rows_done - seen[0])
        seen[0] = st.rows_done
        cache = f", prefix cache {st.prefix_hit_rate:.0%}" if st.cached_tokens else ""
        bar.set_postfix_str(f"{st.tokens_per_s:.1f} tok/s, slots {st.slot_use:.0%} of {st.num_slots}{cache}",
                            refresh=False)

    return update
