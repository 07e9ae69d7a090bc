"""Test setup: 8 fake CPU devices for sharding tests (must be set before JAX starts), offline HF;
compiled programs freed after every test module."""

import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
    """Drop JAX's compiled programs when a module ends. Each XLA:CPU executable holds memory
    mappings of its own; kept for the whole run they passed Linux's vm.max_map_count (65,530) at
    test 576 of 743, and the next compile segfaulted (tests/test_search.py, 2026-12-03: 64,963
    mappings in the pytest process). Freed per module, the full run peaked at 25,439."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()
