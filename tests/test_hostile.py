"""Hostile cases, one row each: what a user's files, paths and arguments may be, and what the app
must do about them. Every row runs ``flax-lenet`` in this process and asserts its exit code, its
one line, and the state of every file it could have touched. The rows that must stay bounded in
memory and time (``MEMORY_ROWS``) run again in a process of their own, which must also end within
``HANG_LIMIT_S`` and peak under 1 GiB of resident memory.

The rule under test (``flax_lenet/app/files.py``): every path the app writes goes through one
writer that replaces only what the project itself wrote, recognised by a record in its lock
file and never by a name alone, opens no lock through a symbolic link and only regular files.
"""

import os
from pathlib import Path

import pytest

from flax_lenet.app import files
from tests.helpers import run_cli

TINY = ["--epochs", "1", "--max-steps", "1", "--quiet"]


BIG = 64 << 20          # a file this large (the sparse 3 GiB .pt) is compared by its metadata, not read


def tree(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes (files), ``'<dir>'``, ``'<fifo>'`` or its link. A
    file of ``BIG`` bytes or more is its size, inode and modification time instead: any write or
    replacement changes one of them, and reading it would cost this process gigabytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "<dir>"
        elif p.is_fifo():
            out[rel] = "<fifo>"
        elif (st := p.stat()).st_size >= BIG:
            out[rel] = ("<big file>", st.st_size, st.st_ino, st.st_mtime_ns)
        else:
            out[rel] = p.read_bytes()
    return out


def users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("the user's own file\n")
    return path


def bench(out_option: str, target: Path):
    return ["bench", "--batch", "1", "--impl", "torch:eager", "--rounds", "1", "--min-time", "0.01",
            "--processes", "one", out_option, target]


# --- the table ------------------------------------------------------------------------------------
# (id, set-up(tmp_path) -> argv, the words the one line must hold)

def _bench_json_onto_a_folder(tmp):
    return bench("--json", users_folder(tmp / "results")), "expected a new or a regular file, found a folder"


def _bench_png_onto_a_folder(tmp):
    return bench("--png", users_folder(tmp / "plots")), "expected a new or a regular file, found a folder"


def _bench_json_into_proc(tmp):
    return (bench("--json", Path("/proc/version")),
            "--json: /proc/version: expected its folder /proc to take a new file, found that making one there fails")


def _bench_endless_rounds(tmp):
    return ["bench", "--batch", "1", "--impl", "torch:eager", "--rounds", "999999999999999999999"], \
        "--rounds must be in [1, 1000]"


def _train_through_a_symlinked_lock(tmp):
    (tmp / "victim.txt").write_text("precious\n")
    (tmp / "runs").mkdir()
    os.symlink(tmp / "victim.txt", tmp / "runs" / ".s3.lock")
    return ["train", "--out", tmp / "runs" / "s3", *TINY], "found a symbolic link"


def _convert_through_a_symlinked_lock(tmp):
    from flax_lenet.app import checkpoint, training
    checkpoint.save(tmp / "in.safetensors", training.initial_state(training.TrainConfig()))
    (tmp / "victim.txt").write_text("precious\n")
    os.symlink(tmp / "victim.txt", tmp / ".c3.safetensors.lock")
    return ["convert", tmp / "in.safetensors", tmp / "c3.safetensors"], "found a symbolic link"


def _train_with_a_fifo_as_its_lock(tmp):
    (tmp / "runs").mkdir()
    os.mkfifo(tmp / "runs" / ".s6.lock")
    return ["train", "--out", tmp / "runs" / "s6", *TINY], "to be a regular file, found a FIFO"


def _docs_onto_a_folder(tmp):
    out = tmp / "d"
    out.mkdir()
    users_folder(out / "porting.md")
    return None, "expected a new or a regular file, found a folder"


def users_port(tmp: Path, *argv) -> list:
    """``compare --torch m.py:TLin --flax m.py:FLin *argv``, as the hostile report wrote it: the models of
    ``USER_MODELS`` (a Linear(4, 3) each side, so any N,4 shape fits) in ``tmp/m.py``."""
    (tmp / "m.py").write_text(USER_MODELS)
    return ["compare", "--torch", f"{tmp / 'm.py'}:TLin", "--flax", f"{tmp / 'm.py'}:FLin", *argv]


def _compare_input_of_a_billion_elements(tmp):
    return users_port(tmp, "--input-shape", "100000000,4"), "--input-shape: expected at most"


def _compare_input_shape_past_int64(tmp):
    return users_port(tmp, "--input-shape", "99999999999999999999,4"), "--input-shape: expected at most"


def _compare_input_high_past_int64(tmp):
    return users_port(tmp, "--input-shape", "2,4", "--input-dtype", "int64", "--input-high",
                      "1180591620717411303424"), "--input-high: expected at most"


def _compare_seed_past_64_bits(tmp):
    return ["compare", "--seed", "18446744073709551616"], \
        "--seed: expected an integer in 0..2**64-1 (torch.manual_seed takes 64 bits), found 18446744073709551616"


def _compare_input_high_without_tokens(tmp):
    return ["compare", "--torch", "torch_reference.model:Net", "--flax", "flax_lenet:Net",
            "--input-shape", "1,1,32,32", "--input-high", "10"], "expected it with --input-dtype int64"


def _convert_to_an_empty_path(tmp):
    from flax_lenet.app import checkpoint, training
    checkpoint.save(tmp / "w.safetensors", training.initial_state(training.TrainConfig()))
    return ["convert", tmp / "w.safetensors", ""], "OUT: expected a path"


def _orbax_with(tmp, where: str, make) -> Path:
    from flax_lenet.app import checkpoint, training
    ckpt = tmp / "w.orbax"
    checkpoint.save(ckpt, training.initial_state(training.TrainConfig()))
    target = ckpt / where
    if target.is_dir():
        import shutil
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    make(target)
    return ckpt


def _eval_orbax_with_a_fifo_manifest(tmp):
    ckpt = _orbax_with(tmp, "manifest.ocdbt", os.mkfifo)
    return ["eval", ckpt], "manifest.ocdbt a FIFO"


def _eval_orbax_with_a_fifo_data_file(tmp):
    from flax_lenet.app import checkpoint, training
    ckpt = tmp / "w.orbax"
    checkpoint.save(ckpt, training.initial_state(training.TrainConfig()))
    first = sorted(p for p in (ckpt / "d").iterdir() if p.is_file())[0]
    first.unlink()
    os.mkfifo(first)
    return ["eval", ckpt], f"d/{first.name} a FIFO"


def _convert_orbax_with_a_fifo_sidecar(tmp):
    ckpt = _orbax_with(tmp, "flax_lenet.sha256", os.mkfifo)
    return ["convert", ckpt, tmp / "out.safetensors"], "flax_lenet.sha256 a FIFO"


def _eval_orbax_with_a_folder_sidecar(tmp):
    ckpt = _orbax_with(tmp, "flax_lenet.sha256", Path.mkdir)
    return ["eval", ckpt], "expected flax_lenet.sha256 to be a regular file, found a folder"


def _eval_a_3_gib_pt(tmp):
    with open(tmp / "big.pt", "wb") as f:
        f.truncate(3 << 30)                                 # sparse: no disk, but 3 GiB to read
    return ["eval", tmp / "big.pt"], "of at most 256 MiB, found 3,072 MiB; nothing was read"


def _train_out_of_256_bytes(tmp):
    return ["train", "--out", tmp / ("a" * 256), *TINY], "expected a file name of at most 191 bytes"


def _train_out_not_utf8(tmp):
    return (["train", "--out", os.fsdecode(bytes(tmp) + b"/x\xff"), *TINY],
            r"expected a file name in UTF-8, found the bytes b'x\xff'")


def _convert_to_a_name_of_250_bytes(tmp):
    from flax_lenet.app import checkpoint, training
    checkpoint.save(tmp / "w.safetensors", training.initial_state(training.TrainConfig()))
    return ["convert", tmp / "w.safetensors", tmp / ("c" * 238 + ".safetensors")], "OUT: expected a file name"


def _eval_safetensors_with_a_list_header(tmp):
    import struct
    header = b"[1, 2, 3]"
    (tmp / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return ["eval", tmp / "w.safetensors"], "a header that is a JSON list, not an object"


def _train_out_empty(tmp):
    return ["train", "--out", "", *TINY], "--out"


CASES = {
    "compare --input-shape of 4e8 elements": _compare_input_of_a_billion_elements,
    "compare --input-shape past int64": _compare_input_shape_past_int64,
    "compare --input-high past int64": _compare_input_high_past_int64,
    "compare --input-high without --input-dtype int64": _compare_input_high_without_tokens,
    "compare --seed past 64 bits": _compare_seed_past_64_bits,
    "train --out ''": _train_out_empty,
    "eval of a safetensors file whose header is a JSON list": _eval_safetensors_with_a_list_header,
    "train --out of 256 bytes": _train_out_of_256_bytes,
    "train --out not UTF-8": _train_out_not_utf8,
    "convert OUT of 250 bytes": _convert_to_a_name_of_250_bytes,
    "eval of an Orbax folder whose manifest is a FIFO": _eval_orbax_with_a_fifo_manifest,
    "eval of an Orbax folder with a FIFO in d/": _eval_orbax_with_a_fifo_data_file,
    "convert of an Orbax folder whose sidecar is a FIFO": _convert_orbax_with_a_fifo_sidecar,
    "eval of an Orbax folder whose sidecar is a folder": _eval_orbax_with_a_folder_sidecar,
    "eval of a 3 GiB .pt": _eval_a_3_gib_pt,
    "convert IN ''": _convert_to_an_empty_path,
    "bench --json onto a folder of the user's": _bench_json_onto_a_folder,
    "bench --png onto a folder of the user's": _bench_png_onto_a_folder,
    "bench --json into /proc, refused before the benchmark": _bench_json_into_proc,
    "bench --rounds without end": _bench_endless_rounds,
    "train --out through a symlinked lock file": _train_through_a_symlinked_lock,
    "convert through a symlinked lock file": _convert_through_a_symlinked_lock,
    "train --out with a FIFO as its lock file": _train_with_a_fifo_as_its_lock,
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, case):
    argv, says = CASES[case](tmp_path)
    before = tree(tmp_path)
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err and says in err, err
    assert tree(tmp_path) == before
    assert "flax-lenet bench: " not in out             # refused before any benchmark ran


def test_docs_onto_a_folder_of_the_users_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    import docs.build
    _, says = _docs_onto_a_folder(tmp_path)
    before = tree(tmp_path)
    files_written = {name: "text\n" for name in ("porting.html", "porting.md")}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(docs.build, "build", lambda: files_written)      # the check, not the generator
        rc = docs.build.main(["--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err, err
    assert tree(tmp_path) == before


def test_the_table_can_fail_a_writer_that_replaces_a_folder(tmp_path, capsys, monkeypatch):
    """The broken twin: ``write_bytes`` without its check replaces the user's folder, and the
    table's first row sees it."""
    real = files.atomic_write
    monkeypatch.setattr(files, "atomic_write", lambda path, write, **kw: real(path, write, overwrite=True))
    argv, _ = _bench_json_onto_a_folder(tmp_path)
    monkeypatch.setattr(files, "check_writable", lambda path: None)
    before = tree(tmp_path)
    run_cli(capsys, *argv)
    assert tree(tmp_path) != before


def test_leftover_lookalikes_of_the_users_survive_a_run_and_a_swap_of_it(tmp_path, capsys):
    """Names like the project's temporaries, made by the user beside ``--out``: never removed,
    never renamed into place, before or after a run that replaces ``--out``."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".s4.tmp-mynotes1").write_text("mine\n")
    users_folder(runs / ".s4.old-backup01")
    (runs / ".s4.tmp-4242-0123abcd").write_text("also mine\n")
    mine = tree(runs)
    rc, _, err = run_cli(capsys, "train", "--out", runs / "s4", *TINY)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "train", "--out", runs / "s4", "--overwrite", *TINY)
    assert rc == 0, err
    after = tree(runs)
    assert {k: v for k, v in after.items() if k in mine} == mine
    assert sorted(n for n in os.listdir(runs) if not n.startswith(".")) == ["s4"]
    assert sorted(os.listdir(runs)) == sorted([".s4.tmp-mynotes1", ".s4.old-backup01", ".s4.tmp-4242-0123abcd",
                                                "s4"])
    # a folder of the user's named like a moved-aside run is not taken for one when s5 is missing
    users_folder(runs / ".s5.old-backup01")
    rc, _, err = run_cli(capsys, "train", "--out", runs / "s5", *TINY)
    assert rc == 0, err
    assert tree(runs / ".s5.old-backup01") == {"notes.txt": b"the user's own file\n"}


# --- the same rows in a process of their own: peak memory and a hang ------------------------------
# A huge file or argument must be "exit 2 within seconds, peak under 1 GB". In this process a row cannot
# show its peak (pytest holds jax and torch) nor be stopped if it hangs, so these rows run again
# as ``python -m flax_lenet ...`` under ``WRAPPER``, a bare Python of ~10 MB. After its child
# exits, the wrapper's ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is that child's peak resident
# memory (KiB on Linux). Linux carries the forking process's peak over fork and exec into
# ``ru_maxrss``: a child of pytest itself would report pytest's peak, a child of the wrapper
# inherits only the wrapper's ~10 MB (``tests/test_input_limits.py`` measures the same way).

ROOT = Path(__file__).resolve().parents[1]
PEAK_LIMIT_KIB = 1 << 20                    # 1 GiB
HANG_LIMIT_S = 60                           # a hang, not a speed: a refusal takes 1-4 s here, loaded

WRAPPER = """
import json, resource, subprocess, sys, time
start = time.monotonic()
try:
    done = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    rc, out, err = done.returncode, done.stdout, done.stderr
except subprocess.TimeoutExpired as e:                 # killed and reaped: its peak still counts
    rc, out, err = "timeout", str(e.stdout or ""), str(e.stderr or "")
print(json.dumps({"rc": rc, "out": out, "err": err, "seconds": time.monotonic() - start,
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_measured(argv, cwd: Path) -> dict:
    """``argv`` in a child of ``WRAPPER``, stopped after ``HANG_LIMIT_S``: its exit code (or
    ``'timeout'``), stdout, stderr, seconds and peak resident memory in KiB."""
    import json
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("FLAX_LENET_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(HANG_LIMIT_S), *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=HANG_LIMIT_S + 30)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def assert_refused_in_one_line_within_limits(got: dict, says: str) -> None:
    """Exit 2, one line holding ``says``, within ``HANG_LIMIT_S`` and under ``PEAK_LIMIT_KIB``."""
    short = {**got, "out": got["out"][-300:], "err": got["err"][-1000:]}
    assert got["rc"] != "timeout", f"still running after {HANG_LIMIT_S} s: {short}"
    assert got["rc"] == 2, short
    assert got["err"].count("\n") == 1 and "Traceback" not in got["err"] and says in got["err"], short
    assert got["peak_kib"] < PEAK_LIMIT_KIB, \
        f"peak resident memory {got['peak_kib'] / 1024:,.0f} MiB, over the limit of {PEAK_LIMIT_KIB / 1024:,.0f} MiB"


MEMORY_ROWS = [                             # the rows of CASES bounded in memory and time
    "eval of a 3 GiB .pt",                                      # case 6
    "compare --input-shape of 4e8 elements",                    # case 7
    "compare --input-shape past int64",
    "compare --input-high past int64",
    "bench --rounds without end",
    "bench --json into /proc, refused before the benchmark",
]


@pytest.mark.parametrize("case", MEMORY_ROWS)
def test_hostile_case_is_refused_within_seconds_and_under_1_gib_in_a_process_of_its_own(tmp_path, case):
    import sys
    argv, says = CASES[case](tmp_path)
    before = tree(tmp_path)
    got = run_measured([sys.executable, "-m", "flax_lenet", *argv], cwd=tmp_path)
    assert_refused_in_one_line_within_limits(got, says)
    assert "flax-lenet bench: " not in got["out"]              # refused before any benchmark ran
    assert tree(tmp_path) == before
    print(f"{case}: peak {got['peak_kib'] / 1024:.0f} MiB, {got['seconds']:.1f} s")


def test_the_memory_rows_can_fail_a_process_that_peaks_at_1_5_gib(tmp_path):
    """The broken twin: a child that touches 1.5 GiB, then exits 2 with one line, as a refusal
    does; only its peak is wrong, and the check reports it. The same child at 64 MiB passes."""
    import sys
    payload = "import sys; b = b'x' * ({mib} << 20); sys.stderr.write('refused\\n'); sys.exit(2)"
    got = run_measured([sys.executable, "-c", payload.format(mib=1536)], cwd=tmp_path)
    with pytest.raises(AssertionError, match="peak resident memory 1,5[0-9][0-9] MiB, over the limit of 1,024 MiB"):
        assert_refused_in_one_line_within_limits(got, "refused")
    assert_refused_in_one_line_within_limits(run_measured([sys.executable, "-c", payload.format(mib=64)],
                                                          cwd=tmp_path), "refused")


# --- port mode: the user's model raises ------------------------------------------------------------

USER_MODELS = '''
import sys
import torch.nn as nn
from flax import nnx


class TLin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class FLin(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(x)


class FWide(FLin):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 5, rngs=rngs)


class TTuple(TLin):
    def forward(self, x):
        return self.fc(x), x


class TDict(TLin):
    def forward(self, x):
        return {"logits": self.fc(x)}


class FNone(FLin):
    def __call__(self, x):
        self.fc(x)


class TRaises(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("no weights file found")


class TExits(TLin):
    def __init__(self):
        sys.exit(0)


class TTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(5, 3)

    def forward(self, t):
        return self.e(t).mean(1)


class FTokens(nnx.Module):
    def __init__(self, rngs):
        self.e = nnx.Embed(5, 3, rngs=rngs)

    def __call__(self, t):
        return self.e(t).mean(1)


class TFailsInTraining(TLin):
    def forward(self, x):
        y = self.fc(x)
        if y.requires_grad:
            raise ValueError("cannot train this one")
        return y
'''

PORT = {   # id: (--torch, --flax, extra arguments, exit code, words of the one line)
    "a model returning a tuple": ("m.py:TTuple", "m.py:FLin", [], 3,
                                  "--torch m.py:TTuple returned tuple on an input of shape (2, 4), not one array"),
    "a model returning a dict": ("m.py:TDict", "m.py:FLin", [], 3,
                                 "--torch m.py:TDict returned dict on an input of shape (2, 4), not one array"),
    "a model returning None": ("m.py:TLin", "m.py:FNone", [], 3,
                               "--flax m.py:FNone returned NoneType on an input of shape (2, 4), not one array"),
    "an out-of-range token": ("m.py:TTokens", "m.py:FTokens", ["--input-dtype", "int64", "--input-high", "9"], 3,
                              "--torch m.py:TTokens raised IndexError"),
    "an input shape the model cannot take": ("m.py:TLin", "m.py:FLin", ["--input-shape", "2,5"], 3,
                                             "raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    "outputs of different shapes": ("m.py:TLin", "m.py:FWide", [], 1, "the outputs differ in shape"),
    "a constructor that raises": ("m.py:TRaises", "m.py:FLin", [], 3,
                                  "building the model raised RuntimeError: no weights file found"),
    "--torch sys:exit": ("sys:exit", "m.py:FLin", [], 3, "building the model raised SystemExit(None)"),
    "a constructor calling sys.exit(0)": ("m.py:TExits", "m.py:FLin", [], 3, "SystemExit(0)"),
    "a model that raises only when trained": ("m.py:TFailsInTraining", "m.py:FLin", [], 3,
                                              "(in TFailsInTraining.forward) raised ValueError: cannot train this one"),
}


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLAX_LENET_DEBUG", raising=False)
    return tmp_path


@pytest.mark.parametrize("case", list(PORT))
def test_port_mode_reports_a_failing_user_model_in_one_line(user_models, capsys, case):
    torch_spec, flax_spec, extra, code, says = PORT[case]
    shape = [] if "--input-shape" in extra else ["--input-shape", "2,4"]
    rc, out, err = run_cli(capsys, "compare", "--torch", torch_spec, "--flax", flax_spec, *shape, *extra)
    assert rc == code, (rc, out, err)
    text = err if code == 3 else out
    assert says in text and text.count("\n") == 1 and "Traceback" not in text, text
    if code == 3:
        assert "on an input of shape (2, " in text or "building the model" in text     # side, model, shape, error


def test_port_mode_with_debug_shows_the_users_traceback(user_models, capsys, monkeypatch):
    """The twin: ``FLAX_LENET_DEBUG=1`` lets the exception through, with the user's own one inside."""
    from flax_lenet.errors import ModelRaised
    monkeypatch.setenv("FLAX_LENET_DEBUG", "1")
    with pytest.raises(ModelRaised) as raised:
        run_cli(capsys, "compare", "--torch", "m.py:TRaises", "--flax", "m.py:FLin", "--input-shape", "2,4")
    assert isinstance(raised.value.__cause__, RuntimeError)


@pytest.mark.slow
@pytest.mark.parametrize("xla_flags", [None, "--xla_cpu_max_isa=AVX2"])
def test_a_platform_the_machine_lacks_is_one_line_exit_2(tmp_path, xla_flags):
    """``JAX_PLATFORMS=rocm`` where JAX has no such backend: one line, not JAX's 70-line
    RuntimeError (a process of its own: this one's JAX has started already); with valid
    ``XLA_FLAGS`` set too, the line names the platform, not the flags."""
    import subprocess
    import sys
    env = dict(os.environ, JAX_PLATFORMS="rocm", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("XLA_FLAGS", None)
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", "train", "--epochs", "1", "--max-steps", "1",
                           "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("flax-lenet train: error: JAX_PLATFORMS=rocm: expected platforms this machine")
    assert proc.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_xla_flags_xla_does_not_know_are_one_line_exit_2(tmp_path):
    """``XLA_FLAGS=--this_is_garbage=1``: XLA aborts the process on an unknown flag, with no Python
    exception to catch; the command asks a child process first and says so in one line."""
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS="--this_is_garbage=1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", "train", "--epochs", "1", "--max-steps", "1",
                           "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc
    assert proc.stderr == ("flax-lenet train: error: XLA_FLAGS=--this_is_garbage=1: expected flags that XLA knows, "
                           "found Unknown flag in XLA_FLAGS: --this_is_garbage=1\n")
    assert list(tmp_path.iterdir()) == []


def test_xla_flags_that_xla_knows_pass_the_probe():
    """The twin: a flag XLA knows is not refused (and the probe's answer is kept for the process)."""
    from flax_lenet.app.cli import xla_flags_refusal
    assert xla_flags_refusal("--xla_cpu_max_isa=AVX2") == ""
