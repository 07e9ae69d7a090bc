"""The process reward model's objective (Lightman et al. 2023, "Let's Verify Step by Step",
arXiv 2305.20050; Wang et al. 2024, Math-Shepherd, arXiv 2312.08935): binary cross-entropy on the
head's logit at the last token of each step's separator, and the held-out metrics.

    L = sum_i w_i * BCE(z_i, y_i) / sum_i w_i,   BCE(z, y) = softplus(z) - y z

z_i the logit at position i, y_i in [0, 1] its label (soft labels allowed: Math-Shepherd's
fraction of completions that reach the gold), w_i = 1 at a separator's last token and 0 at every
other position, so dL/dz_i = w_i (sigmoid(z_i) - y_i) / sum w is exactly zero off the separators.
Pure functions: the recipe (reasonax.train.prm.recipe) feeds them batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model.config import ModelConfig
from reasonax.model.prm import prm_logits

THRESHOLD = 0.5  # a score >= 0.5 predicts "correct"; a soft label >= 0.5 counts as correct


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Elementwise softplus(z) - y z, stable for large |z| (max(z, 0) - y z + log1p(exp(-|z|)))."""
    z = logits.astype(jnp.float32)
    return jnp.maximum(z, 0.0) - labels.astype(jnp.float32) * z + jnp.log1p(jnp.exp(-jnp.abs(z)))


def prm_objective(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """(sum_i w_i BCE(z_i, y_i), sum_i w_i, metrics) over logits [B, T]; metrics has 'step_accuracy'
    as a (correct, labelled) pair (prediction and label thresholded at THRESHOLD)."""
    w = weights.astype(jnp.float32)
    on = w > 0  # logits and labels off the separators are replaced before the loss: nothing of them
    z, y = jnp.where(on, logits, 0.0), jnp.where(on, labels, 0.0)  # (not even a NaN) reaches the gradient
    loss = bce_with_logits(z, y)
    hit = (z >= 0.0) == (y >= THRESHOLD)  # sigmoid(z) >= 0.5  <=>  z >= 0
    return (loss * w).sum(), w.sum(), {"step_accuracy": ((hit * w).sum(), w.sum())}


def prm_loss(params: dict, batch: dict, cfg: ModelConfig):
    """The train step's loss_fn: the PRM's logits on batch['inputs'] (packed or padded rows:
    segment_ids, positions) and prm_objective against batch['labels'] with batch['weights']."""
    logits = prm_logits(params, batch["inputs"], cfg, positions=batch.get("positions"),
                        segment_ids=batch.get("segment_ids"))
    return prm_objective(logits, batch["labels"], batch["weights"])


def step_accuracy(scores, labels) -> float:
    """Share of steps whose score and label fall on the same side of THRESHOLD (host numpy)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if s.size == 0:
        return float("nan")
    return float(np.mean((s >= THRESHOLD) == (y >= THRESHOLD)))


def auc(scores, labels) -> float | None:
    """Area under the ROC curve of scores against binary labels (labels >= THRESHOLD positive):
    the probability that a random positive scores above a random negative, ties counting 1/2
    (Mann-Whitney U from midranks). None when either class is empty."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64) >= THRESHOLD
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # midranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))
