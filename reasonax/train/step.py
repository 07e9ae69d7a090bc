"""The one train-step builder every recipe uses (SFT, SLM, GRPO differ only in their loss).

    step = build_train_step(loss_fn, optimizer, shardings, mesh, accum_steps=4)
    state, metrics = step(state, batch)

loss_fn(params, batch) -> (loss_sum, token_count, metrics) with metrics a dict of
(numerator, denominator) pairs. The step splits the batch into `accum_steps` micro-batches,
sums loss, count, metrics and float32 gradients over them (lax.scan, one compiled body), and
divides by the whole batch's count: the true token mean, not a mean of micro-batch means.

Two optional extras, both used by SLM and GRPO:
  aux      a pytree of frozen arrays (e.g. a reference model's params) passed to every call:
           step(state, batch, aux) and loss_fn(params, micro_batch, aux); never differentiated.
  prepare  prepare(params, micro_batches, *aux) -> micro_batches, run once per step on all the
           stacked micro-batches [minibatches * accum_steps, rows / that, ...] before any
           gradient, for losses that need the whole batch first (SLM ranks tokens over the
           global batch; GRPO stores the pre-update and reference log-probs).

unroll_layers=True runs the layer stack of the trainable params (and of prepare's forward) as an
unrolled loop over per-layer arrays instead of a lax.scan over the stacked weights (the state
keeps the stacked layout; gradients come back stacked). On XLA:CPU this is 8-22% faster per
step (bench/train_step.py --layer_loop); on accelerators the scan compiles one layer and is the default.

A non-finite loss or gradient norm skips the update (params and optimizer state unchanged),
sets metrics['skipped'] = 1 and increments state.bad_steps; the loop decides when to stop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from reasonax.model.sharding import BATCH_AXES, batch_sharding
from reasonax.model.transformer import unstack_layers
from reasonax.train.state import TrainState, _as_f32, apply_updates

def _split(x: jax.Array, n: int, mesh) -> jax.Array:
    """[B,...] -> [n, B/n, ...], micro-batch i = rows i, i+n, ... (each device keeps its rows)."""
    B = x.shape[0]
    if B % n:
        raise ValueError(f"batch of {B} rows does not split into accum_steps={n} micro-batches")
    x = x.reshape(B // n, n, *x.shape[1:]).swapaxes(0, 1)
    spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


LAYER_LOOPS = ("auto", "scan", "unroll")


def resolve_layer_loop(value: str, *, on_cpu: bool) -> bool:
    """A config's layer_loop -> build_train_step's unroll_layers. 'auto' unrolls when the step runs
    on the CPU backend, where XLA copies each scanned layer's weights out of the stacked arrays
    and an unrolled stack trains faster (BENCHMARKS.md, training step), and scans elsewhere
    (one compiled layer: fast compiles, the layout accelerators are tuned for)."""
    if value not in LAYER_LOOPS:
        raise ValueError(f"layer_loop={value!r}: expected one of {LAYER_LOOPS}")
    return on_cpu if value == "auto" else value == "unroll"


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class TrainStep:
    """A jitted, state-donating train step that traces and runs under its mesh."""

    def __init__(self, fn: Callable, mesh):
        self.fn, self.mesh = fn, mesh

    def __call__(self, state: TrainState, batch: dict, *aux):
        with jax.set_mesh(self.mesh):
            return self.fn(state, batch, *aux)

    def lower(self, state, batch, *aux):
        with jax.set_mesh(self.mesh):
            return self.fn.lower(state, batch, *aux)


def build_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, shardings: TrainState,
                     mesh: jax.sharding.Mesh, *, accum_steps: int = 1,
                     lr_schedule: optax.Schedule | None = None, aux_shardings: Any = None,
                     prepare: Callable | None = None, minibatches: int = 1, epochs: int = 1,
                     unroll_layers: bool = False) -> TrainStep:
    """A TrainStep(state, batch[, aux]) -> (state, metrics). `shardings`: see state.state_shardings;
    `aux_shardings`: the shardings of the aux pytree (None: the step takes no aux).

    minibatches / epochs (GRPO's mini-batches and mu): the batch is cut into `minibatches`
    parts and the step makes epochs x minibatches optimizer updates over them in order, each
    with `accum_steps` micro-batches; loss, grad_norm and lr are then means over the updates
    ('tokens' and 'skipped' sums), and loss_fn's (numerator, denominator) metrics are pooled over
    them (sum / sum). state.step counts calls, state.updates optimizer updates.
    unroll_layers: see the module docstring (resolve_layer_loop picks it from a config).
    """
    layout = unstack_layers if unroll_layers else (lambda p: p)

    def grads_of(params, mb, aux):
        def f(p):
            loss_sum, count, metrics = loss_fn(layout(p), mb, *aux)
            return loss_sum, (count, metrics)

        (loss_sum, (count, metrics)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss_sum.astype(jnp.float32), count.astype(jnp.float32), metrics, _as_f32(grads)

    def accumulate(params, mbs, aux):
        if accum_steps == 1:
            return grads_of(params, jax.tree.map(lambda x: x[0], mbs), aux)
        shapes = jax.eval_shape(grads_of, params, jax.tree.map(lambda x: x[0], mbs), aux)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        zeros = (*zeros[:3], jax.lax.with_sharding_constraint(zeros[3], shardings.params))
        total, _ = jax.lax.scan(lambda acc, mb: (_add(acc, grads_of(params, mb, aux)), None), zeros, mbs)
        return total

    def update(state: TrainState, mbs: dict, aux) -> tuple[TrainState, dict]:
        loss_sum, count, metrics, grads = accumulate(state.params, mbs, aux)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
        params, opt_state = apply_updates(state.params, grads, state.opt_state, optimizer)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            step=state.step, updates=state.updates + finite.astype(jnp.int32),
            bad_steps=jnp.where(finite, 0, state.bad_steps + 1))
        out = {"loss": loss_sum / denom, "tokens": count, "grad_norm": grad_norm,
               "skipped": 1.0 - finite.astype(jnp.float32), "bad_steps": new_state.bad_steps.astype(jnp.float32)}
        if lr_schedule is not None:
            out["lr"] = jnp.asarray(lr_schedule(state.updates), jnp.float32)
        return new_state, (out, metrics)

    def ratios(out, metrics):
        return {**out, **{name: num / jnp.maximum(den, 1e-9) for name, (num, den) in metrics.items()}}

    def step(state: TrainState, batch: dict, *aux):
        parts = minibatches * accum_steps
        if parts == 1:
            chunks = jax.tree.map(lambda x: x[None], batch)
        else:
            chunks = jax.tree.map(lambda x: _split(x, parts, mesh), batch)
        if prepare is not None:
            chunks = prepare(layout(state.params), chunks, *aux)
        if minibatches * epochs == 1:
            state, (out, metrics) = update(state, chunks, aux)
            out = ratios(out, metrics)
        else:  # minibatch m = chunks m*A .. m*A + A-1
            minis = jax.tree.map(lambda x: x.reshape(minibatches, accum_steps, *x.shape[1:]), chunks)

            def one(st, i):
                return update(st, jax.tree.map(lambda x: x[i % minibatches], minis), aux)

            state, (outs, metrics) = jax.lax.scan(one, state, jnp.arange(epochs * minibatches))
            out = jax.tree.map(lambda x: x.mean(), outs)
            out.update(tokens=outs["tokens"].sum(), skipped=outs["skipped"].sum(), bad_steps=outs["bad_steps"][-1])
            # pooled over the updates (sum of numerators / sum of denominators): an update whose
            # part holds no completion token does not pull a mean toward 0
            out = ratios(out, jax.tree.map(lambda x: x.sum(), metrics))
        return dataclasses.replace(state, step=state.step + 1), out

    replicated = NamedSharding(mesh, PartitionSpec())
    in_shardings = (shardings, batch_sharding(mesh)) + (() if aux_shardings is None else (aux_shardings,))
    fn = jax.jit(step, in_shardings=in_shardings, out_shardings=(shardings, replicated), donate_argnums=0)
    return TrainStep(fn, mesh)
