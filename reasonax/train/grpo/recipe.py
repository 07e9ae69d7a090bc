"""GRPO: the recipe (config, plan) and its CLI. The objective is reasonax.train.grpo.objective,
the rollouts reasonax.train.grpo.rollout.

    python -m reasonax.train.grpo --config=configs/grpo_tiny_cpu.py --config.workdir=/tmp/grpo
    python -m reasonax.train.grpo --config=configs/grpo_qwen25_math_1p5b_v5e8.py --dry_run
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import app

from reasonax import jsonl, sample
from reasonax.eval import grader
from reasonax.model import prompts as prompts_lib
from reasonax.tasks import arithmetic
from reasonax.sample.stops import stop_token_ids
from reasonax.train import common, loop
from reasonax.train.grpo import rollout
from reasonax.train.grpo.objective import AGGREGATIONS, SCALES, LossParams, grpo_loss, make_prepare
from reasonax.train.plan import Plan, lm_batch_spec, with_fields

MODULE = "reasonax.train.grpo"


def default_config() -> ml_collections.ConfigDict:
    """The loop's fields, model / tokenizer as in SFT, and grpo.* (batch_size and seq_len are
    derived: prompts_per_step x group_size rows of max_prompt_len + max_new_tokens tokens)."""
    c = loop.default_train_config()
    c.model = common.model_fields()
    c.tokenizer = ""  # tokenizer directory (default: the model's); 'bytes': the built-in byte tokenizer
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
    if c.synthetic.task != "arithmetic":
        raise ValueError(f"unknown synthetic task {c.synthetic.task!r} (known: arithmetic)")
    d = Path(c.workdir) / "data"
    paths = (d / "arithmetic.jsonl", d / "arithmetic-heldout.jsonl")
    if jax.process_index() == 0 and not paths[1].is_file():
        d.mkdir(parents=True, exist_ok=True)
        syn = c.synthetic
        jsonl.rewrite(paths[0], arithmetic.records(syn.num_examples, c.seed, syn.steps, syn.max_value))
        jsonl.rewrite(paths[1], arithmetic.records(syn.num_heldout, c.seed + 10_000, syn.steps, syn.max_value))
    loop.barrier("reasonax.grpo.write_synthetic")
    return str(paths[0]), str(paths[1])


def stop_strings(c) -> tuple[str, ...]:
    """Text that ends a completion: the prompt format's stop strings (none for raw / tokenizer)."""
    return prompts_lib.get_format(c.grpo.template).stop_strings if c.grpo.template in prompts_lib.FORMATS else ()


def stop_ids(c, cfg, tokenizer) -> tuple[int, ...]:
    """Token ids that end generation: EOS and the single-token stop strings."""
    return stop_token_ids(tokenizer, stop_strings(c), cfg)


def greedy_correct(params, prompts, cfg, tokenizer, max_new_tokens: int, eos_ids, stops: tuple[str, ...] = ()) -> list[bool]:
    """Per prompt (rollout.Prompt): is its greedy completion (cut at `stops`, as rollouts are)
    right? Graded strictly (no last-number fallback)."""
    sp = sample.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    res = sample.generate(params, cfg, [p.tokens for p in prompts], sp, eos_ids=eos_ids, seed=0,
                          stop=sample.StopStrings(tokenizer, stops, eos_ids))
    texts = [rollout.completion_text(tokenizer, toks, eos_ids, stops) for toks in res.tokens]
    return grader.grade_batch(texts, [p.gold for p in prompts], fallback=False)


def accuracy_evaluator(prompts, cfg, tokenizer, rc, eos_ids, stops: tuple[str, ...] = ()):
    """params -> {'accuracy'}: the share of held-out prompts greedy_correct."""

    def evaluate(params) -> dict:
        ok = greedy_correct(params, prompts, cfg, tokenizer, rc.max_new_tokens, eos_ids, stops)
        return {"accuracy": sum(ok) / len(ok)}

    return evaluate


def batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The GRPO rollout batch: the LM fields, sampler_logp [rows, seq_len] and advantages [rows]."""
    return with_fields(lm_batch_spec, sampler_logp=lambda rows, seq: (rows, seq),
                       advantages=lambda rows, seq: (rows,))(config, mesh)


def build(config: ml_collections.ConfigDict) -> Plan:
    """The GRPO plan: rollouts from the learner's own params (rollout.RolloutSource), the clipped
    objective, the prepare pass for old / reference log-probs when needed, and with beta > 0 the
    frozen reference (the initial policy) as aux. The rollout engine's config goes with it, so the
    dry run reports the sampler's memory next to the train step's."""
    c = common.copy_config(config)
    check_config(c)
    g = c.grpo
    c.batch_size, c.seq_len = g.prompts_per_step * g.group_size, g.max_prompt_len + g.max_new_tokens
    cfg = common.model_config(c)
    chunk = c.loss_chunk or None
    tokenizer = functools.cache(lambda: common.load_tokenizer(c))

    @functools.cache
    def files() -> tuple[list[str], list[str]]:
        if c.synthetic.task:
            train, held = write_synthetic(c)
            return [train], [held]
        return list(g.files), list(g.eval_files)

    def source(mesh):
        tok = tokenizer()
        prompts = rollout.load_prompts(dict_config(g, files=files()[0]), tok, g.max_prompt_len)
        return rollout.RolloutSource(prompts, cfg, tok, g, mesh, c.seed, stop_ids(c, cfg, tok), stop_strings(c))

    def evaluate(mesh):
        if not files()[1]:
            return None
        tok = tokenizer()
        held = rollout.load_prompts(dict_config(g, files=files()[1]), tok, g.max_prompt_len)
        return accuracy_evaluator(held[:g.eval_limit or None], cfg, tok, g, stop_ids(c, cfg, tok), stop_strings(c))

    init = common.init_params_fn(c, cfg)
    hp = LossParams.of(g)
    return Plan(config=c, model=cfg, loss=functools.partial(grpo_loss, cfg=cfg, hp=hp, chunk=chunk), init=init,
                source=source, batch_spec=batch_spec,
                prepare=make_prepare(cfg, hp, chunk, old=g.mu > 1 or g.minibatches > 1 or bool(g.is_cap),
                                     ref=bool(g.beta)),
                aux=init if g.beta else None,  # the frozen reference = the initial policy
                aux_spec=common.abstract_params_fn(cfg, jnp.dtype(c.param_dtype)) if g.beta else None,
                evaluate=evaluate if (c.synthetic.task or g.eval_files) else None,
                finish=common.exporter(c, cfg), step_options=dict(minibatches=g.minibatches, epochs=g.mu),
                rollout=g, module=MODULE)


def run(config: ml_collections.ConfigDict):
    """Train with GRPO per config (rollouts from the learner's own params); export HF at the end."""
    loop.init_distributed(config.distributed)
    return loop.run(build(config))


def dict_config(base: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    out = common.copy_config(base)
    out.update(changes)
    return out


def main(argv):
    common.main(argv, build, run, "configs/grpo_tiny_cpu.py")


def cli() -> None:
    """The `reasonax-grpo` command (also `python -m reasonax.train.grpo`)."""
    common.recipe_flags("configs/grpo_*.py", "compile the GRPO train step and the rollout engine's decode block "
                        "for config.mesh on fake CPU devices and print per-device memory; no training")
    app.run(main)
