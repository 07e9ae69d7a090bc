"""Preemption-safe stop: SIGTERM (a preemption or maintenance notice) ends a run at a step that
every process agrees on, after a checkpoint holding every finished step is saved.

One owner of SIGTERM:
- with jax.distributed initialised, JAX's preemption sync manager owns it (it installs its
  handler in jax.distributed.initialize and propagates the notice to every process); the loop
  asks `multihost_utils.reached_preemption_sync_point(step)` after every step, and all processes
  get True at the same step (the largest step any of them had reached, plus one). Orbax's
  CheckpointManager.save asks the same question and saves at that step too. No second handler
  is installed.
- with one process, `Preemption` opens reasonax.cli.Sigterm, the one handler that only records
  the notice (shared with the generate / evaluate CLIs and the demo pipeline, which may hold it
  around a training run); the step in progress finishes, and the next `should_stop(step)` is True.

The loop then saves (forced, even off the checkpoint.every grid), waits for the save to commit,
prints the step and the reason, and raises `Preempted`: a SystemExit with status
EXIT_PREEMPTED = 75 (EX_TEMPFAIL from sysexits.h: "temporary failure, retry"), so a retry loop
or job controller can tell "rerun me, I will resume" (75) from done (0) and failed (anything
else). The run is never left killed by the signal. Further SIGTERMs while saving are recorded and
ignored (the handler stays installed until the loop has closed its checkpointer).
"""

from __future__ import annotations

import jax

from reasonax import cli

EXIT_PREEMPTED = cli.EXIT_PREEMPTED  # 75, sysexits.h EX_TEMPFAIL: rerun the same command and it resumes


class Preempted(SystemExit):
    """The run stopped on a preemption notice at `step`, after its checkpoint was committed."""

    def __init__(self, step: int, reason: str):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.reason = step, reason

    def __str__(self) -> str:
        return (f"stopped at step {self.step}: {self.reason}; checkpoint {self.step} saved; "
                f"rerun the same command to continue (exit status {EXIT_PREEMPTED})")


def _distributed() -> bool:
    from jax._src import distributed  # where jax.distributed.initialize keeps its client

    return distributed.global_state.client is not None


class Preemption:
    """The stop decision of one run: `should_stop(step)` after each step; `close()` at the end."""

    def __init__(self):
        self.multi = _distributed()
        self._notice = None if self.multi else cli.Sigterm("finishing the step, saving a checkpoint, then exiting")

    @property
    def signals(self) -> int:
        """SIGTERMs recorded (one process; 0 with jax.distributed, where JAX's manager has them)."""
        return 0 if self._notice is None else self._notice.received

    def should_stop(self, step: int) -> bool:
        """Whether to stop after `step` (the step just finished); the same answer on every process."""
        if self.multi:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.signals > 0

    @property
    def reason(self) -> str:
        if self.multi:
            return "preemption notice (SIGTERM to a process), stop step agreed by JAX's preemption sync manager"
        return "SIGTERM (preemption notice)"

    def close(self) -> None:
        """Stop owning SIGTERM (the outermost owner gives it back to its previous handler)."""
        if self._notice is not None:
            self._notice.close()
