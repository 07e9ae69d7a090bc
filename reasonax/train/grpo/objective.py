"""GRPO's objective, pure functions with no I/O (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300,
and the variants peers offer; equations in docs/ALGORITHMS.md section 4). The table of
objectives, by name:

    advantage     grpo (group_advantages: group / batch / no std scaling) | rloo (rloo_advantages)
    policy loss   ppo (clipped token ratio, clip-higher, dual clip) | gspo (sequence ratio, Zheng
                  et al. 2025) | cispo (clipped stop-gradient IS weight x log-prob, MiniMax-M1)
    IS correction sampler/learner weights per token or per sequence, truncated or masked
    KL            k1 | k2 | k3 (kl_penalty), beta > 0
    entropy       entropy_coef x the learner's token entropy, subtracted
    aggregation   seq-mean-token-mean | token-mean | dr-grpo | seq-mean-token-sum

plus DAPO's overlong shaping and the loss and prepare pass of the train step. The rollouts are
in reasonax.train.grpo.rollout, the recipe and CLI in reasonax.train.grpo.recipe.

Shapes: N = prompts x G completions, laid out prompt-major (rows i*G .. i*G+G-1 are prompt i's
group); T completion positions; mask m [N,T] is 1 on completion tokens that count in the loss.
The entry points take that unpacked [N,T] layout. Inside the train step a packed batch holds
several sequences per row: `seq` [R,L] gives each position's sequence (0 .. S-1 within the
micro-batch) and every per-sequence quantity (the GSPO ratio, sequence-level IS, the seq-mean
aggregations, the advantages) is a segment sum over it; seq None is the unpacked layout, one
sequence per row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from reasonax.train.loss import batch_logprobs

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "dr-grpo", "seq-mean-token-sum")
ADVANTAGES = ("grpo", "rloo")
POLICY_LOSSES = ("ppo", "gspo", "cispo")
IS_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask")
KL_ESTIMATORS = ("k1", "k2", "k3")

# (eps_low, eps_high) when grpo.eps_low / grpo.eps_high are left < 0:
#   ppo    0.2 / 0.28: PPO's 0.2 (Schulman et al. 2017) with DAPO's clip-higher (Yu et al. 2025, arXiv 2503.14476)
#   gspo   3e-4 / 4e-4: GSPO's sequence-ratio range (Zheng et al. 2025, arXiv 2507.18071, section 5.1)
#   cispo  no lower bound / 4.0: MiniMax-M1 (arXiv 2506.13585) sets no lower bound and tunes only
#          the upper; the weight cap 1 + 4.0 = 5.0 is TRL's: its loss_type='cispo' clamps the ratio
#          at epsilon_high itself (clamp(r, max=epsilon_high), recommended 5.0, ScaleRL's eps_max,
#          Khatri et al. 2025, arXiv 2510.13786), while here the cap is 1 + eps_high as for ppo
CLIP_DEFAULTS = {"ppo": (0.2, 0.28), "gspo": (3e-4, 4e-4), "cispo": (float("inf"), 4.0)}


def clip_bounds(kind: str, eps_low: float = -1.0, eps_high: float = -1.0) -> tuple[float, float]:
    """(eps_low, eps_high) of policy loss `kind`: each given value >= 0, else the loss's default."""
    if kind not in POLICY_LOSSES:
        raise ValueError(f"policy_loss={kind!r}; expected one of {POLICY_LOSSES}")
    lo, hi = CLIP_DEFAULTS[kind]
    return (lo if eps_low < 0 else eps_low), (hi if eps_high < 0 else eps_high)


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


def rloo_advantages(rewards, group_size: int) -> jax.Array:
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = R_i - mean over j != i in the group of
    R_j = G / (G - 1) (R_i - mean of the group), unscaled. G = 2 gives (R_1 - R_2, R_2 - R_1)."""
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 1 or group_size < 2 or r.shape[0] % group_size:
        raise ValueError(f"rewards of shape {r.shape} do not form groups of group_size={group_size} (>= 2)")
    g = r.reshape(-1, group_size)
    others = (g.sum(axis=1, keepdims=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from d = logp - ref_logp (Schulman 2020, "Approximating
    KL divergence"): k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1 (>= 0). In the loss, k1's gradient
    is grad logp, zero-mean on-policy: it only acts through the IS ratio (peers use it in the reward)."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return k3_kl(logp, ref_logp)
    raise ValueError(f"kl_estimator={estimator!r}; expected one of {KL_ESTIMATORS}")


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


def aggregate_terms(loss: jax.Array, m: jax.Array, mode: str, max_len: int | None = None,
                    seq: jax.Array | None = None, num_seqs: int | None = None):
    """(numerator, denominator) of `aggregate`, so micro-batches can be summed first. The
    denominators of the seq-mean modes and dr-grpo count sequences (x max_len), token-mean tokens.
    seq / num_seqs: a packed layout (see the module docstring); None: one sequence per row."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode {mode!r}; expected one of {AGGREGATIONS}")
    n = jnp.float32(loss.shape[0] if seq is None else num_seqs)
    masked = jnp.where(m > 0, loss * m, 0.0)
    if mode == "token-mean":
        return masked.sum(), m.sum()
    if mode == "seq-mean-token-mean":
        return (seq_sum(masked, seq, num_seqs) / jnp.maximum(seq_sum(m, seq, num_seqs), 1.0)).sum(), n
    if mode == "dr-grpo":
        return masked.sum(), n * (loss.shape[1] if max_len is None else max_len)
    return masked.sum(), n


def seq_sum(x: jax.Array, seq: jax.Array | None, num_seqs: int | None) -> jax.Array:
    """Per-sequence sums [S] of a per-position array: row sums (seq None), else a segment sum."""
    if seq is None:
        return x.sum(-1)
    return jax.ops.segment_sum(x.reshape(-1), seq.reshape(-1), num_segments=num_seqs)


def per_token(v: jax.Array, seq: jax.Array | None) -> jax.Array:
    """A per-sequence value [S] at every position of its sequence (seq None: [N] -> [N,1])."""
    return v[:, None] if seq is None else jnp.take(v, seq, mode="clip")


def overlong_penalty(lengths, max_len: int, buffer: int) -> jax.Array:
    """DAPO soft overlong punishment: min(-(len - (max_len - buffer)) / buffer, 0) per completion
    (0 up to max_len - buffer tokens, falling linearly to -1 at max_len)."""
    lengths = jnp.asarray(lengths, jnp.float32)
    if buffer <= 0:
        return jnp.zeros_like(lengths)
    return jnp.minimum(-(lengths - (max_len - buffer)) / buffer, 0.0)


def importance_weights(learner_logp: jax.Array, sampler_logp: jax.Array, cap: float, level: str = "token",
                       mode: str = "truncate", mask: jax.Array | None = None) -> jax.Array:
    """Sampler/learner importance weights [N,T], a constant (no gradient): they correct for the
    sampler's distribution differing from the learner's (dtype, kernels, a stale policy).

    level 'token': ratio r_t = exp(learner_t - sampler_t); 'sequence': exp(sum over the row's
    masked tokens of (learner_t - sampler_t)), the product of its token ratios, at every token of
    the row. mode 'truncate': w = min(ratio, cap); 'mask': w = ratio where ratio <= cap, else 0.
    No lower bound. mask [N,T] (default all ones) selects the tokens of the sequence ratio."""
    if cap <= 0:
        raise ValueError(f"is_cap={cap}: expected > 0 (0 turns the correction off in the config)")
    m = jnp.ones(jnp.shape(learner_logp), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    return is_weights(is_log_ratio(learner_logp, sampler_logp, m, level), cap, mode)[0]


def is_log_ratio(learner_logp, sampler_logp, m, level: str = "token", seq=None, num_seqs=None) -> jax.Array:
    """log of the IS ratio at every position: per token, or its sequence's sum over m (packed
    layouts: seq / num_seqs as in aggregate_terms). Stop-gradient."""
    if level not in IS_LEVELS:
        raise ValueError(f"is_level={level!r}; expected one of {IS_LEVELS}")
    d = jax.lax.stop_gradient(jnp.asarray(learner_logp, jnp.float32) - jnp.asarray(sampler_logp, jnp.float32))
    if level == "token":
        return d
    return jnp.broadcast_to(per_token(seq_sum(jnp.where(m > 0, d * m, 0.0), seq, num_seqs), seq), d.shape)


def is_weights(log_ratio: jax.Array, cap: float, mode: str = "truncate") -> tuple[jax.Array, jax.Array]:
    """(weights, capped): truncate min(ratio, cap) or mask (0 above cap), and where the cap acted."""
    if mode not in IS_MODES:
        raise ValueError(f"is_mode={mode!r}; expected one of {IS_MODES}")
    capped = log_ratio > jnp.log(jnp.float32(cap))
    ratio = jnp.exp(jnp.minimum(log_ratio, jnp.log(jnp.float32(cap))))
    return jnp.where(capped, cap if mode == "truncate" else 0.0, ratio), capped


def token_objective(kind: str, logp: jax.Array, old_logp: jax.Array, adv: jax.Array, m: jax.Array,
                    eps_low: float, eps_high: float, dual_clip: float | None = None, seq=None, num_seqs=None):
    """Per-position loss of policy loss `kind` and where its clip acted, with adv the advantage at
    every position ([N,1] or [R,L]):

      ppo    -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(logp - old) (policy_loss)
      gspo   -min(s A, clip(s, ...) A) of the sequence, s = exp(mean over its masked tokens of
             (logp - old)), at each of its positions (aggregated per sequence: seq-mean-token-mean)
      cispo  -sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp
    """
    if kind == "ppo":
        return policy_loss(logp, old_logp, adv, eps_low, eps_high, dual_clip)
    if kind not in POLICY_LOSSES:
        raise ValueError(f"policy_loss={kind!r}; expected one of {POLICY_LOSSES}")
    if dual_clip is not None:
        raise ValueError(f"dual_clip={dual_clip} is for policy_loss='ppo', not {kind!r}")
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    if kind == "cispo":
        r = jnp.exp(logp - old_logp)
        w = jnp.clip(r, lo, hi)
        return -jax.lax.stop_gradient(w) * adv * logp, (r < lo) | (r > hi)
    mf = jnp.asarray(m, jnp.float32)
    log_s = seq_sum(jnp.where(mf > 0, (logp - old_logp) * mf, 0.0), seq, num_seqs) / jnp.maximum(
        seq_sum(mf, seq, num_seqs), 1.0)
    s = per_token(jnp.exp(log_s), seq)
    unclipped, clipped = s * adv, jnp.clip(s, lo, hi) * adv
    return (jnp.broadcast_to(-jnp.minimum(unclipped, clipped), logp.shape),
            jnp.broadcast_to(clipped < unclipped, logp.shape))


def policy_objective(kind: str, logp, old_logp, advantages, mask, eps_low: float, eps_high: float,
                     aggregation: str = "token-mean") -> jax.Array:
    """The scalar loss of policy loss `kind` (ppo | gspo | cispo; token_objective) over [N,T]
    log-probs with advantages [N], aggregated over mask m by `aggregation` (gspo: only
    seq-mean-token-mean, its per-sequence mean). Differentiable in logp."""
    if kind == "gspo" and aggregation != "seq-mean-token-mean":
        raise ValueError(f"policy_loss='gspo' is defined per sequence: aggregation={aggregation!r}, "
                         "expected 'seq-mean-token-mean'")
    adv = jnp.asarray(advantages, jnp.float32)
    loss, _ = token_objective(kind, logp, old_logp, adv[:, None] if adv.ndim == 1 else adv, mask, eps_low, eps_high)
    return aggregate(loss, mask, aggregation)


# ----------------------------------------------------------------------------------------------
# The loss inside the train step


@dataclasses.dataclass(frozen=True)
class LossParams:
    """The hyperparameters the GRPO loss reads (hashable: what the jitted step closes over, and
    nothing else of the config). eps_low / eps_high are the resolved bounds (clip_bounds)."""

    temperature: float = 1.0   # the sampling temperature: learner log-probs use it too
    policy_loss: str = "ppo"
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float = 0.0     # 0: off
    is_cap: float = 0.0        # 0: no sampler/learner importance weights
    is_level: str = "token"
    is_mode: str = "truncate"
    beta: float = 0.0          # KL weight (0: no reference)
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    aggregation: str = "token-mean"
    max_new_tokens: int = 128  # dr-grpo's constant length

    def __post_init__(self):
        for name, allowed in (("aggregation", AGGREGATIONS), ("policy_loss", POLICY_LOSSES), ("is_level", IS_LEVELS),
                              ("is_mode", IS_MODES), ("kl_estimator", KL_ESTIMATORS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")

    @classmethod
    def of(cls, config) -> LossParams:
        """From a grpo config (any object with these fields, e.g. GRPOSettings): the clip bounds
        resolved per policy loss, kl_estimator '' -> k3."""
        kw = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
        kw["eps_low"], kw["eps_high"] = clip_bounds(config.policy_loss, config.eps_low, config.eps_high)
        kw["kl_estimator"] = config.kl_estimator or "k3"
        return cls(**kw)


def grpo_loss(params: dict, batch: dict, *aux, cfg, hp: LossParams, chunk: int | None = None):
    """loss_fn for step.build_train_step: the learner's log-probs and entropy of the micro-batch
    (the sampling temperature), then objective_terms.

    batch: inputs/targets/weights/segment_ids/positions, advantages [S] (S sequences of the
    micro-batch), sampler_logp, and from `prepare` old_logp (the learner's log-probs before this
    step's updates) and ref_logp. A packed batch adds `sequence` (each position's sequence, 0 ..
    S-1; rollout.pack_rows); without it each row is one sequence.
    """
    logp, entropy = batch_logprobs(params, batch, cfg, chunk, temperature=hp.temperature, entropy=True,
                                   entropy_grad=bool(hp.entropy_coef))
    return objective_terms(logp, entropy, batch, hp)


def objective_terms(logp: jax.Array, entropy: jax.Array, batch: dict, hp: LossParams):
    """(numerator, denominator, metrics) of `aggregate` of policy loss hp.policy_loss
    (token_objective) [x IS weight] [+ beta KL] [- entropy_coef H] over the completion mask, from
    the learner's log-probs and entropy at every position (grpo_loss's batch fields). Without
    old_logp the step is on-policy: logp_old = stop_gradient(logp), ratio 1."""
    m = batch["weights"].astype(jnp.float32)
    valid = m > 0
    seq = batch.get("sequence")
    S = batch["advantages"].shape[0]
    adv = per_token(batch["advantages"].astype(jnp.float32), seq)
    old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    loss, clipped = token_objective(hp.policy_loss, logp, old, adv, m, hp.eps_low, hp.eps_high,
                                    hp.dual_clip or None, seq, S)
    n = valid.sum().astype(jnp.float32)
    mean = lambda x: (jnp.where(valid, x, 0.0).sum(), n)  # noqa: E731
    metrics = {"clip_frac": mean(clipped.astype(jnp.float32)), "entropy": mean(jax.lax.stop_gradient(entropy)),
               "logp_gap": mean(jnp.abs(jax.lax.stop_gradient(old) - batch["sampler_logp"]))}
    if hp.is_cap:
        w, capped = is_weights(is_log_ratio(old, batch["sampler_logp"], m, hp.is_level, seq, S), hp.is_cap, hp.is_mode)
        loss = loss * w
        metrics["is_weight"], metrics["is_capped"] = mean(w), mean(capped.astype(jnp.float32))
    if hp.beta:
        kl = kl_penalty(logp, batch["ref_logp"], hp.kl_estimator)
        loss = loss + hp.beta * kl
        metrics["kl"] = mean(jax.lax.stop_gradient(kl))
    if hp.entropy_coef:
        loss = loss - hp.entropy_coef * entropy
    num, den = aggregate_terms(loss, m, hp.aggregation, hp.max_new_tokens, seq, S)
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
