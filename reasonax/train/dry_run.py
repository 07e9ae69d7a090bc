"""Dry run: compile a recipe's train step for the target mesh on fake CPU devices and report memory.

    python -m reasonax.train.sft --config=configs/sft_gemma2_9b_v5p64.py --dry_run

Nothing is allocated: the params and optimizer state are ShapeDtypeStructs carrying their
shardings (state.abstract_state) and the batch is one too (the plan's batch_spec). The step
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
from reasonax.model.lora import num_adapter_params
from reasonax.sample import SamplingParams, engine, sampler
from reasonax.train import state as state_lib
from reasonax.train.step import build_train_step, resolve_layer_loop

GIB = 1 << 30
REEXEC_ENV = "REASONAX_DRY_RUN_REEXEC"  # set in the re-executed process: never re-exec twice
_COUNT_FLAG = "--xla_force_host_platform_device_count"
_AXES = sharding_lib.MESH_AXES  # ("data", "fsdp", "tensor")


# ----------------------------------------------------------------------------------------------
# Mesh and batch


def mesh_shape(config, num_devices: int | None = None) -> dict[str, int]:
    """config.mesh as {axis: size} (sharding.mesh_shape): a dry run has no devices to size a -1 axis
    with, so it needs num_devices or an explicit mesh."""
    return sharding_lib.mesh_shape(**{a: getattr(config.mesh, a) for a in _AXES}, num_devices=num_devices,
                                   name="config.mesh")


def mesh_devices(config, num_devices: int | None = None) -> int:
    """Devices the config's mesh needs: data * fsdp * tensor (see mesh_shape for -1)."""
    return math.prod(mesh_shape(config, num_devices).values())


def check_batch(config, shape: dict[str, int]) -> None:
    """ValueError unless the micro-batches (batch_size / accum_steps, GRPO: / minibatches too; that
    these split is the config's own check) divide over data*fsdp."""
    rows, accum = int(config.batch_size), int(config.accum_steps)
    if hasattr(config, "grpo"):  # GRPO cuts each rollout batch into minibatches of accum_steps micro-batches
        accum *= int(config.grpo.minibatches)
    shards = math.prod(shape[a] for a in sharding_lib.BATCH_AXES)
    if (rows // accum) % shards:
        raise ValueError(f"micro-batches of {rows // accum} rows (batch_size / accum_steps) do not divide over "
                         f"the mesh's data*fsdp = {shards} devices")


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

    columns = sampler.bucket(int(rollout.max_prompt_len)) + int(rollout.max_new_tokens)
    shards = sharding_lib.batch_shards(mesh)
    dtype = abstract_params["embed"].dtype
    prefix = float(getattr(rollout, "prefix_cache_gb", 0.0))  # the prefix cache comes out of the KV budget
    prefix_bytes = engine.PrefixCache(prefix).bytes_per_device(model_cfg, dtype)
    slots = int(rollout.num_slots) or engine.plan_slots(model_cfg, columns, dtype,
                                                        int(rollout.kv_budget_gb * GIB) - prefix_bytes, shards, rows)
    sp = SamplingParams(max_new_tokens=int(rollout.max_new_tokens), temperature=float(rollout.temperature),
                        top_k=int(rollout.top_k), top_p=float(rollout.top_p), n=int(rollout.group_size))
    compiled = engine.compile_decode_block(abstract_params, model_cfg, mesh, slots, columns, sp,
                                           int(rollout.block_steps))
    return {"num_slots": slots, "cache_columns": columns,
            "kv_cache": kv_bytes_per_row(model_cfg, columns, dtype) * math.ceil(slots / shards),
            "prefix_cache": prefix_bytes,
            "compiled": compiled_memory(compiled)}


def dry_run(plan, device_memory_gib: float | None = None) -> dict:
    """Lower and compile plan's train step for plan.config.mesh on this process's devices; return
    the report. Reads no data and allocates nothing: the state, the batch (plan.batch_spec) and the
    aux (plan.aux_spec, a reference model) are ShapeDtypeStructs.

    With plan.rollout (the grpo config) the rollout engine's decode block is compiled too; the
    peak is then the larger of the train step and the rollout (train state + aux + engine slots +
    the decode block's temporaries). Needs at least data*fsdp*tensor devices (uses the first
    ones). See the module docstring for what each figure counts and how far to trust it.
    """
    config, model_cfg = plan.config, plan.model
    shape = mesh_shape(config)
    n = math.prod(shape.values())
    if jax.device_count() < n:
        raise ValueError(f"config.mesh {shape} needs {n} devices, this process has {jax.device_count()} "
                         f"(run with XLA_FLAGS={_COUNT_FLAG}={n} JAX_PLATFORMS=cpu)")
    check_batch(config, shape)
    mesh = sharding_lib.make_mesh(**shape, devices=jax.devices()[:n])
    optimizer = state_lib.make_optimizer(config.optim, model_cfg, plan.trainable)
    abstract = state_lib.abstract_state(model_cfg, optimizer, mesh, jnp.dtype(plan.trainable_dtype or config.param_dtype),
                                        plan.trainable)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    batch = plan.batch_spec(config, mesh)
    aux = (plan.aux_spec(mesh),) if plan.aux_spec is not None else ()
    step = build_train_step(plan.loss, optimizer, shardings, mesh, accum_steps=int(config.accum_steps),
                            lr_schedule=state_lib.schedule(config.optim), prepare=plan.prepare,
                            aux_shardings=jax.tree.map(lambda a: a.sharding, aux[0]) if aux else None,
                            # the target is an accelerator pod: layer_loop 'auto' scans there
                            unroll_layers=resolve_layer_loop(config.layer_loop, on_cpu=False),
                            **plan.step_options)

    start = time.perf_counter()
    lowered = step.lower(abstract, batch, *aux)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()

    aux_bytes = per_device_bytes(aux[0]) if aux else 0
    report = {
        "model": {"model_type": model_cfg.model_type, "num_layers": model_cfg.num_layers,
                  "hidden_size": model_cfg.hidden_size, "num_params": num_params(model_cfg),
                  **({"lora": {"r": model_cfg.lora.r, "targets": list(model_cfg.lora.targets),
                               "num_adapter_params": num_adapter_params(model_cfg)}} if model_cfg.lora else {})},
        "mesh": shape, "num_devices": n, "backend": jax.default_backend(),
        "batch": {"batch_size": int(config.batch_size), "accum_steps": int(config.accum_steps),
                  "seq_len": int(config.seq_len)},
        "param_dtype": str(jnp.dtype(config.param_dtype)), "remat": model_cfg.remat,
        "per_device_bytes": {"params": per_device_bytes(abstract.params),
                             "opt_state": per_device_bytes(abstract.opt_state),
                             "batch": per_device_bytes(batch),
                             **({("frozen" if plan.trainable is not None else "reference"): aux_bytes}
                                if aux else {})},
        "compiled": compiled_memory(compiled),
        "lower_seconds": lowered_at - start, "compile_seconds": done - lowered_at,
    }
    peak = report["compiled"].get("total") if report["compiled"] else None
    if plan.rollout is not None:
        policy = abstract.params if plan.policy is None else plan.policy(abstract.params, aux[0])
        sampler = sampler_memory(model_cfg, policy, mesh, plan.rollout, int(config.batch_size))
        c = sampler["compiled"] or {}
        # while rolling out the train state stays resident; the decode block's arguments are the
        # params (already counted) and the slots
        sampler["total"] = (per_device_bytes(abstract.params) + per_device_bytes(abstract.opt_state)
                            + aux_bytes + sampler["kv_cache"] + sampler["prefix_cache"] + c.get("temp", 0))
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
        f"{report['param_dtype']} params, remat={report['remat']}"
        + (f"; LoRA r={m['lora']['r']} on {','.join(m['lora']['targets'])}: {m['lora']['num_adapter_params'] / 1e6:.1f}M "
           "trained params" if "lora" in m else ""),
        f"mesh {mesh} ({report['num_devices']} {report['backend']} devices); batch {b['batch_size']} rows x "
        f"{b['seq_len']} tokens, accum_steps={b['accum_steps']}",
        f"lower {report['lower_seconds']:.1f} s, compile {report['compile_seconds']:.1f} s",
        "",
        f"{'per device':<44}{'memory':>13}",
    ]
    d = report["per_device_bytes"]
    rows += [f"  {'trained params (exact)' if 'frozen' in d else 'params (exact)':<42}{_gib(d['params'])}",
             f"  {'optimizer state (exact)':<42}{_gib(d['opt_state'])}",
             f"  {'batch (exact)':<42}{_gib(d['batch'])}"]
    if "reference" in d:
        rows.append(f"  {'frozen reference params (exact)':<42}{_gib(d['reference'])}")
    if "frozen" in d:
        rows.append(f"  {'frozen base (+ any reference) (exact)':<42}{_gib(d['frozen'])}")
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
                 *([f"  {'prefix cache (prefix_cache_gb)':<42}{_gib(sm['prefix_cache'])}"]
                   if sm.get("prefix_cache") else []),
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


def main(c, build: Callable) -> None:
    """--dry_run of a recipe CLI: build(c) -> Plan; re-exec plan.module on fake CPU devices if
    needed, then print the report.

    Exits with status 1 (after the report) when config.device_memory_gib is set and the estimate
    does not fit.
    """
    try:
        plan = build(c)
        n = mesh_devices(plan.config)
        check_batch(plan.config, mesh_shape(plan.config))
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise SystemExit(f"--dry_run: {e}") from None
    if not os.environ.get(REEXEC_ENV) and not _has_fake_devices(os.environ, n):
        # before JAX starts a backend: a TPU/GPU host would otherwise be claimed for nothing
        print(f"dry run: re-executing on {n} fake CPU devices", flush=True)
        argv = [sys.executable, "-m", plan.module, *sys.argv[1:]]
        os.execve(sys.executable, argv, fake_device_env(dict(os.environ), n))
    if jax.default_backend() != "cpu" or jax.device_count() < n:
        raise SystemExit(f"--dry_run: needs {n} CPU devices, have {jax.device_count()} "
                         f"{jax.default_backend()} devices (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    report = dry_run(plan, device_memory_gib=plan.config.device_memory_gib or None)
    print(format_report(report), flush=True)
    if report.get("fit") and not report["fit"]["fits"]:
        raise SystemExit(1)
