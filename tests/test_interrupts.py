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

from flax_lenet.app import checkpoint, files
from tests.helpers import state_numpy, torch_net

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             FLAX_LENET_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")))
    for name in ("FLAX_LENET_DEBUG", files.TEST_KILL_ENV, "FLAX_LENET_CACHE"):
        e.pop(name, None)
    return e


def python(env, script, *argv, **kw):
    return subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


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
    proc = subprocess.Popen([sys.executable, "-m", "flax_lenet", "train", "--out", str(tmp_path / "run"), "--quiet"],
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
    proc = subprocess.Popen([sys.executable, "-m", "flax_lenet", "train", "--out", str(tmp_path / "run"),
                             "--epochs", "3", "--max-steps", "40", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
    argv = [sys.executable, "-m", "flax_lenet", "convert", str(tmp_path / "in.safetensors"), str(tmp_path / "w.orbax")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env=dict(env, **{files.TEST_KILL_ENV: f"count:{count}"}))
    assert proc.returncode == 0, proc
    total, swap = map(int, count.read_text().split())
    checkpoint.load_state(tmp_path / "w.orbax")
    import shutil
    shutil.rmtree(tmp_path / "w.orbax")
    count.unlink()
    for point in (swap // 3, swap // 2, swap - 3):          # in the middle of Orbax's writing
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              env=dict(env, **{files.TEST_KILL_ENV: f"{point}:SIGINT"}))
        assert proc.returncode == 130 and proc.stderr == "flax-lenet convert: interrupted\n", (point, proc)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"], point
