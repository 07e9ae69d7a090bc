"""Fault injection: each test injects one fault and asserts what is kept (docs: BENCHMARKS.md,
"Reliability"). Runs are tiny and shared between cases where they can be; subprocess runs are
launched side by side.

- SIGTERM (a preemption notice) at a seeded random step: the run exits by itself with status 75
  (reasonax.train.preempt.EXIT_PREEMPTED), its checkpoint holds every finished step, and the rerun
  ends bitwise equal to an uninterrupted run (SFT through its CLI; GRPO in process, with a second
  SIGTERM while the stop checkpoint is saved; 2 processes x 4 fake devices).
- the watchdog (reasonax.train.watchdog): a 2-process run with one process SIGSTOPped, and one
  with a process SIGKILLed; a restore that never returns (its own phase and allowance).
- checkpoint faults: SIGKILL during an async save, a write error (RLIMIT_FSIZE) during a save, a
  truncated / missing file in the latest checkpoint (checkpoint.fallback).
- a grader worker killed during a GRPO step; a malformed record in a GRPO prompt file.

The subprocess runs of this module share one persistent compilation cache
(JAX_COMPILATION_CACHE_DIR, set for this module only): a rerun or a later run of the same config loads
its programs instead of compiling them (a cached program is the compiled one, so the bitwise
comparisons hold).
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from reasonax.train import checkpoint as ckpt_lib
from reasonax.train import loop, preempt, watchdog

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per subprocess run; a tiny run takes ~15 s on an idle 2-core machine
SEED = int(os.environ.get("REASONAX_FAULT_SEED", os.getpid()))  # the SIGTERM steps; printed on failure


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """This module's subprocess runs share a persistent compilation cache (through the environment:
    a rerun or a later run of the same config loads its programs). Not this pytest process, whose
    programs tests/conftest.py frees after every module. (A full run that aborted in an XLA compile
    on 2026-12-03 was first blamed on an in-process cache here; the cause was the process's memory
    mappings passing vm.max_map_count: see tests/conftest.py.)"""
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    options = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in options.items():
            mp.setenv(k.upper(), str(v))
        yield


def _metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _metrics(workdir) if "loss" in r}


def _assert_same_export(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), (a, b)


def _signal_at_step(proc: subprocess.Popen, workdir: Path, step: int, sig=signal.SIGTERM) -> int:
    """Send `sig` to proc once workdir's metrics log a step >= `step`; returns the last step logged."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if max(_losses(workdir), default=0) >= step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step} (seed {SEED}): {proc.communicate()[1][-3000:]}"
    proc.send_signal(sig)
    return max(_losses(workdir))


# ---------------------------------------------------------------- SIGTERM, 1 process, SFT's CLI

SFT_STEPS = 24
SFT_FLAGS = ["--config=configs/sft_tiny_cpu.py", f"--config.num_steps={SFT_STEPS}",
             f"--config.optim.total_steps={SFT_STEPS}", "--config.checkpoint.every=1000",  # larger than the run
             "--config.synthetic.num_examples=400", "--config.seq_len=64", "--config.batch_size=8",
             "--config.log_every=1", "--config.peak_flops=1e11", "--config.tensorboard=False"]


def _sft_cli(workdir: Path, *extra: str, python: tuple[str, ...] = ("-m", "reasonax.train.sft")) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *python, *SFT_FLAGS, f"--config.workdir={workdir}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen, status: int = 0) -> str:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == status, f"exit {proc.returncode}, expected {status}:\n{(out + err)[-4000:]}"
    return out + err


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> dict:
    """The SFT CLI run uninterrupted ('straight') and, side by side, sent SIGTERM at a seeded random
    step ('stopped'): {'straight', 'stopped' (workdirs), 'log' (the stopped run's output),
    'last_logged', 'saved' (its latest checkpoint after the stop)}."""
    tmp = tmp_path_factory.mktemp("sft")
    straight, stopped = tmp / "straight", tmp / "stopped"
    runs = {"straight": _sft_cli(straight), "stopped": _sft_cli(stopped)}  # side by side
    at = random.Random(SEED).randint(2, SFT_STEPS // 2)
    _signal_at_step(runs["stopped"], stopped, at)
    log = _done(runs["stopped"], preempt.EXIT_PREEMPTED)  # not -15: it exited by itself
    out = {"straight": straight, "stopped": stopped, "log": log, "at": at, "last_logged": max(_losses(stopped)),
           "saved": ckpt_lib.Checkpointer(stopped / "checkpoints").latest_step(), "hf": (stopped / "hf").exists()}
    _done(runs["straight"])
    return out


def test_sigterm_sft_cli_exits_75_with_a_checkpoint_of_every_logged_step_and_resumes_bitwise(sft_runs):
    straight, stopped, saved, last_logged = (sft_runs[k] for k in ("straight", "stopped", "saved", "last_logged"))
    assert saved is not None and last_logged <= saved < SFT_STEPS, (sft_runs["at"], last_logged, saved)
    assert f"stopped at step {saved}: SIGTERM" in sft_runs["log"]
    assert not sft_runs["hf"]  # no export of an unfinished run
    _done(_sft_cli(stopped))  # the same command again: resumes from the stop checkpoint
    _assert_same_export(straight / "hf", stopped / "hf")
    la, lb = _losses(straight), _losses(stopped)
    assert sorted(lb) == list(range(1, SFT_STEPS + 1)) and all(la[s] == lb[s] for s in la)


HUNG_RESTORE = """
import sys, time
from reasonax.train import checkpoint, sft
checkpoint.Checkpointer.restore = lambda *a, **k: time.sleep(3600)  # a read that never returns
sys.argv = ["sft", *sys.argv[1:]]
sft.cli()
"""


def test_a_restore_that_never_returns_trips_the_watchdog_naming_the_restore_and_its_step(sft_runs):
    """Setup and restore are watched with the slow allowance (config.watchdog_slow_s): a restore
    stuck in a read (or at a barrier a lost peer never reaches) ends the run naming the phase."""
    proc = _sft_cli(sft_runs["straight"], "--config.watchdog_slow_s=3", python=("-c", HUNG_RESTORE))
    try:
        out, err = proc.communicate(timeout=120)  # without the phase it would wait an hour
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == watchdog.EXIT_HUNG, (out + err)[-3000:]
    assert f"in phase 'restore' at step {SFT_STEPS} (allowance 3s" in err, err[-3000:]


# ---------------------------------------------------------------- SIGTERM, 1 process, GRPO in process


GRPO_STEPS = 6


def _grpo_config(workdir, **changes):
    from tests.test_grpo import _tiny

    base = {"num_steps": GRPO_STEPS, "optim.total_steps": GRPO_STEPS, "checkpoint.every": 1000,
            "grpo.prompts_per_step": 2, "grpo.group_size": 4, "grpo.max_new_tokens": 8, "export_hf": ""}
    return _tiny(workdir, **{**base, **changes})


class _SignalAt:
    """A plan's batch source that sends this process `sig` while step `step` is being prepared."""

    def __init__(self, inner, step: int, sig=signal.SIGTERM):
        self.inner, self.step, self.sig = inner, step, sig

    def next(self, state):
        if int(state.step) + 1 == self.step:
            os.kill(os.getpid(), self.sig)
        return self.inner.next(state)

    def __getattr__(self, name):  # iterator, metrics, stats
        return getattr(self.inner, name)


def test_sigterm_grpo_stops_at_the_step_in_progress_survives_a_second_sigterm_while_saving_and_resumes_bitwise(
        tmp_path, monkeypatch):
    from reasonax.train import grpo

    straight = grpo.run(_grpo_config(tmp_path / "straight"))
    at = random.Random(SEED).randint(1, GRPO_STEPS - 1)
    plan = grpo.build(_grpo_config(tmp_path / "stopped"))
    signalled = dataclasses.replace(plan, source=lambda mesh: _SignalAt(plan.source(mesh), at))
    save = ckpt_lib.Checkpointer.save

    def save_with_second_sigterm(self, step, *args, force=False, **kw):
        if force:  # the stop checkpoint: a second notice arrives while it is written
            os.kill(os.getpid(), signal.SIGTERM)
        return save(self, step, *args, force=force, **kw)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_with_second_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preempt.Preempted) as stop:
        loop.run(signalled)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
    assert stop.value.code == preempt.EXIT_PREEMPTED and stop.value.step == at
    assert signal.getsignal(signal.SIGTERM) == before  # given back
    assert ckpt_lib.Checkpointer(tmp_path / "stopped" / "checkpoints").latest_step() == at
    assert max(_losses(tmp_path / "stopped")) == at  # logged up to the stop step, which is saved
    resumed = grpo.run(_grpo_config(tmp_path / "stopped"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), straight.params,
                 resumed.params)
    _assert_same_export(tmp_path / "straight" / "hf", tmp_path / "stopped" / "hf")

    def rewards(w):
        return {r["step"]: (r["reward/mean"], r["loss"]) for r in _metrics(w) if "loss" in r}

    assert rewards(tmp_path / "straight") == rewards(tmp_path / "stopped")  # prompt stream + sampling seed


# ---------------------------------------------------------------- 2 processes x 4 fake devices

MULTI_STEPS = 12
MULTI = {"num_steps": MULTI_STEPS, "optim.total_steps": MULTI_STEPS, "checkpoint.every": 1000, "export_hf": "",
         "watchdog_s": 20.0}  # far below JAX's heartbeat timeout (100 s) and this test's bound


def _two_processes(tmp_path: Path, name: str, monkeypatch, **changes) -> tuple[Path, dict, dict]:
    """Launch tests/multihost_worker.py as 2 processes x 4 fake devices on tmp_path/name."""
    from tests.test_multihost import _free_port, _launch

    monkeypatch.setenv("REASONAX_WORKER_CHANGES", json.dumps({**MULTI, **changes}))
    workdir, address = tmp_path / name, f"localhost:{_free_port()}"
    logs = {i: tmp_path / f"{name}_{i}.log" for i in range(2)}
    return workdir, {i: _launch([4, workdir, i, 2, address], logs[i]) for i in range(2)}, logs


def _exit_codes(procs: dict, logs: dict) -> dict:
    codes = {}
    try:
        for i, p in procs.items():
            codes[i] = p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def _tails(logs: dict) -> str:
    return "\n".join(f"--- process {i} ---\n{Path(log).read_text()[-3000:]}" for i, log in logs.items())


def test_sigterm_two_processes_agree_on_the_stop_step_save_it_exit_75_and_resume_bitwise(tmp_path, monkeypatch):
    straight, procs_a, logs_a = _two_processes(tmp_path, "straight", monkeypatch)
    stopped, procs_b, logs_b = _two_processes(tmp_path, "stopped", monkeypatch)
    at = random.Random(SEED).randint(2, MULTI_STEPS // 2)
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and max(_losses(stopped), default=0) < at and procs_b[0].poll() is None:
        time.sleep(0.02)
    for p in procs_b.values():  # as a preemption does: every process gets the notice
        p.send_signal(signal.SIGTERM)
    codes = _exit_codes(procs_b, logs_b)
    assert codes == {0: preempt.EXIT_PREEMPTED, 1: preempt.EXIT_PREEMPTED}, f"seed {SEED}\n" + _tails(logs_b)
    saved = ckpt_lib.Checkpointer(stopped / "checkpoints").latest_step()
    assert max(_losses(stopped)) <= saved < MULTI_STEPS
    assert f"stopped at step {saved}: preemption notice" in Path(logs_b[0]).read_text()  # process 0 logs
    assert _exit_codes(procs_a, logs_a) == {0: 0, 1: 0}, _tails(logs_a)
    _, procs_c, logs_c = _two_processes(tmp_path, "stopped", monkeypatch)  # the same command again
    assert _exit_codes(procs_c, logs_c) == {0: 0, 1: 0}, _tails(logs_c)
    _assert_same_export(straight / "hf", stopped / "hf")
    la, lb = _losses(straight), _losses(stopped)
    assert sorted(lb) == list(range(1, MULTI_STEPS + 1)) and all(la[s] == lb[s] for s in la)


@pytest.fixture(scope="module")
def lost_peer(tmp_path_factory) -> dict:
    """Two 2-process runs side by side (their waits overlap): in 'sigstop' process 1 is stopped
    with SIGSTOP (watchdog_s = 10 s), in 'sigkill' it is killed (distributed.heartbeat_timeout_s =
    15 s instead of 100 s; with 10 s the heartbeat can end the survivor before its collective
    fails, under load), both at a seeded random step. {name: (exit code of process 0, its log, all logs)}."""
    tmp = tmp_path_factory.mktemp("lost_peer")
    with pytest.MonkeyPatch.context() as mp:  # the watchdog and heartbeat waits are this fixture's cost
        runs = {"sigstop": _two_processes(tmp, "sigstop", mp, watchdog_s=10.0),
                "sigkill": _two_processes(tmp, "sigkill", mp, **{"distributed.heartbeat_timeout_s": 15})}
    at = random.Random(SEED).randint(2, MULTI_STEPS // 2)
    out = {}
    try:
        for name, sig in (("sigstop", signal.SIGSTOP), ("sigkill", signal.SIGKILL)):
            workdir, procs, _ = runs[name]
            _wait_for_step(workdir, procs, at)
            procs[1].send_signal(sig)
        for name, (workdir, procs, logs) in runs.items():
            code = procs[0].wait(timeout=TIMEOUT_S)
            out[name] = (code, Path(logs[0]).read_text(), logs, at)
    finally:
        for _, procs, _ in runs.values():
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                p.wait()
    return out


def test_a_stopped_process_trips_the_survivors_watchdog_naming_step_and_phase(lost_peer):
    import re

    code, log, logs, at = lost_peer["sigstop"]
    assert code == watchdog.EXIT_HUNG, f"exit {code}\n" + _tails(logs)
    m = re.search(r"watchdog: process 0 of 2 .* in phase '([^']+)' at step (\d+)", log)
    assert m and int(m.group(2)) >= at, log[-3000:]
    assert "Thread" in log[m.end():]  # faulthandler's stacks follow the message


def test_a_killed_process_ends_the_survivor_with_a_message_naming_it(lost_peer):
    """JAX's coordination service, after distributed.heartbeat_timeout_s without a heartbeat from
    the lost process, names it and ends the survivor. When the survivor was in a collective, that
    collective fails first (gloo: connection reset by the lost peer) and the loop names this
    process, phase and step; when it was waiting elsewhere (seen in 2 of 5 suite runs on a loaded
    machine, 2026-12-03), the heartbeat ends it first, from C++, with no Python error to report."""
    import re

    code, log, logs, _ = lost_peer["sigkill"]
    assert code != 0, _tails(logs)
    # the lost process, named by JAX (the message's form depends on where the survivor waited)
    assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\):\s*1\b", log), log[-3000:]
    if "Traceback" in log:  # the Python path: a failed collective raised in the loop
        assert "[reasonax] process 0 of 2 failed in phase '" in log, log[-3000:]


def _wait_for_step(workdir, procs, step):
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and max(_losses(workdir), default=0) < step:
        assert all(p.poll() is None for p in procs.values()), f"a process ended before step {step}"
        time.sleep(0.02)


# ---------------------------------------------------------------- checkpoint faults

CKPT_WORKER = """
import os, resource, signal, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp
from reasonax.train.checkpoint import Checkpointer
mode, directory = sys.argv[1], sys.argv[2]
ck = Checkpointer(directory, every=1, async_save=True)
ck.save(1, {{"w": jnp.arange(1000.0), "big": jnp.zeros(1)}})
ck.wait()
big = jax.random.normal(jax.random.key(0), (128 * 2**20 // 4,))  # 128 MiB of incompressible floats
if mode == "kill":  # SIGKILL while the async save of step 2 is being written
    ck.save(2, {{"w": jnp.arange(1000.0) + 1, "big": big}})
    os.kill(os.getpid(), signal.SIGKILL)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # reaches tensorstore's C++ writers
ck.save(2, {{"w": jnp.arange(1000.0) + 1, "big": big}})
ck.wait()
"""


def _ckpt_worker(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ckpt_worker.py"
    script.write_text(CKPT_WORKER.format(root=str(ROOT)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, str(script), mode, str(tmp_path / mode)], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _restore_w(directory: Path) -> np.ndarray:
    ck = ckpt_lib.Checkpointer(directory)
    try:
        return np.asarray(ck.restore(_abstract(directory))["w"])
    finally:
        ck.close()


def _abstract(directory: Path):
    """The saved tree's abstract arrays, on this process's first device (read from the metadata)."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ck = ckpt_lib.Checkpointer(directory)
    meta = ck.manager.item_metadata(ck.all_steps()[0])[ckpt_lib.STATE]
    ck.close()
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)


def test_sigkill_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
    proc = _ckpt_worker(tmp_path, "kill")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    directory = tmp_path / "kill"
    assert any(p.name.startswith("2.orbax-checkpoint-tmp") for p in directory.iterdir())  # it was mid-write
    assert ckpt_lib.Checkpointer(directory).latest_step() == 1
    np.testing.assert_array_equal(_restore_w(directory), np.arange(1000.0))


def test_a_write_error_during_a_save_names_the_directory_and_keeps_the_previous_checkpoint(tmp_path):
    proc = _ckpt_worker(tmp_path, "efbig")
    directory = tmp_path / "efbig"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"CheckpointError: {directory}: saving checkpoint step 2 failed" in proc.stderr, proc.stderr[-3000:]
    assert ckpt_lib.Checkpointer(directory).latest_step() == 1
    np.testing.assert_array_equal(_restore_w(directory), np.arange(1000.0))


def test_a_truncated_or_missing_file_in_the_latest_checkpoint_is_named_and_fallback_restores_the_one_before(
        tmp_path, capfd):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ck = ckpt_lib.Checkpointer(tmp_path, every=1)
    for step in (1, 2):
        ck.save(step, {"w": jax.device_put(np.arange(1000.0, dtype=np.float32) + step, sharding)})
    ck.close()
    files = sorted((tmp_path / "2" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    data = files[-1].read_bytes()  # the largest data file: the array's chunk
    files[-1].write_bytes(data[: len(data) // 2])
    abstract = {"w": jax.ShapeDtypeStruct((1000,), np.float32, sharding=sharding)}
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"checkpoint step 2 at {tmp_path}/2 is unreadable .*"
                                                       r"\"w/0\".*checkpoint.fallback=true"):
        ckpt_lib.Checkpointer(tmp_path).restore(abstract)
    files[-1].unlink()  # missing instead of truncated: the same
    with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoint step 2 .* is unreadable"):
        ckpt_lib.Checkpointer(tmp_path).restore(abstract)
    ck = ckpt_lib.Checkpointer(tmp_path, fallback=True)
    restored = ck.restore(abstract)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(1000.0) + 1)
    assert "WARNING: checkpoint step 2" in capfd.readouterr().err
    assert ck.all_steps() == [1] and (tmp_path / "unreadable-2").is_dir()  # set aside, not deleted
    ck.close()


# ---------------------------------------------------------------- GRPO: grader worker, prompt file

def _prompt_file(path: Path, n: int, bad_line: int | None = None) -> Path:
    """n prompt records whose gold (x^2+2x+1) only the grader's sympy workers can match with
    (x+1)^2; line bad_line (1-based) is malformed JSON instead."""
    lines = [json.dumps({"prompt": f"Expand (x+1)^2, case {i}.", "answer": "x^2+2x+1"}) for i in range(n)]
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"prompt": "cut off here')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_grader_worker_killed_during_a_grpo_step_is_replaced_and_the_step_rewards_are_complete(
        tmp_path, monkeypatch):
    from reasonax.eval import grader
    from reasonax.eval.grader import pool
    from reasonax.train import grpo
    from reasonax.train.grpo import rollout

    files = [str(_prompt_file(tmp_path / "prompts.jsonl", 8))]
    # every completion is graded as the right answer, in a form that needs a grader worker
    monkeypatch.setattr(rollout, "completion_text", lambda *a, **k: "so it is \\boxed{(x+1)^2}")
    recv, killed = pool._Worker.recv, []

    def recv_killed_once(self, timeout):  # the first comparison of step 2: its worker dies mid-task
        if steps_done() == 1 and not killed:
            killed.append(self.proc.pid)
            self.proc.kill()
        return recv(self, timeout)

    def steps_done():
        return max(_losses(tmp_path / "run"), default=0)

    monkeypatch.setattr(pool._Worker, "recv", recv_killed_once)
    grader.shutdown()  # fresh workers, started with the patched class
    grpo.run(_grpo_config(tmp_path / "run", num_steps=2, **{"synthetic.task": "", "grpo.files": files,
                                                             "export_hf": "none"}))
    rows = {r["step"]: r for r in _metrics(tmp_path / "run") if "loss" in r}
    assert killed, "no grader worker was used"
    assert rows[1]["grader/worker_crashes"] == 0 and rows[2]["grader/worker_crashes"] >= 1
    assert rows[1]["reward/accuracy"] == rows[2]["reward/accuracy"] == 1.0  # nothing lost to the crash


def test_grader_workers_ignore_sigterm_so_a_group_wide_notice_leaves_rewards_to_the_parent():
    from reasonax.eval import grader
    from reasonax.eval.grader import pool

    grader.shutdown()
    assert grader.grade_batch(["\\boxed{(x+1)^2}"], ["x^2+2x+1"], fallback=False) == [True]  # starts a worker
    workers = list(pool._get_pool()._all)
    assert workers
    for w in workers:
        os.kill(w.proc.pid, signal.SIGTERM)
    for w in workers:  # without SIG_IGN a worker dies at once; 2 s is only how long we look
        with pytest.raises(subprocess.TimeoutExpired):
            w.proc.wait(timeout=2)
    crashes = grader.stats()["worker_crashes"]
    assert grader.grade_batch(["\\boxed{(x+1)^2}"], ["x^2+2x+1"], fallback=False) == [True]
    assert grader.stats()["worker_crashes"] == crashes


def test_a_malformed_record_mid_grpo_prompt_file_is_named_or_skipped_and_counted(tmp_path, capfd):
    from reasonax.model.tokenizer import from_spec
    from reasonax.train.grpo import GRPOConfig
    from reasonax.train.grpo.rollout import load_prompts

    path = _prompt_file(tmp_path / "prompts.jsonl", 6, bad_line=4)
    rc = dataclasses.replace(GRPOConfig().grpo, files=(str(path),), template="raw")
    tok = from_spec("bytes", "")
    with pytest.raises(ValueError, match=rf"{path}:4\b"):
        load_prompts(rc, tok, 64)
    prompts = load_prompts(dataclasses.replace(rc, on_malformed="skip"), tok, 64)
    assert [p.where for p in prompts] == [f"{path}:{i}" for i in (1, 2, 3, 5, 6, 7)]
    assert "skipped 1 malformed record(s)" in capfd.readouterr().err
