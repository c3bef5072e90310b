"""The one way the app writes files and folders: built beside the target, then renamed into place.

    .NAME.lock                  held (``flock``) by the one process writing NAME; a second is refused
    .NAME.tmp-PID-XXXXXXXX      the new content, built here, then renamed to NAME
    .NAME.old-PID-XXXXXXXX      an existing folder NAME, moved aside for the two renames of a swap

A file is replaced in one ``os.replace``: NAME holds the old complete file or the new complete one
at every instant. ``rename(2)`` cannot replace a folder that is not empty, so an existing folder is
swapped in two renames: NAME is renamed to ``.NAME.old-PID-XXXXXXXX``, then the new folder to NAME
(then the old one to the temporary's name, and removed). Between those two renames NAME does not
exist, for the time of one system call. An exception there (an ``OSError`` on the second rename,
a ``KeyboardInterrupt`` in a program that lets Ctrl-C raise one) renames the old folder back at
once; in ``flax-lenet``, Ctrl-C, SIGTERM and SIGHUP wait until both renames are done
(``no_interrupt``). A writer killed there (SIGKILL, the out-of-memory killer) leaves the one state
other than "old complete" and "new complete" that anyone can find: no NAME, the complete old folder
beside it as ``.NAME.old-PID-XXXXXXXX`` (and the new one, complete too, as
``.NAME.tmp-PID-XXXXXXXX``). The next command that touches NAME undoes it, renaming the old folder
back to NAME while holding NAME's lock: the next writer (``hold``, through ``clean_stale``) and the
next reader of a checkpoint (``checkpoint.load_state``, through ``put_back``, for the checkpoint's
own path or for the run folder above it). Until then, a program that looks for NAME by other
means finds none.

Whether the writer finishes, fails (a full disk: a one-line ``BadFile``), is interrupted
(``flax-lenet`` removes the temporaries, ``abandon``) or killed, NAME is otherwise never a mix of
old and new. Leftovers of a writer that was killed are removed by the next writer of NAME: it
holds the lock, so they are certainly stale. They are recognised by a record, never by their
names alone: the lock file holds its writer's PID on its first line, and, on a line each, the
name of every temporary and moved-aside folder the writer is about to make (written before it is
made). A killed writer's lock file stays behind with that list; the next writer (or reader)
removes, or puts back, only names listed there that carry that PID. A file of the user's that
merely looks like a leftover is never touched. An old folder that cannot be removed once swapped
out (a file in it is immutable) stays under the temporary's name, recorded the same way, and
``atomic_write`` says so in a note. Nothing here calls ``fsync``: these are guarantees
about processes that stop, not about a machine that loses power.
"""

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Callable

from flax_lenet.errors import BadFile


def umask() -> int:
    """The process's umask: the ``Umask:`` line of ``/proc/self/status`` (Linux 4.7 on, proc(5)),
    which reads it without changing it; elsewhere by setting it and putting it back, which another
    thread creating a file in between would see as a umask of 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_reason(e: OSError) -> str:
    """``'PermissionError: Permission denied'``: an OS error on one line, without its path."""
    reason = e.strerror or (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {reason}" if reason else type(e).__name__


def os_error(code: int) -> OSError:
    """The ``OSError`` for an errno a library reported in its own way (tensorstore), so that
    ``atomic_write`` turns it into a one-line ``BadFile`` like any other failed write."""
    return OSError(code, os.strerror(code))


# --- one writer per path: a lock file beside it ----------------------------------------------------

_held: dict[str, list] = {}            # absolute lock path -> [fd, depth, lock Path, target Path]
_in_progress: set[Path] = set()        # this process's temporaries, removed if it is interrupted
LOCK_BYTES = 64 * 1024                 # more than any record; a bigger "lock file" is not one of ours


def lock_path(path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _leftover_pattern(name: str, pid: str) -> re.Pattern:
    """``.NAME.tmp-PID-XXXXXXXX`` or ``.NAME.old-PID-XXXXXXXX``: what writer PID of NAME makes."""
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-{re.escape(pid)}-[0-9a-f]{{8}}")


def _recorded(path: Path, record: str) -> tuple[list[str], list[str]]:
    """``(temporaries, moved-aside folders)`` a lock file's ``record`` lists for ``path``: only
    names that its first line's PID makes, so no other file can be named by a stray lock file."""
    lines = record.splitlines()
    if not lines or not lines[0].strip().isdigit():
        return [], []
    pattern = _leftover_pattern(path.name, lines[0].strip())
    names = [n for n in dict.fromkeys(line.strip() for line in lines[1:]) if pattern.fullmatch(n)]
    return [n for n in names if ".tmp-" in n], [n for n in names if ".old-" in n]


def kind(mode: int) -> str:
    """What a ``st_mode`` is, in a word: folder, FIFO, socket, device or file."""
    return "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else \
        "socket" if stat.S_ISSOCK(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "file"


def _open_lock(path: Path, lock: Path, flags: int) -> int:
    """The lock file, opened without following a symbolic link and only if it is a regular file."""
    try:
        fd = os.open(lock, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        found = "a symbolic link" if os.path.islink(lock) else os_reason(e)
        raise BadFile(f"{path}: expected a writable folder and a regular lock file {lock.name}, "
                      f"found {found}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadFile(f"{path}: expected its lock file {lock.name} to be a regular file, found a {kind(mode)}")
    return fd


def _read_record(fd: int) -> str:
    return os.pread(fd, LOCK_BYTES, 0).decode("utf-8", errors="replace")


def _acquire(path: Path, lock: Path) -> tuple[int, str]:
    """The lock file's descriptor, held, and what its last (killed) holder recorded in it."""
    while True:
        fd = _open_lock(path, lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_record(fd).split("\n", 1)[0].strip()
            os.close(fd)
            pid = pid if pid.isdigit() else "?"          # never echo a stranger's bytes to a terminal
            raise BadFile(f"{path}: expected no other writer, found process {pid} writing it (it holds "
                          f"{lock.name}); wait for it to finish or choose another path") from None
        try:                            # its last holder may have removed it between open and flock
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            previous = _read_record(fd)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:
                with contextlib.suppress(OSError):      # an empty lock file records nothing: not left behind
                    if os.fstat(fd).st_size == 0:
                        os.unlink(lock)
                os.close(fd)
                raise BadFile(f"{path}: expected a writable folder with room for it, found {os_reason(e)} "
                              f"(writing its lock file {lock.name})") from None
            return fd, previous
        os.close(fd)


def _record(path: Path, name: str) -> None:
    """Add ``name`` (a temporary or moved-aside folder about to be made) to ``path``'s lock file."""
    entry = _held.get(os.path.abspath(lock_path(path)))
    if entry is not None:
        fd = entry[0]
        os.pwrite(fd, f"{name}\n".encode(), os.fstat(fd).st_size)


def hold(path) -> None:
    """Become the one writer of ``path`` until ``release`` (re-entrant), and clean up its stale temporaries.

    Raises:
      BadFile: another process is writing ``path``, or no lock file can be made beside it.
    """
    path = Path(path)
    lock = lock_path(path)
    key = os.path.abspath(lock)
    if key in _held:
        _held[key][1] += 1
        return
    if not _held_at_exit:
        import atexit
        atexit.register(_release_all)
        _held_at_exit.append(True)
    fd, previous = _acquire(path, lock)
    _held[key] = [fd, 1, lock, path]
    try:
        clean_stale(path, previous)
    except BaseException:
        release(path)
        raise


def release(path) -> None:
    """Undo one ``hold``; the last one removes the lock file, then lets it go."""
    _release(os.path.abspath(lock_path(path)))


def _release(key: str, *, all_holds: bool = False) -> None:
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] = 0 if all_holds else entry[1] - 1
    if entry[1] == 0:                       # in this order, so that Ctrl-C at any point (abandon) finds it
        if not _left_behind(entry[3], entry[0]):    # else the record stays for the next writer or reader
            with contextlib.suppress(OSError):
                os.unlink(entry[2])         # before closing: a process waiting on this file sees it gone
        del _held[key]
        os.close(entry[0])


def _left_behind(path: Path, fd: int) -> bool:
    """Something this process recorded in its lock file is still there (a folder that could not be
    put back): the lock file, with its record, must outlive the hold."""
    try:
        temporaries, olds = _recorded(path, _read_record(fd))
    except OSError:
        return False
    return any(os.path.lexists(path.parent / n) for n in temporaries + olds)


_held_at_exit: list = []


def _release_all() -> None:
    """At exit: a lock still held (a command that ended early) goes with its file."""
    for key in list(_held):
        _release(key, all_holds=True)


@contextlib.contextmanager
def claim(path):
    """``with claim(path):`` -- ``hold`` and ``release`` around a block."""
    hold(path)
    try:
        yield
    finally:
        release(path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def clean_stale(path, record: str) -> None:
    """Remove what a killed writer of ``path`` recorded in its lock file (``record``, the file's
    content when the lock was taken); first put back a folder it had moved aside.

    Only safe while holding ``path``'s lock (``hold``): then no other writer is using them.
    """
    path = Path(path)
    temporaries, olds = _recorded(path, record)
    olds = [n for n in olds if os.path.lexists(path.parent / n)]
    if olds and not os.path.lexists(path):          # died between the two renames of a folder swap
        with contextlib.suppress(OSError):
            os.rename(path.parent / olds[0], path)
            olds = olds[1:]
    if os.path.lexists(path):                       # never the only copy of the old content
        for name in olds:
            _remove(path.parent / name)
    for name in temporaries:
        _remove_with_suffixes(path.parent / name)


def _moved_aside(path: Path) -> bool:
    """The lock file a killed writer of ``path`` left records a moved-aside folder that is there."""
    try:
        fd = _open_lock(path, lock_path(path), os.O_RDONLY)
    except BadFile:
        return False
    try:
        record = _read_record(fd)
    finally:
        os.close(fd)
    return any(os.path.lexists(path.parent / n) for n in _recorded(path, record)[1])


def put_back(path) -> None:
    """For a reader of ``path``: undo a folder swap whose writer was killed between its two renames.

    If ``path``, or the folder above it that is missing (a run folder, for ``run/flax.orbax``), is
    absent and its old complete content lies beside it as ``.NAME.old-PID-XXXXXXXX``, take NAME's
    lock for a moment: ``hold`` (``clean_stale``) renames it back to NAME and removes that writer's
    other leftovers. Nothing else is done: a path that exists, or a missing one with no such
    folder beside it, is left as it is. If the lock cannot be had (a live writer holds it: it is
    between its own two renames; or the folder is read-only), it is left too, and the reader
    reports the path missing as it would have.
    """
    missing = Path(path)
    if os.path.lexists(missing):
        return
    while missing.parent != missing and not os.path.lexists(missing.parent):
        missing = missing.parent
    if not _moved_aside(missing):
        return
    try:
        with claim(missing):
            pass
    except BadFile:
        pass

# --- Ctrl-C and SIGTERM: never between the renames of a swap; the temporaries removed before exiting

_swapping = 0
_interrupt_pending: int | None = None    # the signal that arrived during a swap's renames


@contextlib.contextmanager
def no_interrupt():
    """Within: a signal handler that asks ``defer_interrupt`` waits for the end of the block.

    Around a swap's renames (never half a swap), and around a write done by other threads
    (Orbax's): a handler that removed the temporary while those threads were still writing into
    it would see them create it again before the process exits."""
    global _swapping, _interrupt_pending
    _swapping += 1
    try:
        yield
    finally:
        _swapping -= 1
        if not _swapping and _interrupt_pending is not None:
            pending, _interrupt_pending = _interrupt_pending, None
            signal.raise_signal(pending)            # the handler runs again, now outside the block


def defer_interrupt(signum: int = signal.SIGINT) -> bool:
    """For a SIGINT or SIGTERM handler: True while a swap is renaming (``signum`` is raised again after it)."""
    global _interrupt_pending
    if _swapping:
        _interrupt_pending = signum
        return True
    return False


def abandon() -> None:
    """Remove this process's temporaries and lock files, and any stale ones beside the paths it
    holds (it holds their locks): the last thing an interrupted writer does."""
    for tmp in list(_in_progress):
        _remove_with_suffixes(tmp)
    for fd, _, lock, path in list(_held.values()):
        clean_stale(path, _read_record(fd))
        with contextlib.suppress(OSError):
            os.unlink(lock)


# --- the writer ------------------------------------------------------------------------------------

def atomic_write(path, write: Callable[[Path], None], *, overwrite: bool = False,
                 may_replace: Callable[[Path], str | None] | None = None, notes: list | None = None) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The temporary is on the same file system, so a file is replaced in one atomic rename; an
    existing folder is swapped in two (see the module's docstring for the one state a kill between
    them leaves, and who undoes it). The whole is done holding ``path``'s lock.

    Args:
      path: the final file or directory.
      write: writes the content to the path it is given (a file, or a directory to create).
      overwrite: replace an existing ``path``; otherwise ``BadFile``.
      may_replace: with ``overwrite``, called on the existing ``path`` before anything is written:
        a reason it must not be replaced (it is not what this writer makes), or None.
      notes: if given, a line is appended when the folder ``path`` replaced could not be removed
        once swapped out (something in it is immutable, or in a folder that is not writable): it
        is then left beside ``path`` under its temporary name, and the next writer tries again.

    Raises:
      BadFile: ``path`` exists and ``overwrite`` is false (or ``may_replace`` refuses it), its
      folder is missing, another process is writing it, or the OS refused a write (permissions,
      disk full); the old ``path``, if any, is left as it was.
    """
    check_name(path)
    path = Path(path)

    def refuse_existing():
        if os.path.lexists(path) and not overwrite:
            raise BadFile(f"{path}: expected a new path, found an existing "
                          f"{'directory' if path.is_dir() else 'file'} (overwrite=True replaces it)")
        reason = may_replace(path) if may_replace is not None and os.path.lexists(path) else None
        if reason:
            raise BadFile(reason)

    refuse_existing()
    parent = path.parent
    if not parent.is_dir():
        raise BadFile(f"{path}: expected an existing folder {parent}, found none")
    with claim(path):
        refuse_existing()                       # again, now that no other writer can change it
        try:
            left = _write_and_swap(path, write)
        except OSError as e:
            raise BadFile(f"{path}: expected a writable folder with room for it, found {os_reason(e)}") from None
    if left is not None and notes is not None:
        notes.append(f"{path}: written; what it held before is left beside it as {left.name}, which could not "
                     f"be removed: the next write of {path.name} tries again, or remove it by hand")


def _remove_with_suffixes(tmp: Path) -> None:
    """``tmp`` and anything named ``tmp.*`` (Orbax builds its own temporary beside what it is given)."""
    _remove(tmp)
    with contextlib.suppress(OSError):
        for p in tmp.parent.glob(glob_escape(tmp.name) + ".*"):
            _remove(p)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _write_and_swap(path: Path, write: Callable[[Path], None]) -> Path | None:
    """``atomic_write`` once its checks passed: write the temporary, then swap it in. Returns the
    temporary if the old folder swapped into it could not be removed."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    _record(path, tmp.name)
    _in_progress.add(tmp)
    try:
        write(tmp)
        if tmp.is_file() and not tmp.is_symlink():      # some writers create files 0600
            os.chmod(tmp, 0o666 & ~umask())
        with no_interrupt():
            if path.is_dir() and not path.is_symlink():
                _swap_folders(tmp, path)                    # tmp now holds the old folder
            else:
                os.replace(tmp, path)
    finally:
        _remove_with_suffixes(tmp)
        _in_progress.discard(tmp)
    return tmp if os.path.lexists(tmp) else None


def _swap_folders(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path`` and the old ``path`` at ``new``, in two renames.

    Killed between the first two, ``path`` is absent and the old folder is complete at
    ``.NAME.old-PID-XXXXXXXX``: ``clean_stale`` (the next writer) and ``put_back`` (the next
    reader) rename it back. An exception on or between them (an ``OSError``, a
    ``KeyboardInterrupt``) that finds the old folder moved aside and ``path`` still absent puts it
    back at once."""
    old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    _record(path, old.name)
    try:
        os.rename(path, old)
        os.rename(new, path)
    except BaseException:
        if not os.path.lexists(path) and os.path.lexists(old):
            os.rename(old, path)
        raise
    os.rename(old, new)                 # removed with the temporary; never restored from here


def regular_file_or_new(path) -> str | None:
    """Why ``path`` must not be replaced by a file (it is a folder, a FIFO, a device...), or None.
    A symbolic link is replaced itself, never written through."""
    path = Path(path)
    if path.is_symlink() or not os.path.lexists(path):
        return None
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return f"{path}: expected a new or a regular file, found a {kind(mode)}; it is left as it is"


#: room left in a file name for the writer's own names beside it: ``.NAME.tmp-PID-XXXXXXXX`` and
#: the ``.orbax-checkpoint-tmp-...`` Orbax adds to a temporary folder
NAME_ROOM = 64
NAME_MAX = 255


def check_name(path, what: str = "") -> None:
    """Refuse, in one line, a path the writer cannot make beside itself: a last component longer
    than ``NAME_MAX - NAME_ROOM`` bytes, an empty one, or one that is not UTF-8.

    Raises:
      BadFile: which, and what was found.
    """
    label = f"{what}: " if what else ""
    text = os.fspath(path)
    if not text.strip():
        raise BadFile(f"{label}expected a path, found {text!r}")
    name = Path(text).name
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadFile(f"{label}expected a file name in UTF-8, found the bytes {os.fsencode(name)!r}") from None
    if size > NAME_MAX - NAME_ROOM:
        raise BadFile(f"{label}expected a file name of at most {NAME_MAX - NAME_ROOM} bytes (the writer puts "
                      f"longer names beside it), found {size} bytes: {name[:40]}...")


def check_writable(path) -> None:
    """Before long work whose result goes to ``path`` (by ``write_bytes``): its folder exists and
    takes a new file (made and removed at once), and ``path`` is new or a regular file.

    Raises:
      BadFile: one line saying which.
    """
    check_name(path)
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise BadFile(f"{path}: expected an existing folder {folder}, found none")
    reason = regular_file_or_new(path)
    if reason:
        raise BadFile(reason)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadFile(f"{path}: expected its folder {folder} to take a new file, found that making one there "
                      f"fails ({os_reason(e)})") from None


def write_bytes(path, data: bytes) -> None:
    """``path``'s content replaced by ``data`` in one rename: a new path, or an existing regular
    file (a folder or anything else there is refused, ``BadFile``, and left as it is)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=True, may_replace=regular_file_or_new)


def write_text(path, text: str) -> None:
    """``write_bytes`` of ``text`` as UTF-8, line endings as given."""
    write_bytes(path, text.encode("utf-8"))
