"""Test set-up: each test runs in the JAX mode its dtype needs; GPU marker handling.

float32 tests run as every user runs JAX: ``jax_enable_x64`` off, the default. A test needs
float64 when it is parametrised with ``dtype`` "float64" or marked ``@pytest.mark.x64``; its
setup, body and teardown then run inside ``jax.enable_x64(True)``, a context that ends with the
phase, so nothing carries over to the next test. Module-scoped fixtures are built during the
setup of the first test that asks for them, in that test's mode: a fixture that makes float64
JAX arrays is only asked for by x64 tests (or returns numpy arrays).

The CLI's float64 paths (``compare --dtype float64``, ``train --dtype float64``, ``eval`` on
float64 weights) switch x64 on with ``jax.config.update``, for the whole process, as they do for
a user; such tests need no marker, and the global flag is put back after every phase.
"""

import atexit
import contextlib
import os
import shutil
import tempfile

import jax
import pytest

X64_DEFAULT = False                       # JAX's default, whatever JAX_ENABLE_X64 says here
jax.config.update("jax_enable_x64", X64_DEFAULT)


def _session_compilation_cache() -> str:
    """One JAX persistent compilation cache for the whole test session: every pytest-xdist worker
    and every process a test starts (``flax-lenet`` included) loads what another one compiled
    instead of compiling it again. It starts empty and is removed when the session ends, so a run
    is timed from cold; a test that sets its own cache directory keeps it."""
    if "FLAX_LENET_TEST_SESSION_CACHE" not in os.environ:       # the first process: xdist's controller
        path = tempfile.mkdtemp(prefix="flax-lenet-tests-jax-cache-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ.update({"FLAX_LENET_TEST_SESSION_CACHE": path, "JAX_COMPILATION_CACHE_DIR": path,
                           "FLAX_LENET_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    return os.environ["FLAX_LENET_TEST_SESSION_CACHE"]


jax.config.update("jax_compilation_cache_dir", _session_compilation_cache())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def needs_x64(item) -> bool:
    """Marked ``x64``, or parametrised with a ``dtype`` of float64 (as a string or a dtype)."""
    if item.get_closest_marker("x64") is not None:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "dtype" in params and str(getattr(params["dtype"], "__name__", params["dtype"])) == "float64"


@contextlib.contextmanager
def _mode(item):
    """The test's mode for one phase (setup, call, teardown); the global flag restored after it."""
    if jax.config.jax_enable_x64 != X64_DEFAULT:     # a leak from outside any phase: undo it
        jax.config.update("jax_enable_x64", X64_DEFAULT)
    try:
        with jax.enable_x64(True) if needs_x64(item) else contextlib.nullcontext():
            yield
    finally:
        if jax.config.jax_enable_x64 != X64_DEFAULT:  # e.g. the CLI's jax.config.update(..., True)
            jax.config.update("jax_enable_x64", X64_DEFAULT)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _mode(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _mode(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _mode(item):
        return (yield)


def _cuda_in_both() -> bool:
    try:
        import torch
        return torch.cuda.is_available() and jax.default_backend() == "gpu"
    except Exception:  # pragma: no cover - torch missing or broken
        return False


HAS_GPU = _cuda_in_both()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device visible to both torch and jax")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: its small batches gain nothing from a second OpenMP
    thread, and spinning threads slow XLA's on 2 cores (``flax-lenet train`` does the same)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
