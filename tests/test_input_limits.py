"""Hostile or huge inputs are refused within memory and time limits: IDX headers are checked
before data, a .gz is read as a capped stream, only regular files are opened (a FIFO or a device
is never waited on), batch orders are made per epoch, and a batch or a time no command could
honour is refused before anything is allocated or run. Each refusal is one line that names the
file or option and the real cause (the one-line contract itself: ``tests/test_bad_input.py``)."""

import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from flax_lenet.app import data, training
from flax_lenet.app.checks import MAX_BATCH, check_batch_size
from flax_lenet.errors import BadConfig, BadFile
from tests.helpers import one_line_exit_2

ROOT = Path(__file__).resolve().parents[1]
PEAK_LIMIT_MIB = 1024


def idx_header(code: int, shape) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}i", *shape)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() or read()."""
    def fire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- memory: measured in a fresh process with resource.getrusage ------------------------------
# Linux carries a process's peak over fork and exec into ``ru_maxrss``: a child of this pytest
# process (over 1 GB late in a full run) would report pytest's peak. So the measured process is
# started by a small launcher (a bare Python, ~10 MB), whose peak is the one it inherits; the
# measured process also reports ``VmHWM`` (its own address space's peak) as a cross-check.

LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def run_measured(script: str, *args) -> dict:
    """Run ``script`` in a fresh process started by ``LAUNCHER``; its last line of output, as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", script, *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PEAK_SCRIPT = r"""
import json, resource, sys, time
from flax_lenet.app import data
from flax_lenet.errors import BadFile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    if sys.argv[2] == "whole-file-twin":             # the old reader: the whole file, decompressed at once
        import gzip
        gzip.decompress(open(sys.argv[1], "rb").read())
        error = None
    else:
        data.read_idx(sys.argv[1])
        error = None
except BadFile as e:
    error = str(e)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rise_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "vmhwm_mib": hwm, "seconds": time.perf_counter() - start, "error": error}))
"""


def peak_of_reading(path, how: str = "read_idx") -> dict:
    got = run_measured(PEAK_SCRIPT, path, how)
    assert abs(got["peak_mib"] - got["vmhwm_mib"]) < 64, got        # getrusage measured this process alone
    return got


def gzip_bomb(path, header: bytes, gib: float) -> None:
    """A small .gz that unpacks to ``header`` + ``gib`` GiB of zeros: one member for the header
    and 1 MiB of zeros, then copies of a member of 1 MiB of zeros (gzip allows members end to end)."""
    mib = bytes(1 << 20)
    zeros = gzip.compress(mib, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header + mib, compresslevel=9))
        for _ in range(int(gib * 1024) - 1):
            f.write(zeros)


def test_a_gzip_bomb_is_refused_at_the_declared_size_and_peaks_under_1_gb(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_bomb(path, idx_header(0x08, (100, 28, 28)), gib=6)            # a header for 78 kB, then 6 GiB
    assert path.stat().st_size < 32 << 20
    got = peak_of_reading(path)
    assert got["error"] and "expected 78400 data bytes for shape (100, 28, 28), found more" in got["error"]
    assert got["peak_mib"] < PEAK_LIMIT_MIB, got


def test_the_peak_measurement_sees_a_whole_file_decompression(tmp_path):
    """Broken twin of the bomb test: decompressing the whole stream, as the reader once did."""
    path = tmp_path / "x.gz"
    gzip_bomb(path, idx_header(0x08, (100, 28, 28)), gib=0.75)
    assert peak_of_reading(path, "whole-file-twin")["rise_mib"] > 700
    assert peak_of_reading(path)["rise_mib"] < 100


@pytest.mark.parametrize("shape, message", [
    ((2 ** 31 - 1, 28, 28), r"at most 1073741824 data bytes \(1 GiB\), found a header declaring 1683627179248"),
    ((1000, 28, 28), r"expected 784000 data bytes for shape \(1000, 28, 28\), found 42949672944"),
], ids=["header beyond the limit", "header that does not match the file size"])
def test_a_sparse_file_is_refused_from_its_header_quickly_and_under_1_gb(tmp_path, shape, message):
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as f:
        f.write(idx_header(0x08, shape))
        f.truncate(40 << 30)                                  # 40 GiB of holes: no disk used
    got = peak_of_reading(path)
    assert got["error"] and re.search(message, got["error"]), got
    assert got["peak_mib"] < PEAK_LIMIT_MIB and got["seconds"] < 5, got


@pytest.mark.parametrize("code, shape, message", [
    (0x08, (2 ** 31 - 1,) * 3, r"at most 1073741824 data bytes .* found a header declaring 9903520300447984150353281023"),
    (0x0E, (2 ** 28,), r"found a header declaring 2147483648 for shape"),             # 8-byte doubles count
    (0x08, (100, -784), r"expected dimension sizes >= 0 in the IDX header, found shape \(100, -784\)"),
], ids=["product overflows int64", "float64 items", "negative dimension"])
def test_header_sizes_are_checked_in_python_integers_with_the_file_named(tmp_path, code, shape, message):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_header(code, shape))
    with pytest.raises(BadFile, match=message) as e:
        data.read_idx(path)
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize("ndim", [9, 70, 255])
def test_more_dimensions_than_an_idx_file_has_are_refused_with_the_file_named(tmp_path, ndim):
    path = tmp_path / "x-idx"
    path.write_bytes(bytes([0, 0, 0x08, ndim]) + bytes(4 * ndim))
    with pytest.raises(BadFile, match=rf"{path}: expected an IDX file of 1..8 dimensions .* found {ndim}"):
        data.read_idx(path)


@pytest.mark.parametrize("content, message", [
    (idx_header(0x08, (3,)) + bytes([1, 2, 3]) + b"tail", r"expected 3 data bytes for shape \(3,\), found more"),
    (idx_header(0x08, (3,)) + bytes([1, 2]), r"truncated: expected 3 data bytes for shape \(3,\), found 2"),
], ids=["longer", "shorter"])
def test_a_gzip_stream_is_checked_against_its_header_not_read_whole(tmp_path, content, message):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(BadFile, match=message):
        data.read_idx(path)


# --- regular files only -------------------------------------------------------------------------

def test_a_fifo_named_as_an_idx_file_is_refused_without_blocking(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(path)
    with deadline(10), pytest.raises(BadFile, match=r"expected an IDX file, found a FIFO \(named pipe\)"):
        data.read_idx(path)


@pytest.mark.parametrize("name, make, found", [
    ("x.pt", os.mkfifo, "found a FIFO (named pipe) (only regular files are opened)"),
    ("x.safetensors", os.mkfifo, "found a FIFO (named pipe) (only regular files are opened)"),
    ("zero.pt", lambda path: path.symlink_to("/dev/zero"), "found a character device"),    # a read that never ends
], ids=["FIFO .pt", "FIFO .safetensors", "/dev/zero"])
def test_eval_refuses_a_checkpoint_that_is_no_regular_file_without_blocking(tmp_path, capsys, name, make, found):
    make(tmp_path / name)
    with deadline(60):
        err = one_line_exit_2(capsys, "eval", tmp_path / name)
    assert found in err


# --- batch orders, one epoch at a time -------------------------------------------------------

def test_batch_orders_are_made_per_epoch_and_equal_the_shared_sequence():
    cfg = training.TrainConfig(epochs=10_000_000, batch_size=32, max_steps_per_epoch=1)
    order = training.batch_order(1437, cfg)                       # would be 2.5 GB of indices up front
    assert order.shape == (10_000_000, 1, 32)
    rng = np.random.default_rng(cfg.seed)
    expected = [rng.permutation(1437)[:32].reshape(1, 32) for _ in range(3)]
    for epoch, got in zip(range(3), order):
        np.testing.assert_array_equal(got, expected[epoch])
    np.testing.assert_array_equal(order[2], expected[2])
    np.testing.assert_array_equal(order[0], expected[0])           # going back redraws
    np.testing.assert_array_equal(order[1], expected[1])
    with pytest.raises(IndexError):
        order[10_000_000]


@pytest.mark.slow
def test_training_with_ten_million_epochs_starts_without_building_them(tmp_path):
    """``train --epochs 10000000 --max-steps 1``: stopped after its first epoch, under 1 GB."""
    script = r"""
import json, resource
from flax_lenet.app import data, training
class Stop(Exception): pass
def stop(epoch, result): raise Stop
try:
    training.train(data.load_digits(), training.TrainConfig(epochs=10_000_000, max_steps_per_epoch=1), on_epoch=stop)
except Stop:
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    assert run_measured(script)["peak_mib"] < PEAK_LIMIT_MIB




# --- batches and times no command could honour, refused before anything is allocated or run ---

@pytest.mark.parametrize("batch", [0, 65537, 100_000_000, True, 2.0])
def test_check_batch_size_refuses_what_no_command_can_allocate(batch):
    with pytest.raises(BadConfig, match=r"--batch: expected a batch of 1\.\.65536 images"):
        check_batch_size(batch, "--batch")
    check_batch_size(MAX_BATCH, "--batch")


@pytest.mark.parametrize("argv", [["bench", "--batch", "1,100000000", "--impl", "flax:train_step"],
                                  ["compare", "--batch", "100000000"]], ids=["bench", "compare"])
def test_a_batch_no_command_could_allocate_is_refused_before_allocating(capsys, argv):
    err = one_line_exit_2(capsys, *argv)
    assert "--batch: expected a batch of 1..65536 images" in err and "found 100000000" in err


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "-1"])
def test_bench_refuses_a_min_time_it_could_not_honour(capsys, value):
    err = one_line_exit_2(capsys, "bench", "--batch", "1", "--impl", "flax:train_step", "--min-time", value)
    assert "--min-time in (0, 60] seconds" in err and value.replace("1e300", "1e+300") in err


def test_readme_states_the_limits_the_code_enforces():
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "only regular files are opened (a FIFO or a device is refused, never waited on)" in readme
    assert "at most 1 GiB of data, exactly the file's size" in readme and data.MAX_IDX_BYTES == 1 << 30
