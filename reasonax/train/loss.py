"""Chunked cross-entropy: per-token log-probs without a float32 [B,T,V] tensor, and the SFT loss.

Losses return (loss_sum, token_count, metrics) so that gradient accumulation and packing give
the true token mean of a whole batch: the step divides summed gradients by the summed count.
`metrics` maps a name to a (numerator, denominator) pair, summed over micro-batches by the step
and reported as their ratio.

Einsum letters: B batch, C positions in a chunk, D hidden, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonax.model.config import ModelConfig
from reasonax.model.transformer import hidden_states

LOGITS_BUDGET_BYTES = 1 << 28  # float32 logits of one chunk (forward), per whole batch


def chunk_len(batch: int, seq: int, vocab: int, budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Positions per chunk so that a chunk's float32 logits [B,C,V] fit in budget_bytes (chunks of
    near-equal size, so padding the sequence to a whole number of chunks adds < n_chunks positions)."""
    cap = int(max(1, min(seq, budget_bytes // (4 * batch * vocab))))
    n = -(-seq // cap)
    return -(-seq // n)


def token_logprobs(params: dict, h: jax.Array, targets: jax.Array, cfg: ModelConfig,
                   chunk: int | None = None, temperature: float = 1.0, entropy: bool = False,
                   entropy_grad: bool = False):
    """log p(targets) float32 [B,T] from final hidden states h [B,T,D], `chunk` positions at a time.

    temperature divides the (soft-capped) logits, as the sampler does; with entropy=True the
    result is (logp, entropy [B,T]) with the entropy of each position's distribution (no gradient,
    unless entropy_grad: GRPO's entropy bonus differentiates it).

    Each chunk's logits are computed, reduced to (target logit - logsumexp) and dropped; under
    jax.checkpoint the backward pass recomputes them chunk by chunk, so the peak is one chunk's
    [B,C,V] float32 logits (and their gradient) instead of the whole sequence's. When one chunk
    covers the sequence there is nothing to save and the logits are kept for the backward pass.
    """
    B, T, D = h.shape
    head = params["embed"] if cfg.tie_embeddings else params["lm_head"]
    C = chunk or chunk_len(B, T, cfg.vocab_size)
    n = -(-T // C)
    pad = n * C - T
    hc = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, C, D).swapaxes(0, 1)
    tc = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, C).swapaxes(0, 1)

    def one(h_c, t_c):
        logits = jnp.einsum("BCD,VD->BCV", h_c, head, preferred_element_type=jnp.float32)
        if cfg.final_softcap:
            logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        if temperature != 1.0:
            logits = logits / temperature
        target = jnp.take_along_axis(logits, t_c[..., None].astype(jnp.int32), axis=-1)[..., 0]
        lse = jax.nn.logsumexp(logits, axis=-1)
        if not entropy:
            return target - lse
        if entropy_grad:
            return target - lse, lse - (jax.nn.softmax(logits, axis=-1) * logits).sum(-1)
        sg = jax.lax.stop_gradient(logits)
        return target - lse, jax.lax.stop_gradient(lse) - (jax.nn.softmax(sg, axis=-1) * sg).sum(-1)

    if n == 1:
        return one(h, targets)
    one = jax.checkpoint(one)
    _, out = jax.lax.scan(lambda c, x: (c, one(*x)), None, (hc, tc))
    unchunk = lambda o: o.swapaxes(0, 1).reshape(B, n * C)[:, :T]  # noqa: E731
    return jax.tree.map(unchunk, out)


def batch_logprobs(params: dict, batch: dict, cfg: ModelConfig, chunk: int | None = None,
                   temperature: float = 1.0, entropy: bool = False, entropy_grad: bool = False):
    """log p(batch['targets'] | batch['inputs']) [B,T] (packed rows: segment_ids/positions
    honoured); temperature, entropy and entropy_grad as in token_logprobs."""
    h, _ = hidden_states(params, batch["inputs"], cfg, positions=batch.get("positions"),
                         segment_ids=batch.get("segment_ids"))
    return token_logprobs(params, h, batch["targets"], cfg, chunk, temperature, entropy, entropy_grad)


def sft_loss(params: dict, batch: dict, cfg: ModelConfig, chunk: int | None = None):
    """Weighted negative log-likelihood: (sum_t w_t * -log p_t, sum_t w_t, metrics)."""
    logp = batch_logprobs(params, batch, cfg, chunk)
    w = batch["weights"].astype(jnp.float32)
    return -(logp * w).sum(), w.sum(), {}
