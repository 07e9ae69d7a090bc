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
from reasonax.model import sharding as sharding_lib
from reasonax.model.config import ModelConfig
from reasonax.model.lora import num_adapter_params
from reasonax.sample import SamplingParams, engine
from reasonax.train import rollout_layout
from reasonax.train import state as state_lib
from reasonax.train.rollout_layout import per_device_bytes
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


def _decode_devices(plan, n: int) -> tuple[list, list]:
    """(train devices, rollout devices) of the dry run: GRPO's one-step-off keeps the first
    grpo.rollout_devices for rollouts and trains on the next n; otherwise both are the first n."""
    reserved = int(plan.reserved_devices)
    train = jax.devices()[reserved:reserved + n]
    return train, (jax.devices()[:reserved] if reserved else train)


def _policy_spec(plan, mesh, rules=rollout_layout.RULES) -> dict:
    """The params the rollout decodes with (LoRA: base + adapters), abstract on mesh."""
    config = plan.config
    return rollout_layout.policy_spec(plan.model, jnp.dtype(config.param_dtype), mesh,
                                      plan.trainable_dtype or None, rules)


def _compile_decode(plan, layout: rollout_layout.Layout, slots: int, columns: int):
    rc = plan.rollout
    sp = SamplingParams(max_new_tokens=int(rc.max_new_tokens), temperature=float(rc.temperature),
                        top_k=int(rc.top_k), top_p=float(rc.top_p), n=int(rc.group_size))
    with sharding_lib.use_rules(layout.rules):
        return engine.compile_decode_block(_policy_spec(plan, layout.mesh, layout.rules), plan.model, layout.mesh,
                                           slots, columns, sp, int(rc.block_steps))


def resolve_layout(plan, train_mesh, resident: int) -> rollout_layout.Layout:
    """The plan's rollout layout as the run would resolve it, over the dry run's rollout devices
    (the budget: config.device_memory_gib; the chip: config.peak_flops)."""
    config, rc = plan.config, plan.rollout
    _, devices = _decode_devices(plan, math.prod(train_mesh.shape.values()))
    return rollout_layout.resolve(
        plan.model, rc, train_mesh, devices, rows=int(config.batch_size), dtype=jnp.dtype(config.param_dtype),
        chip=rollout_layout.chip_of(config.peak_flops, devices), budget=int(config.device_memory_gib * GIB) or None,
        resident=0 if plan.reserved_devices else resident, adapters_dtype=plan.trainable_dtype or None)


def compile_rollout_decode(plan, resident: int = 0):
    """The decode block compiled as GRPO's rollout runs it for plan's config: in the plan's rollout
    layout (grpo.rollout_mesh, resolved as the run resolves it) with its slot count, attending to all
    columns, over stacked layers (the accelerator path), on the first devices of the rollout group.
    Needs the devices (fake CPU devices for a pod config). resident: bytes per device of the train
    state that stay during the rollout (auto's memory check; 0: not counted)."""
    config = plan.config
    n = mesh_devices(config)
    train_mesh = sharding_lib.make_mesh(**mesh_shape(config), devices=_decode_devices(plan, n)[0])
    layout = resolve_layout(plan, train_mesh, resident)
    slots, columns = rollout_layout.slot_count(plan.model, plan.rollout, sharding_lib.batch_shards(layout.mesh),
                                               int(config.batch_size),
                                               jnp.dtype(config.param_dtype))
    return _compile_decode(plan, layout, slots, columns)


def rollout_report(plan, train_mesh, resident: int) -> dict:
    """The rollout in its layout and, side by side, in today's (the learner's FSDP arrays): per
    layout the slots, weights, KV, sync bytes per device, the collectives of one decode step read
    from the compiled decode block, HBM bytes per step, and with a chip (config.peak_flops a key of
    monitor.CHIPS) seconds per decode step, per sync and per step's rollout (at max_new_tokens for
    every row: an upper bound). resident: the train state's bytes per device that stay while
    rolling out (overlap none)."""
    config, cfg, rc = plan.config, plan.model, plan.rollout
    dtype = jnp.dtype(config.param_dtype)
    chip = rollout_layout.chip_of(config.peak_flops, list(train_mesh.devices.flat))
    chosen = resolve_layout(plan, train_mesh, resident)
    out = {"chip": next((k for k, v in rollout_layout.CHIPS.items() if v is chip), None),
           "overlap": rc.overlap, "rollout_mesh": rc.rollout_mesh}
    train_policy = _policy_spec(plan, train_mesh, sharding_lib.DEFAULT_RULES)
    for label, layout in (("today", rollout_layout.Layout("train", train_mesh)), ("rollout", chosen)):
        mesh = layout.mesh
        policy = _policy_spec(plan, mesh, layout.rules)
        data = sharding_lib.batch_shards(mesh)
        tensor = mesh.shape["tensor"]
        held = rollout_layout.per_device_bytes(policy)
        # today's decode gathers every FSDP-sharded weight at every step: it reads all of them
        read = rollout_layout.per_device_bytes(_policy_spec(plan, None)) if layout.is_train else held
        est = rollout_layout.estimate(cfg, rc, data, tensor, read, int(config.batch_size), dtype, chip)
        compiled = _compile_decode(plan, layout, est["num_slots"], est["cache_columns"])
        coll = rollout_layout.collectives(compiled.as_text())
        temp = (compiled_memory(compiled) or {}).get("temp", 0)
        # the copy: leaves already in their rollout sharding are used as they are (one device: no copy)
        copy = 0 if layout.is_train else rollout_layout.copy_bytes(train_policy, policy)
        sync = copy
        if cfg.lora is not None and not layout.is_train:  # the base is placed once; each sync moves the adapters
            ad = rollout_layout.ADAPTERS
            sync = rollout_layout.copy_bytes(train_policy["layers"][ad], policy["layers"][ad])
        if plan.reserved_devices and not layout.is_train:  # a separate rollout group: no train state there
            mem = held + est["kv_bytes"] + est["prefix_cache_bytes"] + temp
        else:  # the train state stays; today's weights are its own
            mem = resident + copy + est["kv_bytes"] + est["prefix_cache_bytes"] + temp
        entry = {**est, "layout": "train (" + " x ".join(f"{a}={k}" for a, k in mesh.shape.items()) + ")"
                 if layout.is_train else layout.spec,
                 "weights_held_bytes": held, "copy_bytes": copy, "sync_bytes": sync, "collectives": coll,
                 "decode_temp_bytes": temp,
                 "memory_bytes": int(mem)}
        if chip is not None:
            step = (est["hbm_bytes_per_step"] / chip.hbm_bw + coll["per_iteration"] / (chip.interconnect_bw / 2)
                    + coll["count_per_iteration"] * rollout_layout.COLLECTIVE_LATENCY_S)
            entry.update(step_s=step, rollout_s=step * int(rc.max_new_tokens) * est["waves"],
                         sync_s=rollout_layout.sync_seconds(sync, chip))
        out[label] = entry
    if chosen.considered:
        out["considered"] = [{k: e[k] for k in ("layout", "step_s", "rollout_s", "memory_bytes")} | {"fits": fits}
                             for e, fits in chosen.considered]
    return out


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
    total = n + int(plan.reserved_devices)
    if jax.device_count() < total:
        raise ValueError(f"config.mesh {shape} needs {n} devices" + (
            f" after grpo.rollout_devices={plan.reserved_devices}" if plan.reserved_devices else "")
            + f", this process has {jax.device_count()} (run with XLA_FLAGS={_COUNT_FLAG}={total} JAX_PLATFORMS=cpu)")
    check_batch(config, shape)
    mesh = sharding_lib.make_mesh(**shape, devices=_decode_devices(plan, n)[0])
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
        # while rolling out (overlap none) the train state stays resident beside the rollout's weights
        resident = per_device_bytes(abstract.params) + per_device_bytes(abstract.opt_state) + aux_bytes
        report["rollout"] = rollout_report(plan, mesh, resident)
        peak = max(peak or 0, report["rollout"]["rollout"]["memory_bytes"])
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
    if r := report.get("rollout"):
        rows += ["", format_rollout(r)]
        if report.get("peak") is not None:
            rows.append(f"  {'peak = max(train step, rollout)':<42}{_gib(report['peak'])}")
    if f := report.get("fit"):
        verdict = "fits" if f["fits"] else "DOES NOT FIT"
        rows += ["", f"{verdict} in {f['device_memory_gib']:g} GiB per device: headroom "
                     f"{f['headroom_bytes'] / GIB:.2f} GiB ({100 * f['headroom_fraction']:.0f}%)"]
    rows += ["", "compiled figures: XLA:CPU's buffer assignment of the same sharded program; TPU/GPU differ "
                 "(fusion, layouts, bf16), so treat them as an estimate."]
    return "\n".join(rows)


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.1f} MiB"


def _ms(s) -> str:
    return "n/a" if s is None else f"{1e3 * s:,.2f} ms"


def format_rollout(r: dict) -> str:
    """The rollout section: the chosen layout beside today's (the learner's FSDP arrays)."""
    t, o = r["today"], r["rollout"]
    lines = [f"rollout: grpo.rollout_mesh={r['rollout_mesh']!r}, overlap={r['overlap']}; estimates for "
             f"{r['chip'] or 'no chip (set peak_flops to a key of monitor.CHIPS)'}",
             f"  {'per device':<44}{'today':>20}{'rollout layout':>20}"]

    def row(label, a, b):
        lines.append(f"  {label:<44}{a:>20}{b:>20}")

    row("layout", t["layout"], o["layout"])
    row("decode slots x cache columns", f"{t['num_slots']} x {t['cache_columns']}", f"{o['num_slots']} x {o['cache_columns']}")
    row("weights held (exact)", _mib(t["weights_held_bytes"]), _mib(o["weights_held_bytes"]))
    row("rollout copy beside the train state", _mib(t["copy_bytes"]), _mib(o["copy_bytes"]))
    row("one weight sync moves (per step)", _mib(t["sync_bytes"]), _mib(o["sync_bytes"]))
    row("KV cache of the slots (exact)", _mib(t["kv_bytes"]), _mib(o["kv_bytes"]))
    if o["prefix_cache_bytes"]:
        row("prefix cache (grpo.prefix_cache_gb)", _mib(t["prefix_cache_bytes"]), _mib(o["prefix_cache_bytes"]))
    for label, key in (("collectives per decode step (compiled)", "per_iteration"),
                       ("  per layer of a step", "per_inner_iteration"),
                       ("  largest one inside the loops", "largest_in_loop"),
                       ("  once per decode block, outside loops", "outside_loops")):
        row(label, _mib(t["collectives"][key]), _mib(o["collectives"][key]))
    row("  collectives per step (count)", str(t["collectives"]["count_per_iteration"]),
        str(o["collectives"]["count_per_iteration"]))
    row("HBM read per decode step (weights + all KV)", _mib(t["hbm_bytes_per_step"]), _mib(o["hbm_bytes_per_step"]))
    row("est. decode step", _ms(t["step_s"]), _ms(o["step_s"]))
    row("est. weight sync", _ms(t.get("sync_s")), _ms(o.get("sync_s")))
    row("est. rollout per step (upper bound)", _ms(t["rollout_s"]), _ms(o["rollout_s"]))
    row("rollout memory (state + weights + KV + temp)", _gib(t["memory_bytes"]).strip(), _gib(o["memory_bytes"]).strip())
    if considered := r.get("considered"):
        lines.append("  layouts considered: " + "; ".join(
            f"{c['layout']} {_ms(c['step_s'])}/step, {_ms(c['rollout_s'])}/rollout, {c['memory_bytes'] / GIB:.2f} GiB"
            + ("" if c["fits"] else " (does not fit)")
            for c in considered))
    lines.append("  upper bound: every row decodes max_new_tokens; HBM = weights + every KV column; the CPU program's "
                 "collectives may be float32 where a TPU's are bf16")
    return "\n".join(lines)


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
        n = mesh_devices(plan.config) + int(plan.reserved_devices)
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
    try:
        report = dry_run(plan, device_memory_gib=plan.config.device_memory_gib or None)
    except ValueError as e:  # a setting that cannot work on this mesh (e.g. grpo.rollout_mesh): name it, no traceback
        raise SystemExit(f"--dry_run: {e}") from None
    print(format_report(report), flush=True)
    if report.get("fit") and not report["fit"]["fits"]:
        raise SystemExit(1)
