"""``flax-lenet``: a thin layer that parses, calls the library, and prints.

Each subcommand lives in ``flax_lenet/app/commands/<name>.py`` with ``add_arguments(parser)``
and ``main(args) -> int``; heavy imports (torch, jax) happen inside ``main``.

Exit codes: bad usage or bad input (argparse's errors, and any ``flax_lenet.errors.BadInput``
a command raises) exits 2 with one line on stderr and no traceback (``FLAX_LENET_DEBUG=1``
shows it); Ctrl-C exits 130 with one line; any other exception is a bug and propagates with
its traceback (the console script then exits 1).

Ctrl-C in the console command (``run``) is taken over before anything heavy is imported: at any
moment -- importing jax, training, writing a checkpoint -- it removes this process's temporary
files and lock files (``files.abandon``; a rename in progress is finished first), prints
``flax-lenet COMMAND: interrupted`` and exits 130 at once. SIGTERM and SIGHUP do the same
(``terminated``, 143; ``hung up``, 129). It never raises ``KeyboardInterrupt``
into jax, Orbax or tensorstore code, where it was swallowed ("Exception ignored in
_xla_gc_callback") or printed asyncio tracebacks from Orbax's threads.
"""

import argparse
import atexit
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys

from flax_lenet.app import files
from flax_lenet.errors import BadConfig, BadInput, ModelRaised

DESCRIPTION = """\
Run the LeNet of PyTorch's "Neural Networks" tutorial in JAX/Flax and in PyTorch side by side:
compare the two on the same weights, train both on handwritten digits, and evaluate or convert
their checkpoints.
"""
EPILOG = """\
Run 'flax-lenet COMMAND --help' for the options of a command.

exit codes: 0 done (compare: everything agrees), 1 compare: they differ, 2 bad input or usage
(one line), 3 compare/convert --torch/--flax: your model raised (one line; FLAX_LENET_DEBUG=1
shows the traceback), 130/143/129 interrupted, terminated, hung up."""

COMMANDS = {
    "compare": "run the tutorial in torch and every Flax flavour from one set of weights and diff them",
    "train": "train the Flax Net and the torch reference side by side on handwritten digits",
    "eval": "report the test accuracy of a checkpoint",
    "convert": "convert weights between .pt/.pth, .safetensors and Orbax checkpoints",
    "bench": "benchmark train-step throughput of Flax and torch side by side",
}


UsageError = BadConfig    # the older name of a bad setting; commands raise flax_lenet.errors kinds


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``flax-lenet`` parser: one subparser per entry of ``COMMANDS``, each from its module."""
    parser = _Parser(prog="flax-lenet", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)
    sub.required = True
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"flax_lenet.app.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv=None, *, before=None) -> int:
    """Run one ``flax-lenet`` command and return its exit code.

    A ``BadInput`` becomes ``flax-lenet COMMAND: error: <message>`` on stderr and exit code 2
    (with ``FLAX_LENET_DEBUG=1`` it is re-raised with its traceback); a user's model that raised
    in port mode (``ModelRaised``) is one line and ``MODEL_RAISED`` (3); Ctrl-C is one line and
    130. Every other exception is a bug and propagates unchanged. ``before()``, if given, runs
    once the arguments are parsed and before the command (so ``--help`` and a usage error never
    reach it).
    """
    args = build_parser().parse_args(argv)
    try:
        if before is not None:
            before()
        return int(args._main(args) or 0)
    except BadInput as e:
        if os.environ.get("FLAX_LENET_DEBUG"):
            raise
        message = str(e).replace("\n", " ")         # the contract is one line, whatever the message
        print(f"flax-lenet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModelRaised as e:
        if os.environ.get("FLAX_LENET_DEBUG"):
            raise
        print(f"flax-lenet {args.command}: {e}".replace("\n", " "), file=sys.stderr)
        return MODEL_RAISED
    except KeyboardInterrupt:
        print(f"flax-lenet {args.command}: interrupted", file=sys.stderr)
        return 130


MODEL_RAISED = 3        # exit codes: 0 agree, 1 differ, 2 bad input or usage, 3 the user's model raised


def _command_name(argv) -> str:
    """``'flax-lenet train'`` from the arguments (``'flax-lenet'`` before a command is named)."""
    names = [a for a in argv if a in COMMANDS]
    return f"flax-lenet {names[0]}" if names else "flax-lenet"


# What ends a command from outside, what it prints and its exit status (128 + the signal number,
# as a shell reports a process killed by it). SIGKILL cannot be caught; the next writer removes
# what it leaves (``files``).
SIGNALS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143),
           signal.SIGHUP: ("hung up", 129)}


def take_over_ctrl_c(argv=None) -> None:
    """SIGINT (Ctrl-C), SIGTERM (``kill``, a job scheduler) and SIGHUP (a closed terminal) end the
    command with one line and exit 128 + the signal number, having removed its temporaries (see
    above). A SIGHUP the parent set to be ignored (``nohup``) stays ignored."""
    prog = _command_name(sys.argv[1:] if argv is None else argv)

    def ended(signum, frame):
        if files.defer_interrupt(signum):       # inside a swap's renames: handled right after them
            return
        try:
            files.abandon()
            sys.stdout.flush()                  # what was printed before the signal stays printed
        except Exception:                       # interrupted in the middle of a print, or of a removal
            pass
        what, status = SIGNALS[signum]
        os.write(2, f"{prog}: {what}\n".encode())
        os._exit(status)                        # no atexit handlers, no threads' tracebacks

    for signum in SIGNALS:
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, ended)


def _tensorstore_io_failure(exc) -> bool:
    """tensorstore's ``ValueError`` for a read or write the OS refused (a full disk): it carries the
    OS error's number (``os_error_code=``), and ``checkpoint`` reports it as a one-line ``BadFile``."""
    return isinstance(exc, ValueError) and "os_error_code=" in str(exc)


class _ReportedIOFailures(logging.Filter):
    """Drops a log record whose exception is a tensorstore I/O failure, reported once already.

    On a full disk each of Orbax's write threads logs the failure with its traceback through absl
    (about 200 lines), and asyncio logs "Task exception was never retrieved" for each failed write
    task whenever that task is collected, which can be after the one-line error. The same failure
    is raised again in the main thread and reported there; every other record passes."""

    def filter(self, record):
        return not (record.exc_info and _tensorstore_io_failure(record.exc_info[1]))


def _closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def quiet_reported_failures() -> None:
    """What ``run`` installs for the whole process before a command starts, so that a failed
    Orbax read or write (a damaged checkpoint, a full disk) prints the command's one line only.

    * ``sys.unraisablehook`` and ``sys.excepthook`` drop ``RuntimeError('Event loop is closed')``:
      when tensorstore fails, Orbax closes its asyncio loop while tensorstore still has callbacks
      queued on it; they raise in a background thread, and Python printed each with a traceback
      ("Exception ignored in: ...", or through ``sys.excepthook`` from tensorstore's
      ``PyErr_Print``). Every other exception goes to the hook that was there before.
    * the ``absl`` and ``asyncio`` loggers drop the records of a tensorstore I/O failure
      (``_ReportedIOFailures``). ``absl.logging`` is imported here for that: a logger named
      ``absl`` made before absl makes its own would not be absl's logger class.

    Called once per process, by ``run`` only: a library or a command never changes these.
    """
    previous_unraisable, previous_excepthook = sys.unraisablehook, sys.excepthook

    def unraisable(unraisable):
        if not _closed_loop(unraisable.exc_value):
            previous_unraisable(unraisable)

    def excepthook(kind, value, tb):            # the same error, printed by tensorstore's threads
        if not _closed_loop(value):
            previous_excepthook(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    names = ["asyncio"]
    try:
        import absl.logging  # noqa: F401  (absl makes its logger; Orbax logs through it)
        names.append("absl")
    except ImportError:         # no absl: no Orbax either
        pass
    for name in names:
        logging.getLogger(name).addFilter(_ReportedIOFailures())


def run() -> None:
    """The console entry point: ``main`` with Ctrl-C taken over, failures of Orbax's threads kept
    to one line (``quiet_reported_failures``) and JAX's persistent compilation cache on.

    The process-wide handlers are installed here, before the command starts, and nowhere else.
    A second ``flax-lenet`` process loads its compiled steps instead of compiling them again
    (``docs/benchmarks.md``, start-up). ``FLAX_LENET_CACHE=0`` switches it off; a cache
    directory that cannot be used only costs the speed-up.
    """
    take_over_ctrl_c()
    prog = _command_name(sys.argv[1:])
    returned = []
    atexit.register(_end_on_a_held_signal, prog, returned)     # registered first, so it runs last
    status = main(before=_start_command)
    signal.pthread_sigmask(signal.SIG_BLOCK, list(SIGNALS))     # the command is done: see below
    returned.append(status if isinstance(status, int) else 1)
    sys.exit(status)


def _end_on_a_held_signal(prog: str, returned: list) -> None:
    """The last exit handler: a signal that came while the process was ending ends it as one
    that came during the command does (its line, 128 + its number); otherwise a command that
    returned ends here, with its status.

    A command's work done, Python's exit still takes seconds (JAX's, torch's and Orbax's
    teardown), and near its end Python gives SIGINT back its default action. A Ctrl-C then, if
    the kernel hands it to one of their threads (which never blocked it), kills the process with
    no line and a status of -2; in the main thread, it is lost. So ``run`` blocks the signals
    in the main thread once the command has returned, and this handler, the last to run, reports
    one that is waiting (a SIGHUP that ``nohup`` set to be ignored stays ignored), or ends the
    process with ``os._exit`` after flushing its output: every other exit handler has run by
    now, the command's files are closed, and what is left of the exit is the teardown in which a
    signal could be lost. A command that raised (a bug, with its traceback) exits as Python does."""
    waiting = [s for s in SIGNALS if s in signal.sigpending() and signal.getsignal(s) is not signal.SIG_IGN]
    if not waiting and not returned:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if waiting:
        what, status = SIGNALS[waiting[0]]
        os.write(2, f"{prog}: {what}\n".encode())
        os._exit(status)
    os._exit(returned[0])


@functools.lru_cache(maxsize=None)
def xla_flags_refusal(flags: str) -> str:
    """The line XLA refused ``XLA_FLAGS=flags`` with, or ``''`` when it did not refuse them.

    XLA reads ``XLA_FLAGS`` when JAX first starts a backend and aborts the process on a flag it
    does not know, with no Python exception to catch; so a child process starts one first. Asked
    once per process and value."""
    import subprocess
    try:
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "XLA_FLAGS": flags})
    except subprocess.TimeoutExpired:
        return ""                       # slow, not refused: the command itself will say more
    # a start that failed for another reason (JAX_PLATFORMS naming a platform this machine lacks) is
    # not a refusal of the flags: the command itself says what is wrong
    lines = [line for line in probe.stderr.splitlines() if "XLA_FLAGS" in line] if probe.returncode else []
    return lines[0].rpartition("] ")[2].strip()[:200] if lines else ""


def _start_command() -> None:
    """After the arguments are parsed (``--help`` and usage errors import neither jax nor absl)."""
    quiet_reported_failures()
    flags = os.environ.get("XLA_FLAGS")
    if flags:
        refused = xla_flags_refusal(flags)
        if refused:
            raise BadConfig(f"XLA_FLAGS={flags}: expected flags that XLA knows, found {refused}")
    platforms = os.environ.get("JAX_PLATFORMS")
    if platforms:                       # a platform this machine lacks: JAX's 70-line RuntimeError
        import jax
        try:
            jax.devices()
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise BadConfig(f"JAX_PLATFORMS={platforms}: expected platforms this machine has, found "
                            f"none that JAX could start ({reason})") from None
    if os.environ.get("FLAX_LENET_CACHE", "1") != "0":
        from flax_lenet import cache
        try:
            cache.enable()
        except BadInput:            # the cache folder is a file or cannot be created
            pass


if __name__ == "__main__":
    run()
