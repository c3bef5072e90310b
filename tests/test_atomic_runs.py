"""A run, and every checkpoint, is one unit: old and complete, or new and complete, never a mix.

``flax_lenet.app.files`` writes beside the target and swaps it in with one rename, holding a lock
file that refuses a second writer; ``runs.write_run`` builds a whole run that way. These tests
kill ``train`` and ``convert`` at many points of their write phase (SIGKILL and Ctrl-C), start two
writers at once, fail the last write, and point ``--overwrite`` at things that are not checkpoints.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flax_lenet.app import checkpoint, cli, files, runs, training
from tests.helpers import state_numpy, torch_net

REPO = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "1", "--max-steps", "1", "--quiet"]
KILL_POINTS = 20            # per command, SIGKILL and Ctrl-C in turn


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


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
    for name in ("FLAX_LENET_DEBUG", files.TEST_KILL_ENV, "FLAX_LENET_CACHE"):
        e.pop(name, None)
    return e


def flax_lenet(env, *argv, extra_env=None, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "flax_lenet", *map(str, argv)], capture_output=True, text=True,
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
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    stale = [".w.orbax.tmp-4242-0123abcd", ".w.orbax.tmp-4242-0123abcd.orbax-checkpoint-tmp-17",
             ".w.orbax.tmp-k3j4h5g6"]                                 # the last: an earlier version's name
    for name in stale:
        (tmp_path / name).mkdir()
        (tmp_path / name / "half").write_bytes(b"x")
    files.lock_path(target).write_text("4242\n")                       # a lock file its dead owner left
    (tmp_path / ".w.orbax.tmp-notes").mkdir()                         # not a name the writer makes: kept
    checkpoint.save(target, states[1], overwrite=True)
    assert siblings(target) == [".w.orbax.tmp-notes"]
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[1]["fc3.bias"])


def test_a_folder_swap_cut_between_its_two_renames_is_undone_by_the_next_writer(tmp_path, states):
    """Where renameat2 is missing, a folder is swapped in two renames; a kill between them leaves
    the old folder under ``.NAME.old-*``, and the next writer puts it back before anything else."""
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    os.rename(target, tmp_path / ".w.orbax.old-4242-0123abcd")         # what the kill left
    (tmp_path / ".w.orbax.tmp-4242-89abcdef").mkdir()                  # and the new one, unfinished
    with files.claim(target):
        assert siblings(target) == [".w.orbax.lock"]
        np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[0]["fc3.bias"])


def test_without_renameat2_a_folder_is_still_replaced_whole(tmp_path, states, monkeypatch):
    monkeypatch.setattr(files, "_renameat2", lambda: None)
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    checkpoint.save(target, states[1], overwrite=True)
    np.testing.assert_array_equal(checkpoint.load_state(target)["fc3.bias"], states[1]["fc3.bias"])
    assert siblings(target) == []


def test_a_swap_interrupted_between_its_renames_puts_the_old_folder_back(tmp_path, states, monkeypatch):
    monkeypatch.setattr(files, "_renameat2", lambda: None)
    target = tmp_path / "w.orbax"
    checkpoint.save(target, states[0])
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:                  # the new folder into place: Ctrl-C lands here
            raise KeyboardInterrupt
        real_rename(a, b)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(target, states[1], overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
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


def test_a_diverged_run_with_overwrite_replaces_the_old_run_whole(tmp_path, capsys, old_run):
    """Weights only, and no metrics or curves of the old run left beside them."""
    out = shutil.copytree(old_run, tmp_path / "run")
    rc, _, err = run_cli(capsys, "train", "--out", out, "--overwrite", "--loss", "mse", "--lr", "1e4",
                         "--momentum", "0", "--epochs", "2", "--max-steps", "3", "--quiet")
    assert rc == 2 and "kept the initial weights" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["flax.orbax", "torch.safetensors"]
    first = training.initial_state(training.TrainConfig())
    for name in ("flax.orbax", "torch.safetensors"):
        np.testing.assert_array_equal(checkpoint.load_state(out / name)["fc1.weight"], first["fc1.weight"])
    assert siblings(out) == []


DISK_FULL = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # a write past the limit fails with EFBIG
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "flax-lenet"
runpy.run_module("flax_lenet", run_name="__main__")
"""


@pytest.mark.parametrize("name", ["out.safetensors", "out.pt", "out.orbax"])
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


# --- killed anywhere in the write phase ------------------------------------------------------------

def _kill_points(count_file: Path) -> list[tuple[str, str]]:
    """``KILL_POINTS`` or more file-system events of the write phase, each with its signal (SIGKILL
    and Ctrl-C in turn): spread over all of it, and each swap's own event with its neighbours (the
    rename that makes the new content visible). Events from a swap on are named relative to it
    (``swapI+K``): Orbax's threads add a varying number of events before it, so an absolute number
    from the counting run could land before the swap in a killed run, every time."""
    total, *swaps = map(int, count_file.read_text().split())
    assert total > 3 * KILL_POINTS and swaps, (total, swaps)

    def name(p: int) -> str:
        i = max((n for n, s in enumerate(swaps, start=1) if s <= p), default=0)
        return f"swap{i}+{p - swaps[i - 1]}" if i else str(p)
    near = {p for s in swaps for p in (s - 1, s, s + 1, s + 2)}
    spread = KILL_POINTS - len(near)
    while len(points := sorted(near | set(np.linspace(1, total, spread).round().astype(int).tolist()))) < KILL_POINTS:
        spread += 1
    return [(name(p), "SIGKILL" if i % 2 == 0 else "SIGINT") for i, p in enumerate(points)]


def _check_kill(proc, sig, command: str) -> None:
    if sig == "SIGKILL":
        assert proc.returncode in (-signal.SIGKILL, 0), proc
    else:
        assert proc.returncode in (130, 0), proc
        if proc.returncode == 130:
            assert proc.stderr == f"flax-lenet {command}: interrupted\n", proc.stderr


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, env, old_run):
    """The old run (seed 0), the new run's reference (seed 1), and the write phase's event count."""
    root = tmp_path_factory.mktemp("kill")
    ref = shutil.copytree(old_run, root / "ref" / "run")
    count = root / "count"
    proc = flax_lenet(env, "train", "--out", ref, "--overwrite", "--seed", "1", *TINY,
                      extra_env={files.TEST_KILL_ENV: f"count:{count}"})
    assert proc.returncode == 0, proc
    reference = {"torch": checkpoint.load_state(ref / "torch.safetensors"),
                 "flax": checkpoint.load_state(ref / "flax.orbax")}
    return root, reference, _kill_points(count)


@pytest.mark.slow
def test_train_killed_anywhere_in_its_write_phase_leaves_the_old_or_the_new_complete_run(env, old_run, kill_setup):
    root, reference, points = kill_setup
    out = root / "killed" / "run"
    old = _snapshot(old_run)
    outcomes = []
    for point, sig in points:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(old_run, out)
        proc = flax_lenet(env, "train", "--out", out, "--overwrite", "--seed", "1", *TINY,
                          extra_env={files.TEST_KILL_ENV: f"{point}:{sig}"})
        _check_kill(proc, sig, "train")
        if _snapshot(out) == old:
            outcomes.append("old")
        else:
            _assert_complete_run(out, seed=1, reference=reference)
            outcomes.append("new")
        if sig == "SIGINT":                     # Ctrl-C removes its temporaries and lock before exiting
            assert siblings(out) == [], (point, siblings(out))
    _assert_both_outcomes(outcomes)
    # whatever SIGKILL left beside the run, the next writer removes
    proc = flax_lenet(env, "train", "--out", out, "--overwrite", "--seed", "1", *TINY)
    assert proc.returncode == 0, proc
    _assert_complete_run(out, seed=1, reference=reference)
    assert siblings(out) == []


def _assert_both_outcomes(outcomes: list[str]) -> None:
    """The points span the swap: most kills land before it (the old run stays), some after."""
    assert "old" in outcomes and "new" in outcomes, outcomes
    assert sum(o == "old" for o in outcomes) >= len(outcomes) // 2, outcomes


@pytest.fixture(scope="module")
def convert_setup(tmp_path_factory, env, states):
    root = tmp_path_factory.mktemp("kill-convert")
    checkpoint.save(root / "old.orbax", states[0])
    checkpoint.save(root / "new.safetensors", states[1])
    shutil.copytree(root / "old.orbax", root / "w.orbax")
    count = root / "count"
    proc = flax_lenet(env, "convert", root / "new.safetensors", root / "w.orbax", "--overwrite",
                      extra_env={files.TEST_KILL_ENV: f"count:{count}"})
    assert proc.returncode == 0, proc
    shutil.rmtree(root / "w.orbax")
    return root, _kill_points(count)


@pytest.mark.slow
def test_convert_killed_anywhere_in_its_write_phase_leaves_the_old_or_the_new_checkpoint(env, states, convert_setup):
    root, points = convert_setup
    target = root / "killed" / "w.orbax"
    target.parent.mkdir()
    old = _snapshot(root / "old.orbax")
    outcomes = []
    for point, sig in points:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / "old.orbax", target)
        proc = flax_lenet(env, "convert", root / "new.safetensors", target, "--overwrite",
                          extra_env={files.TEST_KILL_ENV: f"{point}:{sig}"})
        _check_kill(proc, sig, "convert")
        if _snapshot(target) == old:
            outcomes.append("old")
        else:
            got = checkpoint.load_state(target, notes=(notes := []))
            assert notes == []
            for k in states[1]:
                np.testing.assert_array_equal(got[k], states[1][k])
            outcomes.append("new")
        if sig == "SIGINT":
            assert siblings(target) == [], (point, siblings(target))
    _assert_both_outcomes(outcomes)
    proc = flax_lenet(env, "convert", root / "new.safetensors", target, "--overwrite")
    assert proc.returncode == 0 and siblings(target) == [], (proc, siblings(target))


def test_the_kill_hook_is_off_unless_asked(monkeypatch):
    """Users' processes install no audit hook: the test switch is read only from its variable."""
    monkeypatch.delenv(files.TEST_KILL_ENV, raising=False)
    monkeypatch.setattr(files, "_hook_installed", False)
    added = []
    monkeypatch.setattr(sys, "addaudithook", added.append)
    files._start_test_hook()
    assert added == []
    monkeypatch.setenv(files.TEST_KILL_ENV, "999999:SIGKILL")
    files._start_test_hook()
    assert len(added) == 1
