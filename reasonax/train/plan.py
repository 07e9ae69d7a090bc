"""A recipe's plan: everything the training loop and the dry run need, built once from a config.

    plan = grpo.build(config)        # or sft.build, slm.build
    state = loop.run(plan)           # train
    report = dry_run.dry_run(plan)   # or compile the same step for the target mesh, no data read

A recipe is its `build(config) -> Plan`. The plan holds the run's typed config (the ConfigDict
converted once into the recipe's frozen dataclass, reasonax.typed: checked, derived fields filled
in; the caller's config is not touched), the model config and functions of the
mesh for everything that reads files or allocates (init, data source, reference params,
evaluation), so the dry run builds the same step without calling them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from reasonax.model.config import ModelConfig
from reasonax.model.sharding import batch_sharding


@dataclasses.dataclass(frozen=True)
class Plan:
    config: Any                        # the run's typed config (loop.TrainConfig or a recipe's subclass)
    model: ModelConfig                 # the learner's config (remat from config.remat)
    loss: Callable                     # loss_fn(params, batch, *aux) -> (sum, count, metrics)
    init: Callable                     # mesh -> params (loaded or random)
    source: Callable                   # mesh -> batch source (.next(state), .iterator); reads data
    batch_spec: Callable               # (config, mesh) -> {field: ShapeDtypeStruct}: one global batch
    prepare: Callable | None = None    # step prepare (old / reference log-probs, global selection)
    aux: Callable | None = None        # mesh -> frozen aux params (a reference model), or None
    aux_spec: Callable | None = None   # mesh -> their ShapeDtypeStructs (the dry run's aux)
    evaluate: Callable | None = None   # mesh -> (params -> {name: float}), or None
    finish: Callable | None = None     # (final params) -> after training (the HF export)
    step_options: dict = dataclasses.field(default_factory=dict)  # minibatches, epochs
    rollout: Any = None                # the sampler's config (grpo.*): the dry run adds its memory
    module: str = ""                   # the recipe's CLI module (the dry run re-executes it)
    reference_is_init: bool = False    # aux is the initial policy (GRPO's reference); LoRA uses the base
    trainable: dict | None = None      # ParamSpec tree of what the step trains (None: every param of model;
                                       # LoRA: the adapters, reasonax.train.adapters)
    trainable_dtype: str = ""          # their dtype ('' : config.param_dtype)
    policy: Callable | None = None     # (state params, aux) -> the params the model runs (None: the state's)
    reserved_devices: int = 0          # the first N devices do the plan's own work (GRPO's one-step-off rollout
                                       # group); the loop's mesh (config.mesh) takes the devices after them
    prepare_forwards: int = 0          # forwards `prepare` runs per step (MFU: GRPO's old / reference log-probs)
    always_trained: tuple[str, ...] = ()  # top-level params trained in full beside LoRA's adapters (the PRM's
                                          # head "prm_head"), exported by LoRA as PEFT modules_to_save
    peft_task_type: str = "CAUSAL_LM"  # the PEFT export's task_type (the PRM: TOKEN_CLS)
    unembed: bool = True               # the model runs its unembedding (MFU; the PRM's one-logit head: False)


def lm_batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The language-model batch as ShapeDtypeStructs [batch_size, seq_len], rows sharded over the
    batch axes: inputs, targets, segment_ids, positions (int32) and weights (float32)."""
    shape, s = (int(config.batch_size), int(config.seq_len)), batch_sharding(mesh)
    ints = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s)
            for k in ("inputs", "targets", "segment_ids", "positions")}
    return {**ints, "weights": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s)}


def with_fields(spec_fn: Callable, **fields: Callable) -> Callable:
    """spec_fn plus fields: name -> (rows, seq_len) -> shape of a float32 field (rows sharded)."""

    def spec(config, mesh):
        out = spec_fn(config, mesh)
        rows, seq = int(config.batch_size), int(config.seq_len)
        for name, shape in fields.items():
            out[name] = jax.ShapeDtypeStruct(shape(rows, seq), jnp.float32, sharding=batch_sharding(mesh))
        return out

    return spec
