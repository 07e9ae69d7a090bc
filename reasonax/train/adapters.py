"""LoRA training (config.lora): a plan transform that trains adapters on a frozen base.

    plan = adapters.lora_plan(sft.build(config), config)   # what every recipe's build does when
                                                           # config.lora.r > 0 or lora.init_from

The transformed plan's state holds the adapters only, as {"layers": {"lora": {target: {a, b}}}}
(reasonax.model.lora's layout), so gradients, the AdamW state and the Orbax checkpoints hold the
adapters and the training counters, and resume is exact as for full training. The base params
(loaded from model.path or drawn from the preset, in param_dtype) are the step's frozen aux: the
loss, the prepare pass, the rollouts and the evaluation run `combine(base, adapters)`, a new dict
around the same arrays. Where a recipe's reference is its initial policy (GRPO with beta > 0:
Plan.reference_is_init) the base with adapters off stands in: one copy of the base, no second
model. A reference that is another model (SLM's online reference) stays a separate aux.

At the end the merged params (W + scale B A) go to the recipe's HF export and the adapters to a
PEFT directory (lora.export_peft, default <workdir>/peft) that peft.PeftModel.from_pretrained
loads onto the HF base. lora.init_from starts from an existing PEFT adapter directory.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp

from reasonax.model import lora
from reasonax.model.config import LoraConfig, ModelConfig
from reasonax.model.params import ADAPTERS, abstract_specs, param_specs
from reasonax.model.transformer import unstack_layers
from reasonax.train.plan import Plan

PEFT_DIR = "peft"


def settings(f) -> LoraConfig | None:
    """The LoraConfig of config.lora (a loop.LoraFields), or None when LoRA is off. With init_from
    the adapter directory's own settings are used; lora.r, if set, must equal its rank."""
    if not (f.r > 0 or f.init_from):
        return None
    if f.init_from:
        s = lora.read_peft_config(f.init_from)
        if f.r and f.r != s.r:
            raise ValueError(f"lora.r={f.r}, but the adapter in lora.init_from={f.init_from} has rank {s.r} "
                             f"(set lora.r=0 to take the adapter's settings)")
        return s
    return LoraConfig(r=f.r, alpha=f.alpha, rslora=f.rslora, targets=f.targets)


def trainable_specs(cfg: ModelConfig, extra: dict | None = None) -> dict:
    """The ParamSpec tree of what a LoRA step trains: {"layers": {"lora": adapter_specs(cfg)}}, plus
    `extra` (top-level params trained in full beside the adapters: Plan.always_trained, e.g. the
    PRM's head)."""
    return {"layers": {ADAPTERS: lora.adapter_specs(cfg)}, **(extra or {})}


def combine(base: dict, trainable: dict) -> dict:
    """The params the model runs: the base with the trained adapters and any params trained in
    full beside them (top-level keys of `trainable` other than "layers", which replace the
    base's); no copies. `trainable` may be unrolled by the train step (layers a tuple of per-layer
    dicts, see transformer.unstack_layers); the base is then unrolled alike."""
    extra = trainable["layers"]
    full = {k: v for k, v in trainable.items() if k != "layers"}
    if isinstance(extra, tuple):
        layers = base["layers"] if isinstance(base["layers"], tuple) else unstack_layers(base)["layers"]
        return {**base, **full, "layers": tuple({**b, **t} for b, t in zip(layers, extra))}
    return {**base, **full, "layers": {**base["layers"], **extra}}


class _WithBase:
    """A plan's batch source whose next(state) sees the full params (GRPO samples rollouts from
    them); everything else (iterator, stats, metrics) is the source's own."""

    def __init__(self, source, base: dict):
        self._source, self._base = source, base

    def next(self, state):
        return self._source.next(dataclasses.replace(state, params=combine(self._base, state.params)))

    def __getattr__(self, name):
        return getattr(self._source, name)


def lora_plan(plan: Plan, c) -> Plan:
    """plan trained with LoRA per c.lora (plan.model carries the settings: common.model_config)."""
    cfg = plan.model
    if cfg.lora is None:
        raise ValueError("lora_plan: the plan's model config has no LoRA settings (config.lora.r is 0)")
    f = c.lora
    all_specs = plan.trainable if plan.trainable is not None else param_specs(cfg)  # what the base holds
    kept = {k: all_specs[k] for k in plan.always_trained}  # trained in full beside the adapters
    bases: dict = {}  # mesh -> the frozen base, loaded once and shared by aux, source and evaluation

    def base(mesh) -> dict:
        if mesh not in bases:
            bases.clear()
            dtype = jnp.dtype(c.param_dtype)
            bases[mesh] = jax.tree.map(lambda x: x.astype(dtype), plan.init(mesh))
        return bases[mesh]

    def init(mesh) -> dict:
        if f.init_from:
            _, ad = lora.load_peft(f.init_from, cfg, dtype=f.dtype, mesh=mesh)
        else:
            ad = lora.init_adapters(cfg, jax.random.fold_in(jax.random.key(c.seed), 1), f.dtype, mesh)
        # copies: the loop donates the initial state's buffers, the base keeps its own
        return {"layers": {ADAPTERS: ad}, **{k: jax.tree.map(jnp.copy, base(mesh)[k]) for k in kept}}

    separate = plan.aux is not None and not plan.reference_is_init  # a reference that is another model

    def aux(mesh) -> dict:
        return {"base": base(mesh), "aux": plan.aux(mesh) if separate else None}

    def aux_spec(mesh) -> dict:
        return {"base": abstract_specs(all_specs, jnp.dtype(c.param_dtype), mesh),
                "aux": plan.aux_spec(mesh) if separate else None}

    def inner_aux(a) -> tuple:
        if plan.reference_is_init:
            return (a["base"],)  # the reference: the base with adapters off, the same arrays
        return (a["aux"],) if separate else ()

    def loss(trainable, batch, a):
        return plan.loss(combine(a["base"], trainable), batch, *inner_aux(a))

    prepare = None
    if plan.prepare is not None:
        def prepare(trainable, chunks, a):
            return plan.prepare(combine(a["base"], trainable), chunks, *inner_aux(a))

    def source(mesh):
        return _WithBase(plan.source(mesh), base(mesh))

    evaluate = None
    if plan.evaluate is not None:
        def evaluate(mesh):
            fn = plan.evaluate(mesh)
            return None if fn is None else (lambda trainable: fn(combine(base(mesh), trainable)))

    def finish(trainable) -> None:
        adapters = trainable["layers"][ADAPTERS]
        full = {k: trainable[k] for k in kept}
        if plan.finish is not None:
            plan.finish({**lora.merge(next(iter(bases.values())), adapters, cfg), **full})
        if f.export_peft != "none":
            out = Path(f.export_peft or Path(c.workdir) / PEFT_DIR)
            if jax.process_index() == 0 and (out / lora.CONFIG_FILE).is_file():
                shutil.rmtree(out)  # this run's own earlier export (a rerun after the last step)
            lora.save_peft(adapters, cfg, out, modules_to_save=(full, kept) if kept else None,
                           task_type=plan.peft_task_type)

    return dataclasses.replace(
        plan, init=init, loss=loss, prepare=prepare, aux=aux, aux_spec=aux_spec, source=source,
        evaluate=evaluate, finish=finish, trainable=trainable_specs(cfg, kept), trainable_dtype=f.dtype,
        policy=lambda trainable, a: combine(a["base"], trainable), reference_is_init=False)
