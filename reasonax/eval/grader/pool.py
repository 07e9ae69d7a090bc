"""Process pool: :class:`GraderPool`, worker processes started with ``subprocess`` (fork+exec)
that run :func:`reasonax.eval.grader.worker._worker_main`, with a hard per-task wall-clock
limit (a worker over it is killed and replaced). The one process-wide pool and the defaults
(:func:`configure`, :func:`shutdown`) live here.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import Any

from reasonax.eval.grader.counters import _count
from reasonax.eval.grader.worker import _worker_main

DEFAULT_TIMEOUT_S = 5.0
WORKER_START_TIMEOUT_S = 120.0

# A fresh interpreter (fork+exec) imports the worker entry by its module name.
_WORKER_CODE = "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); " \
    f"from {_worker_main.__module__} import _worker_main; _worker_main()"


class _Worker:
    """One worker process, started with subprocess (fork+exec: safe from a threaded parent,
    and unlike multiprocessing it never re-imports the caller's __main__ module)."""

    __slots__ = ("proc", "_buf")

    def __init__(self) -> None:
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, json.dumps(paths)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, env=env,
        )
        self._buf = b""
        greeting = self.recv(WORKER_START_TIMEOUT_S)
        if not greeting or greeting[0] != "ready":
            self.kill()
            raise RuntimeError("grader worker did not start")

    def send(self, msg: list[Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> list[Any] | None:
        """The next reply line, or None on timeout. Raises EOFError when the worker died."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not poller.poll(max(1, int(left * 1000))):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("grader worker exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class GraderPool:
    """Worker processes with a hard per-task wall-clock limit.

    A slot queue holds either an idle worker or ``None`` (a free slot: start a worker). A call
    checks a slot out, runs one task, and checks it back in; a task over its limit gets its
    worker killed and the slot freed. Thread-safe; usable from any thread.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.size = max(1, int(workers or os.cpu_count() or 1))
        self.pid = os.getpid()
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(self.size):
            self._slots.put(None)
        self._closed = False
        self._all: set[_Worker] = set()
        self._all_lock = threading.Lock()

    def _checkout(self) -> _Worker:
        slot = self._slots.get()
        if slot is not None:
            if slot.proc.poll() is None:
                return slot
            slot.kill()  # died while idle (OOM killer, external kill): start a fresh one
            with self._all_lock:
                self._all.discard(slot)
            _count("worker_crashes")
        try:
            w = _Worker()
        except BaseException:
            self._slots.put(None)
            raise
        _count("workers_started")
        with self._all_lock:
            self._all.add(w)
        return w

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._all_lock:
            self._all.discard(w)
        self._slots.put(None)

    def _checkin(self, w: _Worker) -> None:
        if self._closed:
            self._discard(w)
        else:
            self._slots.put(w)

    def run(self, task: list[str], timeout: float) -> tuple[str, Any]:
        """("ok", result) | ("timeout", None) | ("crash", None) | ("error", name)."""
        if self._closed:
            return "error", "PoolClosed"
        try:
            w = self._checkout()
        except Exception as exc:  # noqa: BLE001
            return "error", f"WorkerStart:{type(exc).__name__}"
        try:
            w.send(task)
            reply = w.recv(timeout)
        except (EOFError, OSError, ValueError):
            self._discard(w)
            return "crash", None
        except BaseException:
            self._discard(w)
            raise
        if reply is None:
            self._discard(w)
            return "timeout", None
        self._checkin(w)
        return reply[0], reply[1]

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.kill()


_pool: GraderPool | None = None
_pool_lock = threading.Lock()
_config = {"timeout": DEFAULT_TIMEOUT_S, "workers": int(os.environ.get("REASONAX_GRADER_WORKERS", "0")) or None}


def configure(*, timeout: float | None = None, workers: int | None = None) -> None:
    """Set the default per-comparison limit (seconds) and/or the worker count (restarts the pool)."""
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        _config["timeout"] = float(timeout)
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        _config["workers"] = int(workers)
        shutdown()


def _get_pool() -> GraderPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid() or _pool._closed:
            _pool = GraderPool(_config["workers"])
        return _pool


def shutdown() -> None:
    """Kill the worker processes (a later call starts new ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown)
