"""The one training loop: restore or init, step, log, checkpoint, guard, export.

Recipes differ only in their plan (reasonax.train.plan.Plan: loss, init, batch source, aux,
prepare, evaluation), which `build(config)` returns:

    state = loop.run(sft.build(config))

`source.next(state) -> batch` returns the next global batch (dict of jax.Arrays sharded over the
batch axes); `source.iterator` is its checkpointable grain iterator (or None). SFT and SLM read
a grain pipeline (DataSource); GRPO samples rollouts from state.params inside next().
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from reasonax import typed
from reasonax.model import flops as flops_lib
from reasonax.model import sharding
from reasonax.model.config import LORA_TARGETS, REMAT_POLICIES, LoraConfig, config_to_dict
from reasonax.train import data as data_lib
from reasonax.train import monitor, preempt, watchdog
from reasonax.train import state as state_lib
from reasonax.train.checkpoint import Checkpointer
from reasonax.train.step import LAYER_LOOPS, build_train_step, resolve_layer_loop


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is left intact."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; one axis of -1 takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1  # sizes checked (and -1 resolved) by model.sharding.mesh_shape


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100        # save every N steps (and at the end)
    keep: int = 3           # checkpoints kept
    async_save: bool = True  # write in the background while training goes on
    fallback: bool = False   # the latest checkpoint unreadable: warn, set it aside, restore the one before

    def problems(self) -> list[str]:
        return [f"every={self.every} and keep={self.keep} must be >= 1"] if min(self.every, self.keep) < 1 else []


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed.initialize arguments (multi-host); no coordinator: one process."""

    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: str = ""  # comma-separated device ids of this process ('' : all)
    heartbeat_timeout_s: int = 100  # JAX declares a process without heartbeats dead after this (and ends the others)

    def problems(self) -> list[str]:
        return [] if self.heartbeat_timeout_s >= 1 else [f"heartbeat_timeout_s={self.heartbeat_timeout_s} must be >= 1"]


@dataclasses.dataclass(frozen=True)
class LoraFields:
    """LoRA (config.lora; reasonax.train.adapters): train low-rank adapters on a frozen base."""

    r: int = 0                # rank; 0: off (full fine-tuning)
    alpha: float = 16.0       # scale alpha / r (rslora: alpha / sqrt(r))
    rslora: bool = False
    targets: tuple[str, ...] = LORA_TARGETS  # adapted projections: any of q, k, v, o, gate, up, down
    init_from: str = ""       # a PEFT adapter directory to start from (its r, alpha, rslora, targets are used)
    dtype: str = "float32"    # adapters and their optimizer state (the base stays in param_dtype)
    export_peft: str = ""     # write the final adapters as a PEFT directory here ('' : <workdir>/peft; 'none': skip)

    def problems(self) -> list[str]:
        out = []
        if self.r < 0:
            out.append(f"r={self.r} must be >= 0 (0: off)")
        if self.r > 0:
            try:
                LoraConfig(r=self.r, alpha=self.alpha, rslora=self.rslora, targets=self.targets)
            except ValueError as e:
                out.append(str(e))
        if self.dtype not in ("float32", "bfloat16"):
            out.append(f"dtype={self.dtype!r}; expected float32 or bfloat16")
        return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every recipe (the loop's); recipes extend it."""

    workdir: str = ""           # checkpoints/, metrics.jsonl, tensorboard/, hf/ go here (required)
    num_steps: int = 100        # optimizer steps (batches) to run; resume continues to this count
    batch_size: int = 8         # global rows per step (all processes, all micro-batches)
    accum_steps: int = 1        # micro-batches per step (gradient accumulation)
    seq_len: int = 512          # tokens per row
    seed: int = 0               # params init (when not loading), data order, rollout sampling
    param_dtype: str = "float32"  # float32 | bfloat16 (optimizer state is float32 either way)
    remat: str = "none"         # rematerialise each scanned layer: none | full | dots
    layer_loop: str = "auto"    # how the train step runs the layers: scan | unroll | auto (unroll on CPU)
    loss_chunk: int = 0         # positions per chunk of the cross-entropy (0: fit a 256 MiB budget)
    mesh: MeshConfig = MeshConfig()
    optim: state_lib.OptimConfig = state_lib.OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_every: int = 10         # console / metrics.jsonl / TensorBoard every N steps
    eval_every: int = 0         # held-out evaluation every N steps and at the end (0: never; needs eval data)
    peak_flops: str | float = "auto"  # MFU peak per device: 'auto', a key of monitor.CHIPS, or FLOP/s
    tensorboard: bool = True
    max_bad_steps: int = 5      # stop after this many non-finite steps in a row
    export_hf: str = ""         # write the final params as HF safetensors here ('' : <workdir>/hf; 'none': skip)
    device_memory_gib: float = 0.0  # memory per device the --dry_run checks the step against (0: no check)
    watchdog_s: float = 1800.0  # a step, save, log or barrier longer than this dumps all stacks and exits 124 (0: off)
    watchdog_slow_s: float = 7200.0  # the same for the first step (compilation), held-out eval and the final export
    distributed: DistributedConfig = DistributedConfig()
    lora: LoraFields = LoraFields()

    def problems(self) -> list[str]:
        out = [f"{k}={getattr(self, k)} must be >= 1" for k in ("num_steps", "batch_size", "accum_steps", "seq_len",
                                                                 "log_every", "max_bad_steps") if getattr(self, k) < 1]
        if self.batch_size >= 1 and self.accum_steps >= 1 and self.batch_size % self.accum_steps:
            out.append(f"batch_size={self.batch_size} does not split into accum_steps={self.accum_steps} micro-batches")
        for k, allowed in (("param_dtype", ("float32", "bfloat16")), ("remat", REMAT_POLICIES),
                           ("layer_loop", LAYER_LOOPS)):
            if getattr(self, k) not in allowed:
                out.append(f"{k}={getattr(self, k)!r}; expected one of {allowed}")
        if self.loss_chunk < 0 or self.eval_every < 0 or self.device_memory_gib < 0:
            out.append("loss_chunk, eval_every and device_memory_gib must be >= 0")
        if self.watchdog_s < 0 or self.watchdog_slow_s < 0:
            out.append(f"watchdog_s={self.watchdog_s} and watchdog_slow_s={self.watchdog_slow_s} must be >= 0 (0: off)")
        return out


def default_train_config() -> ml_collections.ConfigDict:
    """The ConfigDict of TrainConfig's defaults."""
    return typed.to_configdict(TrainConfig())


def init_distributed(dist: DistributedConfig) -> None:
    """jax.distributed.initialize from config (no-op without a coordinator address)."""
    if not dist.coordinator_address:
        return
    local = [int(i) for i in str(dist.local_device_ids).split(",") if i.strip()] or None
    jax.distributed.initialize(dist.coordinator_address, num_processes=dist.num_processes,
                               process_id=dist.process_id, local_device_ids=local,
                               heartbeat_timeout_seconds=dist.heartbeat_timeout_s)


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process): after process 0 writes a
    file the others read next."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        with watchdog.phase(f"barrier {name}"):
            multihost_utils.sync_global_devices(name)


def config_mesh(config, skip: int = 0) -> jax.sharding.Mesh:
    """The mesh of config.mesh on the devices after the first `skip` (sharding.make_mesh; one axis
    of -1 takes the rest). ValueError naming config.mesh when those devices do not fit it."""
    m = config.mesh
    devices = jax.devices()[skip:]
    if not devices:
        raise ValueError(f"config.mesh: no devices left for training after the first {skip} "
                         f"(grpo.rollout_devices={skip} of {jax.device_count()})")
    try:
        return sharding.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor, devices=devices)
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}" + (f" (the {len(devices)} devices after the first {skip}, which "
                                                 "grpo.rollout_devices keeps for rollouts)" if skip else "")) from None


@dataclasses.dataclass
class DataSource:
    """Batches from a grain iterator of process-local numpy batches, placed as global arrays.
    `stats` (data.DataStats, optional) is logged as data/* metrics."""

    iterator: Any
    mesh: jax.sharding.Mesh
    stats: Any = None

    last_tokens: int | None = None  # real tokens of the last batch (all processes), for MFU

    def next(self, state) -> dict:
        batch = next(self.iterator)
        self.last_tokens = int((batch["segment_ids"] > 0).sum()) * jax.process_count()
        return data_lib.to_global(batch, self.mesh)


def run(plan, *, mesh: jax.sharding.Mesh | None = None):
    """Train plan.config.num_steps steps from the latest checkpoint in workdir (or from
    plan.init(mesh)); then plan.finish(params) (the HF export). Returns the final TrainState.

    plan.loss(params, batch[, aux]) -> (loss_sum, count, metrics), built on plan.model (whose remat
    the recipe set from config.remat). plan.aux(mesh) (frozen arrays, e.g. a reference model's
    params) and plan.prepare go to step.build_train_step, with plan.step_options (minibatches,
    epochs). A source with a metrics() method (GRPO's rollouts) has those logged with each
    step's. plan.evaluate(mesh) -> evaluate(params) -> {name: float} runs every
    config.eval_every steps and at the end, logged as eval/<name>.

    SIGTERM (a preemption notice; reasonax.train.preempt) stops the run after the step in
    progress, agreed on by every process, with a checkpoint of that step: it raises
    preempt.Preempted (SystemExit, status 75) instead of evaluating and exporting. A step, save,
    log or barrier longer than config.watchdog_s (the first step and evaluation / export:
    config.watchdog_slow_s) ends the process with a stack dump (reasonax.train.watchdog).
    """
    dog = watchdog.Watchdog(plan.config.watchdog_s, plan.config.watchdog_slow_s)
    stopper = preempt.Preemption()
    try:
        return _run(plan, mesh, dog, stopper)
    except Exception as e:
        if jax.process_count() > 1:  # most likely a lost peer: say where this process was
            print(f"[reasonax] process {jax.process_index()} of {jax.process_count()} failed in phase "
                  f"{dog.failed_in or dog.where()}: {type(e).__name__}; if another process was lost, JAX's "
                  f"coordination service names it within config.distributed.heartbeat_timeout_s="
                  f"{plan.config.distributed.heartbeat_timeout_s}s", file=sys.stderr, flush=True)
        raise
    finally:
        stopper.close()
        dog.close()


def _run(plan, mesh, dog: watchdog.Watchdog, stopper: preempt.Preemption):
    config, model_cfg, loss_fn, init_params = plan.config, plan.model, plan.loss, plan.init
    prepare, step_options = plan.prepare, plan.step_options
    if not config.workdir:
        raise ValueError("config.workdir is required")
    workdir = Path(config.workdir)
    mesh = mesh or config_mesh(config, plan.reserved_devices)
    with dog.phase("setup", slow=True):  # data, reference model, init or restore (watchdog_slow_s)
        source = plan.source(mesh)
        aux = plan.aux(mesh) if plan.aux is not None else None
        evaluate = plan.evaluate(mesh) if plan.evaluate is not None else None
        dtype = jnp.dtype(plan.trainable_dtype or config.param_dtype)
        optimizer = state_lib.make_optimizer(config.optim, model_cfg, plan.trainable)
        abstract = state_lib.abstract_state(model_cfg, optimizer, mesh, dtype, plan.trainable)
        shardings = jax.tree.map(lambda a: a.sharding, abstract)
        ckpt = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, every=config.checkpoint.every,
                            async_save=config.checkpoint.async_save, fallback=config.checkpoint.fallback)
        start = ckpt.latest_step()
        if start is None:
            params = jax.tree.map(lambda x: x.astype(dtype), init_params(mesh))
            state = state_lib.create_state(params, model_cfg, optimizer, mesh, plan.trainable)
        else:
            with dog.phase("restore", start, slow=True):  # a peer lost mid-restore: its barriers never end
                state = ckpt.restore(abstract, source.iterator)
                start = int(state.step)  # an older step than latest_step with checkpoint.fallback
                if hasattr(source, "restore_extra"):
                    source.restore_extra(ckpt.restore_extra(start))
    logger = monitor.MetricsLogger(workdir, resume_step=start, tensorboard=config.tensorboard)
    if start is not None:
        logger.log_event(start, f"resumed from checkpoint {start}")

    aux_args = () if aux is None else (aux,)
    step_fn = build_train_step(loss_fn, optimizer, shardings, mesh, accum_steps=config.accum_steps,
                               lr_schedule=state_lib.schedule(config.optim), prepare=prepare,
                               aux_shardings=None if aux is None else jax.tree.map(lambda x: x.sharding, aux),
                               unroll_layers=resolve_layer_loop(config.layer_loop,
                                                                 on_cpu=mesh.devices.flat[0].platform == "cpu"),
                               **(step_options or {}))
    eval_every = config.eval_every if evaluate is not None else 0
    saved_config = {"run": typed.to_dict(config), "model": config_to_dict(model_cfg)}
    epochs = (step_options or {}).get("epochs", 1)  # passes over each batch (GRPO's mu)
    adapters = None if model_cfg.lora is None else sum(  # LoRA's trained params (a plan may set trainable without it)
        math.prod(s.shape) for s in jax.tree.leaves(plan.trainable, is_leaf=lambda x: hasattr(x, "shape")))

    @functools.lru_cache
    def flops_of(tokens: int, rows: int) -> float:
        return flops_lib.step_flops(model_cfg, tokens, rows, updates=epochs, forwards=plan.prepare_forwards,
                                    adapter_params=adapters, unembed=plan.unembed)["total"]

    step_flops = flops_of(config.batch_size * config.seq_len, config.batch_size)
    peak, peak_desc = monitor.resolve_peak(config.peak_flops)
    if start is None:
        logger.log_event(0, f"MFU peak: {peak:.3g} FLOP/s per device ({peak_desc}); model FLOPs per step on real "
                            f"tokens: {plan.prepare_forwards} prepare forward(s) at 2*P per token, {epochs} update "
                            f"pass(es) at {'6' if adapters is None else '4'}*P per token"
                            f"{'' if adapters is None else ' + 6*P_adapters'}, and causal attention "
                            f"({step_flops:.3g} for full rows)")

    step = int(state.step)
    timer = _Timer()
    pending = None
    stop = False
    extra = getattr(source, "checkpoint_extra", None)  # a source's own state for the checkpoint (GRPO one-step-off)
    try:
        while step < config.num_steps and not stop:
            with dog.phase("step", step + 1, slow=pending is None):  # the first step compiles
                batch = source.next(state)
                rows, seq = batch["inputs"].shape  # GRPO trims or packs its rows
                tokens = getattr(source, "last_tokens", None) or rows * seq  # real (non-padding) tokens
                step_flops = flops_of(tokens, rows)
                state, metrics = step_fn(state, batch, *aux_args)
                step += 1
                if pending is not None:  # read the previous step's metrics while this one runs
                    _guard(*pending, config, logger)
                pending = (step, metrics)
                timer.tick(metrics)
            stop = stopper.should_stop(step)  # a preemption notice: save this step, then stop
            with dog.phase("save", step):
                ckpt.save(step, state, source.iterator, saved_config, force=stop, extra=extra)
            if stop or step % config.log_every == 0 or step == config.num_steps:
                with dog.phase("log", step):  # the host waits here for the step's results
                    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    seconds = timer.lap()
                    if seconds:
                        out["step_seconds"] = seconds
                        out["tokens_per_sec"] = tokens / seconds
                        out["mfu"] = monitor.mfu(step_flops, seconds, peak, jax.device_count())
                    if getattr(source, "stats", None) is not None:  # this process's data counters
                        out.update({f"data/{k}": v for k, v in source.stats.as_dict().items()})
                    if hasattr(source, "metrics"):
                        out.update(source.metrics())
                    logger.log(step, out)
            if eval_every and not stop and (step % eval_every == 0 or step == config.num_steps):
                with dog.phase("eval", step, slow=True):
                    logger.log(step, {f"eval/{k}": float(v) for k, v in evaluate(state.params).items()})
        with dog.phase("save", step):
            if pending is not None:
                _guard(*pending, config, logger)
            if step not in ckpt.all_steps():
                ckpt.save(step, state, source.iterator, saved_config, force=True, extra=extra)
            ckpt.wait()
        if stop:
            logger.log_event(step, str(preempt.Preempted(step, stopper.reason)))
    finally:
        if hasattr(source, "close"):
            source.close()
        ckpt.close()
        logger.close()
    if stop:
        raise preempt.Preempted(step, stopper.reason)
    if plan.finish is not None:
        with dog.phase("export", step, slow=True):
            plan.finish(state.params)
    return state


class _Timer:
    """Mean seconds per step since the last lap, excluding the first step (compilation)."""

    def __init__(self):
        self.start, self.steps = None, 0

    def tick(self, metrics):
        if self.start is None:
            jax.block_until_ready(metrics)
            self.start = time.perf_counter()
        else:
            self.steps += 1

    def lap(self) -> float | None:
        if not self.steps:
            return None
        seconds = (time.perf_counter() - self.start) / self.steps
        self.start, self.steps = time.perf_counter(), 0
        return seconds


def _guard(step: int, metrics: dict, config, logger) -> None:
    """Log a skipped (non-finite) step; stop after config.max_bad_steps of them in a row."""
    if not float(metrics["skipped"]):
        return
    logger.log_event(step, f"non-finite loss or gradient (loss {float(metrics['loss'])}, grad_norm "
                           f"{float(metrics['grad_norm'])}): update skipped")
    bad = int(metrics["bad_steps"])
    if bad >= config.max_bad_steps:
        raise NonFiniteError(f"step {step}: {bad} non-finite steps in a row (max_bad_steps="
                             f"{config.max_bad_steps}); params and checkpoints hold the last finite update")
