"""GRPO: the recipe (config, plan) and its CLI. The objective is reasonax.train.grpo.objective,
the rollouts reasonax.train.grpo.rollout.

    python -m reasonax.train.grpo --config=configs/grpo_tiny_cpu.py --config.workdir=/tmp/grpo
    python -m reasonax.train.grpo --config=configs/grpo_qwen25_math_1p5b_v5e8.py --dry_run
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import app

from reasonax import jsonl, sample, typed
from reasonax.eval import grader
from reasonax.model import prompts as prompts_lib
from reasonax.model.sharding import batch_sharding
from reasonax.tasks import arithmetic
from reasonax.sample.stops import stop_token_ids
from reasonax.train import common, loop, rollout_layout
from reasonax.train import state as state_lib
from reasonax.train.grpo import rollout
from reasonax.train.grpo.objective import (ADVANTAGES, AGGREGATIONS, IS_LEVELS, IS_MODES, KL_ESTIMATORS, POLICY_LOSSES,
                                           SCALES, LossParams, grpo_loss, make_prepare)
from reasonax.train.plan import Plan, lm_batch_spec, with_fields

MODULE = "reasonax.train.grpo"


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """config.grpo: prompts, sampling, the rollout engine and the objective's variants."""

    files: tuple[str, ...] = ()  # prompt records: .jsonl / .jsonl.gz / .parquet
    eval_files: tuple[str, ...] = ()  # held-out prompts: greedy accuracy logged as eval/accuracy (eval_every)
    eval_limit: int = 0       # evaluate on at most this many held-out prompts (0: all)
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    on_malformed: str = "raise"  # a bad record: raise | skip
    template: str = "raw"     # raw | qwen-chat | gemma-chat | few-shot | tokenizer (as SFT's data.template)
    instruction: str = prompts_lib.BOXED_INSTRUCTION
    prompts_per_step: int = 8  # prompts sampled per step
    group_size: int = 8       # G completions per prompt (one prefill per prompt)
    max_prompt_len: int = 128
    max_new_tokens: int = 128
    row_bucket: int = 64      # training rows are cut to the batch's longest prompt + completion, rounded
                              # up to a multiple of this (one compiled step per length); 0: always full
    temperature: float = 1.0  # sampling (the learner's log-probs use the same temperature)
    top_p: float = 1.0
    top_k: int = 0
    kv_budget_gb: float = 2.0  # rollout engine, per device: KV cache + decode temporaries (sets the slots)
    num_slots: int = 0        # rollout engine decode slots (0: as many as kv_budget_gb holds, at most 256)
    block_steps: int = 16     # decode steps per jitted block (stop strings checked, slots refilled between)
    prefix_cache_gb: float = 0.0  # rollout engine, per device, out of kv_budget_gb: KV of prompt prefixes shared
                              # across prompts (a system prompt, few-shot exemplars), kept while the weights
                              # are unchanged (dynamic-sampling rounds of a step); 0 = off. Same tokens either way
    prefix_block: int = 128   # tokens per prefix-cache block
    mu: int = 1               # updates over each rollout batch (num_iterations)
    minibatches: int = 1      # optimizer updates per pass over the rollout batch
    beta: float = 0.0         # KL weight; > 0 builds a frozen reference (the initial params)
    kl_estimator: str = ""    # k1 | k2 | k3 per-token KL in the loss (beta > 0; '' : k3)
    advantage: str = "grpo"   # grpo (group-relative, scale_rewards) | rloo (leave-one-out, scale_rewards none)
    policy_loss: str = "ppo"  # ppo (clipped token ratio) | gspo (sequence ratio) | cispo (clipped IS weight)
    eps_low: float = -1.0     # clip bounds 1 - eps_low, 1 + eps_high; < 0: the policy loss's default
    eps_high: float = -1.0    # (objective.CLIP_DEFAULTS: ppo 0.2 / 0.28, gspo 3e-4 / 4e-4, cispo none / 4.0: a weight cap of 5)
    dual_clip: float = 0.0    # c > 1: dual clip of negative-advantage tokens, ppo only (0: off)
    entropy_coef: float = 0.0  # subtract coef x the learner's token entropy (aggregated like the loss)
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    adv_eps: float = 1e-4
    aggregation: str = "token-mean"  # seq-mean-token-mean | token-mean | dr-grpo | seq-mean-token-sum
    mask_truncated: bool = False  # drop completions without EOS from the loss (kept in group stats)
    dynamic_sampling: bool = False  # DAPO: resample to replace all-equal groups ...
    max_sampling_rounds: int = 3  # ... at most this many sampling rounds per step
    overlong_buffer: int = 0  # DAPO overlong penalty over the last N tokens (0: off)
    format_weight: float = 0.0  # reward += weight if the completion has a \\boxed answer
    reward_fns: tuple[str, ...] = ()  # extra rewards: dotted paths of fn(prompts, completions, golds) -> floats
    is_cap: float = 0.0       # > 0: sampler/learner importance weights capped at this (0: off)
    is_level: str = "token"   # token | sequence (the product of the completion's token ratios)
    is_mode: str = "truncate"  # truncate (w = min(ratio, cap)) | mask (w = 0 where ratio > cap)
    pack_len: int = 0         # > 0: the update packs several prompt + completion sequences per row of this
                              # many tokens (>= max_prompt_len + max_new_tokens; replaces row_bucket); 0: one per row
    pack_rows: int = 0        # packed rows per micro-batch (the update's token budget = pack_rows x pack_len);
                              # 0: enough for every completion at full length; a step that needs more grows
    rollout_mesh: str = "auto"  # the rollout's layout of the weights: auto | train (the learner's own arrays,
                                # no sync) | 'data=D,tensor=T' over the rollout devices (reasonax.train.rollout_layout)
    overlap: str = "none"     # none | one-step-off: rollouts of step t+1 (with theta_t) on their own devices
                              # while step t trains; needs rollout_devices and the IS correction (is_cap > 0)
    rollout_devices: int = 0  # one-step-off: the first N devices run rollouts, the rest train on config.mesh

    def problems(self) -> list[str]:
        out = []
        if self.group_size < 2:
            out.append(f"group_size={self.group_size} (>= 2)")
        if self.prompts_per_step < 1 or self.max_prompt_len < 1 or self.max_new_tokens < 1:
            out.append(f"prompts_per_step={self.prompts_per_step}, max_prompt_len={self.max_prompt_len}, "
                       f"max_new_tokens={self.max_new_tokens} (each >= 1)")
        if self.temperature <= 0:
            out.append(f"temperature={self.temperature} (> 0: GRPO needs sampled completions)")
        if self.scale_rewards not in SCALES:
            out.append(f"scale_rewards={self.scale_rewards!r} (one of {SCALES})")
        if self.aggregation not in AGGREGATIONS:
            out.append(f"aggregation={self.aggregation!r} (one of {AGGREGATIONS})")
        if self.mu < 1 or self.minibatches < 1:
            out.append(f"mu={self.mu} and minibatches={self.minibatches} must be >= 1")
        out.extend(self.objective_problems())
        try:
            layout = rollout_layout.parse(self.rollout_mesh)
        except ValueError as e:
            out.append(str(e).removeprefix("grpo."))
            layout = "auto"
        if self.overlap not in rollout.OVERLAPS:
            out.append(f"overlap={self.overlap!r} (one of {rollout.OVERLAPS})")
        elif self.overlap == "one-step-off":
            if self.rollout_devices < 1:
                out.append("rollout_devices must be >= 1 with overlap='one-step-off' (the rollout group: the first "
                           "N devices; config.mesh trains on the rest)")
            if self.is_cap <= 0:
                out.append(f"is_cap={self.is_cap}: overlap='one-step-off' samples with the previous step's weights, "
                           "so the sampler/learner importance-sampling correction is required (set is_cap > 0, e.g. 2)")
            if isinstance(layout, tuple) and self.rollout_devices >= 1 and math.prod(layout) != self.rollout_devices:
                out.append(f"rollout_mesh={self.rollout_mesh!r} covers {math.prod(layout)} devices, but "
                           f"rollout_devices={self.rollout_devices}")
            if layout == "train":
                out.append("rollout_mesh='train' decodes with the learner's own arrays: it cannot run on a separate "
                           "rollout group (overlap='one-step-off'); use auto or data=D,tensor=T")
        elif self.rollout_devices:
            out.append(f"rollout_devices={self.rollout_devices}: a separate rollout group is only used with "
                       "overlap='one-step-off' (set rollout_devices=0)")
        out += sample.engine.option_problems(self.num_slots, self.block_steps, self.kv_budget_gb,
                                             self.prefix_cache_gb, self.prefix_block)
        return out

    def objective_problems(self) -> list[str]:
        """Names outside the objective table and the combinations that make no sense."""
        out = [f"{k}={getattr(self, k)!r} (one of {allowed})" for k, allowed in (
            ("advantage", ADVANTAGES), ("policy_loss", POLICY_LOSSES), ("is_level", IS_LEVELS),
            ("is_mode", IS_MODES), ("kl_estimator", ("",) + KL_ESTIMATORS)) if getattr(self, k) not in allowed]
        if self.advantage == "rloo" and self.scale_rewards != "none":
            out.append(f"advantage='rloo' with scale_rewards={self.scale_rewards!r}: RLOO is unscaled "
                       "(set scale_rewards='none')")
        if self.kl_estimator and not self.beta:
            out.append(f"kl_estimator={self.kl_estimator!r} with beta=0: no KL term to estimate")
        if self.policy_loss == "gspo" and self.aggregation != "seq-mean-token-mean":
            out.append(f"policy_loss='gspo' with aggregation={self.aggregation!r}: GSPO is per sequence "
                       "(aggregation='seq-mean-token-mean')")
        if self.policy_loss != "ppo" and self.dual_clip:
            out.append(f"policy_loss={self.policy_loss!r} with dual_clip={self.dual_clip}: dual clip is ppo's")
        if self.dual_clip and self.dual_clip <= 1:
            out.append(f"dual_clip={self.dual_clip} (> 1, or 0: off)")
        if self.is_cap < 0:
            out.append(f"is_cap={self.is_cap} (> 0, or 0: off)")
        if not self.is_cap and (self.is_mode != "truncate" or self.is_level != "token"):
            out.append(f"is_mode={self.is_mode!r}, is_level={self.is_level!r} with is_cap=0: the correction is off "
                       "(set is_cap > 0)")
        if self.pack_len < 0 or self.pack_rows < 0:
            out.append(f"pack_len={self.pack_len} and pack_rows={self.pack_rows} must be >= 0")
        if 0 < self.pack_len < self.max_prompt_len + self.max_new_tokens:
            out.append(f"pack_len={self.pack_len} < max_prompt_len + max_new_tokens = "
                       f"{self.max_prompt_len + self.max_new_tokens}: a full sequence must fit in a row")
        if self.pack_rows and not self.pack_len:
            out.append(f"pack_rows={self.pack_rows} with pack_len=0: packing is off")
        return out


@dataclasses.dataclass(frozen=True)
class GRPOSyntheticConfig(common.SyntheticConfig):
    num_heldout: int = 200    # held-out problems (eval/accuracy)


@dataclasses.dataclass(frozen=True)
class GRPOConfig(loop.TrainConfig):
    """The loop's fields, model / tokenizer as in SFT, and grpo.*. batch_size and seq_len are
    derived: prompts_per_step x group_size rows of max_prompt_len + max_new_tokens tokens."""

    model: common.ModelFields = common.ModelFields()
    tokenizer: str = ""       # tokenizer directory (default: the model's); 'bytes': the built-in byte tokenizer
    synthetic: GRPOSyntheticConfig = GRPOSyntheticConfig()
    optim: state_lib.OptimConfig = state_lib.OptimConfig(lr=1e-6, weight_decay=0.0, warmup_steps=0)
    grpo: GRPOSettings = GRPOSettings()

    def __post_init__(self):
        g = self.grpo
        object.__setattr__(self, "batch_size", g.prompts_per_step * g.group_size)
        object.__setattr__(self, "seq_len", g.max_prompt_len + g.max_new_tokens)

    def problems(self) -> list[str]:
        g = self.grpo
        out = []
        if self.batch_size % (g.minibatches * self.accum_steps):
            out.append(f"grpo.prompts_per_step x grpo.group_size = {self.batch_size} rows do not split into "
                       f"grpo.minibatches={g.minibatches} x accum_steps={self.accum_steps}")
        return out


def default_config() -> ml_collections.ConfigDict:
    """The ConfigDict of GRPOConfig's defaults (what config files and flags edit)."""
    return typed.to_configdict(GRPOConfig())


def check_config(config) -> GRPOConfig:
    """The frozen GRPOConfig of config (batch_size, seq_len derived); ValueError naming every bad field."""
    return typed.from_config(GRPOConfig, config)


def write_synthetic(c) -> tuple[str, str]:
    """(train, held-out) JSONL of the synthetic task under <workdir>/data (process 0 writes)."""
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
    with rollout.GRADE_LOCK:
        return grader.grade_batch(texts, [p.gold for p in prompts], fallback=False)


def accuracy_evaluator(prompts, cfg, tokenizer, rc, eos_ids, stops: tuple[str, ...] = ()):
    """params -> {'accuracy'}: the share of held-out prompts greedy_correct."""

    def evaluate(params) -> dict:
        ok = greedy_correct(params, prompts, cfg, tokenizer, rc.max_new_tokens, eos_ids, stops)
        return {"accuracy": sum(ok) / len(ok)}

    return evaluate


def batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The GRPO rollout batch: the LM fields, sampler_logp [rows, seq_len] and advantages [N].
    Packed (grpo.pack_len > 0): rows = packed rows per micro-batch x micro-batches of pack_len
    tokens, with `sequence` (rollout.pack_rows); else N rows of seq_len."""
    g = config.grpo
    spec = with_fields(lm_batch_spec, sampler_logp=lambda rows, seq: (rows, seq),
                       advantages=lambda rows, seq: (rows,))(config, mesh)
    if not g.pack_len:
        return spec
    parts = g.minibatches * config.accum_steps
    shape, s = (rollout.packed_rows_per_part(g, parts) * parts, g.pack_len), batch_sharding(mesh)
    out = {k: jax.ShapeDtypeStruct(shape, v.dtype, sharding=s) for k, v in spec.items() if k != "advantages"}
    return {**out, "sequence": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s), "advantages": spec["advantages"]}


def build(config: ml_collections.ConfigDict | GRPOConfig) -> Plan:
    """The GRPO plan: rollouts from a copy of the learner's params in the rollout layout
    (rollout.RolloutSource, reasonax.train.rollout_layout; with one-step-off on the first
    grpo.rollout_devices devices, the loop's mesh on the rest), the clipped
    objective, the prepare pass for old / reference log-probs when needed, and with beta > 0 the
    frozen reference (the initial policy) as aux. The rollout engine's config goes with it, so the
    dry run reports the sampler's memory next to the train step's."""
    c = check_config(config)
    g = c.grpo
    cfg = common.model_config(c)
    if isinstance(layout := rollout_layout.parse(g.rollout_mesh), tuple):
        rollout_layout.check_heads(layout[1], cfg)
    chunk = c.loss_chunk or None
    tokenizer = functools.cache(lambda: common.load_tokenizer(c))

    @functools.cache
    def files() -> tuple[list[str], list[str]]:
        if c.synthetic.task:
            train, held = write_synthetic(c)
            return [train], [held]
        return list(g.files), list(g.eval_files)

    reserved = g.rollout_devices if g.overlap == "one-step-off" else 0

    def source(mesh):
        tok = tokenizer()
        prompts = rollout.load_prompts(dataclasses.replace(g, files=tuple(files()[0])), tok, g.max_prompt_len)
        devices = jax.devices()[:reserved] if reserved else list(mesh.devices.flat)
        return rollout.RolloutSource(prompts, cfg, tok, g, mesh, c.seed, stop_ids(c, cfg, tok), stop_strings(c),
                                     devices=devices, num_steps=c.num_steps,
                                     chip=rollout_layout.chip_of(c.peak_flops, devices),
                                     budget=rollout_layout.device_budget(c.device_memory_gib, devices),
                                     parts=g.minibatches * c.accum_steps)

    def evaluate(mesh):
        if not files()[1]:
            return None
        tok = tokenizer()
        held = rollout.load_prompts(dataclasses.replace(g, files=tuple(files()[1])), tok, g.max_prompt_len)
        return accuracy_evaluator(held[:g.eval_limit or None], cfg, tok, g, stop_ids(c, cfg, tok), stop_strings(c))

    init = common.init_params_fn(c, cfg)
    hp = LossParams.of(g)
    needs_old = g.mu > 1 or g.minibatches > 1 or bool(g.is_cap)  # one-step-off needs is_cap: covered
    return common.with_lora(Plan(
        config=c, model=cfg, loss=functools.partial(grpo_loss, cfg=cfg, hp=hp, chunk=chunk), init=init,
        source=source, batch_spec=batch_spec,
        prepare=make_prepare(cfg, hp, chunk, old=needs_old, ref=bool(g.beta)),
        prepare_forwards=int(needs_old) + int(bool(g.beta)),
        aux=init if g.beta else None,  # the frozen reference = the initial policy (with LoRA: the base)
        aux_spec=common.abstract_params_fn(cfg, jnp.dtype(c.param_dtype)) if g.beta else None,
        reference_is_init=bool(g.beta), evaluate=evaluate if (c.synthetic.task or g.eval_files) else None,
        finish=common.exporter(c, cfg), step_options=dict(minibatches=g.minibatches, epochs=g.mu),
        rollout=g, module=MODULE, reserved_devices=reserved), c)


def run(config: ml_collections.ConfigDict | GRPOConfig):
    """Train with GRPO per config (rollouts in the rollout layout, synced each step); export HF at the end."""
    c = check_config(config)
    loop.init_distributed(c.distributed)  # before anything touches the devices
    return loop.run(build(c))


def main(argv):
    common.main(argv, build, run, "configs/grpo_tiny_cpu.py")


def cli() -> None:
    """The `reasonax-grpo` command (also `python -m reasonax.train.grpo`)."""
    common.recipe_flags("configs/grpo_*.py", "compile the GRPO train step and the rollout engine's decode block "
                        "for config.mesh on fake CPU devices and print per-device memory; no training")
    app.run(main)
