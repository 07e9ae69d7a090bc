"""Grader counters: how many calls, fast-path and slow-path decisions, timeouts, parse failures,
worker crashes and rejected inputs since import. The one owner of this state: every other
module counts through :func:`_count`; :func:`stats` / :func:`reset_stats` read and clear it.
"""

from __future__ import annotations

import collections
import threading

_STATS_KEYS = (
    "calls",
    "fast_path",
    "slow_path",
    "timeouts",
    "parse_failures",
    "worker_crashes",
    "worker_errors",
    "rejected_inputs",
    "errors",
    "workers_started",
)
_stats: collections.Counter[str] = collections.Counter()
_stats_lock = threading.Lock()


def _count(key: str, n: int = 1) -> None:
    with _stats_lock:
        _stats[key] += n


def stats() -> dict[str, int]:
    """Counters since import (or :func:`reset_stats`): calls, fast_path, slow_path, timeouts,
    parse_failures, worker_crashes, worker_errors, rejected_inputs, errors, workers_started."""
    with _stats_lock:
        return {k: int(_stats[k]) for k in _STATS_KEYS}


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()
