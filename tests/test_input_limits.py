"""No input can hang or exhaust memory: IDX headers are checked before data, a .gz is read as a
capped stream, only regular files are opened, batch orders are made per epoch; and each refusal
is one line that names the file or option and the real cause."""

import gzip
import json
import re
import os
import signal
import struct
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from flax_lenet.app import data, training
from flax_lenet.errors import BadConfig, BadFile, BadImages
from helpers import one_line_exit_2

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


def test_a_gzip_stream_is_checked_against_its_header_not_read_whole(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, (3,)) + bytes([1, 2, 3]) + b"tail"))
    with pytest.raises(BadFile, match=r"expected 3 data bytes for shape \(3,\), found more"):
        data.read_idx(path)
    path.write_bytes(gzip.compress(idx_header(0x08, (3,)) + bytes([1, 2])))
    with pytest.raises(BadFile, match=r"truncated: expected 3 data bytes for shape \(3,\), found 2"):
        data.read_idx(path)


# --- regular files only -------------------------------------------------------------------------

def test_a_fifo_named_as_an_idx_file_is_refused_without_blocking(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(path)
    with deadline(10), pytest.raises(BadFile, match=r"expected an IDX file, found a FIFO \(named pipe\)"):
        data.read_idx(path)


@pytest.mark.parametrize("name", ["x.pt", "x.safetensors"])
def test_eval_refuses_a_fifo_named_as_a_checkpoint_without_blocking(tmp_path, capsys, name):
    os.mkfifo(tmp_path / name)
    with deadline(60):
        err = one_line_exit_2(capsys, "eval", tmp_path / name)
    assert "found a FIFO (named pipe) (only regular files are opened)" in err


def test_eval_refuses_a_device_named_as_a_checkpoint(capsys, tmp_path):
    (tmp_path / "zero.pt").symlink_to("/dev/zero")                   # a read that never ends
    with deadline(60):
        err = one_line_exit_2(capsys, "eval", tmp_path / "zero.pt")
    assert "found a character device" in err


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


# --- MNIST as distributed ------------------------------------------------------------------------

def write_mnist(folder, n_train=40, n_test=20, name=lambda split, kind: f"{split}-{kind}", gz=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        ext = ".gz" if gz else ""
        data.write_idx(folder / (name(split, "images-idx3-ubyte") + ext),
                       rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / (name(split, "labels-idx1-ubyte") + ext), (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_named_with_a_dot_as_mirrors_ship_them_are_read(tmp_path, gz):
    write_mnist(tmp_path, name=lambda split, kind: f"{split}-{kind.replace('-idx', '.idx')}", gz=gz)
    assert (tmp_path / f"train-images.idx3-ubyte{'.gz' if gz else ''}").exists()
    ds = data.load_mnist(tmp_path)
    assert ds.x_train.shape == (40, 32, 32, 1) and ds.x_test.shape == (20, 32, 32, 1)


@pytest.mark.parametrize("sub", ["MNIST/raw", "raw"])
def test_torchvisions_mnist_raw_folder_is_read(tmp_path, sub):
    write_mnist(tmp_path / sub)
    ds = data.load_mnist(tmp_path)
    assert len(ds.y_train) == 40 and len(ds.y_test) == 20


def test_missing_mnist_says_where_to_obtain_it(tmp_path):
    tmp_path.joinpath("notes.txt").write_text("no MNIST here")
    with pytest.raises(BadFile, match="train-images-idx3-ubyte or train-images-idx3-ubyte.gz") as e:
        data.load_mnist(tmp_path)
    assert "train-images.idx3-ubyte" in str(e.value) and "MNIST/raw" in str(e.value)
    assert "https://" in str(e.value) and "torchvision.datasets.MNIST" in str(e.value)


# --- empty sets and the causes behind 'NaN' -------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_mnist_test_set_of_0_images_is_one_line_exit_2(tmp_path, capsys, command):
    write_mnist(tmp_path, n_test=0)
    argv = [command, "--data", "mnist", "--data-dir", tmp_path]
    if command == "eval":
        ckpt = tmp_path / "w.safetensors"
        from safetensors.torch import save_file
        from torch_reference import Net
        save_file(Net(3).state_dict(), str(ckpt))
        argv = ["eval", ckpt, "--data", "mnist", "--data-dir", tmp_path]
    else:
        argv += ["--epochs", "1", "--max-steps", "1", "--quiet"]
    err = one_line_exit_2(capsys, *argv)
    assert "t10k-images-idx3-ubyte: expected at least one image" in err and "NaN" not in err


def test_an_empty_training_file_is_named_not_reported_as_nan_in_test_images(tmp_path):
    write_mnist(tmp_path, n_train=0)
    with pytest.raises(BadFile, match=r"train-images-idx3-ubyte: expected at least one image") as e:
        data.load_mnist(tmp_path)
    assert "NaN" not in str(e.value)


def test_accuracy_of_0_images_is_refused_in_one_line():
    params = {"conv1": None}
    x, y = np.zeros((0, 32, 32, 1), np.float32), np.zeros(0, np.int32)
    with pytest.raises(BadImages, match="expected at least one image to measure an accuracy on, found 0"):
        training.flax_accuracy(params, x, y)
    with pytest.raises(BadImages, match="expected at least one image to measure an accuracy on, found 0"):
        training.torch_accuracy({}, x, y)


def test_all_zero_images_blame_the_zero_standard_deviation_without_warnings(tmp_path):
    write_mnist(tmp_path)
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # a numpy RuntimeWarning fails the test
        with pytest.raises(BadImages, match=r"train-images-idx3-ubyte: expected images that vary "
                                            r"\(a standard deviation > 0.*found every training pixel equal to 0") as e:
            data.load_mnist(tmp_path)
    assert "NaN" not in str(e.value)


def test_float_images_near_float32s_limit_are_standardised_in_float64_without_overflow(tmp_path):
    write_mnist(tmp_path)
    big = np.random.default_rng(1).uniform(-3e38, 3e38, (40, 28, 28)).astype(np.float32)
    data.write_idx(tmp_path / "train-images-idx3-ubyte", big)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", big[:20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load_mnist(tmp_path)
    assert np.all(np.isfinite(ds.x_train)) and 0.5 < float(ds.x_train.std()) < 2


def test_images_beyond_float32_blame_the_overflow(tmp_path):
    write_mnist(tmp_path)
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.full((40, 28, 28), 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadImages, match=r"train-images-idx3-ubyte: expected values that fit float32 .* "
                                            r"found 1e\+300, which overflows to Inf") as e:
            data.load_mnist(tmp_path)
    assert "NaN" not in str(e.value)


# --- options named in their messages ------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", str(2 ** 64)], rf"--seed: expected an integer in 0\.\.2\*\*64-1 .* found {2 ** 64}"),
    (["train", "--seed", "-1"], "--seed: expected an integer in 0..2"),
    (["train", "--torch-threads", "99999999999"], r"--torch-threads: expected 1\.\.\d+ threads, found 99999999999"),
    (["train", "--torch-threads", "100000"], r"--torch-threads: expected 1\.\.\d+ threads, found 100000"),
    (["train", "--lr", "nan"], "--lr: expected a finite number, found nan"),
    (["train", "--momentum", "inf"], "--momentum: expected a finite number, found inf"),
    (["eval", "x.pt", "--data-dir", "/nonexistent"], "--data-dir: expected --data mnist with it, found --data digits"),
], ids=["seed 2**64", "seed -1", "torch threads overflow", "torch threads crash", "lr nan", "momentum inf",
        "eval data-dir without mnist"])
def test_bad_options_are_named_in_one_line(capsys, argv, message):
    import re
    err = one_line_exit_2(capsys, *argv)
    assert re.search(message, err), err


@pytest.mark.parametrize("kw, message", [
    (dict(epochs=2.5), "epochs: expected an integer, found float 2.5"),
    (dict(batch_size=True), "batch_size: expected an integer, found bool True"),
    (dict(seed=2 ** 64), "seed: expected an integer below 2\\*\\*64"),
    (dict(kernel_size=4), "kernel_size: expected 3 or 5, found 4"),
    (dict(lr="0.1"), "lr: expected a number, found str"),
    (dict(lr=float("inf")), "lr: expected a positive, finite learning rate, found inf"),
    (dict(max_steps_per_epoch=0), "max_steps_per_epoch: expected a positive integer or None, found 0"),
])
def test_train_config_refuses_wrong_types_and_ranges(kw, message):
    with pytest.raises(BadConfig, match=message):
        training.TrainConfig(**kw)


def test_an_unwritable_compilation_cache_is_refused_before_any_compile():
    from flax_lenet import cache
    with pytest.raises(BadFile, match="compilation cache: expected a directory this process can write at /proc/self"):
        cache.enable("/proc/self")


def test_bench_refuses_a_batch_it_could_not_allocate_before_allocating(capsys):
    err = one_line_exit_2(capsys, "bench", "--batch", "1,100000000", "--impl", "flax:train_step")
    assert "--batch: expected a batch of 1..65536 images" in err and "found 100000000" in err


def test_compare_refuses_a_batch_it_could_not_allocate_before_allocating(capsys):
    err = one_line_exit_2(capsys, "compare", "--batch", "100000000")
    assert "--batch: expected a batch of 1..65536 images" in err and "found 100000000" in err


@pytest.mark.parametrize("batch", [0, 65537, 100_000_000, True, 2.0])
def test_check_batch_size_refuses_what_no_command_can_allocate(batch):
    from flax_lenet.checks import MAX_BATCH, check_batch_size
    with pytest.raises(BadConfig, match=r"--batch: expected a batch of 1\.\.65536 images"):
        check_batch_size(batch, "--batch")
    check_batch_size(MAX_BATCH, "--batch")


@pytest.mark.parametrize("name, dtype", [("int", "int32"), ("bool", "bool"), ("complex", "complex64")])
def test_eval_blames_the_weights_not_the_images_for_their_dtype(tmp_path, capsys, name, dtype):
    import torch
    from torch_reference import Net
    state = {k: v.to(getattr(torch, dtype)) if dtype != "bool" else v > 0 for k, v in Net(3).state_dict().items()}
    torch.save(state, tmp_path / f"{name}.pt")
    err = one_line_exit_2(capsys, "eval", tmp_path / f"{name}.pt")
    assert f"expected floating-point weights (float32 or float64), found {dtype} in" in err
    assert "batch" not in err


def test_readme_states_the_limits_the_code_enforces():
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "only regular files are opened (a FIFO or a device is refused, never waited on)" in readme
    assert "at most 1 GiB of data, exactly the file's size" in readme and data.MAX_IDX_BYTES == 1 << 30


def test_a_torchscript_archive_is_named_as_such_not_called_corrupt(tmp_path, capsys):
    import torch

    from torch_reference import Net as TorchNet
    with warnings.catch_warnings():          # torch.jit.script is deprecated; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TorchNet()), tmp_path / "scripted.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "scripted.pt").read_bytes()[:300])
    err = one_line_exit_2(capsys, "eval", tmp_path / "scripted.pt")
    assert "found a TorchScript archive (torch.jit.save)" in err and "corrupt" not in err
    err = one_line_exit_2(capsys, "eval", tmp_path / "cut.pt")       # the twin: a damaged file stays "corrupt"
    assert "truncated or corrupt" in err and "TorchScript" not in err


def test_a_sparse_tensor_in_a_state_dict_loads_as_its_dense_values(tmp_path):
    import torch

    from flax_lenet.app import checkpoint
    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    state = TorchNet().state_dict()
    sparse = {k: (v.to_sparse() if k == "fc1.weight" else v) for k, v in state.items()}
    torch.save(sparse, tmp_path / "sparse.pt")
    loaded = checkpoint.load_state(tmp_path / "sparse.pt")
    assert np.array_equal(loaded["fc1.weight"], state["fc1.weight"].numpy())


# --- the Net's kernel size --------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size", [0, 11, 32, -3, 3.0, True, "3"])
@pytest.mark.parametrize("flavour", ["nnx", "nnx plain", "linen", "linen plain"])
def test_a_net_with_a_kernel_size_the_image_cannot_take_is_refused_in_one_line(flavour, kernel_size):
    """Before: Net(kernel_size=0) raised ZeroDivisionError from Flax's initialiser (fan-in 0) and
    Net(11) a reshape error; the plain eager path (``construct.plain``) is refused the same way."""
    import contextlib

    import jax
    from flax import nnx

    import flax_lenet
    from flax_lenet import construct
    build = ((lambda: flax_lenet.Net(kernel_size, rngs=nnx.Rngs(0))) if flavour.startswith("nnx") else
             (lambda: flax_lenet.linen.Net(kernel_size).init(jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))))
    with construct.plain() if "plain" in flavour else contextlib.nullcontext():
        with pytest.raises(BadConfig) as e:
            build()
    message = str(e.value)               # what the CLI prints (JAX may add a note, never to the message)
    assert "\n" not in message and message.startswith("kernel_size: expected an integer in 1..10 (")
    assert message.endswith(f"found {kernel_size!r}")


@pytest.mark.parametrize("kernel_size", [1, 10, np.int64(4)])
def test_every_kernel_size_the_check_allows_builds_a_net_whose_logits_have_the_right_shape(kernel_size):
    """The twin of the refusal: the range the check allows is exactly the range that works, as
    ``model.flat_side`` computes it (10 leaves a 1x1 map, 11 none) and torch's Net runs."""
    import torch
    from flax import nnx

    import flax_lenet
    from flax_lenet.checks import KERNEL_SIZES
    from flax_lenet.model import flat_side
    from torch_reference import Net as TorchNet
    assert [k for k in range(0, 40) if k >= 1 and flat_side(k) >= 1] == list(KERNEL_SIZES)
    net = flax_lenet.Net(kernel_size, rngs=nnx.Rngs(0))
    assert net(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 10)
    assert TorchNet(int(kernel_size))(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("built, equal", [(3, 3.0), (1, True)])
def test_a_kernel_size_equal_to_one_already_built_is_still_checked(built, equal):
    """3.0 == 3 and True == 1, with equal hashes: the compiled build (``construct``) keyed on the
    values alone reused Net(3)'s build for Net(3.0), which then skipped the check and came out as a
    kernel-size-3 Net (the refusal test above failed only when a Net(3) had been built before it)."""
    import jax
    from flax import nnx

    import flax_lenet
    x = np.zeros((1, 32, 32, 1), np.float32)
    flax_lenet.Net(built, rngs=nnx.Rngs(0))
    flax_lenet.linen.Net(built).init(jax.random.key(0), x)
    with pytest.raises(BadConfig, match="kernel_size: expected an integer in 1..10"):
        flax_lenet.Net(equal, rngs=nnx.Rngs(0))
    with pytest.raises(BadConfig, match="kernel_size: expected an integer in 1..10"):
        flax_lenet.linen.Net(equal).init(jax.random.key(0), x)
