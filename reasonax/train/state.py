"""Train state, the AdamW optimizer, and the shardings of both.

The optimizer state is float32 whatever the params' dtype: it is initialised from (and updated
against) a float32 view of the params, and each update is added in float32 before casting back.
bfloat16 params therefore carry no float32 master copy (updates smaller than a bf16 ulp of the
weight are lost); use float32 params when that matters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec

from reasonax import typed
from reasonax.model.config import ModelConfig
from reasonax.model.lora import RANK_AXIS
from reasonax.model.params import is_spec, param_specs, spec_shardings


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array       # int32: batches consumed (skipped non-finite steps included)
    updates: jax.Array    # int32: optimizer updates applied (drives the lr schedule)
    bad_steps: jax.Array  # int32: non-finite steps in a row (0 after any good step)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine decay (config.optim)."""

    lr: float = 3e-4            # peak learning rate
    warmup_steps: int = 100     # linear warmup from 0 to lr
    total_steps: int = 1000     # warmup + cosine decay length (usually the run's num_steps)
    end_lr_ratio: float = 0.1   # final lr = lr * end_lr_ratio
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1   # decoupled (AdamW); never applied to norms or biases
    clip_norm: float = 1.0      # global-norm gradient clipping (0: off)

    def problems(self) -> list[str]:
        out = [f"{k}={getattr(self, k)} must be >= 0" for k in ("lr", "warmup_steps", "weight_decay", "clip_norm")
               if getattr(self, k) < 0]
        if self.total_steps < 1:
            out.append(f"total_steps={self.total_steps} must be >= 1")
        return out


def default_optim_config() -> ml_collections.ConfigDict:
    """The ConfigDict of OptimConfig's defaults."""
    return typed.to_configdict(OptimConfig())


def schedule(optim: OptimConfig) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine decay to lr * end_lr_ratio at total_steps."""
    warmup = max(0, min(int(optim.warmup_steps), int(optim.total_steps) - 1))
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(int(optim.total_steps), warmup + 1),
                                              end_value=optim.lr * optim.end_lr_ratio)


def trained_specs(cfg: ModelConfig, specs: dict | None = None) -> dict:
    """The declaration (ParamSpec tree) of what a step trains: `specs` when given (LoRA: the
    adapters, reasonax.train.adapters), else every parameter of cfg."""
    return param_specs(cfg) if specs is None else specs


def decay_mask(cfg: ModelConfig, specs: dict | None = None) -> dict:
    """True for weight matrices (LoRA's A and B too); False for norms and biases (from the
    declarations)."""
    return jax.tree.map(lambda s: s.init not in ("zeros", "ones") or RANK_AXIS in s.axes,
                        trained_specs(cfg, specs), is_leaf=is_spec)


def make_optimizer(optim: OptimConfig, cfg: ModelConfig, specs: dict | None = None) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW over the trained params (see trained_specs)."""
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    parts.append(optax.adamw(schedule(optim), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=decay_mask(cfg, specs)))
    return optax.chain(*parts)


def _as_f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state around `params` (call under jit to place it; see state_shardings)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=optimizer.init(_as_f32(params)), step=zero, updates=zero,
                      bad_steps=zero)


def apply_updates(params, grads, opt_state, optimizer: optax.GradientTransformation):
    """One optimizer update in float32; params keep their dtype."""
    p32 = _as_f32(params)
    updates, opt_state = optimizer.update(_as_f32(grads), opt_state, p32)
    new = jax.tree.map(lambda p, q, u: (q + u).astype(p.dtype), params, p32, updates)
    return new, opt_state


def _path_names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def state_shardings(abstract_state: TrainState, cfg: ModelConfig, mesh: jax.sharding.Mesh,
                    specs: dict | None = None) -> TrainState:
    """NamedShardings for every leaf of a (possibly abstract) TrainState.

    Params follow their declared logical axes. An optimizer-state leaf whose path ends with a
    parameter's path and has its shape (Adam's mu and nu) takes that parameter's sharding;
    everything else (counts, scalars) is replicated.
    """
    specs = trained_specs(cfg, specs)
    pshard = spec_shardings(specs, mesh)
    by_path = {_path_names(p): (s, leaf.shape) for (p, s), leaf in zip(
        jax.tree_util.tree_flatten_with_path(pshard)[0], jax.tree.leaves(specs, is_leaf=is_spec))}
    replicated = NamedSharding(mesh, PartitionSpec())

    def opt_leaf(path, leaf):
        names = _path_names(path)
        for i in range(len(names)):
            hit = by_path.get(names[i:])
            if hit is not None and tuple(hit[1]) == tuple(leaf.shape):
                return hit[0]
        return replicated

    opt = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state)
    return TrainState(params=pshard, opt_state=opt, step=replicated, updates=replicated, bad_steps=replicated)


def abstract_state(cfg: ModelConfig, optimizer, mesh, param_dtype=jnp.float32, specs: dict | None = None) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the train state: no memory is allocated."""
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, param_dtype), trained_specs(cfg, specs),
                          is_leaf=is_spec)
    shapes = jax.eval_shape(lambda p: init_state(p, optimizer), params)
    shard = state_shardings(shapes, cfg, mesh, specs)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shard)


def create_state(params, cfg: ModelConfig, optimizer, mesh, specs: dict | None = None) -> TrainState:
    """A placed TrainState around `params`, which it consumes (their buffers are donated).

    The params are first moved to their declared shardings on `mesh` if they are elsewhere.
    """
    shapes = jax.eval_shape(lambda p: init_state(p, optimizer), params)
    shard = state_shardings(shapes, cfg, mesh, specs)
    params = jax.device_put(params, shard.params)
    return jax.jit(lambda p: init_state(p, optimizer), out_shardings=shard, donate_argnums=0)(params)
