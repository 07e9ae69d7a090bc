"""What every CLI main checks first (absl.app.UsageError, printed with the usage, on a bad call), and
how a CLI stops on SIGTERM (Sigterm, exit_preempted: exit status EXIT_PREEMPTED = 75)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import NoReturn


def flag_config(argv, example: str):
    """The --config of a CLI main (defined with ml_collections.config_flags); `example` is a
    config file to name when it is missing."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    c = flags.FLAGS.config
    if c is None:
        raise app.UsageError(f"--config is required (e.g. --config={example})")
    return c


def require_workdir(c) -> None:
    """A run directory is required; then quiet absl logging (Orbax logs every save at INFO, the
    progress lines are ours)."""
    from absl import app, logging

    if not c.workdir:
        raise app.UsageError("--config.workdir is required")
    logging.set_verbosity(logging.WARNING)


# ------------------------------------------------------------------------------------------------
# SIGTERM: a preemption or maintenance notice, recorded instead of fatal

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped on a notice; rerun the same command and it continues

_notice = {"received": 0, "previous": None, "open": []}  # process-wide: nested owners share one count


class Sigterm:
    """While open, SIGTERM is recorded (`received` counts the notices) instead of ending the
    process; the work in flight decides where to stop (a train step, a decode block, a stage) and
    ends with status EXIT_PREEMPTED. The one single-process handler of SIGTERM in reasonax:
    reasonax.train.preempt.Preemption uses it when jax.distributed is not initialised (with it,
    JAX's preemption sync manager owns SIGTERM and nothing here is installed), and the generate /
    evaluate CLIs and the demo pipeline open it for their whole run. Owners may nest (the pipeline
    around a training run): the outermost installs the handler and gives SIGTERM back to the
    previous handler on close; every owner reads the same count, so a notice that arrives between
    a pipeline's stages stops the next one. Only the main thread can install a handler; elsewhere
    nothing is recorded."""

    def __init__(self, doing: str):
        self.doing = doing  # what follows a notice, for the message the handler prints
        self._open = False
        if threading.current_thread() is not threading.main_thread():
            return
        if not _notice["open"]:
            _notice["received"] = 0
            _notice["previous"] = signal.signal(signal.SIGTERM, _on_sigterm)
        _notice["open"].append(self)
        self._open = True

    @property
    def received(self) -> int:
        return _notice["received"] if self._open else 0

    def requested(self) -> bool:
        """Whether a notice came: the `should_stop` the work in flight asks (engine.generate, the CLIs)."""
        return self.received > 0

    def __enter__(self) -> "Sigterm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop owning SIGTERM; the outermost owner gives it back to the previous handler."""
        if not self._open:
            return
        self._open = False
        _notice["open"].remove(self)
        if not _notice["open"]:
            signal.signal(signal.SIGTERM, _notice["previous"])
            _notice["previous"] = None


def _on_sigterm(signum, frame) -> None:
    _notice["received"] += 1
    n = _notice["received"]
    what = _notice["open"][-1].doing if n == 1 and _notice["open"] else "ignored: the stop is already under way"
    print(f"[reasonax] SIGTERM received ({n}): {what}", file=sys.stderr, flush=True)


def exit_preempted(kept: str) -> NoReturn:
    """End a run stopped by a SIGTERM notice: print what is kept on disk and that a rerun
    continues, then raise SystemExit(EXIT_PREEMPTED) (never left killed by the signal)."""
    print(f"[reasonax] stopped: SIGTERM (preemption notice); {kept}; rerun the same command to continue "
          f"(exit status {EXIT_PREEMPTED})", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_PREEMPTED)
