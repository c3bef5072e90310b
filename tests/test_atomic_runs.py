"""A run, and every checkpoint, is one unit: old and complete, or new and complete, never a mix.

``flax_lenet.app.files`` writes beside the target and renames it into place, holding a lock file
that refuses a second writer; ``runs.write_run`` builds a whole run that way. An existing folder
is swapped in two renames: a SIGKILL between them leaves NAME absent and the old complete folder
beside it as ``.NAME.old-PID-XXXXXXXX``, and the next command that touches NAME puts it back.
These tests kill ``train`` and ``convert`` at many points of their write phase (SIGKILL and
Ctrl-C, through ``tests/kill_at.py``), start two writers at once, fail the last write, and point
``--overwrite`` at things that are not checkpoints.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flax_lenet.app import checkpoint, cli, files, runs, training
from flax_lenet.errors import BadFile
from tests.helpers import run_cli, state_numpy, torch_net, unremovable

REPO = Path(__file__).resolve().parent.parent
KILL_AT = REPO / "tests" / "kill_at.py"
TINY = ["--epochs", "1", "--max-steps", "1", "--quiet"]
KILL_POINTS = 20            # per command, SIGKILL and Ctrl-C in turn


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def siblings(path: Path) -> list[str]:
    """What lies beside ``path`` apart from it: temporaries and lock files, if any were left."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A real process's environment: this checkout importable, a compilation cache of its own."""
    cache = tmp_path_factory.mktemp("jax-cache")
    e = dict(os.environ, PYTHONPATH=str(REPO), FLAX_LENET_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    for name in ("FLAX_LENET_DEBUG", "FLAX_LENET_CACHE"):
        e.pop(name, None)
    return e


def flax_lenet(env, *argv, kill_at=None, extra_env=None, timeout=300, **kw):
    """``flax-lenet ARGV`` in a process of its own; with ``kill_at``, through ``tests/kill_at.py``
    (a SPEC: ``count:FILE``, ``N:SIGNAL``, ``swapI+K:SIGNAL``)."""
    head = [sys.executable, "-m", "flax_lenet"] if kill_at is None else [sys.executable, str(KILL_AT), kill_at, "--"]
    return subprocess.run([*head, *map(str, argv)], capture_output=True, text=True,
                          env=dict(env, **(extra_env or {})), timeout=timeout, **kw)


@pytest.fixture(scope="module")
def states():
    return state_numpy(torch_net(3, "float32", seed=0)), state_numpy(torch_net(3, "float32", seed=1))


# --- --overwrite replaces only what the project wrote ------------------------------------------

def _photos(path: Path):
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "a.txt").write_text("holiday")
    (path / "notes.txt").write_text("keep")


@pytest.mark.parametrize("name, make, found", [
    ("out.orbax", _photos, "a directory of other files (notes.txt, photos)"),
    ("out.safetensors", lambda p: p.mkdir(), "found a directory"),
    ("out.pt", lambda p: p.write_text("my notes"), "a file that is not one (it starts with b'my notes')"),
    ("out.safetensors", lambda p: p.write_bytes(b"\x00" * 64), "a file that is not one"),
    ("run", lambda p: (p.mkdir(), (p / "metrics.json").write_text("{}")), "a directory of other files (metrics.json)"),
    ("out.orbax", lambda p: p.symlink_to(p.parent / "elsewhere"), "a symbolic link"),
], ids=["photos-folder", "folder-named-safetensors", "text-named-pt", "zeros-named-safetensors",
        "run-directory", "symlink"])
def test_convert_overwrite_refuses_anything_but_a_checkpoint_of_its_format(tmp_path, capsys, states, name, make,
                                                                           found):
    checkpoint.save(tmp_path / "in.safetensors", states[0])
    out = tmp_path / name
    make(out)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    rc, _, err = run_cli(capsys, "convert", tmp_path / "in.safetensors", out, "--overwrite")
    assert rc == 2 and one_line(err) and found in err and "nothing was changed" in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    if name == "out.orbax" and not out.is_symlink():
        assert (out / "notes.txt").read_text() == "keep" and (out / "photos" / "a.txt").read_text() == "holiday"


@pytest.mark.parametrize("name", ["out.orbax", "out.safetensors", "out.pt"])
def test_convert_overwrite_replaces_a_checkpoint_of_its_format(tmp_path, capsys, states, name):
    checkpoint.save(tmp_path / "in.safetensors", states[1])
    checkpoint.save(tmp_path / name, states[0])
    rc, _, err = run_cli(capsys, "convert", tmp_path / "in.safetensors", tmp_path / name, "--overwrite")
    assert rc == 0, err
    np.testing.assert_array_equal(checkpoint.load_state(tmp_path / name)["fc1.weight"], states[1]["fc1.weight"])
    assert siblings(tmp_path / name) == ["in.safetensors"]


# --- one writer at a time ----------------------------------------------------------------------

HOLD = """\
import sys
from flax_lenet.app import files
files.hold(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_second_writer_is_refused_in_one_line_while_another_process_writes(tmp_path, capsys, env, states):
    """A process holding the lock of ``run`` and of ``w.orbax``: train, convert and save are refused."""
    checkpoint.save(tmp_path / "in.pt", states[0])
    for target in ("run", "w.orbax"):
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / target)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert holder.stdout.readline() == "held\n"
            if target == "run":
                rc, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", *TINY)
            else:
                rc, _, err = run_cli(capsys, "convert", tmp_path / "in.pt", tmp_path / "w.orbax")
            assert rc == 2 and one_line(err), err
            assert f"expected no other writer, found process {holder.pid} writing it" in err
            assert not (tmp_path / target).exists()
        finally:
            holder.communicate("", timeout=60)
    # the holder has gone: its lock file is gone too, and the same commands now succeed
    assert not files.lock_path(tmp_path / "run").exists()
    rc, _, err = run_cli(capsys, "convert", tmp_path / "in.pt", tmp_path / "w.orbax")
    assert rc == 0, err


@pytest.mark.slow
def test_two_trains_started_at_once_leave_one_complete_run_and_refuse_the_other(tmp_path, env):
    """Neither with --overwrite: before, both printed "wrote" and the run mixed seed 0 and seed 1."""
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "flax_lenet", "train", "--out", str(out), "--seed", str(seed),
                               *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, results)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = results[loser][1]
    assert one_line(err) and ("expected no other writer" in err or "found an earlier run" in err), err
    assert "wrote" in results[winner][0] and "wrote" not in results[loser][0]
    _assert_complete_run(out, seed=winner)
    assert siblings(out) == []


def _assert_complete_run(out: Path, seed: int, reference: dict | None = None) -> None:
    """``out`` holds exactly one run's four files, all from the run with ``seed``."""
    assert sorted(p.name for p in out.iterdir()) == sorted(runs.RUN_FILES)
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == seed
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    torch_state = checkpoint.load_state(out / "torch.safetensors", notes=(notes := []))
    flax_state = checkpoint.load_state(out / "flax.orbax", notes=notes)
    assert notes == []                                                  # both verified by their SHA-256
    if reference is not None:
        for k in reference["torch"]:
            np.testing.assert_array_equal(torch_state[k], reference["torch"][k])
            np.testing.assert_array_equal(flax_state[k], reference["flax"][k])


# --- leftovers of a killed writer --------------------------------------------------------------

def test_a_killed_writers_temporaries_and_lock_are_removed_by_the_next_writer(tmp_path, states):
    """Only what the dead writer recorded in its lock file (its PID, then each name it made) goes;
    a file that merely looks like a leftover is the user's and stays."""
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    recorded = ".w.orbax.tmp-4242-0123abcd"
    made = [recorded, recorded + ".orbax-checkpoint-tmp-17"]           # Orbax's temporary beside it
    lookalikes = [".w.orbax.tmp-notes", ".w.orbax.tmp-k3j4h5g6", ".w.orbax.old-backup01",
                  ".w.orbax.tmp-4242-89abcdef", ".w.orbax.tmp-4243-0123abcd"]
    for name in made + lookalikes:
        (tmp_path / name).mkdir()
        (tmp_path / name / "half").write_bytes(b"x")
    files.lock_path(target).write_text(f"4242\n{recorded}\n.w.orbax.tmp-4243-0123abcd\n")   # another PID's: not its
    checkpoint.save(target, states[1], overwrite=True)
    assert siblings(target) == sorted(lookalikes)
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[1]["fc3.bias"])


def _cut_between_the_renames(target: Path, pid: int = 4242) -> Path:
    """What a writer of ``target`` killed between a folder swap's two renames leaves: no ``target``,
    the old folder beside it, its unfinished (or finished) new one, and its lock file."""
    moved = target.parent / f".{target.name}.old-{pid}-0123abcd"
    tmp = target.parent / f".{target.name}.tmp-{pid}-89abcdef"
    files.lock_path(target).write_text(f"{pid}\n{tmp.name}\n{moved.name}\n")   # recorded before made
    os.rename(target, moved)
    tmp.mkdir()
    return moved


def test_a_folder_swap_cut_between_its_two_renames_is_undone_by_the_next_writer(tmp_path, states):
    """A kill between the two renames of a folder swap leaves the old folder under ``.NAME.old-*``;
    the next writer puts it back before anything else."""
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    _cut_between_the_renames(target)
    with files.claim(target):
        assert siblings(target) == [".w.orbax.lock"]
        np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[0]["fc3.bias"])
    assert siblings(target) == []


def test_a_folder_swap_cut_between_its_two_renames_is_undone_by_the_next_reader(tmp_path, states):
    """``load_state`` (``eval``, ``convert``'s IN) of the checkpoint, or of a checkpoint in the run
    folder that was being swapped, puts the old folder back first, holding its lock."""
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    _cut_between_the_renames(target)
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[0]["fc3.bias"])
    assert siblings(target) == []
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "torch.safetensors", states[1])
    _cut_between_the_renames(run)
    np.testing.assert_array_equal(checkpoint.load_state(run / "torch.safetensors")["fc3.bias"], states[1]["fc3.bias"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "w.orbax"]


def test_eval_of_a_checkpoint_whose_swap_was_cut_puts_it_back_and_evaluates_it(tmp_path, states, capsys):
    from flax_lenet.app import cli
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    _cut_between_the_renames(target)
    assert cli.main(["eval", str(target), "--json"]) == 0, capsys.readouterr().err
    assert siblings(target) == [] and target.is_dir()


FLOCK = """\
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)                      # a writer of NAME, between its two renames
print("held", flush=True)
sys.stdin.read()
"""


def test_a_reader_leaves_a_missing_path_alone_unless_a_swap_of_it_was_cut(tmp_path, states, env):
    """No old folder beside it: nothing is made, and the path is reported missing. A live writer
    holding its lock (it is between its own two renames): left to it, reported missing too."""
    with pytest.raises(BadFile, match="found no such directory"):
        checkpoint.load_state(tmp_path / "gone.orbax")
    assert list(tmp_path.iterdir()) == []
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    moved = _cut_between_the_renames(target)
    holder = subprocess.Popen([sys.executable, "-c", FLOCK, str(files.lock_path(target))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(BadFile, match="found no such directory"):
            checkpoint.load_state(target)
        assert moved.is_dir() and not target.exists()
    finally:
        holder.communicate("", timeout=60)


def test_an_existing_folder_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path, states):
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    checkpoint.save(target, states[1], overwrite=True)
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[1]["fc3.bias"])
    assert siblings(target) == []


def test_an_old_folder_that_cannot_be_removed_is_named_in_a_note_and_removed_by_the_next_writer(tmp_path, capsys,
                                                                                                   states):
    """The new checkpoint is in place either way; the old one, swapped out, stays beside it under its
    temporary name, and the note says so instead of leaving it there unsaid."""
    (tmp_path / "top").mkdir()
    src, target = tmp_path / "new.safetensors", tmp_path / "top" / "w.orbax"
    checkpoint.save(src, states[1])
    checkpoint.save(target, states[0])
    with unremovable(next(p for p in target.rglob("*") if p.is_file()), tmp_path / "top"):
        rc, _, err = run_cli(capsys, "convert", src, target, "--overwrite")
        assert rc == 0, err
        left = [n for n in siblings(target) if n.startswith(".w.orbax.tmp-")]
        assert len(left) == 1, siblings(target)
        assert err == (f"flax-lenet convert: note: {target}: written; what it held before is left beside it as "
                       f"{left[0]}, which could not be removed: the next write of w.orbax tries again, or remove "
                       "it by hand\n"), err
        np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[1]["fc3.bias"])
    rc, _, err = run_cli(capsys, "convert", src, target, "--overwrite")
    assert rc == 0 and err == "", err
    assert siblings(target) == []


def test_a_swap_interrupted_between_its_renames_puts_the_old_folder_back(tmp_path, states, monkeypatch):
    """An exception (a Ctrl-C where no handler defers it, an ``OSError``) on the rename of the new
    folder into place, the old one already moved aside: the old one is renamed back at once."""
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append((Path(a).name, Path(b).name))
        if Path(b) == target:                # the new folder into place: Ctrl-C lands here
            raise KeyboardInterrupt
        real_rename(a, b)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(target, states[1], overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    moved_aside, into_place, put_back = calls[-3:]
    assert moved_aside[0] == "w.orbax" and re.fullmatch(r"\.w\.orbax\.old-\d+-[0-9a-f]{8}", moved_aside[1])
    assert re.fullmatch(r"\.w\.orbax\.tmp-\d+-[0-9a-f]{8}", into_place[0]) and into_place[1] == "w.orbax"
    assert put_back == (moved_aside[1], "w.orbax")
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[0]["fc3.bias"])
    assert siblings(target) == []


# --- a failing write -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A complete run (seed 0), to be overwritten."""
    out = tmp_path_factory.mktemp("old") / "run"
    assert cli.main(["train", "--out", str(out), *TINY]) == 0
    return out


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_last_write_keeps_the_old_run_and_says_so_in_one_line(tmp_path, capsys, old_run, monkeypatch):
    """metrics.json, the last file of a run, cannot be written (a full disk, an immutable file)."""
    out = shutil.copytree(old_run, tmp_path / "run")
    before = _snapshot(out)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "metrics.json":
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full)
    rc, _, err = run_cli(capsys, "train", "--out", out, "--overwrite", "--seed", "1", *TINY)
    assert rc == 2 and one_line(err), err
    assert f"{out}: expected a writable folder with room for it, found OSError: No space left on device" in err
    assert _snapshot(out) == before and siblings(out) == []


def test_a_diverged_run_with_overwrite_keeps_the_finished_run_it_would_replace(tmp_path, capsys, old_run):
    """A run that fails never replaces a finished one: exit 2, one line, the old run unchanged.
    Onto a new path it keeps the last good weights, and nothing else."""
    out = shutil.copytree(old_run, tmp_path / "run")
    before = _snapshot(out)
    diverge = ["--overwrite", "--loss", "mse", "--lr", "1e4", "--momentum", "0", "--epochs", "2", "--max-steps", "3",
               "--quiet"]
    rc, _, err = run_cli(capsys, "train", "--out", out, *diverge)
    assert rc == 2 and one_line(err) and "finished run already in" in err and "kept as it was" in err, err
    assert _snapshot(out) == before and siblings(out) == []
    (tmp_path / "new").mkdir()
    fresh = tmp_path / "new" / "fresh"
    rc, _, err = run_cli(capsys, "train", "--out", fresh, *diverge)
    assert rc == 2 and "kept the initial weights" in err, err
    assert sorted(p.name for p in fresh.iterdir()) == ["flax.orbax", "torch.safetensors"]
    first = training.initial_state(training.TrainConfig())
    for name in ("flax.orbax", "torch.safetensors"):
        np.testing.assert_array_equal(checkpoint.load_state(fresh / name)["fc1.weight"], first["fc1.weight"])
    assert siblings(fresh) == []


DISK_FULL = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # a write past the limit fails with EFBIG
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "flax-lenet"
runpy.run_module("flax_lenet", run_name="__main__")
"""


@pytest.mark.parametrize("name", ["out.safetensors", "out.pt", "out.orbax"])
@pytest.mark.slow
def test_convert_onto_a_full_disk_is_one_line_exit_2_and_writes_nothing(tmp_path, env, states, name):
    """Files may grow to 100 kB only (``RLIMIT_FSIZE``): each checkpoint needs about 300 kB. Before:
    a SafetensorError or RuntimeError traceback (exit 1), or Orbax's 230 lines of logs."""
    checkpoint.save(tmp_path / "in.safetensors", states[0])
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, "100000", "convert", str(tmp_path / "in.safetensors"),
                           str(tmp_path / name)], capture_output=True, text=True, env=dict(env, FLAX_LENET_CACHE="0"),
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert one_line(proc.stderr) and "expected a writable folder with room for it, found OSError: File too large" \
        in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]


ON_A_SMALL_DISK = """\
mount -t tmpfs -o size=400k tmpfs "$1" || exit 99
cp "$2" "$1/old.safetensors" || exit 98
"$3" -m flax_lenet convert "$1/old.safetensors" "$1/$4"
echo "rc=$?" >&2
ls -A "$1" >&2
"""


def _can_mount_a_small_disk(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.parametrize("name", ["out.safetensors", "out.orbax"])
@pytest.mark.slow
def test_convert_onto_a_really_full_disk_is_one_line_exit_2(tmp_path, env, states, name):
    """A 400 kB tmpfs (in a user namespace of its own) holding IN, 325 kB: the real ENOSPC, where
    the system allows it. Before: a SafetensorError traceback, or Orbax's 230 lines of logs."""
    if not _can_mount_a_small_disk(tmp_path):
        pytest.skip("needs unshare --user --mount and tmpfs (Linux user namespaces)")
    checkpoint.save(tmp_path / "in.safetensors", states[0])
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", ON_A_SMALL_DISK, "sh",
                           str(small), str(tmp_path / "in.safetensors"), sys.executable, name],
                          capture_output=True, text=True, env=dict(env, FLAX_LENET_CACHE="0"), timeout=300)
    lines = proc.stderr.splitlines()
    assert lines[1:] == ["rc=2", "old.safetensors"], proc.stderr                # nothing left beside it
    assert lines[0].startswith("flax-lenet convert: error: ") and "No space left on device" in lines[0], lines


@pytest.mark.slow
def test_train_onto_a_full_disk_keeps_the_old_run_and_says_so_in_one_line(tmp_path, env, old_run):
    """Files may grow to 100 kB only: the Flax checkpoint's data (300 kB) cannot be written. Before:
    a SafetensorError traceback, the old metrics beside a lone new flax.orbax that blocked the next run."""
    out = shutil.copytree(old_run, tmp_path / "run")
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, "100000", "train", "--out", str(out), "--overwrite",
                           "--seed", "1", *TINY], capture_output=True, text=True, env=dict(env, FLAX_LENET_CACHE="0"),
                          timeout=300)
    assert proc.returncode == 2 and one_line(proc.stderr), proc
    assert f"{out}: expected a writable folder with room for it, found OSError: File too large" in proc.stderr
    assert _snapshot(out) == before and siblings(out) == []


def test_every_file_convert_writes_gets_the_mode_the_umask_gives(tmp_path, capsys, states):
    """safetensors creates its files 0600; the app gives every file it writes the umask's mode."""
    checkpoint.save(tmp_path / "in.pt", states[0])
    mask = os.umask(0o027)
    try:
        for name in ("out.safetensors", "out.pt"):
            rc, _, err = run_cli(capsys, "convert", tmp_path / "in.pt", tmp_path / name)
            assert rc == 0, err
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    finally:
        os.umask(mask)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the umask from Linux's /proc")
def test_the_umask_is_read_without_setting_it(monkeypatch):
    """Reading it by setting it would leave a moment in which a file another thread creates gets
    the mode 0666."""
    mask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *args: pytest.fail("os.umask was called"))
        assert files.umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(mask)


# --- killed anywhere in the write phase ------------------------------------------------------------

def _kill_points(count_file: Path) -> list[tuple[str, str]]:
    """``KILL_POINTS`` file-system events of the write phase (``tests/kill_at.py``), each with its
    signal: the event before each swap's own event, that event (the rename of the new content to
    NAME; for a folder, the second of its two renames) and the one after, each with SIGKILL and
    with Ctrl-C; the rest spread over the whole phase, SIGKILL and Ctrl-C in turn. Events from a
    swap on are named relative to it (``swapI+K``): Orbax's threads add a varying number of events
    before it, so an absolute number from the counting run could land before the swap in a killed
    run, every time."""
    total, *swaps = map(int, count_file.read_text().split())
    assert total >= 2 * KILL_POINTS and swaps, (total, swaps)

    def name(p: int) -> str:
        i = max((n for n, s in enumerate(swaps, start=1) if s <= p), default=0)
        return f"swap{i}+{p - swaps[i - 1]}" if i else str(p)
    near = sorted({p for s in swaps for p in (s - 1, s, s + 1)})
    points = [(name(p), sig) for p in near for sig in ("SIGKILL", "SIGINT")]
    spread = KILL_POINTS - len(points)
    while len(others := sorted(set(np.linspace(1, total, spread).round().astype(int).tolist()) - set(near))) \
            < KILL_POINTS - len(points):
        spread += 1
    points += [(name(p), "SIGKILL" if i % 2 == 0 else "SIGINT") for i, p in enumerate(others)]
    return sorted(points, key=lambda point: (point[0].startswith("swap"), point))


def _check_kill(proc, sig, command: str) -> None:
    if sig == "SIGKILL":
        assert proc.returncode in (-signal.SIGKILL, 0), proc
    else:
        assert proc.returncode in (130, 0), proc
        if proc.returncode == 130:
            assert proc.stderr == f"flax-lenet {command}: interrupted\n", proc.stderr


def killed(env, point: str, sig: str, *argv):
    """``flax-lenet ARGV`` signalled at ``point`` (``tests/kill_at.py``); its PID with the result."""
    with subprocess.Popen([sys.executable, str(KILL_AT), f"{point}:{sig}", "--", *map(str, argv)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    done = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    done.pid = p.pid
    return done


def _moved_aside(target: Path, proc, old: dict) -> bool:
    """True if ``target`` is in the one state other than old or new: absent, after a SIGKILL between
    the two renames of its folder swap. Then exactly that: the complete old folder beside it as
    ``.NAME.old-PID-XXXXXXXX`` (PID: the killed process's), and at most that process's lock file
    and its temporary (the new folder) with it."""
    if target.exists():
        return False
    assert proc.returncode == -signal.SIGKILL, (proc, siblings(target))
    name, pid = re.escape(target.name), proc.pid
    names = siblings(target)
    moved = [n for n in names if re.fullmatch(rf"\.{name}\.old-{pid}-[0-9a-f]{{8}}", n)]
    rest = [n for n in names if n not in moved and n != f".{target.name}.lock"
            and not re.fullmatch(rf"\.{name}\.tmp-{pid}-[0-9a-f]{{8}}", n)]
    assert len(moved) == 1 and rest == [], names
    assert _snapshot(target.parent / moved[0]) == old
    return True


def _assert_outcomes(outcomes: list[tuple[str, str, str]]) -> None:
    """Old and new both seen (the points span the swap). NAME moved aside only after a SIGKILL, and
    always when SIGKILL lands on a swap's own event (``swapI+0``), between the folder's two renames;
    never at another point named relative to a swap. (A point given as an absolute number may land
    on the swap's event in a run where Orbax's threads made fewer events before it.)"""
    kinds = [kind for _, _, kind in outcomes]
    assert "old" in kinds and "new" in kinds, outcomes
    for point, sig, kind in outcomes:
        on_the_swap = re.fullmatch(r"swap\d+\+0", point) is not None
        if kind == "moved aside":
            assert sig == "SIGKILL" and (on_the_swap or not point.startswith("swap")), (point, sig, outcomes)
        elif on_the_swap and sig == "SIGKILL":
            raise AssertionError(f"SIGKILL at {point}, between the two renames, left {kind}: {outcomes}")


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, env, old_run):
    """The old run (seed 0), the new run's reference (seed 1), and the write phase's event count."""
    root = tmp_path_factory.mktemp("kill")
    ref = shutil.copytree(old_run, root / "ref" / "run")
    count = root / "count"
    proc = flax_lenet(env, "train", "--out", ref, "--overwrite", "--seed", "1", *TINY, kill_at=f"count:{count}")
    assert proc.returncode == 0, proc
    reference = {"torch": checkpoint.load_state(ref / "torch.safetensors"),
                 "flax": checkpoint.load_state(ref / "flax.orbax")}
    return root, reference, _kill_points(count)


@pytest.mark.slow
def test_train_killed_anywhere_in_its_write_phase_leaves_the_old_or_the_new_complete_run(env, old_run, kill_setup):
    """Or, killed between the two renames of the run folder's swap, no run and the old one beside
    it, which the next reader (``convert run/flax.orbax``) puts back."""
    root, reference, points = kill_setup
    out = root / "killed" / "run"
    old = _snapshot(old_run)
    outcomes = []
    for point, sig in points:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(old_run, out)           # beside it, what earlier SIGKILLs left: its writer removes it
        proc = killed(env, point, sig, "train", "--out", out, "--overwrite", "--seed", "1", *TINY)
        _check_kill(proc, sig, "train")
        if _moved_aside(out, proc, old):
            outcomes.append((point, sig, "moved aside"))
            back = flax_lenet(env, "convert", out / "flax.orbax", root / "probe.safetensors", "--overwrite")
            assert back.returncode == 0, back
            assert _snapshot(out) == old and siblings(out) == [], siblings(out)
        elif _snapshot(out) == old:
            outcomes.append((point, sig, "old"))
        else:
            _assert_complete_run(out, seed=1, reference=reference)
            outcomes.append((point, sig, "new"))
        if sig == "SIGINT":                     # Ctrl-C removes its temporaries and lock before exiting
            assert siblings(out) == [], (point, siblings(out))
    _assert_outcomes(outcomes)
    # whatever SIGKILL left beside the run, the next writer removes
    proc = flax_lenet(env, "train", "--out", out, "--overwrite", "--seed", "1", *TINY)
    assert proc.returncode == 0, proc
    _assert_complete_run(out, seed=1, reference=reference)
    assert siblings(out) == []


@pytest.fixture(scope="module")
def convert_setup(tmp_path_factory, env, states):
    root = tmp_path_factory.mktemp("kill-convert")
    checkpoint.save(root / "old.orbax", states[0])
    checkpoint.save(root / "new.safetensors", states[1])
    shutil.copytree(root / "old.orbax", root / "w.orbax")
    count = root / "count"
    proc = flax_lenet(env, "convert", root / "new.safetensors", root / "w.orbax", "--overwrite",
                      kill_at=f"count:{count}")
    assert proc.returncode == 0, proc
    shutil.rmtree(root / "w.orbax")
    return root, _kill_points(count)


@pytest.mark.slow
def test_convert_killed_anywhere_in_its_write_phase_leaves_the_old_or_the_new_checkpoint(env, states, convert_setup):
    """Or, killed between the two renames of the folder swap, no checkpoint and the old one beside
    it, which the next writer puts back (and, without ``--overwrite``, then refuses to replace)."""
    root, points = convert_setup
    target = root / "killed" / "w.orbax"
    target.parent.mkdir()
    old = _snapshot(root / "old.orbax")
    outcomes = []
    for point, sig in points:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / "old.orbax", target)
        proc = killed(env, point, sig, "convert", root / "new.safetensors", target, "--overwrite")
        _check_kill(proc, sig, "convert")
        if _moved_aside(target, proc, old):
            outcomes.append((point, sig, "moved aside"))
            back = flax_lenet(env, "convert", root / "new.safetensors", target)
            assert back.returncode == 2 and one_line(back.stderr), back
            assert "found an existing directory" in back.stderr, back.stderr
            assert _snapshot(target) == old and siblings(target) == [], siblings(target)
        elif _snapshot(target) == old:
            outcomes.append((point, sig, "old"))
        else:
            got = checkpoint.load_state(target, notes=(notes := []))
            assert notes == []
            for k in states[1]:
                np.testing.assert_array_equal(got[k], states[1][k])
            outcomes.append((point, sig, "new"))
        if sig == "SIGINT":
            assert siblings(target) == [], (point, siblings(target))
    _assert_outcomes(outcomes)
    proc = flax_lenet(env, "convert", root / "new.safetensors", target, "--overwrite")
    assert proc.returncode == 0 and siblings(target) == [], (proc, siblings(target))


def test_the_product_carries_no_kill_switch():
    """The kill points above come from ``tests/kill_at.py`` alone: no module of ``flax_lenet``
    installs an audit hook, raises its own audit event, reads a test-only variable, or swaps
    folders by other means than ``os.rename``."""
    found = [f"{p.relative_to(REPO)}: {word}" for p in sorted((REPO / "flax_lenet").rglob("*.py"))
             for word in ("addaudithook", "sys.audit(", "FLAX_LENET_TEST", "renameat2", "ctypes")
             if word in p.read_text(encoding="utf-8")]
    assert found == []
