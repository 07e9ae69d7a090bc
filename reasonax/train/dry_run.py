"""Dry run: compile a recipe's train step for the target mesh on fake CPU devices and report memory.

    python -m reasonax.train.sft --config=configs/sft_gemma2_9b_v5p64.py --dry_run

Nothing is allocated: the params and optimizer state are ShapeDtypeStructs carrying their
shardings (state.abstract_state) and the batch is one too (sft_batch_spec). The step
(step.build_train_step, the same jitted function training runs) is lowered and compiled for a
mesh of config.mesh's shape made of fake CPU devices (the CLI re-executes itself with
XLA_FLAGS=--xla_force_host_platform_device_count=N and JAX_PLATFORMS=cpu when needed).

The report gives, per device:

  params, optimizer state  exact: each leaf's shard shape (sharding.shard_shape) x itemsize, summed.
  argument, output, alias, temp, generated code
                           compiled.memory_analysis() of the SPMD-partitioned (per-device) program.
  total                    argument + output - alias + temp: the live state in and out (the
                           donated state is aliased, so it is counted once) plus XLA's scratch
                           buffers. Generated code and host memory are not counted.

These compiled figures come from XLA:CPU's compilation of the same sharded program. Buffer
assignment on TPU/GPU differs (fusion, layouts and padding, bfloat16 handling, collective
buffers, rematerialisation decisions), so treat them as an estimate of the real footprint, not a
guarantee; the params and optimizer-state figures are exact.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from reasonax.model import num_params
from reasonax.model.cache import kv_bytes_per_row
from reasonax.model import sharding as sharding_lib
from reasonax.model.config import ModelConfig
from reasonax.train import state as state_lib
from reasonax.train.step import BATCH_AXES, batch_sharding, build_train_step, resolve_layer_loop

GIB = 1 << 30
REEXEC_ENV = "REASONAX_DRY_RUN_REEXEC"  # set in the re-executed process: never re-exec twice
_COUNT_FLAG = "--xla_force_host_platform_device_count"
_AXES = sharding_lib.MESH_AXES  # ("data", "fsdp", "tensor")


# ----------------------------------------------------------------------------------------------
# Mesh and batch


def mesh_shape(config, num_devices: int | None = None) -> dict[str, int]:
    """config.mesh as {axis: size}; a -1 axis takes num_devices / (the others) (ValueError without it)."""
    shape = {a: int(config.mesh[a]) for a in _AXES}
    free = [a for a, n in shape.items() if n == -1]
    if bad := [a for a, n in shape.items() if n == 0 or n < -1]:
        raise ValueError(f"config.mesh {shape}: axes {bad} must be >= 1 (or -1)")
    if len(free) > 1:
        raise ValueError(f"config.mesh {shape}: at most one axis may be -1")
    if free:
        axis = free[0]
        if num_devices is None:
            raise ValueError(f"config.mesh {shape} has {axis}=-1, which a dry run cannot size: give the target "
                             f"mesh explicitly, e.g. --config.mesh.{axis}=64 (devices = data*fsdp*tensor)")
        rest = math.prod(n for n in shape.values() if n != -1)
        if num_devices % rest:
            raise ValueError(f"config.mesh {shape}: {num_devices} devices do not divide by the fixed axes ({rest})")
        shape[axis] = num_devices // rest
    return shape


def mesh_devices(config, num_devices: int | None = None) -> int:
    """Devices the config's mesh needs: data * fsdp * tensor (see mesh_shape for -1)."""
    return math.prod(mesh_shape(config, num_devices).values())


def check_batch(config, shape: dict[str, int]) -> None:
    """ValueError unless batch_size splits into accum_steps micro-batches whose rows divide over data*fsdp."""
    rows, accum = int(config.batch_size), int(config.accum_steps)
    what = f"accum_steps={accum}"
    if "grpo" in config:  # GRPO cuts each rollout batch into minibatches of accum_steps micro-batches
        accum *= int(config.grpo.minibatches)
        what += f" x grpo.minibatches={config.grpo.minibatches}"
    shards = math.prod(shape[a] for a in BATCH_AXES)
    if accum < 1 or rows % accum:
        raise ValueError(f"batch_size={rows} does not split into {what} micro-batches")
    if (rows // accum) % shards:
        raise ValueError(f"micro-batches of {rows // accum} rows (batch_size / accum_steps) do not divide over "
                         f"the mesh's data*fsdp = {shards} devices")


def sft_batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The SFT batch as ShapeDtypeStructs [batch_size, seq_len], rows sharded over data x fsdp."""
    shape, s = (int(config.batch_size), int(config.seq_len)), batch_sharding(mesh)
    ints = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s)
            for k in ("inputs", "targets", "segment_ids", "positions")}
    return {**ints, "weights": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s)}


# ----------------------------------------------------------------------------------------------
# Memory


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def compiled_memory(compiled) -> dict[str, int] | None:
    """Per-device byte counts of compiled.memory_analysis() (None if the backend gives none)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    fields = {"argument": "argument_size_in_bytes", "output": "output_size_in_bytes",
              "alias": "alias_size_in_bytes", "temp": "temp_size_in_bytes",
              "generated_code": "generated_code_size_in_bytes"}
    out = {k: int(getattr(stats, f)) for k, f in fields.items() if getattr(stats, f, None) is not None}
    if {"argument", "output", "temp"} <= set(out):
        out["total"] = out["argument"] + out["output"] - out.get("alias", 0) + out["temp"]
    return out


def fit(total_bytes: int, device_memory_gib: float) -> dict:
    """Whether total_bytes fits in device_memory_gib, with the headroom (negative: the shortfall)."""
    capacity = device_memory_gib * GIB
    return {"device_memory_gib": float(device_memory_gib), "fits": total_bytes <= capacity,
            "headroom_bytes": int(capacity - total_bytes), "headroom_fraction": (capacity - total_bytes) / capacity}


# ----------------------------------------------------------------------------------------------
# The dry run


def sampler_memory(model_cfg: ModelConfig, abstract_params, mesh, rollout, rows: int) -> dict:
    """The rollout engine's memory next to the train step (GRPO): decode slots from the KV budget
    (or rollout.num_slots), their KV cache exactly, and the compiled decode block (the longest one:
    attending to every column) on this mesh. rollout: the grpo config."""
    from reasonax.sample import SamplingParams, engine, sampler

    columns = sampler.bucket(int(rollout.max_prompt_len)) + int(rollout.max_new_tokens)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    dtype = abstract_params["embed"].dtype
    slots = int(rollout.num_slots) or engine.plan_slots(model_cfg, columns, dtype,
                                                        int(rollout.kv_budget_gb * GIB), shards, rows)
    sp = SamplingParams(max_new_tokens=int(rollout.max_new_tokens), temperature=float(rollout.temperature),
                        top_k=int(rollout.top_k), top_p=float(rollout.top_p), n=int(rollout.group_size))
    compiled = engine.compile_decode_block(abstract_params, model_cfg, mesh, slots, columns, sp,
                                           int(rollout.block_steps))
    return {"num_slots": slots, "cache_columns": columns,
            "kv_cache": kv_bytes_per_row(model_cfg, columns, dtype) * math.ceil(slots / shards),
            "compiled": compiled_memory(compiled)}


def dry_run(config, model_cfg: ModelConfig, loss_fn: Callable,
            batch_spec_fn: Callable = sft_batch_spec, device_memory_gib: float | None = None, *,
            prepare: Callable | None = None, reference: bool = False, step_options: dict | None = None,
            rollout=None) -> dict:
    """Lower and compile the train step for config.mesh on this process's devices; return the report.

    loss_fn(params, batch) as for loop.run; batch_spec_fn(config, mesh) -> dict of sharded
    ShapeDtypeStructs. prepare / step_options as for loop.run; reference=True adds a frozen copy
    of the params as the step's aux (SLM online, GRPO with beta > 0). rollout (the grpo config):
    also compile the rollout engine's decode block; the peak is then the larger of the train step
    and the rollout (train state + reference + engine slots + the decode block's temporaries). Needs at least
    data*fsdp*tensor devices (uses the first ones). See the module docstring for what each
    figure counts and how far to trust it.
    """
    shape = mesh_shape(config)
    n = math.prod(shape.values())
    if jax.device_count() < n:
        raise ValueError(f"config.mesh {shape} needs {n} devices, this process has {jax.device_count()} "
                         f"(run with XLA_FLAGS={_COUNT_FLAG}={n} JAX_PLATFORMS=cpu)")
    check_batch(config, shape)
    mesh = sharding_lib.make_mesh(**shape, devices=jax.devices()[:n])
    optimizer = state_lib.make_optimizer(config.optim, model_cfg)
    abstract = state_lib.abstract_state(model_cfg, optimizer, mesh, jnp.dtype(config.param_dtype), config.seed)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    batch = batch_spec_fn(config, mesh)
    aux = (abstract.params,) if reference else ()
    step = build_train_step(loss_fn, optimizer, shardings, mesh, accum_steps=int(config.accum_steps),
                            lr_schedule=state_lib.schedule(config.optim), prepare=prepare,
                            aux_shardings=shardings.params if reference else None,
                            # the target is an accelerator pod: layer_loop 'auto' scans there
                            unroll_layers=resolve_layer_loop(config.get("layer_loop", "auto"), on_cpu=False),
                            **(step_options or {}))

    start = time.perf_counter()
    lowered = step.lower(abstract, batch, *aux)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()

    report = {
        "model": {"model_type": model_cfg.model_type, "num_layers": model_cfg.num_layers,
                  "hidden_size": model_cfg.hidden_size, "num_params": num_params(model_cfg)},
        "mesh": shape, "num_devices": n, "backend": jax.default_backend(),
        "batch": {"batch_size": int(config.batch_size), "accum_steps": int(config.accum_steps),
                  "seq_len": int(config.seq_len)},
        "param_dtype": str(jnp.dtype(config.param_dtype)), "remat": model_cfg.remat,
        "per_device_bytes": {"params": per_device_bytes(abstract.params),
                             "opt_state": per_device_bytes(abstract.opt_state),
                             "batch": per_device_bytes(batch),
                             **({"reference": per_device_bytes(abstract.params)} if reference else {})},
        "compiled": compiled_memory(compiled),
        "lower_seconds": lowered_at - start, "compile_seconds": done - lowered_at,
    }
    peak = report["compiled"].get("total") if report["compiled"] else None
    if rollout is not None:
        sampler = sampler_memory(model_cfg, abstract.params, mesh, rollout, int(config.batch_size))
        c = sampler["compiled"] or {}
        # while rolling out the train state stays resident; the decode block's arguments are the
        # params (already counted) and the slots
        sampler["total"] = (per_device_bytes(abstract.params) + per_device_bytes(abstract.opt_state)
                            + (per_device_bytes(abstract.params) if reference else 0)
                            + sampler["kv_cache"] + c.get("temp", 0))
        report["sampler"] = sampler
        peak = max(peak or 0, sampler["total"])
    report["peak"] = peak
    if device_memory_gib is not None and peak is not None:
        report["fit"] = fit(peak, device_memory_gib)
    return report


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / GIB:9.3f} GiB"


def format_report(report: dict) -> str:
    """The report as a text table (per-device figures in GiB)."""
    m, b = report["model"], report["batch"]
    mesh = " x ".join(f"{a}={n}" for a, n in report["mesh"].items())
    rows = [
        f"dry run: {m['model_type']}, {m['num_params'] / 1e9:.3f}B params, {m['num_layers']} layers, "
        f"{report['param_dtype']} params, remat={report['remat']}",
        f"mesh {mesh} ({report['num_devices']} {report['backend']} devices); batch {b['batch_size']} rows x "
        f"{b['seq_len']} tokens, accum_steps={b['accum_steps']}",
        f"lower {report['lower_seconds']:.1f} s, compile {report['compile_seconds']:.1f} s",
        "",
        f"{'per device':<44}{'memory':>13}",
    ]
    d = report["per_device_bytes"]
    rows += [f"  {'params (exact)':<42}{_gib(d['params'])}",
             f"  {'optimizer state (exact)':<42}{_gib(d['opt_state'])}",
             f"  {'batch (exact)':<42}{_gib(d['batch'])}"]
    if "reference" in d:
        rows.append(f"  {'frozen reference params (exact)':<42}{_gib(d['reference'])}")
    c = report["compiled"]
    if c is None:
        rows.append("  compiled step: no memory analysis from this backend")
    else:
        labels = [("argument", "compiled: arguments"), ("output", "compiled: outputs"),
                  ("alias", "compiled: aliased (donated state)"), ("temp", "compiled: temporaries"),
                  ("generated_code", "compiled: generated code (not in total)")]
        rows += [f"  {label:<42}{_gib(c[k])}" for k, label in labels if k in c]
        if "total" in c:
            rows.append(f"  {'total = args + outputs - alias + temp':<42}{_gib(c['total'])}")
    if sm := report.get("sampler"):
        sc = sm["compiled"] or {}
        rows += ["", f"rollout engine: {sm['num_slots']} decode slots x {sm['cache_columns']} columns",
                 f"  {'KV cache of the slots (exact)':<42}{_gib(sm['kv_cache'])}",
                 f"  {'compiled decode block: temporaries':<42}{_gib(sc.get('temp'))}",
                 f"  {'rollout total = state + slots + temp':<42}{_gib(sm['total'])}"]
    if report.get("sampler") and report.get("peak") is not None:
        rows.append(f"  {'peak = max(train step, rollout)':<42}{_gib(report['peak'])}")
    if f := report.get("fit"):
        verdict = "fits" if f["fits"] else "DOES NOT FIT"
        rows += ["", f"{verdict} in {f['device_memory_gib']:g} GiB per device: headroom "
                     f"{f['headroom_bytes'] / GIB:.2f} GiB ({100 * f['headroom_fraction']:.0f}%)"]
    rows += ["", "compiled figures: XLA:CPU's buffer assignment of the same sharded program; TPU/GPU differ "
                 "(fusion, layouts, bf16), so treat them as an estimate."]
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# CLI


def fake_device_env(env: dict[str, str], num_devices: int) -> dict[str, str]:
    """env with JAX on num_devices fake CPU devices (any earlier device-count flag replaced)."""
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT_FLAG)]
    return {**env, "XLA_FLAGS": " ".join([*flags, f"{_COUNT_FLAG}={num_devices}"]), "JAX_PLATFORMS": "cpu",
            REEXEC_ENV: "1"}


def _has_fake_devices(env: dict[str, str], num_devices: int) -> bool:
    """Whether env already gives JAX at least num_devices CPU devices (decided without starting JAX)."""
    if env.get("JAX_PLATFORMS", "").strip().lower() != "cpu":
        return False
    counts = [f.split("=", 1)[1] for f in env.get("XLA_FLAGS", "").split() if f.startswith(_COUNT_FLAG + "=")]
    return bool(counts) and counts[-1].isdigit() and int(counts[-1]) >= num_devices


def _main(c, module: str, build: Callable) -> None:
    """--dry_run of `module`: re-exec on fake CPU devices if needed, then print the report.
    build(c) -> (model_cfg, dry_run keyword arguments).

    Exits with status 1 (after the report) when config.device_memory_gib is set and the estimate
    does not fit.
    """
    try:
        model_cfg, kwargs = build(c)
        n = mesh_devices(c)
        check_batch(c, mesh_shape(c))
    except (ValueError, KeyError) as e:
        raise SystemExit(f"--dry_run: {e}") from None
    if not os.environ.get(REEXEC_ENV) and not _has_fake_devices(os.environ, n):
        # before JAX starts a backend: a TPU/GPU host would otherwise be claimed for nothing
        print(f"dry run: re-executing on {n} fake CPU devices", flush=True)
        argv = [sys.executable, "-m", module, *sys.argv[1:]]
        os.execve(sys.executable, argv, fake_device_env(dict(os.environ), n))
    if jax.default_backend() != "cpu" or jax.device_count() < n:
        raise SystemExit(f"--dry_run: needs {n} CPU devices, have {jax.device_count()} "
                         f"{jax.default_backend()} devices (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    report = dry_run(c, model_cfg, device_memory_gib=c.get("device_memory_gib"), **kwargs)
    print(format_report(report), flush=True)
    if report.get("fit") and not report["fit"]["fits"]:
        raise SystemExit(1)


def main_sft(c) -> None:
    """--dry_run of reasonax.train.sft (see _main)."""
    from reasonax.train import sft
    from reasonax.train.loss import sft_loss

    def build(c):
        model_cfg = sft.model_config(c)
        return model_cfg, dict(loss_fn=functools.partial(sft_loss, cfg=model_cfg, chunk=c.loss_chunk or None),
                               batch_spec_fn=sft_batch_spec)

    _main(c, "reasonax.train.sft", build)


def grpo_batch_spec(config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The GRPO rollout batch: the SFT fields, sampler_logp [rows, seq_len] and advantages [rows]."""
    spec = sft_batch_spec(config, mesh)
    spec["sampler_logp"] = jax.ShapeDtypeStruct(spec["weights"].shape, jnp.float32, sharding=batch_sharding(mesh))
    spec["advantages"] = jax.ShapeDtypeStruct(spec["weights"].shape[:1], jnp.float32, sharding=batch_sharding(mesh))
    return spec


def main_grpo(c) -> None:
    """--dry_run of reasonax.train.grpo: the train step with its prepare pass, mu x minibatches
    updates and, with beta > 0, the reference params; and the rollout engine's slots (KV cache)
    and compiled decode block next to it (sampler_memory)."""
    from reasonax.train import grpo, sft

    def build(c):
        grpo.check_config(c)
        g = c.grpo
        c.batch_size, c.seq_len = g.prompts_per_step * g.group_size, g.max_prompt_len + g.max_new_tokens
        model_cfg = sft.model_config(c)
        chunk = c.loss_chunk or None
        return model_cfg, dict(
            loss_fn=functools.partial(grpo.grpo_loss, cfg=model_cfg, hp=g, chunk=chunk),
            batch_spec_fn=grpo_batch_spec, reference=bool(g.beta),
            prepare=grpo.make_prepare(model_cfg, g, chunk, old=g.mu > 1 or g.minibatches > 1 or bool(g.is_cap),
                                      ref=bool(g.beta)),
            step_options=dict(minibatches=g.minibatches, epochs=g.mu), rollout=g)

    _main(c, "reasonax.train.grpo", build)
