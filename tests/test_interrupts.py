"""Ctrl-C ends any ``flax-lenet`` command at once: exit 130, one line, and no partial output.

``flax_lenet.app.cli.take_over_ctrl_c`` is installed before jax is imported; its SIGINT handler
removes the process's temporaries and lock files and exits. It never raises KeyboardInterrupt into
jax or Orbax code, where a gc callback swallowed it ("Exception ignored in _xla_gc_callback") and
Orbax's threads printed asyncio tracebacks.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flax_lenet.app import checkpoint
from tests.helpers import state_numpy, torch_net

# every test here starts flax-lenet in a process of its own and signals it: the slow tier
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
KILL_AT = REPO / "tests" / "kill_at.py"

# Every process these tests start is as if started from a terminal. A test run started by a parent
# that ignores SIGINT (a background job, some CI runners) or SIGHUP (nohup) passes the ignored
# signals on to its children, where they stay ignored: Python then installs no KeyboardInterrupt
# handler, and the "Python's own handler" twins below never see one. So each process resets them
# itself, first thing, in its own command (not by preexec_fn: a fork of this process, which has
# jax's threads, warns): SIGTERM and SIGHUP to SIG_DFL, and SIGINT to SIG_DFL and then to the
# handler Python installs at start-up when SIGINT is at SIG_DFL (``signal.default_int_handler``).
AS_FROM_A_TERMINAL = """\
import signal
for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_signum, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
"""
# ``python -m flax_lenet``, as from a terminal
FLAX_LENET = AS_FROM_A_TERMINAL + """\
import runpy, sys
sys.argv[0] = "flax-lenet"
runpy.run_module("flax_lenet", run_name="__main__")
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             FLAX_LENET_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")))
    for name in ("FLAX_LENET_DEBUG", "FLAX_LENET_CACHE"):
        e.pop(name, None)
    return e


def python(env, script, *argv, **kw):
    """``python -c SCRIPT ARGV``, with the signals reset first (``AS_FROM_A_TERMINAL``)."""
    return subprocess.run([sys.executable, "-c", AS_FROM_A_TERMINAL + script, *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=300, **kw)


def flax_lenet(*argv) -> list[str]:
    """The command line of ``flax-lenet ARGV`` as from a terminal (``FLAX_LENET``)."""
    return [sys.executable, "-c", FLAX_LENET, *map(str, argv)]


def kill_at(spec: str, *argv) -> list[str]:
    """The command line of ``flax-lenet ARGV`` signalling itself at a file-system event
    (``tests/kill_at.py``: it resets the signals itself)."""
    return [sys.executable, str(KILL_AT), spec, "--", *map(str, argv)]


# Ctrl-C arrives while jax is being imported: a meta-path finder sends it when jax's dtypes module
# is looked up, deep inside ``import jax``, at the same point every time.
DURING_IMPORT = """\
import os, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "jax._src.dtypes":
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10000))                       # Python runs signal handlers between bytecodes
        return None

sys.meta_path.insert(0, CtrlC())
from flax_lenet.app import cli
if sys.argv[1] == "take-over":
    cli.take_over_ctrl_c(["train"])
else:                       # the twin: jax imported before the command, under Python's own handler
    import flax_lenet.app.training
sys.argv = ["flax-lenet", "train", "--out", sys.argv[2], "--quiet"]
cli.main()
"""


def test_ctrl_c_while_jax_is_imported_is_one_line_and_exit_130(tmp_path, env):
    proc = python(env, DURING_IMPORT, "take-over", tmp_path / "run")
    assert proc.returncode == 130 and proc.stderr == "flax-lenet train: interrupted\n", proc
    assert not (tmp_path / "run").exists()
    # the broken twin: Python's own handler prints KeyboardInterrupt with its traceback
    proc = python(env, DURING_IMPORT, "python's own", tmp_path / "run")
    assert proc.returncode != 130 and "Traceback" in proc.stderr and "KeyboardInterrupt" in proc.stderr


def wait_for_jax_import(proc) -> None:
    """Until the process has started importing jax (its shared library is mapped): ``flax-lenet``
    takes over Ctrl-C before that, so a Ctrl-C from then on meets its handler, however loaded the
    machine. Where there is no /proc, a fixed 0.5 s."""
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.parent.exists():
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "jaxlib" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.005)


def test_ctrl_c_in_the_first_second_of_the_command_is_one_line_and_exit_130(tmp_path, env):
    """The real command, Ctrl-C as jax's import starts: before, 25-33 lines of KeyboardInterrupt."""
    proc = subprocess.Popen(flax_lenet("train", "--out", tmp_path / "run", "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_jax_import(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and err == "flax-lenet train: interrupted\n", (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# jax runs a Python gc callback (``_xla_gc_callback``); a KeyboardInterrupt raised inside a gc
# callback is printed as "Exception ignored" and dropped, and the command went on to exit 0.
IN_GC_CALLBACK = """\
import gc, os, signal, sys
from flax_lenet.app import cli
if sys.argv[1] == "take-over":
    cli.take_over_ctrl_c(["train"])

def callback(phase, info):
    if phase == "start":
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10000))

gc.callbacks.append(callback)
gc.collect()
gc.callbacks.remove(callback)
print("went on")
"""


def test_ctrl_c_inside_a_gc_callback_is_never_ignored(env):
    proc = python(env, IN_GC_CALLBACK, "take-over")
    assert proc.returncode == 130 and proc.stderr == "flax-lenet train: interrupted\n", proc
    assert "went on" not in proc.stdout
    # the broken twin: Python's own handler raises inside the callback, and it is ignored
    proc = python(env, IN_GC_CALLBACK, "python's own")
    assert proc.returncode == 0 and "went on" in proc.stdout and "Exception ignored" in proc.stderr, proc


@pytest.mark.parametrize("delay", [0.8, 1.5, 2.2])
def test_ctrl_c_at_any_moment_of_a_training_run_exits_130_with_one_line(tmp_path, env, delay):
    """Before, 6 of 18 Ctrl-Cs sent 0.8-2.2 s after start were ignored and training went on (here the
    delays count from the start of jax's import)."""
    proc = subprocess.Popen(flax_lenet("train", "--out", tmp_path / "run", "--epochs", "3", "--max-steps", "40",
                                       "--quiet"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_jax_import(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and err == "flax-lenet train: interrupted\n", (out, err)
    assert "Exception ignored" not in err and not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []                 # no temporary, no lock file


def test_ctrl_c_during_an_orbax_write_is_one_line_and_writes_nothing(tmp_path, env):
    """Before: exit 130 plus 15-17 lines of asyncio and Orbax tracebacks from its threads."""
    checkpoint.save(tmp_path / "in.safetensors", state_numpy(torch_net(3, "float32")))
    count = tmp_path / "count"
    argv = ["convert", tmp_path / "in.safetensors", tmp_path / "w.orbax"]
    proc = subprocess.run(kill_at(f"count:{count}", *argv), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc
    total, swap = map(int, count.read_text().split())
    checkpoint.load_state(tmp_path / "w.orbax")
    import shutil
    shutil.rmtree(tmp_path / "w.orbax")
    count.unlink()
    for point in (swap // 3, swap // 2, swap - 3):          # in the middle of Orbax's writing
        proc = subprocess.run(kill_at(f"{point}:SIGINT", *argv), capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 130 and proc.stderr == "flax-lenet convert: interrupted\n", (point, proc)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"], point


@pytest.mark.parametrize("sig, line, status", [(signal.SIGTERM, "terminated", 143), (signal.SIGHUP, "hung up", 129)])
def test_sigterm_and_sighup_during_training_end_it_with_one_line_and_leave_nothing(tmp_path, env, sig, line, status):
    """``kill PID`` (SIGTERM, what job schedulers and ``timeout`` send) and a closed terminal
    (SIGHUP): before, Python's default action ended the process silently, leaving its temporary
    run folder and lock file beside ``--out``."""
    # as from a terminal (FLAX_LENET): a test run under nohup would pass its ignored SIGHUP on, and
    # that stays ignored
    proc = subprocess.Popen(flax_lenet("train", "--out", tmp_path / "run", "--epochs", "3", "--max-steps", "40",
                                       "--quiet"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_jax_import(proc)
    time.sleep(1.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status and err == f"flax-lenet train: {line}\n", (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []                 # no temporary, no lock file


def test_a_sighup_that_nohup_ignores_stays_ignored(env):
    script = ("import signal, sys\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
              "from flax_lenet.app import cli\ncli.take_over_ctrl_c(['train'])\n"
              "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, "
              "signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN))")
    assert python(env, script).stdout == "True True\n"


def test_sigterm_during_a_swap_waits_for_its_rename_then_exits_143(tmp_path, env):
    """SIGTERM on the swap's own event (the ``os.replace`` of the temporary to the file, announced
    just before it is done): the rename finishes first, so the file is the new checkpoint, and
    nothing is left beside it. One event earlier (the temporary's ``chmod``, before the rename),
    the old one stays. Either way, exit 143 and one line."""
    state_old, state_new = state_numpy(torch_net(3, "float32", seed=0)), state_numpy(torch_net(3, "float32", seed=1))
    checkpoint.save(tmp_path / "new.pt", state_new)
    checkpoint.save(tmp_path / "w.safetensors", state_old)
    count = tmp_path / "count"
    argv = ["convert", tmp_path / "new.pt", tmp_path / "w.safetensors", "--overwrite"]
    proc = subprocess.run(kill_at(f"count:{count}", *argv), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc
    total, swap = map(int, count.read_text().split())
    count.unlink()
    for point, expected in ((str(swap - 1), state_old), ("swap1+0", state_new)):
        checkpoint.save(tmp_path / "w.safetensors", state_old, overwrite=True)
        proc = subprocess.run(kill_at(f"{point}:SIGTERM", *argv), capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 143 and proc.stderr == "flax-lenet convert: terminated\n", (point, proc)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "w.safetensors"], point
        loaded = checkpoint.load_state(tmp_path / "w.safetensors")
        assert all((loaded[k] == expected[k]).all() for k in expected), point


# A command whose work is done, then a Ctrl-C while the process ends, after Python's finalization
# has given SIGINT its default action back (emulated here by an exit handler that does the same,
# then signals; it runs before flax-lenet's last one). ``unblocked`` is the broken twin: without
# the signal held back, the process dies of the raw signal.
LATE_CTRL_C = """
import atexit, os, signal, sys
from flax_lenet.app import cli

def as_at_the_end_of_finalization():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)

def done(before=None):
    atexit.register(as_at_the_end_of_finalization)
    print("the command's output")
    return 0

cli.main = done
if sys.argv[1] == "unblocked":
    signal.pthread_sigmask = lambda how, mask: set()
sys.argv = ["flax-lenet", "eval", "w.orbax"]
cli.run()
"""


@pytest.mark.parametrize("variant, status", [("as shipped", 130), ("unblocked", -signal.SIGINT)])
def test_ctrl_c_while_the_process_ends_is_one_line_and_exit_130(env, variant, status):
    proc = python(env, LATE_CTRL_C, variant)
    assert proc.returncode == status, proc
    assert proc.stdout == "the command's output\n"
    if status == 130:
        assert proc.stderr == "flax-lenet eval: interrupted\n", proc.stderr


def test_a_real_ctrl_c_just_after_the_work_is_done_never_kills_the_process_without_its_line(tmp_path, env):
    """A Ctrl-C 0.05-0.3 s after ``convert``'s last line, while the process ends: before, the kernel
    could hand it to one of jax's, torch's or Orbax's threads after Python had restored its
    default action, and the process died with -2 and no line (6 trials of 6). The command now ends
    its own process once every exit handler has run, so it is either over (0) or says so (130)."""
    import random
    checkpoint.save(tmp_path / "in.safetensors", state_numpy(torch_net(3, "float32")))
    for trial in range(3):
        out = tmp_path / f"c{trial}.safetensors"
        proc = subprocess.Popen(flax_lenet("convert", tmp_path / "in.safetensors", out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()                   # its one line: the work is done
        time.sleep(random.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        assert "->" in line, (line, err)
        assert proc.returncode in (0, 130), (trial, proc.returncode, err)
        if proc.returncode == 130:
            assert err.endswith("flax-lenet convert: interrupted\n"), err
        assert out.is_file()
