"""Orbax checkpoints of a training run: state, data iterator, config; exact resume.

Layout: <workdir>/checkpoints/<step>/{state, data, config}. Orbax writes each checkpoint into a
temporary directory and renames it into place only once every item is on disk, so a run killed
mid-save leaves a `<step>.orbax-checkpoint-tmp-*` directory that `latest_step` never reports
(and that the next run deletes); the previous complete checkpoint is the one restored.

The state item holds params, optimizer state, step counters and the RNG key; `data` the grain
iterator position (one file per process); `config` the run config and the ModelConfig as JSON.
Restoring takes an abstract state whose shardings may be on a different mesh than the save.

Faults (tests/test_faults.py): a save that fails (a write error: full disk, EFBIG) raises
CheckpointError naming the directory and the step, when the save is started or, for an async
save, at the next save or wait; the previous checkpoints are untouched. A committed checkpoint
whose files were truncated or removed afterwards fails to restore with a CheckpointError naming
the step, its directory and the array / file the reader stopped at; with fallback=True
(config.checkpoint.fallback) the restore warns, moves that step aside to
`unreadable-<step>` and restores the next older one. Orbax keeps no checksums: a flipped byte
inside an array's compressed data is caught only when it breaks the decompression; otherwise it
restores silently.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

STATE, DATA, CONFIG = "state", "data", "config"
EXTRA_ARRAYS, EXTRA_JSON = "extra_arrays", "extra"  # a source's own state (GRPO one-step-off: the batch in flight)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the directory and the step."""


def _root_cause(e: BaseException) -> str:
    """The innermost cause's message (tensorstore's names the file or array it stopped at)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {str(e)[:600]}"


class Checkpointer:
    """Keep-N, every-K, asynchronous checkpoints of (state, data iterator, config)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, every: int = 100,
                 async_save: bool = True, fallback: bool = False):
        self.directory = Path(directory).absolute()
        self.fallback = fallback
        self._saving: int | None = None  # the step of the save in flight (async)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (half-written ones are never listed)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_iter=None, config: dict | None = None, force: bool = False,
             extra: Callable[[], dict | None] | None = None) -> bool:
        """Start saving (returns at once when async); False if `step` is not a save step. extra: called
        only when this step is saved; its {"rows": {name: numpy array}, ...} is saved beside the state
        (arrays under "rows", the rest as JSON) and read back by restore_extra."""
        import grain

        if extra is not None and not (force or self.manager.should_save(step)):
            return False  # extra() may wait (for a batch in flight): only on steps that are saved
        items = {STATE: ocp.args.StandardSave(state)}
        more = extra() if extra is not None else None
        if more is not None:
            items[EXTRA_ARRAYS] = ocp.args.StandardSave(dict(more["rows"]))
            items[EXTRA_JSON] = ocp.args.JsonSave({k: v for k, v in more.items() if k != "rows"})
        if data_iter is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items[CONFIG] = ocp.args.JsonSave(config)
        with self._named_errors(step):  # also an earlier async save's failure, surfacing here
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if started:
            self._saving = step
        return started

    def _named_errors(self, step: int | None):
        checkpointer = self

        class _Named:
            def __enter__(self):
                return self

            def __exit__(self, kind, e, tb):
                if e is None or not isinstance(e, Exception) or isinstance(e, CheckpointError):
                    return False
                failed = checkpointer._saving if checkpointer._saving is not None else step
                raise CheckpointError(f"{checkpointer.directory}: saving checkpoint step {failed} failed "
                                      f"({_root_cause(e)}); the checkpoints before it are intact") from e

        return _Named()

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """The state at `step` (default latest) placed per abstract_state's shardings; the data
        iterator, when given, is moved to the saved position in place."""
        import grain

        steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
        for i, s in enumerate(steps):
            items = {STATE: ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                return self.manager.restore(s, args=ocp.args.Composite(**items))[STATE]
            except Exception as e:  # noqa: BLE001 - tensorstore / orbax raise plain Exception
                err = CheckpointError(f"checkpoint step {s} at {self.directory / str(s)} is unreadable "
                                      f"({_root_cause(e)})")
                if not self.fallback or i + 1 == len(steps):
                    hint = "" if self.fallback else "; checkpoint.fallback=true restores the previous step instead"
                    raise CheckpointError(f"{err}{hint}") from e
                print(f"[reasonax] WARNING: {err}; checkpoint.fallback: moved to unreadable-{s}, restoring "
                      f"step {steps[i + 1]}", file=sys.stderr, flush=True)
                self._set_aside(s)
        raise AssertionError("unreachable")

    def _set_aside(self, step: int) -> None:
        """Rename an unreadable step out of the way (kept for inspection; never listed again)."""
        import jax

        if jax.process_index() == 0:
            os.rename(self.directory / str(step), self.directory / f"unreadable-{step}")
        if jax.process_count() > 1:  # the others list the steps next
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"reasonax.checkpoint.set_aside.{step}")
        self.manager.reload()

    def restore_extra(self, step: int | None = None) -> dict | None:
        """What save(extra=...) stored at `step` (default latest), or None when that step has none."""
        step = self.latest_step() if step is None else step
        if step is None or not (self.directory / str(step) / EXTRA_JSON).exists():
            return None
        got = self.manager.restore(step, args=ocp.args.Composite(**{EXTRA_ARRAYS: ocp.args.StandardRestore(),
                                                                    EXTRA_JSON: ocp.args.JsonRestore()}))
        return {**got[EXTRA_JSON], "rows": got[EXTRA_ARRAYS]}

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def wait(self):
        """Block until any in-flight save is committed (CheckpointError if it failed)."""
        with self._named_errors(None):
            self.manager.wait_until_finished()
        self._saving = None

    def close(self):
        try:
            self.wait()
        finally:
            self.manager.close()

