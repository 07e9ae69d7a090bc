"""GRPO (reasonax.train.grpo): the pure pieces (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, and the common variants):
group advantages, the clipped policy loss, the k3 KL, loss aggregation, DAPO's overlong shaping
and the sampler/learner importance-sampling correction. The rollout loop and recipe are below.

Shapes: N = prompts x G completions, laid out prompt-major (rows i*G .. i*G+G-1 are prompt i's
group); T completion positions; mask m [N,T] is 1 on completion tokens that count in the loss.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

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


def grpo_loss(params: dict, batch: dict, *aux, cfg, hp, chunk: int | None = None):
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


def make_prepare(cfg, hp, chunk: int | None, old: bool, ref: bool):
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


# ----------------------------------------------------------------------------------------------
# Recipe


def default_config() -> ml_collections.ConfigDict:
    """The loop's fields, model / tokenizer as in SFT, and grpo.* (batch_size and seq_len are
    derived: prompts_per_step x group_size rows of max_prompt_len + max_new_tokens tokens)."""
    from reasonax.model import prompts as prompts_lib
    from reasonax.train import loop, sft

    c = loop.default_train_config()
    base = sft.default_config()
    c.model, c.tokenizer = base.model, base.tokenizer
    c.synthetic = ml_collections.ConfigDict(dict(
        task="",             # 'arithmetic': write train / held-out problems (reasonax.tasks.arithmetic) as the data
        num_examples=2000, num_heldout=200, steps=2, max_value=99))
    c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = 1e-6, 0.0, 0
    c.grpo = ml_collections.ConfigDict(dict(
        files=(),                 # prompt records: .jsonl / .jsonl.gz / .parquet
        eval_files=(),            # held-out prompts: greedy accuracy logged as eval/accuracy (eval_every)
        eval_limit=0,             # evaluate on at most this many held-out prompts (0: all)
        prompt_field="prompt", answer_field="answer", on_malformed="raise",
        template="raw",           # raw | qwen-chat | gemma-chat | few-shot | tokenizer (as SFT's data.template)
        instruction=prompts_lib.BOXED_INSTRUCTION,
        prompts_per_step=8,       # prompts sampled per step
        group_size=8,             # G completions per prompt (one prefill per prompt)
        max_prompt_len=128, max_new_tokens=128,
        row_bucket=64,            # training rows are cut to the batch's longest prompt + completion, rounded
                                  # up to a multiple of this (one compiled step per length); 0: always full
        temperature=1.0, top_p=1.0, top_k=0,  # sampling (the learner's log-probs use the same temperature)
        kv_budget_gb=2.0,         # rollout engine, per device: KV cache + decode temporaries (sets the slots)
        num_slots=0,              # rollout engine decode slots (0: as many as kv_budget_gb holds, at most 256)
        block_steps=16,           # decode steps per jitted block (stop strings checked, slots refilled between)
        mu=1,                     # updates over each rollout batch (num_iterations)
        minibatches=1,            # optimizer updates per pass over the rollout batch
        beta=0.0,                 # k3 KL weight; > 0 builds a frozen reference (the initial params)
        eps_low=0.2, eps_high=0.28,  # clip range (eps_high > eps_low: DAPO clip-higher)
        dual_clip=0.0,            # c > 1: dual clip of negative-advantage tokens (0: off)
        scale_rewards="group",    # group | batch | none (Dr. GRPO)
        adv_eps=1e-4,
        aggregation="token-mean",  # seq-mean-token-mean | token-mean | dr-grpo | seq-mean-token-sum
        mask_truncated=False,     # drop completions without EOS from the loss (kept in group stats)
        dynamic_sampling=False,   # DAPO: resample to replace all-equal groups ...
        max_sampling_rounds=3,    # ... at most this many sampling rounds per step
        overlong_buffer=0,        # DAPO overlong penalty over the last N tokens (0: off)
        format_weight=0.0,        # reward += weight if the completion has a \\boxed answer
        reward_fns=(),            # extra rewards: dotted paths of fn(prompts, completions, golds) -> floats
        is_cap=0.0,               # > 0: truncated importance weights min(pi_learner / pi_sampler, cap)
    ))
    return c


def check_config(c) -> None:
    g = c.grpo
    rows = g.prompts_per_step * g.group_size
    problems = []
    if g.group_size < 2:
        problems.append(f"grpo.group_size={g.group_size} (>= 2)")
    if g.temperature <= 0:
        problems.append(f"grpo.temperature={g.temperature} (> 0: GRPO needs sampled completions)")
    if rows % (g.minibatches * c.accum_steps):
        problems.append(f"prompts_per_step x group_size = {rows} rows do not split into minibatches="
                        f"{g.minibatches} x accum_steps={c.accum_steps}")
    if g.scale_rewards not in SCALES:
        problems.append(f"grpo.scale_rewards={g.scale_rewards!r} (one of {SCALES})")
    if g.aggregation not in AGGREGATIONS:
        problems.append(f"grpo.aggregation={g.aggregation!r} (one of {AGGREGATIONS})")
    if g.mu < 1 or g.minibatches < 1:
        problems.append("grpo.mu and grpo.minibatches must be >= 1")
    if g.num_slots < 0 or g.block_steps < 1 or g.kv_budget_gb <= 0:
        problems.append(f"grpo.num_slots={g.num_slots} (>= 0), grpo.block_steps={g.block_steps} (>= 1), "
                        f"grpo.kv_budget_gb={g.kv_budget_gb} (> 0)")
    if problems:
        raise ValueError("invalid GRPO config: " + "; ".join(problems))


def write_synthetic(c) -> tuple[str, str]:
    """(train, held-out) JSONL of the synthetic task under <workdir>/data (process 0 writes)."""
    from reasonax import jsonl
    from reasonax.tasks import arithmetic

    if c.synthetic.task != "arithmetic":
        raise ValueError(f"unknown synthetic task {c.synthetic.task!r} (known: arithmetic)")
    d = Path(c.workdir) / "data"
    paths = (d / "arithmetic.jsonl", d / "arithmetic-heldout.jsonl")
    if jax.process_index() == 0 and not paths[1].is_file():
        d.mkdir(parents=True, exist_ok=True)
        syn = c.synthetic
        jsonl.rewrite(paths[0], arithmetic.records(syn.num_examples, c.seed, syn.steps, syn.max_value))
        jsonl.rewrite(paths[1], arithmetic.records(syn.num_heldout, c.seed + 10_000, syn.steps, syn.max_value))
    from reasonax.train import loop

    loop.barrier("reasonax.grpo.write_synthetic")
    return str(paths[0]), str(paths[1])


def stop_strings(c) -> tuple[str, ...]:
    """Text that ends a completion: the prompt format's stop strings (none for raw / tokenizer)."""
    from reasonax.model import prompts as prompts_lib

    return prompts_lib.get_format(c.grpo.template).stop_strings if c.grpo.template in prompts_lib.FORMATS else ()


def stop_ids(c, cfg, tokenizer) -> tuple[int, ...]:
    """Token ids that end generation: EOS and the single-token stop strings."""
    from reasonax.model import prompts as prompts_lib

    return prompts_lib.stop_token_ids(tokenizer, stop_strings(c), cfg)


def greedy_correct(params, prompts, cfg, tokenizer, max_new_tokens: int, eos_ids, stops: tuple[str, ...] = ()) -> list[bool]:
    """Per prompt (rollout.Prompt): is its greedy completion (cut at `stops`, as rollouts are)
    right? Graded strictly (no last-number fallback)."""
    from reasonax import sample
    from reasonax.eval import grader
    from reasonax.train.rollout import completion_text

    sp = sample.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    res = sample.generate(params, cfg, [p.tokens for p in prompts], sp, eos_ids=eos_ids, seed=0,
                          stop=sample.StopStrings(tokenizer, stops, eos_ids))
    texts = [completion_text(tokenizer, toks, eos_ids, stops) for toks in res.tokens]
    return grader.grade_batch(texts, [p.gold for p in prompts], fallback=False)


def accuracy_evaluator(prompts, cfg, tokenizer, rc, eos_ids, stops: tuple[str, ...] = ()):
    """params -> {'accuracy'}: the share of held-out prompts greedy_correct."""

    def evaluate(params) -> dict:
        ok = greedy_correct(params, prompts, cfg, tokenizer, rc.max_new_tokens, eos_ids, stops)
        return {"accuracy": sum(ok) / len(ok)}

    return evaluate


def run(c: ml_collections.ConfigDict):
    """Train with GRPO per config (rollouts from the learner's own params); export HF at the end."""
    from reasonax.train import loop, rollout, sft

    loop.init_distributed(c.distributed)
    check_config(c)
    g = c.grpo
    c.batch_size, c.seq_len = g.prompts_per_step * g.group_size, g.max_prompt_len + g.max_new_tokens
    if c.synthetic.task:
        train, held = write_synthetic(c)
        g.files, g.eval_files = [train], [held]
    cfg = sft.model_config(c)
    mesh = loop.make_mesh(c)
    tokenizer = sft.load_tokenizer(c)
    eos_ids, stops = stop_ids(c, cfg, tokenizer), stop_strings(c)
    prompts = rollout.load_prompts(g, tokenizer, g.max_prompt_len)
    source = rollout.RolloutSource(prompts, cfg, tokenizer, g, mesh, c.seed, eos_ids, stops)
    init = sft.init_params_fn(c, cfg)
    aux = init(mesh) if g.beta else None  # the frozen reference = the initial policy
    chunk = c.loss_chunk or None
    prepare = make_prepare(cfg, g, chunk, old=g.mu > 1 or g.minibatches > 1 or bool(g.is_cap), ref=bool(g.beta))
    evaluate = None
    if g.eval_files:
        held = rollout.load_prompts(dict_config(g, files=list(g.eval_files)), tokenizer, g.max_prompt_len)
        evaluate = accuracy_evaluator(held[:g.eval_limit or None], cfg, tokenizer, g, eos_ids, stops)
    loss_fn = functools.partial(grpo_loss, cfg=cfg, hp=g, chunk=chunk)
    state = loop.run(c, cfg, init, loss_fn, source, mesh=mesh, aux=aux, prepare=prepare, evaluate=evaluate,
                     step_options=dict(minibatches=g.minibatches, epochs=g.mu))
    sft.export(c, cfg, state.params)
    return state


def dict_config(base: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(base.to_dict())
    out.update(changes)
    return out


def main(argv):
    from absl import flags

    from reasonax import cli

    c = cli.flag_config(argv, "configs/grpo_tiny_cpu.py")
    if flags.FLAGS.dry_run:
        from reasonax.train import dry_run

        dry_run.main_grpo(c)
        return
    cli.require_workdir(c)
    run(c)


if __name__ == "__main__":  # flags only for the CLI: config files import this module's default_config
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file (see configs/grpo_*.py).")
    flags.DEFINE_bool("dry_run", False, "compile the GRPO train step for config.mesh on fake CPU devices and "
                      "print per-device memory; no training")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)
