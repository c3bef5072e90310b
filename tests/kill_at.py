"""``python tests/kill_at.py SPEC -- ARGS...``: ``flax-lenet ARGS`` that signals itself at a chosen
file-system event of its write phase. The tests' own kill switch: the product has none.

SPEC is one of:

    count:FILE        run to the end; at exit, write to FILE the number of events of the write
                      phase, then the number of each swap's event (``"412 398"``)
    N:SIGNAL          send SIGNAL (``SIGKILL``, ``SIGINT``, ``SIGTERM``, ...) to this process at event N
    swapI+K:SIGNAL    send it K events after the I-th swap's event (K = 0: at that event)

Events are Python audit events (``sys.addaudithook``) of the file system, from every thread:
open, os.mkdir, os.rename (``os.replace`` raises it too), os.remove, os.rmdir, os.chmod,
os.truncate, os.listdir, os.scandir, shutil.rmtree. They are counted from the first one that
names a temporary of ``flax_lenet.app.files`` (``.NAME.tmp-PID-XXXXXXXX``, this process's PID):
the start of the first write. A swap's event is the ``os.rename`` of such a temporary to NAME,
in the same folder: the rename that makes the new content visible (for a folder, the second of
its two renames). A hook runs before the operation it audits, so a signal sent at event N
arrives before the N-th operation is done; ``os.kill`` runs a Python handler (``flax-lenet``'s
for SIGINT and SIGTERM) at once when the event is in the main thread. Orbax's threads add a
varying number of events before a swap (their own polling), so points after a swap are named
relative to it.

SIGINT, SIGTERM and SIGHUP start at their defaults here whatever the parent ignores (a test run
started in the background ignores SIGINT); then ``flax_lenet.app.cli.run`` runs, as the console
command does, with ``sys.argv`` set to ``flax-lenet ARGS``.
"""

import os
import re
import signal
import sys

AUDITED = frozenset({"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod", "os.truncate",
                     "os.listdir", "os.scandir", "shutil.rmtree"})


#: what ``main`` runs once the command has returned (``cli.run`` ends the process in its last exit
#: handler, so an exit handler registered before it would never run)
FINISH = []


def _paths(args) -> list[str]:
    """The paths among some of an audit event's arguments (a file descriptor is left out)."""
    out = []
    for a in args:
        if isinstance(a, (str, bytes, os.PathLike)):
            try:
                out.append(os.fsdecode(os.fspath(a)))
            except TypeError:
                pass
    return out


def install(spec: str) -> None:
    """Add the audit hook that counts events and signals this process as ``spec`` asks."""
    temporary = re.compile(rf"\.(?P<name>.+)\.tmp-{os.getpid()}-[0-9a-f]{{8}}")
    inside_a_temporary = re.compile(rf"(?:^|/)\.[^/]+\.tmp-{os.getpid()}-[0-9a-f]{{8}}(?:[./]|$)")
    at, _, what = spec.partition(":")
    counting, count, swaps = [False], [0], []
    stop, sig, swap_at = None, None, None
    if at == "count":
        def write_count():
            with open(what, "w") as f:
                f.write(" ".join(map(str, [count[0], *swaps])) + "\n")
        FINISH.append(write_count)      # after the command, before cli.run's last exit handler ends it
    elif at.startswith("swap"):
        which, _, after = at[len("swap"):].partition("+")
        swap_at, sig = (int(which), int(after)), getattr(signal, what)
    else:
        stop, sig = int(at), getattr(signal, what)

    def is_swap(event, paths) -> bool:
        if event != "os.rename" or len(paths) < 2:
            return False
        src, dst = paths[:2]
        m = temporary.fullmatch(os.path.basename(src))
        return (m is not None and m.group("name") == os.path.basename(dst)
                and os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst)))

    def hook(event, args):
        nonlocal stop
        if event not in AUDITED:
            return
        paths = _paths(args[:2] if event == "os.rename" else args[:1])    # (src, dst, ...); (path, ...)
        if not counting[0]:
            if not any(inside_a_temporary.search(p) for p in paths):
                return
            counting[0] = True
        count[0] += 1
        if is_swap(event, paths):
            swaps.append(count[0])
            if swap_at is not None and len(swaps) == swap_at[0]:
                stop = count[0] + swap_at[1]
        if count[0] == stop:
            os.kill(os.getpid(), sig)

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python tests/kill_at.py SPEC -- FLAX-LENET-ARGS...")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    install(argv[0])
    sys.argv = ["flax-lenet", *argv[2:]]
    from flax_lenet.app import cli
    try:
        cli.run()
    finally:
        for finish in FINISH:
            finish()


if __name__ == "__main__":
    main(sys.argv[1:])
