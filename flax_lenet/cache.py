"""JAX's persistent compilation cache, so that a second ``flax-lenet`` process skips compiling.

The first call of every jitted function (and of every eager op on a new shape) traces and
compiles. With the cache on, XLA executables are written to disk and a later process with the
same jax version, device and code loads them instead (``benchmarks/startup.py`` measures both).
The CLI turns it on; library users call ``flax_lenet.cache.enable()`` before their first jit.

    from flax_lenet import cache
    cache.enable()            # before the first jit; directory: $FLAX_LENET_CACHE_DIR or
                              # ~/.cache/flax-lenet/jax

The same without code: ``JAX_COMPILATION_CACHE_DIR=DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 flax-lenet compare``.
"""

import os

from flax_lenet.errors import BadFile

ENV_VAR = "FLAX_LENET_CACHE_DIR"


def default_dir() -> str:
    """``$FLAX_LENET_CACHE_DIR``, else ``$XDG_CACHE_HOME/flax-lenet/jax`` (``~/.cache/...``)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flax-lenet", "jax")


def _check_writable(path: str) -> None:
    """Write and remove a probe file: JAX would otherwise warn once per compiled function (a
    ``UserWarning`` for every cache entry it fails to write) on a run that otherwise succeeds."""
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadFile(f"compilation cache: expected a directory this process can write at {path}, "
                      f"found {e.strerror or e}") from None


def enable(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache for every compile, however small or quick.

    Args:
      path: the cache directory (created if missing); default ``default_dir()``.

    Returns:
      The directory in use.

    Raises:
      BadFile: ``path`` is a file, or cannot be created or written.
    """
    import jax
    path = os.path.abspath(path or default_dir())
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadFile(f"compilation cache: expected a directory at {path}, found a file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BadFile(f"compilation cache: expected a directory that can be created at {path}, "
                      f"found {e.strerror or e}") from None
    _check_writable(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)   # default 1 s: ours are smaller
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
