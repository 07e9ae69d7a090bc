"""No silent hangs: a phase that runs past its allowance dumps every thread's stack and exits.

    dog = Watchdog(config.watchdog_s, config.watchdog_slow_s)
    with dog.phase("step", step):          # watchdog_s
        ...
    with dog.phase("export", step, slow=True):   # watchdog_slow_s: first step (compilation),
        ...                                      # setup/restore, held-out evaluation, export
    dog.close()

A daemon thread checks the open phase once a second. Past its deadline it writes
"[reasonax] watchdog: process P of N stuck ...s in phase '<phase>' at step S" to stderr, then every
thread's Python stack (faulthandler), and ends the process with EXIT_HUNG = 124 (as timeout(1)
does): a process waiting in a collective for a peer that stopped responding (SIGSTOP, a hung
host, a lost network) does not wait forever. With async dispatch the host waits where it next
needs a device result, so the phase named is where the host was blocked (e.g. the save after a
step whose collective never completed). Phases outside any `phase()` are not watched.

`phase()` is also a module function: `watchdog.phase("barrier ...")` uses the watchdog of the
run in progress (a no-op when none is), so helpers such as loop.barrier are watched without
being passed it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

import jax

EXIT_HUNG = 124  # as timeout(1): the run was ended by its watchdog

_active: list["Watchdog"] = []


class Watchdog:
    def __init__(self, seconds: float, slow_seconds: float, *, poll_s: float = 1.0):
        self.seconds, self.slow_seconds, self.poll_s = float(seconds), float(slow_seconds), poll_s
        self._open: tuple[str, int | None, float, float] | None = None  # (phase, step, start, allowance)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.failed_in = ""  # where() of the phase an exception left, for the run's error message
        self._thread = None
        if self.seconds > 0:
            self._thread = threading.Thread(target=self._watch, name="reasonax-watchdog", daemon=True)
            self._thread.start()
        _active.append(self)

    @contextlib.contextmanager
    def phase(self, name: str, step: int | None = None, slow: bool = False):
        """Watch the enclosed block as phase `name` at `step` (slow: the slow allowance). Nested
        phases take over until they end, then the outer one is watched again from its start."""
        allowance = self.slow_seconds if slow else self.seconds
        with self._lock:
            outer, self._open = self._open, (name, step, time.monotonic(), allowance)
        try:
            yield
        except BaseException:
            self.failed_in = self.failed_in or self.where()  # the innermost phase an error left
            raise
        finally:
            with self._lock:
                self._open = outer

    def where(self) -> str:
        """The open phase and step, as the watchdog's message names them ('none' outside any)."""
        current = self._open
        if current is None:
            return "none"
        return f"'{current[0]}'" + ("" if current[1] is None else f" at step {current[1]}")

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            with self._lock:
                current = self._open
            if current is None:
                continue
            name, step, start, allowance = current
            waited = time.monotonic() - start
            if allowance > 0 and waited > allowance:
                self._fire(name, step, waited, allowance)

    def _fire(self, name: str, step: int | None, waited: float, allowance: float) -> None:
        at = "" if step is None else f" at step {step}"
        sys.stderr.write(f"\n[reasonax] watchdog: process {jax.process_index()} of {jax.process_count()} "
                         f"(pid {os.getpid()}) stuck {waited:.0f}s in phase '{name}'{at} (allowance "
                         f"{allowance:g}s: config.watchdog_s / watchdog_slow_s); stacks of every thread "
                         f"follow; exiting with status {EXIT_HUNG}\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_HUNG)

    def close(self) -> None:
        self._done.set()
        if self in _active:
            _active.remove(self)


@contextlib.contextmanager
def phase(name: str, step: int | None = None, slow: bool = False):
    """The running watchdog's phase (the innermost Watchdog not closed), or nothing."""
    if not _active:
        yield
        return
    with _active[-1].phase(name, step, slow):
        yield
