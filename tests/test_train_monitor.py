"""Training FLOPs, peak FLOP/s lookup, MFU, and the metrics logger (JSONL, TensorBoard, console)."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from reasonax.model import config as C
from reasonax.model.flops import forward_flops, train_flops
from reasonax.train import monitor as M


def tiny_llama():
    return C.llama(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8)


def read_events(logdir: Path) -> list:
    """Every Event in the TFRecord files under logdir: [len u64][crc u32][data][crc u32] each."""
    events = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def scalars(events) -> dict:
    """{tag: [(step, value), ...]} of the scalar summaries."""
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------- FLOPs


def test_train_flops_is_six_p_tokens_plus_causal_attention():
    cfg, B, T = tiny_llama(), 3, 10
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # untied: the embedding lookup is free, lm_head is a matmul; norms (2 per layer + final) counted
    P = V * D + L * (2 * N * H * D + 2 * K * H * D + 3 * F * D + 2 * D) + D
    attn = 3 * 4 * N * H * B * (T * (T + 1) // 2) * L
    got = train_flops(cfg, B, T)
    assert got == {"dense": 6 * P * B * T, "attention": attn, "total": 6 * P * B * T + attn}


@pytest.mark.parametrize("causal", [True, False])
def test_train_flops_is_three_forwards_with_sliding_layers(causal):
    cfg = C.gemma3(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=6, num_heads=2,
                   num_kv_heads=1, head_dim=16, sliding_window=4)
    fwd = forward_flops(cfg, 2, 12, causal=causal)
    assert train_flops(cfg, 2, 12, causal=causal) == {k: 3 * v for k, v in fwd.items()}


# ------------------------------------------------------------------------------- peaks and MFU


@pytest.mark.parametrize("kind, key", [
    ("TPU v4", "tpu v4"), ("TPU v5 lite", "tpu v5e"), ("TPU v5e", "tpu v5e"), ("TPU v5", "tpu v5p"),
    ("TPU v5p", "tpu v5p"), ("TPU v6 lite", "tpu v6e"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100 pcie"), ("NVIDIA H200", "h200"), ("NVIDIA H200 NVL", "h200 nvl"),
    ("cpu", None), ("NVIDIA A100-SXM4-80GB", None), ("TPU v4 lite", None),
])
def test_device_kind_matching(kind, key):
    assert M.peak_key(kind) == key
    assert key is None or key in M.CHIPS


def test_peak_table_values_and_device_lookup():
    assert M.CHIPS["tpu v5e"].peak_flops == 197e12 and M.CHIPS["tpu v5p"].peak_flops == 459e12
    assert M.CHIPS["h100"].peak_flops == M.CHIPS["h200"].peak_flops == 989e12
    assert M.CHIPS["tpu v5e"].hbm_bw == 819e9 and M.CHIPS["h200"].hbm_bw == 4.8e12

    class Fake:
        device_kind, platform = "TPU v6 lite", "tpu"

    assert M.device_peak_flops(Fake()) == 918e12
    assert M.device_peak_flops() is None  # the tests run on CPU


def test_resolve_peak_number_key_and_errors():
    assert M.resolve_peak(1e12) == (1e12, "given: 1e+12 FLOP/s")
    assert M.resolve_peak("2.5e14")[0] == 2.5e14
    assert M.resolve_peak("TPU v5e") == (197e12, "table: tpu v5e")
    with pytest.raises(ValueError, match="unknown peak 'tpu v9'.*tpu v5e"):
        M.resolve_peak("tpu v9")
    with pytest.raises(ValueError, match="> 0"):
        M.resolve_peak(0)
    with pytest.raises(TypeError):
        M.resolve_peak(None)


def test_resolve_peak_auto_measures_on_cpu():
    value, desc = M.resolve_peak("auto")
    assert value > 0 and math.isfinite(value)
    assert desc == "measured float32 matmul on cpu"
    assert M.resolve_peak("auto") == (value, desc)  # cached per process


def test_measure_matmul_flops_small():
    assert M.measure_matmul_flops(n=64, repeats=2) > 0
    with pytest.raises(ValueError):
        M.measure_matmul_flops(n=0)


def test_mfu_arithmetic():
    # 8e14 model FLOPs in 2 s on 4 chips of 2e14: 4e14 FLOP/s of 8e14 peak
    assert M.mfu(8e14, 2.0, 2e14, 4) == pytest.approx(0.5)
    assert M.mfu(3 * 197e12, 1.0, 197e12, 4) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.mfu(1.0, 0.0, 1.0, 1)


# ------------------------------------------------------------------------------------- logger


def test_logger_writes_jsonl_tensorboard_and_console(tmp_path, capsys):
    with M.MetricsLogger(tmp_path / "run", is_primary=True) as log:
        log.log(120, {"loss": np.float32(1.23456), "lr": 3e-5, "grad_norm": 0.8123, "tokens_per_sec": 12345.2,
                      "mfu": 0.4123, "tokens": 4096, "aux": 2.0})
        log.log(121, {"loss": float("nan"), "grad_norm": float("inf")})
        log.log_event(121, "skipped non-finite step")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step 120 | loss 1.2346 | lr 3.0e-05 | grad_norm 0.812 | tok/s 12,345 | mfu 41.2%"
    assert out[1] == "step 121 | loss nan | grad_norm inf"
    assert out[2] == "step 121 | skipped non-finite step"

    recs = lines(tmp_path / "run" / "metrics.jsonl")
    assert recs[0]["step"] == 120 and recs[0]["tokens"] == 4096 and isinstance(recs[0]["tokens"], int)
    assert recs[0]["loss"] == pytest.approx(1.23456, rel=1e-6) and recs[0]["aux"] == 2.0
    assert recs[1] == {"step": 121, "loss": None, "grad_norm": None}  # non-finite -> null
    assert recs[2] == {"step": 121, "event": "skipped non-finite step"}

    events = read_events(tmp_path / "run" / "tensorboard")
    sc = scalars(events)
    assert sc["lr"] == [(120, pytest.approx(3e-5))] and sc["aux"] == [(120, 2.0)]
    assert [s for s, _ in sc["loss"]] == [120, 121] and math.isnan(sc["loss"][1][1])
    assert any(v.tag.startswith("event") for e in events for v in e.summary.value)


def test_logger_resume_drops_later_steps_and_partial_tail(tmp_path):
    with M.MetricsLogger(tmp_path, console=False, is_primary=True) as log:
        for step in range(1, 6):
            log.log(step, {"loss": 1.0 / step})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    with M.MetricsLogger(tmp_path, resume_step=3, console=False, is_primary=True) as log:
        assert [r["step"] for r in lines(path)] == [1, 2, 3]
        log.log(4, {"loss": 0.5})
    assert [r["step"] for r in lines(path)] == [1, 2, 3, 4]
    starts = [e.step for e in read_events(tmp_path / "tensorboard")
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]  # TensorBoard purges the old run's events from step 4 on


def test_logger_fresh_start_drops_only_partial_tail(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')
    with M.MetricsLogger(tmp_path, tensorboard=False, console=False, is_primary=True) as log:
        log.log(2, {"loss": 1.0})
    assert lines(tmp_path / "metrics.jsonl") == [{"step": 1}, {"step": 2, "loss": 1.0}]
    assert not (tmp_path / "tensorboard").exists()


def test_non_primary_writes_nothing(tmp_path, capsys):
    with M.MetricsLogger(tmp_path / "run", resume_step=0, is_primary=False) as log:
        log.log(1, {"loss": 1.0})
        log.log_event(1, "hello")
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr().out == ""


def test_logger_rejects_bad_input(tmp_path):
    with M.MetricsLogger(tmp_path, tensorboard=False, console=False, is_primary=True) as log:
        with pytest.raises(TypeError, match="metric 'loss'"):
            log.log(1, {"loss": "high"})
        with pytest.raises(TypeError, match="metric 'v'"):
            log.log(1, {"v": np.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            log.log(1, {"step": 3})
        with pytest.raises(TypeError, match="step"):
            log.log(1.5, {"loss": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists() or lines(tmp_path / "metrics.jsonl") == []
