"""Selective Language Modeling's objective (Rho-1, Lin et al. 2024, arXiv 2404.07965; docs/ALGORITHMS.md
section 3), pure functions with no I/O:

    L_delta(x_i) = L_theta(x_i) - L_ref(x_i)               excess loss; a constant (stop_gradient)
    kept         = top n_keep valid tokens by L_delta,     n_keep = max(1, floor(k * N_valid))
    L_SLM        = sum_{i kept} L_theta(x_i) / n_keep

Valid tokens are the trained targets of the data pipeline (weights > 0): padding and prompt
tokens are never ranked, kept or counted. Ties keep the earlier position. Scope 'batch' ranks all
valid tokens of the batch together (the paper), 'sequence' each row alone; global_selection
ranks a whole optimizer batch of micro-batches in the step's prepare pass.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp

from reasonax.model.config import ModelConfig
from reasonax.train import data as data_lib
from reasonax.train.loss import batch_logprobs

SCOPES = ("batch", "sequence")


def keep_count(n_valid: jax.Array, ratio: float) -> jax.Array:
    """n_keep = max(1, floor(ratio * n_valid)) (0 when n_valid = 0), exact in int32 arithmetic."""
    frac = Fraction(ratio).limit_denominator(10_000)
    p, q = frac.numerator, frac.denominator
    n = jnp.asarray(n_valid, jnp.int32)
    k = (n // q) * p + ((n % q) * p) // q
    return jnp.where(n > 0, jnp.maximum(k, 1), 0)


def _select_flat(excess: jax.Array, valid: jax.Array, ratio: float) -> jax.Array:
    key = jnp.where(valid, excess.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-key, stable=True)  # descending excess, earlier position first on ties
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return valid & (rank < keep_count(valid.sum(), ratio))


def select_tokens(excess, valid, ratio: float, scope: str = "batch") -> jax.Array:
    """bool [B,T]: the top `ratio` of valid tokens by excess loss, over the whole batch
    (scope='batch') or within each row (scope='sequence'). Invalid tokens are never selected."""
    excess, valid = jnp.asarray(excess), jnp.asarray(valid, bool)
    if excess.shape != valid.shape or excess.ndim != 2:
        raise ValueError(f"excess {excess.shape} and valid {valid.shape} must both be [B, T]")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio}: expected 0 < ratio <= 1")
    if scope == "batch":
        return _select_flat(excess.reshape(-1), valid.reshape(-1), ratio).reshape(excess.shape)
    if scope == "sequence":
        return jax.vmap(functools.partial(_select_flat, ratio=ratio))(excess, valid)
    raise ValueError(f"scope={scope!r}; expected one of {SCOPES}")


def reference_loss(batch: dict, aux: tuple, ref_cfg: ModelConfig | None, chunk: int | None) -> jax.Array:
    """L_ref [B,T]: the reference forward on aux[0] (online), else the batch's stored ref_loss."""
    if aux:
        return jax.lax.stop_gradient(-batch_logprobs(aux[0], batch, ref_cfg, chunk))
    if data_lib.REF_LOSS not in batch:
        raise ValueError("SLM batch has no 'ref_loss' (offline mode needs ref_scores in the data pipeline) "
                         "and no reference params were passed (online mode)")
    return batch[data_lib.REF_LOSS].astype(jnp.float32)


def selected_loss(loss: jax.Array, ref: jax.Array, keep: jax.Array, valid: jax.Array):
    """(sum of L_theta over kept, number kept, metrics) with the SLM diagnostics as
    (numerator, denominator) pairs: fraction selected, mean excess of selected / unselected
    tokens, the loss over all valid tokens and the reference's loss over them."""
    excess = jax.lax.stop_gradient(loss - ref)
    unkept = valid & ~keep
    f32 = lambda m: m.astype(jnp.float32).sum()  # noqa: E731
    total = lambda x, m: jnp.where(m, x, 0.0).sum()  # noqa: E731
    metrics = {
        "slm/selected_frac": (f32(keep), f32(valid)),
        "slm/excess_selected": (total(excess, keep), f32(keep)),
        "slm/excess_unselected": (total(excess, unkept), f32(unkept)),
        "slm/loss_all": (total(jax.lax.stop_gradient(loss), valid), f32(valid)),
        "slm/ref_loss": (total(ref, valid), f32(valid)),
    }
    return total(loss, keep), f32(keep), metrics


def slm_loss(params: dict, batch: dict, *aux, cfg: ModelConfig, ratio: float, scope: str = "batch",
             chunk: int | None = None, ref_cfg: ModelConfig | None = None):
    """The SLM loss_fn for step.build_train_step: (kept loss sum, kept count, metrics). The
    selection comes from batch['selected'] when a prepare step ranked the global batch."""
    loss = -batch_logprobs(params, batch, cfg, chunk)
    ref = reference_loss(batch, aux, ref_cfg, chunk)
    valid = batch["weights"] > 0
    keep = batch.get("selected")
    if keep is None:
        keep = select_tokens(jax.lax.stop_gradient(loss - ref), valid, ratio, scope)
    return selected_loss(loss, ref, keep, valid)


def global_selection(cfg: ModelConfig, ratio: float, chunk: int | None = None,
                     ref_cfg: ModelConfig | None = None):
    """A step `prepare`: one forward over all micro-batches, then batch-scope selection over the
    whole optimizer batch, stored as micro_batches['selected']."""

    def prepare(params, mbs, *aux):
        def excess_of(_, mb):
            return None, -batch_logprobs(params, mb, cfg, chunk) - reference_loss(mb, aux, ref_cfg, chunk)

        _, excess = jax.lax.scan(excess_of, None, mbs)  # [A, rows, T]
        T = excess.shape[-1]
        keep = select_tokens(excess.reshape(-1, T), (mbs["weights"] > 0).reshape(-1, T), ratio, "batch")
        return {**mbs, "selected": keep.reshape(excess.shape)}

    return prepare
