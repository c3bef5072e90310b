"""The one way the app writes files: into a temporary folder beside the target, then one rename."""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from flax_lenet.errors import BadFile


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_reason(e: OSError) -> str:
    """``'PermissionError: Permission denied'``: an OS error on one line, without its path."""
    reason = e.strerror or (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {reason}" if reason else type(e).__name__


def atomic_write(path, write: Callable[[Path], None], *, overwrite: bool = False) -> None:
    """Call ``write(tmp)`` on a path in a temporary folder beside ``path``, then rename it to ``path``.

    The folder is on the same file system, so the rename is atomic for a file; an existing
    directory is first moved aside (and moved back if the second rename fails).

    Args:
      path: the final file or directory.
      write: writes the content to the path it is given (a file, or a directory to create).
      overwrite: replace an existing ``path``; otherwise ``BadFile``.

    Raises:
      BadFile: ``path`` exists and ``overwrite`` is false, its folder is missing, or the OS
      refused a write (permissions, disk full); the old ``path``, if any, is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BadFile(f"{path}: expected a new path, found an existing "
                      f"{'directory' if path.is_dir() else 'file'} (overwrite=True replaces it)")
    parent = path.parent
    if not parent.is_dir():
        raise BadFile(f"{path}: expected an existing folder {parent}, found none")
    try:
        _write_and_rename(path, write)
    except OSError as e:
        raise BadFile(f"{path}: expected a writable folder with room for it, found {os_reason(e)}") from None


def _write_and_rename(path: Path, write: Callable[[Path], None]) -> None:
    """``atomic_write`` once its checks passed: write in a private temporary folder, then rename."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    target = tmp / path.name                # written inside a private temporary folder
    try:
        write(target)
        if target.is_file():                # some writers (safetensors) create files 0600
            os.chmod(target, 0o666 & ~_umask())
        if path.is_dir() and not path.is_symlink():
            old = tmp / f"{path.name}.previous"
            os.replace(path, old)           # a directory cannot be replaced in one rename
            try:
                os.replace(target, path)
            except OSError:
                os.replace(old, path)
                raise
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path, data: bytes) -> None:
    """``path``'s content replaced by ``data`` in one rename (a new or an existing file)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=True)


def write_text(path, text: str) -> None:
    """``write_bytes`` of ``text`` as UTF-8, line endings as given."""
    write_bytes(path, text.encode("utf-8"))
