"""Orbax checkpoints of a training run: state, data iterator, config; exact resume.

Layout: <workdir>/checkpoints/<step>/{state, data, config}. Orbax writes each checkpoint into a
temporary directory and renames it into place only once every item is on disk, so a run killed
mid-save leaves a `<step>.orbax-checkpoint-tmp-*` directory that `latest_step` never reports
(and that the next run deletes); the previous complete checkpoint is the one restored.

The state item holds params, optimizer state, step counters and the RNG key; `data` the grain
iterator position (one file per process); `config` the run config and the ModelConfig as JSON.
Restoring takes an abstract state whose shardings may be on a different mesh than the save.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

STATE, DATA, CONFIG = "state", "data", "config"
EXTRA_ARRAYS, EXTRA_JSON = "extra_arrays", "extra"  # a source's own state (GRPO one-step-off: the batch in flight)


class Checkpointer:
    """Keep-N, every-K, asynchronous checkpoints of (state, data iterator, config)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, every: int = 100,
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
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
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """The state at `step` (default latest) placed per abstract_state's shardings; the data
        iterator, when given, is moved to the saved position in place."""
        import grain

        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]

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
        """Block until any in-flight save is committed."""
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

