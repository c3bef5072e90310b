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


CACHE_MAX_BYTES = 1 << 30        # a kept cache past this size is emptied when a session starts


def _keep_under_limit(path: str) -> None:
    """Empty the kept cache if its entries add up to more than ``CACHE_MAX_BYTES``.

    JAX can bound the cache itself (``jax_compilation_cache_max_size``), but then every write
    lists and stats every entry under a file lock, and every read takes the lock: on a cold run,
    with thousands of small entries, that cost a third of the suite's time (80 s against 50 s
    for four eager-heavy test files). So JAX's cache is unbounded (its default) while tests run,
    and its size is measured here, once per session; the next run refills an emptied cache from
    cold. Only JAX's entry files are removed."""
    with os.scandir(path) as entries:
        files = [e for e in entries if e.is_file(follow_symlinks=False) and e.name.endswith(("-cache", "-atime"))]
    if sum(e.stat(follow_symlinks=False).st_size for e in files) > CACHE_MAX_BYTES:
        for e in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)


def _cpu_identity() -> str:
    """A short hash of this CPU's model and feature flags: a compiled CPU program is kept only for
    the CPU that compiled it, even in a home folder that several machines share."""
    import hashlib
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        text = "".join(dict.fromkeys(lines))
    except OSError:
        text = platform.processor() or platform.machine()
    return hashlib.sha256(f"{text}{jax.__version__}".encode()).hexdigest()[:16]


def _session_compilation_cache() -> str:
    """One JAX persistent compilation cache (a public JAX feature) for the whole test session:
    every pytest-xdist worker and every process a test starts (``flax-lenet`` included) loads what
    another one compiled instead of compiling it again. Compiling is most of the tests' CPU time.

    ``FLAX_LENET_TEST_JAX_CACHE`` chooses it:
      * unset: ``$XDG_CACHE_HOME/flax-lenet/test-jax-cache/<CPU>`` (``~/.cache`` without it), kept
        between sessions, so a second run loads what the first compiled (emptied when a session
        starts with more than ``CACHE_MAX_BYTES`` in it: ``_keep_under_limit``);
      * ``cold``: a new empty folder, removed when the session ends, so a run is timed from
        cold (``.ci/run`` uses it);
      * a path: that folder.
    A test that sets its own cache directory keeps it."""
    if "FLAX_LENET_TEST_SESSION_CACHE" not in os.environ:       # the first process: xdist's controller
        chosen = os.environ.get("FLAX_LENET_TEST_JAX_CACHE", "")
        if chosen == "cold":
            path = tempfile.mkdtemp(prefix="flax-lenet-tests-jax-cache-")
            atexit.register(shutil.rmtree, path, ignore_errors=True)
        else:
            home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            path = chosen or os.path.join(home, "flax-lenet", "test-jax-cache", _cpu_identity())
            os.makedirs(path, exist_ok=True)
            if not chosen:
                _keep_under_limit(path)
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
