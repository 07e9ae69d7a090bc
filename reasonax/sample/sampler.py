"""The one sampler: jitted prefill of a left-padded prompt batch, then a lax.while_loop decode.

Shapes are static per (prompt-length bucket, row bucket, SamplingParams), so repeated calls
reuse compiled programs. Each distinct prompt is prefilled once and its KV cache copied to its
`n` sample rows (GRPO groups and compute-matched sampling repeat prompts). Every row has its own
PRNG key, derived from (seed, prompt index, sample index), so results do not depend on how the
rows were batched. Large requests are split into chunks that fit a memory budget.

Per generated token we return the token, its log-prob under the distribution it was sampled from
(temperature, top-k, top-p, min-p applied) and its log-prob under the raw model (temperature 1,
no truncation; GRPO needs it when temperature != 1). Greedy decoding has no sampling
distribution, so both hold the model's log-prob.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model import transformer
from reasonax.model.cache import KV_AXES, KVCache, init_cache
from reasonax.model.config import ModelConfig
from reasonax.model.sharding import constrain, named_sharding

PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_TOP_P_ITERS = 32


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 turn those filters off."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1  # samples per prompt

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {self.min_p}")
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if problems:
            raise ValueError("invalid SamplingParams: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass
class GenerateResult:
    """One row per (prompt, sample), prompt-major: row r is prompt r // n, sample r % n."""

    tokens: list[list[int]]  # generated tokens, prompt excluded, EOS kept
    logprobs: list[list[float]]  # under the sampling distribution
    model_logprobs: list[list[float]]  # under the raw model (temperature 1, untruncated)
    finish_reasons: list[str]  # "eos" | "length"
    prompt_index: list[int]
    sample_index: list[int]
    prompt_lengths: list[int]  # per distinct prompt
    wall_time_s: float = 0.0

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def generated_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens processed (each distinct prompt once)."""
        return sum(self.prompt_lengths)


# ----------------------------------------------------------------------------------------------
# Token selection


def _top_p_keep(probs: jax.Array, top_p: float) -> jax.Array:
    """Smallest set of most likely tokens with mass >= top_p, without sorting the vocabulary.

    Bisection on a probability threshold tau: keep {i: p_i >= tau} for the largest tau whose kept
    mass is still >= top_p. 32 halvings reach float32 resolution; ties at the threshold are kept.
    """
    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        ok = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jnp.zeros(probs.shape[:1], probs.dtype)
    hi = jnp.max(probs, axis=-1) * (1 + 1e-6) + 1e-30
    lo, _ = jax.lax.fori_loop(0, _TOP_P_ITERS, body, (lo, hi))
    return probs >= lo[:, None]


def sampling_logits(logits: jax.Array, sp: SamplingParams) -> jax.Array:
    """Logits of the sampling distribution [B, V]: temperature, then top-k, top-p, min-p masks (-inf)."""
    scaled = logits / sp.temperature
    keep = jnp.ones(scaled.shape, bool)
    if sp.top_k and sp.top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, sp.top_k)[0][:, -1:]
        keep &= scaled >= kth
    if sp.top_p < 1.0 or sp.min_p > 0.0:
        probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
        if sp.top_p < 1.0:
            keep &= _top_p_keep(probs, sp.top_p)
        if sp.min_p > 0.0:
            keep &= probs >= sp.min_p * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(keep, scaled, -jnp.inf)


def select_tokens(logits: jax.Array, keys: jax.Array, step: jax.Array, sp: SamplingParams):
    """(token, sampling log-prob, model log-prob), each [B], from float32 logits [B, V]."""
    model_lp = jax.nn.log_softmax(logits, axis=-1)
    if sp.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lp = jnp.take_along_axis(model_lp, tok[:, None], axis=-1)[:, 0]
        return tok, lp, lp
    masked = sampling_logits(logits, sp)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    tok = jax.vmap(jax.random.categorical)(step_keys, masked).astype(jnp.int32)
    sample_lp = jax.nn.log_softmax(masked, axis=-1)
    pick = lambda a: jnp.take_along_axis(a, tok[:, None], axis=-1)[:, 0]  # noqa: E731
    return tok, pick(sample_lp), pick(model_lp)


# ----------------------------------------------------------------------------------------------
# The jitted program: prefill P prompts, copy each cache to n rows, decode in a while loop


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Loop:
    step: jax.Array  # next position in the output buffers
    last: jax.Array  # [R] last sampled token (fed next)
    done: jax.Array  # [R] bool
    tokens: jax.Array  # [R, M]
    logprobs: jax.Array  # [R, M]
    model_logprobs: jax.Array  # [R, M]
    cache: KVCache


def _repeat_rows(cache: KVCache, n: int) -> KVCache:
    if n == 1:
        return cache
    rep = lambda a, axis: jnp.repeat(a, n, axis=axis)  # noqa: E731
    return KVCache(k=rep(cache.k, 1), v=rep(cache.v, 1), segment_ids=rep(cache.segment_ids, 0),
                   next_pos=rep(cache.next_pos, 0), index=cache.index)


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "eos_ids", "unstack"))
def _generate_chunk(params, prompts, prompt_segments, row_keys, live, cfg: ModelConfig, sp: SamplingParams,
                    eos_ids: tuple[int, ...], unstack: bool = False):
    """prompts/prompt_segments [P, T] (left-padded), row_keys [P*n], live [P*n] -> per-row outputs.
    unstack: decode over per-layer weight arrays (see transformer.unstack_layers)."""
    P, T = prompts.shape
    R, M = P * sp.n, sp.max_new_tokens
    dtype = params["embed"].dtype
    cache = init_cache(cfg, P, T + M, dtype)
    h, cache = transformer.hidden_states(params, prompts, cfg, segment_ids=prompt_segments, cache=cache)
    logits = transformer.unembed(params, h[:, -1:], cfg)[:, 0]  # only the last position's logits
    cache = _repeat_rows(cache, sp.n)
    cache = dataclasses.replace(cache, k=constrain(cache.k, KV_AXES), v=constrain(cache.v, KV_AXES))
    logits = jnp.repeat(logits, sp.n, axis=0)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def emit(state: _Loop, logits) -> _Loop:
        tok, lp, mlp = select_tokens(logits, row_keys, state.step, sp)
        tok = jnp.where(state.done, 0, tok)
        write = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val, state.step, axis=1)  # noqa
        return dataclasses.replace(
            state, step=state.step + 1, last=tok, done=state.done | jnp.isin(tok, eos),
            tokens=write(state.tokens, tok), logprobs=write(state.logprobs, lp),
            model_logprobs=write(state.model_logprobs, mlp))

    state = _Loop(step=jnp.zeros((), jnp.int32), last=jnp.zeros((R,), jnp.int32), done=~live,
                  tokens=jnp.zeros((R, M), jnp.int32), logprobs=jnp.zeros((R, M), jnp.float32),
                  model_logprobs=jnp.zeros((R, M), jnp.float32), cache=cache)
    state = emit(state, logits)
    step_params = transformer.unstack_layers(params) if unstack else params

    def cond(s: _Loop):
        return (s.step < M) & ~jnp.all(s.done)

    def body(s: _Loop):
        h, cache = transformer.hidden_states(step_params, s.last[:, None], cfg, cache=s.cache)
        return emit(dataclasses.replace(s, cache=cache), transformer.unembed(params, h, cfg)[:, 0])

    state = jax.lax.while_loop(cond, body, state)
    return state.tokens, state.logprobs, state.model_logprobs, state.step


# ----------------------------------------------------------------------------------------------
# Host side: validation, bucketing, chunking, keys, results


def bucket(length: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"prompt of {length} tokens is longer than the largest bucket {buckets[-1]}")


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


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


def rows_per_chunk(cfg: ModelConfig, prompt_len: int, sp: SamplingParams, dtype, memory_budget_bytes: int,
                   max_rows: int = 256) -> int:
    """Largest power-of-two row count whose KV cache and per-row logits buffers fit the budget."""
    itemsize = jnp.dtype(dtype).itemsize
    cache = 2 * cfg.num_layers * (prompt_len + sp.max_new_tokens) * cfg.num_kv_heads * cfg.head_dim * itemsize
    per_row = cache + 6 * cfg.vocab_size * 4 + 3 * sp.max_new_tokens * 4
    rows = max(1, min(max_rows, memory_budget_bytes // per_row))
    return 1 << (rows.bit_length() - 1)


def row_keys(seed: int, prompt_index: np.ndarray, sample_index: np.ndarray) -> jax.Array:
    """Per-row PRNG keys from (seed, prompt index, sample index): independent of batching."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(
        jnp.asarray(prompt_index, jnp.uint32), jnp.asarray(sample_index, jnp.uint32))


def _mesh_of(params):
    """The mesh params live on, or None on a single device."""
    mesh = getattr(getattr(params["embed"], "sharding", None), "mesh", None)
    return mesh if mesh is not None and mesh.size > 1 else None


def _chunks(prompts, sp: SamplingParams, cfg: ModelConfig, dtype, memory_budget_bytes: int, max_rows: int):
    """(prompt ids, first sample, samples) per chunk: prompts sorted by length so a chunk shares a
    bucket; a chunk holds at most the rows that fit the budget; n above that splits a prompt's samples."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pos = 0
    while pos < len(order):
        T = bucket(len(prompts[order[pos]]))
        cap = rows_per_chunk(cfg, T, sp, dtype, memory_budget_bytes, max_rows)
        if sp.n >= cap:
            for lo in range(0, sp.n, cap):
                yield T, [order[pos]], lo, min(cap, sp.n - lo)
            pos += 1
            continue
        chunk = list(itertools.takewhile(lambda i: bucket(len(prompts[i])) == T, order[pos:pos + cap // sp.n]))
        pos += len(chunk)
        yield T, chunk, 0, sp.n


def generate(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
             eos_ids: Sequence[int] | None = None, seed: int = 0, *, key_ids: Sequence[int] | None = None,
             memory_budget_bytes: int = 2 << 30, max_rows: int = 256, unstack_layers: bool | None = None,
             progress=None) -> GenerateResult:
    """Generate `sampling.n` completions for each prompt (token id lists). See module docstring.

    eos_ids: token ids that end a row (default: cfg.eos_token_ids). key_ids: a stable id per prompt
    (default its index) from which its rows' PRNG keys derive, so a prompt gets the same samples in
    any call. progress: optional callable called with the number of rows finished after each
    chunk. Params sharded on a mesh make the rows shard over the mesh's data axes.
    unstack_layers: decode over per-layer copies of the weights (transformer.unstack_layers),
    which XLA's CPU backend runs 1.5-2x faster than the scanned stack (bench/decode_ops.py);
    default: on CPU only (it costs one copy of the layer weights while generating).
    """
    sp = sampling
    _validate(prompts, cfg, sp)
    key_ids = list(range(len(prompts))) if key_ids is None else [int(k) for k in key_ids]
    if len(key_ids) != len(prompts):
        raise ValueError(f"key_ids has {len(key_ids)} entries for {len(prompts)} prompts")
    eos = tuple(sorted(set(cfg.eos_token_ids if eos_ids is None else eos_ids)))
    unstack = jax.default_backend() == "cpu" if unstack_layers is None else unstack_layers
    t0 = time.perf_counter()
    out: dict[tuple[int, int], tuple] = {}
    for T, chunk, lo, n_here in _chunks(prompts, sp, cfg, params["embed"].dtype, memory_budget_bytes, max_rows):
        _run_chunk(params, cfg, prompts, chunk, lo, n_here, T, sp, eos, seed, key_ids, unstack, out)
        if progress is not None:
            progress(len(chunk) * n_here)
    rows = [(i, j) for i in range(len(prompts)) for j in range(sp.n)]
    toks, lps, mlps, reasons = zip(*(out[r] for r in rows))
    return GenerateResult(tokens=list(toks), logprobs=list(lps), model_logprobs=list(mlps),
                          finish_reasons=list(reasons), prompt_index=[i for i, _ in rows],
                          sample_index=[j for _, j in rows], prompt_lengths=[len(p) for p in prompts],
                          wall_time_s=time.perf_counter() - t0)


def _run_chunk(params, cfg, prompts, chunk, sample_lo, n_here, T, sp, eos, seed, key_ids, unstack, out):
    """Prefill `chunk` prompts once, decode n_here samples each (from sample_lo); rows go to `out`."""
    mesh = _mesh_of(params)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    P = _pow2_at_least(max(len(chunk), math.ceil(shards / n_here)))  # a row bucket; >= 1 row per shard
    tokens = np.zeros((P, T), np.int32)
    segments = np.zeros((P, T), np.int32)
    for r, i in enumerate(chunk):
        p = np.asarray(prompts[i], np.int32)
        tokens[r, T - len(p):] = p
        segments[r, T - len(p):] = 1
    segments[len(chunk):, -1] = 1  # dummy rows: one valid token so their attention is well defined
    prompt_idx = np.repeat(np.array(chunk + [0] * (P - len(chunk))), n_here)
    sample_idx = np.tile(np.arange(sample_lo, sample_lo + n_here), P)
    live = np.repeat(np.arange(P) < len(chunk), n_here)
    keys = row_keys(seed, np.asarray(key_ids)[prompt_idx], sample_idx)
    args = (jnp.asarray(tokens), jnp.asarray(segments), keys, jnp.asarray(live))
    run = functools.partial(_generate_chunk, cfg=cfg, sp=dataclasses.replace(sp, n=n_here), eos_ids=eos,
                            unstack=unstack)
    if mesh is None:
        res = run(params, *args)
    else:
        args = tuple(jax.device_put(a, named_sharding(mesh, ("batch",) + (None,) * (a.ndim - 1), a.shape))
                     for a in args)
        with jax.set_mesh(mesh):
            res = run(params, *args)
    toks, lps, mlps, steps = jax.device_get(res)
    eos_arr = np.asarray(eos, np.int32)
    for r in range(len(chunk) * n_here):
        row = toks[r, :int(steps)]
        hits = np.flatnonzero(np.isin(row, eos_arr)) if eos else np.array([], int)
        end = int(hits[0]) + 1 if hits.size else len(row)
        key = (int(prompt_idx[r]), int(sample_idx[r]))
        out[key] = (row[:end].tolist(), lps[r, :end].tolist(), mlps[r, :end].tolist(),
                    "eos" if hits.size else "length")
