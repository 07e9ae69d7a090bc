"""Attention: which keys each query sees (MaskSpec), and the kernels that apply it.

Einsum letters: B batch, T query positions, S key positions, N query heads, K kv heads,
G query heads per kv head (N = K * G), H head dim; in a block, q its query rows, k its key columns.

Masking is by *slot* (index in the sequence / KV cache), segment id (0 = padding or empty
cache slot; packed examples get distinct ids) and sliding window (q_slot - k_slot < window).
For left-padded rows and packed segments slot distances equal position distances, so this is
the mask transformers builds. The kernels get the slots and segment ids (a MaskSpec), not a
dense [B, T, S] mask: the blockwise kernel computes each block's mask where it needs it.

Kernels (ModelConfig.attention_impl; `auto` picks one per backend and length, see resolve_impl):

  einsum     the reference: float32 scores [B, N, T, S], softcap before the mask, softmax. Decode
             (T == 1) reads k / v as column blocks without concatenating them (_attend_decode).
  blockwise  flash-style, pure JAX, any backend: an online softmax over key blocks, so memory is
             O(T x block) forward and backward (a custom VJP whose backward recomputes the
             scores block by block); key blocks outside the causal / sliding-window range of a
             query block are never visited and blocks with no attended pair (padding, other
             segments) are skipped by a cond; float32 accumulation. In decode over a long cache,
             one block of scores per row at a time.
  splash     TPU: Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention) with
             segment ids, a causal or local mask and the softcap; off TPU it runs in Pallas
             interpret mode (slow; tests). It needs slots that are plain indices (no cache), so
             prefill into a cache and decode use the blockwise kernel instead.
  cudnn      GPU: jax.nn.dot_product_attention(implementation='cudnn') with the dense mask; no
             softcap (ModelConfig refuses it). Decode uses the einsum / blockwise decode.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from reasonax.model.config import ModelConfig
from reasonax.model.sharding import BATCH_AXES

_MASKED = float(jnp.finfo(jnp.float32).min)
_NO_WINDOW = 1 << 30  # a window no slot distance reaches

# auto: rows (key columns) from which the blockwise kernel replaces einsum on CPU, and cache
# columns from which decode goes blockwise (bench/attention.py, bench/decode_ops.py)
LONG_ROWS = 1024
LONG_DECODE = 4096
SPLASH_BLOCK = 128  # splash's block sizes; rows are padded to a multiple of it


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Which keys each query sees: causal on slots, same non-zero segment, and within the window.

    q_slots [T] (shared by the rows) or [B, T] (each row writes at its own cache column); k_slots
    [S], non-decreasing; q_seg [B, T], k_seg [B, S] (0: padding / empty column). window: the
    sliding window (static) or None; sliding: whether the window applies (a bool, or a traced bool
    when the layer type is a scanned value). aligned (static): q_slots == k_slots == arange(T), the
    no-cache case, where index-based kernel masks (splash) hold.
    """

    q_slots: jax.Array
    k_slots: jax.Array
    q_seg: jax.Array
    k_seg: jax.Array
    window: int | None = None
    sliding: bool | jax.Array = True
    aligned: bool = False

    def with_sliding(self, sliding) -> MaskSpec:
        return dataclasses.replace(self, sliding=sliding)

    def effective_window(self):
        """The window as an int32 scalar (a huge one when none applies), or None if none ever does."""
        if self.window is None or self.sliding is False:
            return None
        if self.sliding is True:
            return jnp.int32(self.window)
        return jnp.where(self.sliding, jnp.int32(self.window), jnp.int32(_NO_WINDOW))


def _pair_mask(q_slots, k_slots, q_seg, k_seg, window) -> jax.Array:
    """[B, t, s] from q_slots [B or 1, t], k_slots [s], q_seg [B, t], k_seg [B, s]."""
    causal = k_slots[None, None, :] <= q_slots[:, :, None]
    mask = causal & (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    if window is not None:
        mask &= (q_slots[:, :, None] - k_slots[None, None, :]) < window
    return mask


def make_mask(spec: MaskSpec) -> jax.Array:
    """The dense boolean mask [B, T, S] (einsum and cudnn kernels; small decode masks)."""
    q = spec.q_slots if spec.q_slots.ndim == 2 else spec.q_slots[None]
    return _pair_mask(q, spec.k_slots, spec.q_seg, spec.k_seg, spec.effective_window())


def resolve_impl(cfg: ModelConfig, T: int, S: int, spec: MaskSpec, backend: str | None = None) -> str:
    """The kernel attend runs for T queries over S keys: cfg.attention_impl, with `auto` resolved per
    backend and length, and the kernels that cannot take a cache (splash) or a single query
    (cudnn) replaced by blockwise / the decode paths. Returns einsum | blockwise | splash | cudnn."""
    impl = cfg.attention_impl
    backend = backend or jax.default_backend()
    if T == 1:  # decode
        if impl == "einsum" or (impl != "blockwise" and S < LONG_DECODE):
            return "einsum"
        return "blockwise"
    if impl == "auto":
        if backend == "tpu":
            impl = "splash"
        elif backend in ("gpu", "cuda", "rocm") and not cfg.attn_softcap:
            impl = "cudnn"
        else:
            impl = "blockwise" if S >= LONG_ROWS else "einsum"
    if impl == "splash" and not spec.aligned:
        return "blockwise"
    return impl


def attend(cfg: ModelConfig, q: jax.Array, k, v, spec: MaskSpec) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] (or tuples of column blocks [B,S_i,K,H], concatenated along S),
    spec: the mask -> [B,T,N,H]. Query rows that see no key (padding) give zeros from the blockwise
    kernel and unspecified values from the others."""
    S = sum(x.shape[1] for x in k) if isinstance(k, tuple) else k.shape[1]
    impl = resolve_impl(cfg, q.shape[1], S, spec)
    if q.shape[1] == 1:
        if impl == "blockwise":
            return _attend_decode_blockwise(cfg, q, k, v, spec)
        return _attend_decode(cfg, q, k, v, make_mask(spec))
    k, v = (jnp.concatenate(x, axis=1) if isinstance(x, tuple) else x for x in (k, v))
    if impl == "einsum":
        return _attend_einsum(cfg, q, k, v, make_mask(spec))
    if impl == "blockwise":
        return blockwise(cfg, q, k, v, spec)
    if impl == "splash":
        return _attend_splash(cfg, q, k, v, spec)
    return jax.nn.dot_product_attention(q, k, v, mask=make_mask(spec)[:, None], scale=cfg.attn_scale,
                                        implementation="cudnn")


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


def _attend_decode_blockwise(cfg: ModelConfig, q, k, v, spec: MaskSpec):
    """Decode over a long cache: the online softmax of the blockwise kernel over column blocks of
    cfg.attention_block columns (or the given tuple blocks), so one block of scores per row is live
    at a time; each block's mask comes from the slots and segment ids. Same operand order as
    _attend_decode."""
    B, _, N, H = q.shape
    if isinstance(k, tuple):
        spans, lo = [], 0
        for kb in k:
            spans.append((lo, kb.shape[1]))
            lo += kb.shape[1]
        ks, vs = k, v
    else:
        S, bk = k.shape[1], cfg.attention_block
        spans = [(lo, min(bk, S - lo)) for lo in range(0, S, bk)]
        ks = tuple(k[:, lo:lo + w] for lo, w in spans)
        vs = tuple(v[:, lo:lo + w] for lo, w in spans)
    K = ks[0].shape[2]
    q = q.reshape(B, K, N // K, H)
    q_slots = spec.q_slots if spec.q_slots.ndim == 2 else spec.q_slots[None]
    window = spec.effective_window()
    m = jnp.full((B, K, N // K), _MASKED, jnp.float32)
    l = jnp.zeros((B, K, N // K), jnp.float32)
    acc = jnp.zeros((B, K, N // K, H), jnp.float32)
    for (lo, w), kb, vb in zip(spans, ks, vs):
        mask = _pair_mask(q_slots, spec.k_slots[lo:lo + w], spec.q_seg, spec.k_seg[:, lo:lo + w], window)
        mask = mask[:, :, None, :]  # [B, 1, 1, w] against scores [B, K, G, w]
        s = jnp.swapaxes(jnp.einsum("BSKH,BKGH->BKSG", kb, q, preferred_element_type=jnp.float32), 2, 3)
        s = _finish_scores(cfg, s, mask)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        acc = acc * corr[..., None] + jnp.einsum("BKGS,BSKH->BKGH", p.astype(vb.dtype), vb,
                                                 preferred_element_type=jnp.float32)
        m = m_new
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return out.astype(vb.dtype).reshape(B, 1, N, H)


# ----------------------------------------------------------------------------------------------
# The blockwise kernel


def blockwise(cfg: ModelConfig, q, k, v, spec: MaskSpec, block: int | None = None) -> jax.Array:
    """Flash-style attention (see the module docstring): q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H],
    blocks of `block` (default cfg.attention_block) query rows and key columns; T and S need not
    be multiples of it."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    block = block or cfg.attention_block
    bq, bk = min(block, T), min(block, S)
    nq, nk = -(-T // bq), -(-S // bk)
    q_slots = jnp.broadcast_to(spec.q_slots if spec.q_slots.ndim == 2 else spec.q_slots[None], (B, T))

    def pad(x, n, axis, mode="constant"):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, n - x.shape[axis])
        return jnp.pad(x, widths, mode=mode) if n > x.shape[axis] else x

    # padded query rows and key columns get segment 0 (they see / are seen by nothing) and the
    # edge slot (so they do not widen a block's slot range)
    qp = pad(q, nq * bq, 1).reshape(B, nq, bq, K, N // K, H)
    kp, vp = (pad(x, nk * bk, 1).reshape(B, nk, bk, K, H) for x in (k, v))
    qs = pad(q_slots, nq * bq, 1, "edge").reshape(B, nq, bq)
    ks = pad(spec.k_slots, nk * bk, 0, "edge").reshape(nk, bk)
    qg = pad(spec.q_seg.astype(jnp.int32), nq * bq, 1).reshape(B, nq, bq)
    kg = pad(spec.k_seg.astype(jnp.int32), nk * bk, 1).reshape(B, nk, bk)
    window = spec.effective_window()
    window = jnp.int32(_NO_WINDOW) if window is None else window
    out = _flash(cfg.attn_scale, cfg.attn_softcap, qp, kp, vp, qs, ks, qg, kg, window)
    return out.reshape(B, nq * bq, N, H)[:, :T]


def _key_ranges(qs, ks, window):
    """Per query block, the key blocks [lo, hi) holding a causal, in-window pair: qs [B,nq,bq],
    ks [nk,bk] (non-decreasing) -> int32 lo, hi [nq]."""
    nk = ks.shape[0]
    q_lo, q_hi = qs.min(axis=(0, 2)), qs.max(axis=(0, 2))
    k_lo, k_hi = ks.min(axis=1), ks.max(axis=1)
    need = (k_lo[None, :] <= q_hi[:, None]) & (k_hi[None, :] > q_lo[:, None] - window)  # [nq, nk]
    any_ = need.any(axis=1)
    lo = jnp.where(any_, jnp.argmax(need, axis=1), 0)
    hi = jnp.where(any_, nk - jnp.argmax(need[:, ::-1], axis=1), 0)
    return lo.astype(jnp.int32), hi.astype(jnp.int32)


def _block_scores(scale, softcap, qi, kj):
    """Scaled (and softcapped) float32 scores [B,K,G,q,k] of qi [B,q,K,G,H], kj [B,k,K,H], and the
    tanh of the softcap (for its derivative)."""
    s = jnp.einsum("BqKGH,BkKH->BKGqk", qi, kj, preferred_element_type=jnp.float32) * scale
    if not softcap:
        return s, None
    t = jnp.tanh(s / softcap)
    return t * softcap, t


def _flash_forward(scale, softcap, q, k, v, qs, ks, qg, kg, window):
    """q [B,nq,bq,K,G,H], k/v [B,nk,bk,K,H], qs/qg [B,nq,bq], ks [nk,bk], kg [B,nk,bk] ->
    out [B,nq,bq,K,G,H] (q's dtype) and the log-sum-exp [nq,B,K,G,bq] (float32)."""
    B, nq, bq, K, G, H = q.shape
    lo, hi = _key_ranges(qs, ks, window)

    def q_block(i):
        qi, qsi, qgi = q[:, i], qs[:, i], qg[:, i]

        def k_block(j, carry):
            mask = _pair_mask(qsi, ks[j], qgi, kg[:, j], window)[:, None, None]  # [B,1,1,bq,bk]

            def visit(carry):
                m, l, acc = carry
                s, _ = _block_scores(scale, softcap, qi, k[:, j])
                s = jnp.where(mask, s, _MASKED)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                pv = jnp.einsum("BKGqk,BkKH->BKGqH", p.astype(v.dtype), v[:, j], preferred_element_type=jnp.float32)
                return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

            return jax.lax.cond(mask.any(), visit, lambda c: c, carry)

        init = (jnp.full((B, K, G, bq), _MASKED, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
                jnp.zeros((B, K, G, bq, H), jnp.float32))
        m, l, acc = jax.lax.fori_loop(lo[i], hi[i], k_block, init)
        o = acc / jnp.where(l > 0, l, 1.0)[..., None]
        lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), 0.0)
        return jnp.moveaxis(o, 3, 1).astype(q.dtype), lse  # o [B,bq,K,G,H]

    o, lse = jax.lax.map(q_block, jnp.arange(nq))
    return jnp.moveaxis(o, 0, 1), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(scale, softcap, q, k, v, qs, ks, qg, kg, window):
    return _flash_forward(scale, softcap, q, k, v, qs, ks, qg, kg, window)[0]


def _flash_fwd(scale, softcap, q, k, v, qs, ks, qg, kg, window):
    o, lse = _flash_forward(scale, softcap, q, k, v, qs, ks, qg, kg, window)
    return o, (q, k, v, qs, ks, qg, kg, window, o, lse)


def _flash_bwd(scale, softcap, res, do):
    """Recompute each visited block's probabilities from the saved log-sum-exp; dq per query block,
    dk / dv accumulated over the query blocks (float32)."""
    q, k, v, qs, ks, qg, kg, window, o, lse = res
    B, nq, bq, K, G, H = q.shape
    lo, hi = _key_ranges(qs, ks, window)
    delta = jnp.einsum("BnqKGH,BnqKGH->nBKGq", do.astype(jnp.float32), o.astype(jnp.float32))

    def q_block(carry, i):
        qi, doi, qsi, qgi = q[:, i], do[:, i], qs[:, i], qg[:, i]
        lse_i, delta_i = lse[i][..., None], delta[i][..., None]

        def k_block(j, inner):
            mask = _pair_mask(qsi, ks[j], qgi, kg[:, j], window)[:, None, None]

            def visit(inner):
                dq, dk, dv = inner
                kj, vj = k[:, j], v[:, j]
                s, t = _block_scores(scale, softcap, qi, kj)
                p = jnp.where(mask, jnp.exp(s - lse_i), 0.0)
                dv_j = jnp.einsum("BKGqk,BqKGH->BkKH", p.astype(do.dtype), doi, preferred_element_type=jnp.float32)
                dp = jnp.einsum("BqKGH,BkKH->BKGqk", doi, vj, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i)
                if softcap:
                    ds = ds * (1.0 - t * t)
                ds = ds * scale
                dq = dq + jnp.einsum("BKGqk,BkKH->BqKGH", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
                dk_j = jnp.einsum("BKGqk,BqKGH->BkKH", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
                dk = jax.lax.dynamic_update_index_in_dim(dk, dk[:, j] + dk_j, j, axis=1)
                dv = jax.lax.dynamic_update_index_in_dim(dv, dv[:, j] + dv_j, j, axis=1)
                return dq, dk, dv

            return jax.lax.cond(mask.any(), visit, lambda c: c, inner)

        dq0 = jnp.zeros((B, bq, K, G, H), jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(lo[i], hi[i], k_block, (dq0, *carry))
        return (dk, dv), dq

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(q_block, (zeros, zeros), jnp.arange(nq))
    dq = jnp.moveaxis(dq, 0, 1).astype(q.dtype)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------------
# Splash (TPU)


@functools.cache
def _splash_kernel(num_heads: int, rows: int, window: int | None, softcap: float | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (rows, rows)
    mask = sm.CausalMask(shape) if window is None else sm.LocalMask(shape, (window - 1, 0), offset=0)
    b = SPLASH_BLOCK
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mha(sm.MultiHeadMask([mask] * num_heads), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)


def _attend_splash(cfg: ModelConfig, q, k, v, spec: MaskSpec):
    """Splash attention per row (vmapped), rows padded to a multiple of SPLASH_BLOCK with segment
    0; the scale is applied to q (splash applies none), the softcap by the kernel. A traced
    `sliding` picks the local or the causal kernel with a cond. Under a mesh, each device runs
    the kernel on its rows (shard_map over the batch axes; heads are not split)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    B, T, N, H = q.shape
    rows = -(-T // SPLASH_BLOCK) * SPLASH_BLOCK
    widths = ((0, 0), (0, rows - T), (0, 0), (0, 0))
    qp = jnp.swapaxes(jnp.pad(q * jnp.asarray(cfg.attn_scale, q.dtype), widths), 1, 2)  # [B, N, rows, H]
    kp, vp = (jnp.swapaxes(jnp.pad(x, widths), 1, 2) for x in (k, v))
    qg = jnp.pad(spec.q_seg.astype(jnp.int32), ((0, 0), (0, rows - T)))
    kg = jnp.pad(spec.k_seg.astype(jnp.int32), ((0, 0), (0, rows - T)))
    interpret = jax.default_backend() != "tpu"

    mesh = jax.sharding.get_abstract_mesh()
    batch_axes = tuple(a for a in BATCH_AXES if not mesh.empty and a in mesh.axis_names and mesh.shape[a] > 1)

    def run(window):
        kernel = _splash_kernel(N, rows, window, cfg.attn_softcap, interpret)
        rows_fn = jax.vmap(lambda q1, k1, v1, a, b: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=a, kv=b)))
        if not batch_axes:
            return rows_fn(qp, kp, vp, qg, kg)
        # a Pallas call is not partitioned by XLA: run it on each device's rows (heads whole)
        spec = jax.sharding.PartitionSpec(batch_axes)
        return jax.shard_map(rows_fn, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec, check_vma=False)(
            qp, kp, vp, qg, kg)

    if spec.window is None or spec.sliding is False:
        out = run(None)
    elif spec.sliding is True:
        out = run(spec.window)
    else:
        out = jax.lax.cond(spec.sliding, lambda: run(spec.window), lambda: run(None))
    return jnp.swapaxes(out, 1, 2)[:, :T].astype(q.dtype)
