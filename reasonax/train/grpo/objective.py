"""GRPO's objective, pure functions with no I/O (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300,
and the common variants; equations in docs/ALGORITHMS.md section 4): group advantages, the
clipped policy loss, the k3 KL, loss aggregation, DAPO's overlong shaping, the sampler/learner
importance-sampling correction, and the loss and prepare pass of the train step. The rollouts
are in reasonax.train.grpo.rollout, the recipe and CLI in reasonax.train.grpo.recipe.

Shapes: N = prompts x G completions, laid out prompt-major (rows i*G .. i*G+G-1 are prompt i's
group); T completion positions; mask m [N,T] is 1 on completion tokens that count in the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from reasonax.train.loss import batch_logprobs

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "dr-grpo", "seq-mean-token-sum")


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-4) -> jax.Array:
    """A_i = (R_i - mean of its group) / (std + eps), the same for every token of completion i.

    scale: 'group' divides by the group's std, 'batch' by the std of all N rewards, 'none'
    (Dr. GRPO) does not divide. std is the unbiased one (ddof=1), as TRL and verl use. A group
    whose rewards are all equal gets A = 0.
    """
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 1 or group_size < 2 or r.shape[0] % group_size:
        raise ValueError(f"rewards of shape {r.shape} do not form groups of group_size={group_size} (>= 2)")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; expected one of {SCALES}")
    g = r.reshape(-1, group_size)
    centred = g - g.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (jnp.std(g, axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (jnp.std(r, ddof=1) + eps)
    return centred.reshape(-1)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, eps_low: float = 0.2,
                eps_high: float = 0.2, dual_clip: float | None = None):
    """Per-token clipped surrogate loss and a 'clipped' indicator.

    rho = exp(logp - old_logp); L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), with A
    [N] broadcast over tokens (DAPO clip-higher: eps_high > eps_low). dual_clip = c > 1 also
    bounds the loss of negative-advantage tokens by -c A (Ye et al. 2020), so a huge ratio on a bad
    token cannot blow up. The clipped indicator marks tokens whose gradient the clip removed.
    """
    A = advantages[:, None] if advantages.ndim == 1 else advantages
    rho = jnp.exp(logp - old_logp)
    unclipped = rho * A
    clipped = jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high) * A
    objective = jnp.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip={dual_clip}: expected > 1")
        floor = dual_clip * A
        dual = (A < 0) & (objective < floor)
        objective = jnp.where(dual, floor, objective)
        was_clipped = was_clipped | dual
    return -objective, was_clipped


def aggregate(per_token_loss, mask, mode: str, max_len: int | None = None) -> jax.Array:
    """Reduce a [N,T] per-token loss over mask m [N,T] to a scalar:

      seq-mean-token-mean (paper)  mean_i( sum_t m L / sum_t m )      (sequences with no token: 0)
      token-mean (DAPO)            sum m L / sum m
      dr-grpo                      sum m L / (N * max_len)            (max_len default: T)
      seq-mean-token-sum           mean_i( sum_t m L )
    """
    loss, m = jnp.asarray(per_token_loss, jnp.float32), jnp.asarray(mask, jnp.float32)
    total, per_seq = aggregate_terms(loss, m, mode, max_len)
    return total / per_seq


def aggregate_terms(loss: jax.Array, m: jax.Array, mode: str, max_len: int | None = None):
    """(numerator, denominator) of `aggregate`, so micro-batches can be summed first. The
    denominators of the seq-mean modes and dr-grpo count sequences (x max_len), token-mean tokens."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode {mode!r}; expected one of {AGGREGATIONS}")
    n = jnp.float32(loss.shape[0])
    masked = jnp.where(m > 0, loss * m, 0.0)
    if mode == "token-mean":
        return masked.sum(), m.sum()
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / jnp.maximum(m.sum(-1), 1.0)).sum(), n
    if mode == "dr-grpo":
        return masked.sum(), n * (loss.shape[1] if max_len is None else max_len)
    return masked.sum(), n


def overlong_penalty(lengths, max_len: int, buffer: int) -> jax.Array:
    """DAPO soft overlong punishment: min(-(len - (max_len - buffer)) / buffer, 0) per completion
    (0 up to max_len - buffer tokens, falling linearly to -1 at max_len)."""
    lengths = jnp.asarray(lengths, jnp.float32)
    if buffer <= 0:
        return jnp.zeros_like(lengths)
    return jnp.minimum(-(lengths - (max_len - buffer)) / buffer, 0.0)


def importance_weights(learner_logp: jax.Array, sampler_logp: jax.Array, cap: float) -> jax.Array:
    """Truncated importance weights min(exp(learner - sampler), cap) per token, a constant: they
    correct for the sampler's distribution differing from the learner's (dtype, kernels)."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(learner_logp - sampler_logp), cap))


# ----------------------------------------------------------------------------------------------
# The loss inside the train step


@dataclasses.dataclass(frozen=True)
class LossParams:
    """The hyperparameters the GRPO loss reads (hashable: what the jitted step closes over, and
    nothing else of the config)."""

    temperature: float = 1.0   # the sampling temperature: learner log-probs use it too
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float = 0.0     # 0: off
    is_cap: float = 0.0        # 0: no truncated importance weights
    beta: float = 0.0          # k3 KL weight (0: no reference)
    aggregation: str = "token-mean"
    max_new_tokens: int = 128  # dr-grpo's constant length

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}; expected one of {AGGREGATIONS}")

    @classmethod
    def of(cls, config) -> LossParams:
        """From a grpo config (any object with these fields, e.g. the grpo ConfigDict)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def grpo_loss(params: dict, batch: dict, *aux, cfg, hp: LossParams, chunk: int | None = None):
    """loss_fn for step.build_train_step: (numerator, denominator, metrics) of `aggregate` of
    -min(rho A, clip(rho) A) [x truncated IS weight] [+ beta k3] over the completion mask.

    batch: inputs/targets/weights/segment_ids/positions, advantages [N], sampler_logp [N,T], and
    from `prepare` old_logp (the learner's log-probs before this step's updates) and ref_logp.
    Without old_logp the step is on-policy: logp_old = stop_gradient(logp), rho = 1.
    """
    logp, entropy = batch_logprobs(params, batch, cfg, chunk, temperature=hp.temperature, entropy=True)
    m = batch["weights"].astype(jnp.float32)
    valid = m > 0
    old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    per_token, clipped = policy_loss(logp, old, batch["advantages"], hp.eps_low, hp.eps_high, hp.dual_clip or None)
    n = valid.sum().astype(jnp.float32)
    mean = lambda x: (jnp.where(valid, x, 0.0).sum(), n)  # noqa: E731
    metrics = {"clip_frac": mean(clipped.astype(jnp.float32)), "entropy": mean(entropy),
               "logp_gap": mean(jnp.abs(jax.lax.stop_gradient(old) - batch["sampler_logp"]))}
    if hp.is_cap:
        w = importance_weights(old, batch["sampler_logp"], hp.is_cap)
        per_token = per_token * w
        metrics["is_weight"], metrics["is_capped"] = mean(w), mean((w >= hp.is_cap).astype(jnp.float32))
    if hp.beta:
        kl = k3_kl(logp, batch["ref_logp"])
        per_token = per_token + hp.beta * kl
        metrics["kl"] = mean(jax.lax.stop_gradient(kl))
    num, den = aggregate_terms(per_token, m, hp.aggregation, hp.max_new_tokens)
    return num, den, metrics


def make_prepare(cfg, hp: LossParams, chunk: int | None, old: bool, ref: bool):
    """A step `prepare` adding old_logp (params before any update of the step) and ref_logp
    (the reference params, aux[0]) to every micro-batch, one forward each, or None if neither."""
    if not (old or ref):
        return None

    def prepare(params, chunks, *aux):
        def forward(_, mb):
            out = {}
            if old:
                out["old_logp"] = batch_logprobs(params, mb, cfg, chunk, temperature=hp.temperature)
            if ref:
                out["ref_logp"] = batch_logprobs(aux[0], mb, cfg, chunk, temperature=hp.temperature)
            return None, out

        _, extra = jax.lax.scan(forward, None, chunks)
        return {**chunks, **jax.lax.stop_gradient(extra)}

    return prepare
