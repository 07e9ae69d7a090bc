"""What every CLI main checks first (absl.app.UsageError, printed with the usage, on a bad call)."""

from __future__ import annotations


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
