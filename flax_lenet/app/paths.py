"""What the app opens: regular files only, never a FIFO, a socket or a device.

``open()`` on a FIFO blocks until a writer appears (forever, if none does), and a device such
as ``/dev/zero`` never ends: a path named ``x.pt`` or ``train-images-idx3-ubyte`` must be a
regular file (or a symlink to one) before it is opened. ``os.stat`` follows symlinks, as
``open`` does (https://docs.python.org/3/library/os.html#os.stat).
"""

import os
import stat
from pathlib import Path

from flax_lenet.errors import BadFile


def kind_of(mode: int) -> str:
    """A file type in words, from ``os.stat(...).st_mode``."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def require_regular_file(path, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` if ``path`` is a regular file; else ``BadFile`` naming what it is.

    Args:
      path: the file to be opened.
      what: what it should be, for the message (``'an IDX file'``, ``'a .pt checkpoint'``).

    Raises:
      BadFile: no such file, a folder, a FIFO, a socket or a device, or a path that cannot be
        examined.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadFile(f"{path}: expected {what}, found no such file") from None
    except OSError as e:
        raise BadFile(f"{path}: expected {what}, found a path that cannot be examined "
                      f"({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadFile(f"{path}: expected {what}, found {kind_of(st.st_mode)} (only regular files are opened)")
    return st
