"""Training metrics: peak FLOP/s per chip, MFU, and a logger to JSONL, TensorBoard and the console.

MFU = model FLOPs per step (reasonax.model.flops.step_flops: every pass on real tokens) / (step seconds x
peak x devices).
The peak comes from a table of dense bf16 peaks, or is measured with a matmul where the chip is
not in the table (CPU, unknown GPUs): then MFU is relative to what this host's matmul reaches.

Metric keys shown on the console (others go to the files only): loss, lr, grad_norm,
tokens_per_sec (shown as tok/s) and mfu (a fraction, shown as a percentage).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from reasonax import jsonl

@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator's public figures, per chip: dense bf16 peak FLOP/s (MFU), HBM bandwidth and
    interconnect bandwidth in bytes/s (the rollout layout's estimates, reasonax.train.grpo.layout).
    interconnect_bw is the chip's total bidirectional ICI / NVLink figure as the vendor states it;
    the estimates use half of it (one direction)."""

    peak_flops: float
    hbm_bw: float
    interconnect_bw: float
    hbm_bytes: float


# The one table of device figures (sources per line; dense = no sparsity).
CHIPS = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, HBM2 32 GiB at 1,200 GBps; the v4 page gives no
    # per-chip ICI figure: 6 links x 2 directions x 45 GB/s from jax-ml.github.io/scaling-book/tpus
    "tpu v4": Chip(275e12, 1200e9, 540e9, 32 * 2**30),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB at 819 GBps, ICI 400 GBps bidirectional per chip
    "tpu v5e": Chip(197e12, 819e9, 400e9, 16e9),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB at 2,765 GBps, ICI 1,200 GBps bidirectional per chip
    "tpu v5p": Chip(459e12, 2765e9, 1200e9, 95e9),
    # cloud.google.com/tpu/docs/v6e (Trillium): 918 TFLOPs bf16, 32 GB at 1,638 GBps, ICI 800 GBps bidirectional
    "tpu v6e": Chip(918e12, 1638e9, 800e9, 32e9),
    # nvidia.com H100 datasheet, SXM: 1,979 TFLOPS bf16 with sparsity = 989.4 dense; 80 GB HBM3 at 3.35 TB/s;
    # NVLink 900 GB/s
    "h100": Chip(989e12, 3.35e12, 900e9, 80e9),
    # same datasheet, PCIe: 1,513 with sparsity = 756 dense; 80 GB at 2 TB/s; NVLink bridge 600 GB/s
    "h100 pcie": Chip(756e12, 2.0e12, 600e9, 80e9),
    # same datasheet, NVL: 1,671 with sparsity = 835 dense; 94 GB at 3.9 TB/s; NVLink bridge 600 GB/s
    "h100 nvl": Chip(835e12, 3.9e12, 600e9, 94e9),
    # nvidia.com H200 datasheet, SXM: 1,979 TFLOPS bf16 with sparsity = 989 dense; 141 GB HBM3e at 4.8 TB/s;
    # NVLink 900 GB/s
    "h200": Chip(989e12, 4.8e12, 900e9, 141e9),
    # same datasheet, NVL: 1,671 with sparsity = 835 dense; 141 GB at 4.8 TB/s; NVLink bridge 900 GB/s
    "h200 nvl": Chip(835e12, 4.8e12, 900e9, 141e9),
}


# jax device_kind (lowercased) of TPUs -> table key. v5p reports itself as 'TPU v5'.
_TPU_KINDS = {
    "tpu v4": "tpu v4",
    "tpu v5 lite": "tpu v5e", "tpu v5litepod": "tpu v5e", "tpu v5e": "tpu v5e",
    "tpu v5": "tpu v5p", "tpu v5p": "tpu v5p",
    "tpu v6 lite": "tpu v6e", "tpu v6e": "tpu v6e",
}

_MEASURED: dict[tuple[str, str], float] = {}  # (platform, dtype) -> FLOP/s, per process


def peak_key(device_kind: str) -> str | None:
    """The CHIPS key of a jax device_kind ('TPU v5 lite' -> 'tpu v5e'), or None if unknown."""
    kind = " ".join(device_kind.lower().split())
    if kind in _TPU_KINDS:
        return _TPU_KINDS[kind]
    for chip in ("h100", "h200"):  # 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', 'NVIDIA H200'
        if re.search(rf"\b{chip}\b", kind):
            variant = next((v for v in ("pcie", "nvl") if re.search(rf"\b{v}\b", kind)), None)
            return f"{chip} {variant}" if variant else chip
    return None


def device_peak_flops(device=None) -> float | None:
    """Table peak FLOP/s of `device` (default: the first default device), None if not in the table."""
    device = device or jax.devices()[0]
    key = peak_key(device.device_kind)
    return CHIPS[key].peak_flops if key else None


def measure_matmul_flops(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted [n, n] @ [n, n] matmul on the default device (best of `repeats`)."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()  # compile and warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / max(best, 1e-9)


def _auto_peak() -> tuple[float, str]:
    """Table peak of the default device, else a matmul measurement (cached per process)."""
    device = jax.devices()[0]
    key = None if device.platform == "cpu" else peak_key(device.device_kind)
    if key:
        return CHIPS[key].peak_flops, f"table: {key} ({device.device_kind})"
    dtype = "float32" if device.platform == "cpu" else "bfloat16"
    if (device.platform, dtype) not in _MEASURED:
        _MEASURED[device.platform, dtype] = measure_matmul_flops(dtype)
    return _MEASURED[device.platform, dtype], f"measured {dtype} matmul on {device.platform}"


def resolve_peak(spec: float | int | str) -> tuple[float, str]:
    """(peak FLOP/s per device, description) from a number, a CHIPS key or 'auto'."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise TypeError(f"peak spec must be a number, a CHIPS key or 'auto', got {spec!r}")
    name = spec.strip().lower() if isinstance(spec, str) else None
    if name == "auto":
        value, desc = _auto_peak()
    elif name in CHIPS:
        value, desc = CHIPS[name].peak_flops, f"table: {name}"
    else:
        try:
            value = float(spec)
        except ValueError:
            raise ValueError(f"unknown peak {spec!r}: expected FLOP/s per device, 'auto' or one of "
                             f"{sorted(CHIPS)}") from None
        desc = f"given: {value:.3g} FLOP/s"
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"peak FLOP/s must be finite and > 0, got {value} from {spec!r}")
    return value, desc


def mfu(model_flops_per_step: float, step_seconds: float, peak_per_device: float, num_devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices (a fraction)."""
    if step_seconds <= 0 or peak_per_device <= 0 or num_devices < 1:
        raise ValueError(f"need step_seconds > 0, peak_per_device > 0, num_devices >= 1; got "
                         f"{step_seconds}, {peak_per_device}, {num_devices}")
    return model_flops_per_step / (step_seconds * peak_per_device * num_devices)


# (metric key, console label, format) in console order.
CONSOLE_FIELDS = (("loss", "loss", "{:.4f}"), ("lr", "lr", "{:.1e}"), ("grad_norm", "grad_norm", "{:.3f}"),
                  ("tokens_per_sec", "tok/s", "{:,.0f}"), ("mfu", "mfu", "{:.1%}"),
                  ("eval/loss", "eval_loss", "{:.4f}"), ("reward/mean", "reward", "{:.3f}"),
                  ("eval/accuracy", "eval_acc", "{:.3f}"))


def console_line(step: int, metrics: dict) -> str:
    """'step 120 | loss 1.2345 | lr 3.0e-05 | grad_norm 0.812 | tok/s 12,345 | mfu 41.2%'."""
    parts = [f"step {step}"]
    parts += [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in CONSOLE_FIELDS if key in metrics]
    return " | ".join(parts)


def _scalar(key: str, value) -> int | float:
    """A python int or float from a python/numpy/jax scalar; TypeError naming the key otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"metric {key!r}: expected a scalar number, got {type(value).__name__}")
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r}: expected a scalar number, got {type(value).__name__}") from None


def truncate_after(path: str | Path, step: int) -> int:
    """Drop a cut last line and every record with 'step' > `step` from a JSONL file. Returns records dropped."""
    path = Path(path)
    jsonl.drop_partial_tail(path)
    if not path.exists():
        return 0
    records = [rec for _, rec in jsonl.read(path)]
    keep = [r for r in records if not (isinstance(r.get("step"), (int, float)) and r["step"] > step)]
    if len(keep) < len(records):
        jsonl.rewrite(path, keep)
    return len(records) - len(keep)


class MetricsLogger:
    """Per-step scalars to workdir/metrics.jsonl (fsync'd), workdir/tensorboard and the console.

    JSONL lines are {"step": int, **metrics}; ints stay ints, other values become floats, and
    non-finite values are written as null (strict JSON; pandas reads null as NaN). TensorBoard
    and the console get the raw value (nan/inf). Events (log_event) are {"step", "event"} lines.
    On resume, records after `resume_step` and a cut last line are dropped first, and TensorBoard
    is told to purge its events from resume_step + 1 on. Only the primary process writes anything.
    """

    def __init__(self, workdir: str | Path, *, resume_step: int | None = None, tensorboard: bool = True,
                 console: bool = True, is_primary: bool | None = None):
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.is_primary = jax.process_index() == 0 if is_primary is None else bool(is_primary)
        self.console = console
        self._writer = None
        if not self.is_primary:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        else:
            jsonl.drop_partial_tail(self.path)  # so appends start on a fresh line
        if tensorboard:
            from tensorboardX import SummaryWriter  # imports torch (~4 s): only for runs that write TensorBoard

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(logdir=str(self.workdir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict) -> None:
        """Write one step's scalars to all sinks (console: only the CONSOLE_FIELDS present)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if "step" in metrics:
            raise ValueError("'step' is reserved; pass it as the step argument")
        if not self.is_primary:
            return
        values = {k: _scalar(k, v) for k, v in metrics.items()}
        record = {"step": int(step), **{k: v if math.isfinite(v) else None for k, v in values.items()}}
        jsonl.append(self.path, [record])
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), int(step))
        if self.console:
            print(console_line(int(step), values), flush=True)

    def log_event(self, step: int, text: str) -> None:
        """A one-off event ('skipped non-finite step'): a {"step", "event"} line, TB text, console."""
        if not self.is_primary:
            return
        jsonl.append(self.path, [{"step": int(step), "event": str(text)}])
        if self._writer is not None:
            self._writer.add_text("event", str(text), int(step))
        if self.console:
            print(f"step {int(step)} | {text}", flush=True)

    def close(self) -> None:
        """Flush and close TensorBoard (the JSONL is already on disk). Safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
