"""Multi-host SFT: 2 local processes x 4 fake CPU devices train like 1 process x 8 devices.

The processes are joined through config.distributed (jax.distributed.initialize with a
coordinator on localhost; CPU collectives between processes go through gloo). Each one runs
tests/multihost_worker.py: configs/sft_tiny_cpu.py for 5 steps on a data=2 x fsdp=4 mesh.

Why data.pack=False: the pipeline gives process p examples p, p+P, p+2P, ... of the shuffled
stream and batches global_batch / P rows of them; to_global stacks the processes' rows. With
one example per row, step k of the 2-process run holds examples 2k*8.. as [0, 2, .., 14 | 1, 3,
.., 15] (offset by 16k), the same 16 examples as the 1-process run's rows 0..15, in another
order. The loss and gradients are sums over rows (divided by the token count), so the losses
agree up to float summation order. Packing, by contrast, is done per process on its own
examples: a packed multi-host run sees the same examples over an epoch, but grouped into
different steps (and rows) than a single-process run, so its per-step losses differ.

Each run writes its synthetic data itself (common.write_synthetic: process 0 writes, then a barrier
before the other process reads it).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT_S = 300
STEPS = 5  # multihost_worker.NUM_STEPS


def _tiny_config():
    spec = importlib.util.spec_from_file_location("sft_tiny_cpu", ROOT / "configs" / "sft_tiny_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _write_data(workdir: Path) -> Path:
    """The synthetic task's JSONL where common.write_synthetic would put it (it then keeps it)."""
    from reasonax import jsonl
    from reasonax.tasks import arithmetic

    c = _tiny_config()
    path = workdir / "data" / "arithmetic.jsonl"
    path.parent.mkdir(parents=True)
    jsonl.rewrite(path, arithmetic.records(c.synthetic.num_examples, c.seed, c.synthetic.steps))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(args: list, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = open(log, "w")
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env, cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT)


def _wait(procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    """Wait for all; on a failure or timeout kill the rest and fail with each one's log tail."""
    failed = []
    try:
        for name, p in procs.items():
            try:
                if p.wait(timeout=TIMEOUT_S) != 0:
                    failed.append(f"{name}: exit {p.returncode}")
            except subprocess.TimeoutExpired:
                failed.append(f"{name}: timed out after {TIMEOUT_S}s")
                break
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    if failed:
        tails = "\n".join(f"--- {name} ---\n{logs[name].read_text()[-3000:]}" for name in procs)
        pytest.fail("; ".join(failed) + "\n" + tails)


def _losses(workdir: Path) -> list[float]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    return [r["loss"] for r in steps]


def test_two_processes_match_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    address = f"localhost:{_free_port()}"
    logs = {name: tmp_path / f"{name}.log" for name in ("process_0", "process_1", "single")}
    procs = {f"process_{i}": _launch([4, multi, i, 2, address], logs[f"process_{i}"]) for i in range(2)}
    _wait(procs, logs)
    _wait({"single": _launch([8, single], logs["single"])}, logs)

    infos = [json.loads((multi / f"worker_{i}.json").read_text()) for i in range(2)]
    assert [(i["process_index"], i["process_count"], i["device_count"], i["local_device_count"])
            for i in infos] == [(0, 2, 8, 4), (1, 2, 8, 4)]
    assert infos[0]["cpu_collectives"] == "gloo"
    one = json.loads((single / "worker_0.json").read_text())
    assert (one["process_count"], one["device_count"]) == (1, 8)

    multi_losses, single_losses = _losses(multi), _losses(single)
    print("2 processes x 4 devices:", multi_losses)
    print("1 process  x 8 devices:", single_losses)
    assert len(set(single_losses)) > 1  # training moves
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)

    # each process saved its own data iterator position in the checkpoint
    data_dir = multi / "checkpoints" / str(STEPS) / "data"
    assert sorted(p.name for p in data_dir.glob("process_*.json")) == ["process_0-of-2.json",
                                                                       "process_1-of-2.json"]
    states = [json.loads((data_dir / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert states[0] != states[1]
    assert [s["stats"]["examples"] for s in states] == [STEPS * 8, STEPS * 8]

    # the SLM scoring pass: same stored reference losses from 2 processes as from 1
    from reasonax.train.slm.ref_scores import RefScores

    m, s = RefScores.load(multi / "ref_scores"), RefScores.load(single / "ref_scores")
    np.testing.assert_array_equal(m.offsets, s.offsets)
    np.testing.assert_allclose(np.asarray(m.losses, np.float32), np.asarray(s.losses, np.float32), rtol=2e-3)
    assert m.num_records == s.num_records > 0


def test_process_shards_cover_the_single_process_batches(tmp_path):
    """Without packing, each global batch of a 2-process run holds the same rows as 1 process's."""
    from reasonax.tasks.byte_tokenizer import byte_tokenizer
    from reasonax.train import data as data_lib
    from reasonax import typed
    from reasonax.train import common, sft

    c = _tiny_config()
    c.workdir = str(tmp_path)
    c.data.pack, c.data.num_threads = False, 0
    _write_data(tmp_path)
    d = common.data_config(typed.from_config(sft.SFTConfig, c))
    tok = byte_tokenizer()

    def batches(index, count):
        it = iter(data_lib.sft_dataset(d, tok, global_batch=c.batch_size, process_index=index,
                                       process_count=count))
        return [next(it) for _ in range(STEPS)]

    single = batches(0, 1)
    shards = [batches(0, 2), batches(1, 2)]
    for step in range(STEPS):
        stacked = np.concatenate([s[step]["inputs"] for s in shards])
        assert stacked.shape == single[step]["inputs"].shape
        assert sorted(map(bytes, stacked)) == sorted(map(bytes, single[step]["inputs"]))
