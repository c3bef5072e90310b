"""Bad input gets a one-line error that says what was expected and what was found; the CLI exits 2
with no traceback and writes nothing; a bug is not bad input and keeps its traceback (exit 1).

``flax_lenet.errors`` names bad input (every kind a ``BadInput`` and a ``ValueError``);
``flax-lenet`` (``flax_lenet.app.cli``) prints a ``BadInput`` as one line and exits 2, and lets
every other exception propagate with its traceback. Each table row is one kind of bad input:
options, configurations, image batches, IDX files, checkpoints and ``--out``. Inputs sized to
exhaust memory or time are ``tests/test_input_limits.py``'s.
"""

import ast
import inspect
import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import flax_lenet
from flax_lenet import cache, convert, errors, fast, functional, linen
from flax_lenet.app import checkpoint, cli, data, training
from flax_lenet.checks import KERNEL_SIZES
from flax_lenet.errors import BadConfig, BadFile, BadImages
from flax_lenet.model import flat_side
from tests.helpers import state_numpy, torch_net, unremovable
from torch_reference import Net as TorchNet

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "flax_lenet"
KINDS = ("BadImages", "BadLabels", "BadWeights", "BadConfig", "BadFile")
IMAGES_OK = np.zeros((4, 32, 32, 1), np.float32)
LABELS = np.arange(4, dtype=np.int32)


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("FLAX_LENET_DEBUG", raising=False)


def refused(capsys, *argv) -> str:
    """``flax-lenet ARGV`` in this process: exit 2, one line ``flax-lenet CMD: error: ...``, no traceback."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and err.startswith(f"flax-lenet {argv[0]}: error: "), err
    assert "Traceback" not in err
    return err


def _env() -> dict:
    """The test's environment, with the repository importable and the compilation cache off."""
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, PYTHONPATH=path, FLAX_LENET_CACHE="0", JAX_PLATFORMS="cpu")
    env.pop("FLAX_LENET_DEBUG", None)
    return env


# --- the kinds, and what the CLI does with each ------------------------------------------------

def test_every_kind_in_errors_is_bad_input_and_a_value_error():
    classes = {name: obj for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)}
    assert set(KINDS) | {"BadInput"} <= set(classes)
    for name, cls in classes.items():
        if cls is errors.ModelRaised:                       # the user's model failed: exit 3, not 2
            assert not issubclass(cls, errors.BadInput)
            continue
        assert issubclass(cls, errors.BadInput), name
        assert issubclass(cls, ValueError), name           # `except ValueError` keeps working


def test_the_apps_own_error_types_are_bad_input():
    assert issubclass(training.TrainingDiverged, errors.BadInput)
    assert issubclass(cli.UsageError, errors.BadInput)


def _convert_raising(monkeypatch, tmp_path, error) -> list:
    """``flax-lenet convert``'s argv, with its checkpoint loading raising ``error`` as a deep failure would."""
    def load_state(path, *, kernel_size=None, notes=None):
        raise error
    monkeypatch.setattr(checkpoint, "load_state", load_state)
    return ["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")]


@pytest.mark.parametrize("kind, message", [(kind, "w.pt: expected a thing, found another") for kind in KINDS + ("BadInput",)]
                         + [("BadFile", "w.pt: expected a file,\nfound two lines")],
                         ids=[*KINDS, "BadInput", "message with a newline"])
def test_bad_input_raised_deep_inside_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, kind, message):
    argv = _convert_raising(monkeypatch, tmp_path, getattr(errors, kind)(message))
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert err == f"flax-lenet convert: error: {message.replace(chr(10), ' ')}\n", (out, err)


def test_debug_variable_reraises_bad_input_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_LENET_DEBUG", "1")
    argv = _convert_raising(monkeypatch, tmp_path, errors.BadWeights("expected 10 keys, found 9"))
    with pytest.raises(errors.BadWeights, match="expected 10 keys, found 9"):
        cli.main(argv)


@pytest.mark.parametrize("bug", [ValueError("a plain ValueError"), KeyError("conv9.weight"),
                                 OSError(5, "Input/output error"), TypeError("a plain TypeError")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_propagates_from_main_instead_of_exit_2(tmp_path, monkeypatch, capsys, bug):
    argv = _convert_raising(monkeypatch, tmp_path, bug)
    with pytest.raises(type(bug)) as raised:
        cli.main(argv)
    assert raised.value is bug and not isinstance(raised.value, errors.BadInput)
    assert "error:" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    assert cli.main(_convert_raising(monkeypatch, tmp_path, KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "flax-lenet convert: interrupted\n"


BUGGY_CONVERT = """\
import sys
import flax_lenet.app.commands.convert as command
from flax_lenet.app import cli
from flax_lenet.errors import BadFile

def main(args):
    raise {error}

command.main = main
sys.argv = ["flax-lenet", "convert", "in.pt", "out.pt"]
cli.run()
"""


@pytest.mark.parametrize("error, rc, shown", [
    ('ValueError("a deliberate bug")', 1, "ValueError: a deliberate bug"),
    ('KeyError("conv9.weight")', 1, "KeyError: 'conv9.weight'"),
    ('OSError(5, "Input/output error")', 1, "OSError: [Errno 5] Input/output error"),
    ('BadFile("in.pt: expected x, found y")', 2, None),
], ids=["ValueError", "KeyError", "OSError", "BadFile"])
@pytest.mark.slow
def test_the_console_script_exits_1_with_a_traceback_for_a_bug_and_2_with_one_line_for_bad_input(
        tmp_path, error, rc, shown):
    """``cli.run``, with its process-wide handlers, in a real process."""
    proc = subprocess.run([sys.executable, "-c", BUGGY_CONVERT.format(error=error)], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == rc, proc
    if shown is None:
        assert proc.stderr == "flax-lenet convert: error: in.pt: expected x, found y\n"
    else:
        assert "Traceback (most recent call last)" in proc.stderr and shown in proc.stderr
        assert "error:" not in proc.stderr.splitlines()[0]


def _raises(path: Path):
    """Every ``raise`` statement in a source file, as ``(line, node)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node) for node in ast.walk(tree) if isinstance(node, ast.Raise) and node.exc]


def _library_and_app_files():
    return sorted(PACKAGE.rglob("*.py"))


OS_AND_KEY_ERRORS = {"KeyError", "FileNotFoundError", "FileExistsError", "NotADirectoryError",
                     "IsADirectoryError", "PermissionError", "OSError"}


def test_no_code_raises_key_or_os_errors_for_input():
    found = []
    for path in _library_and_app_files():
        for line, node in _raises(path):
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(call, ast.Name) and call.id in OS_AND_KEY_ERRORS:
                found.append(f"{path.relative_to(REPO)}:{line} raises {call.id}")
    assert _library_and_app_files() and not found, found


def test_errors_outside_the_command_layer_name_no_command_line_flags():
    command_layer = {PACKAGE / "app" / "cli.py"} | set((PACKAGE / "app" / "commands").glob("*.py"))
    found = []
    for path in _library_and_app_files():
        if path in command_layer:
            continue
        for line, node in _raises(path):
            text = " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))
            if re.search(r"(^|[\s(:])--[a-z]", text):
                found.append(f"{path.relative_to(REPO)}:{line}: {text}")
    assert not found, found


# --- options and configurations ----------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", str(2 ** 64)], rf"--seed: expected an integer in 0\.\.2\*\*64-1 .* found {2 ** 64}"),
    (["train", "--seed", "-1"], "--seed: expected an integer in 0..2"),
    (["train", "--torch-threads", "99999999999"], r"--torch-threads: expected 1\.\.\d+ threads, found 99999999999"),
    (["train", "--torch-threads", "100000"], r"--torch-threads: expected 1\.\.\d+ threads, found 100000"),
    (["train", "--lr", "nan"], "--lr: expected a finite number, found nan"),
    (["train", "--momentum", "inf"], "--momentum: expected a finite number, found inf"),
    (["train", "--data", "mnist"], "expected --data-dir DIR"),
    (["eval", "x.pt", "--data-dir", "/nonexistent"], "--data-dir: expected --data mnist with it, found --data digits"),
    (["compare", "--lr", "inf"], "--lr: expected a finite learning rate >= 0"),
    (["compare", "--lr", "nan"], "--lr: expected a finite learning rate >= 0"),
    (["compare", "--lr", "-1"], "--lr: expected a finite learning rate >= 0"),
], ids=["seed 2**64", "seed -1", "torch threads overflow", "torch threads crash", "lr nan", "momentum inf",
        "mnist without data-dir", "eval data-dir without mnist", "compare lr inf", "compare lr nan", "compare lr -1"])
def test_bad_options_are_named_in_one_line(capsys, argv, message):
    err = refused(capsys, *argv)
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
    with pytest.raises(BadFile, match="compilation cache: expected a directory this process can write at /proc/self"):
        cache.enable("/proc/self")


X1 = np.zeros((1, 32, 32, 1), np.float32)
BUILD = {"nnx": lambda k: flax_lenet.Net(k, rngs=nnx.Rngs(0)),
         "linen": lambda k: linen.Net(k).init(jax.random.key(0), X1)}


@pytest.mark.parametrize("kernel_size", [0, 11, 32, -3, 3.0, True, "3"])
@pytest.mark.parametrize("flavour", BUILD)
def test_a_net_with_a_kernel_size_the_image_cannot_take_is_refused_in_one_line(flavour, kernel_size):
    """Before: Net(kernel_size=0) raised ZeroDivisionError from Flax's initialiser (fan-in 0) and
    Net(11) a reshape error."""
    with pytest.raises(BadConfig) as e:
        BUILD[flavour](kernel_size)
    message = str(e.value)               # what the CLI prints (JAX may add a note, never to the message)
    assert "\n" not in message and message.startswith("kernel_size: expected an integer in 1..10 (")
    assert message.endswith(f"found {kernel_size!r}")


@pytest.mark.parametrize("kernel_size", [1, 10, np.int64(4)])
def test_every_kernel_size_the_check_allows_builds_a_net_whose_logits_have_the_right_shape(kernel_size):
    """The twin of the refusal: the range the check allows is exactly the range that works, as
    ``model.flat_side`` computes it (10 leaves a 1x1 map, 11 none) and torch's Net runs. The Flax
    Net is built and called abstractly (``nnx.eval_shape``): a shape that does not work fails there."""
    assert [k for k in range(0, 40) if k >= 1 and flat_side(k) >= 1] == list(KERNEL_SIZES)
    x = np.zeros((2, 32, 32, 1), np.float32)
    assert nnx.eval_shape(lambda: flax_lenet.Net(kernel_size, rngs=nnx.Rngs(0))(x)).shape == (2, 10)
    assert TorchNet(int(kernel_size))(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("built, equal", [(3, 3.0), (1, True)])
def test_a_kernel_size_equal_to_one_already_built_is_still_checked(built, equal):
    """3.0 == 3 and True == 1, with equal hashes: a build cache keyed on the values alone (as one
    was) reuses Net(3)'s build for Net(3.0), which then skips the check."""
    nnx.eval_shape(lambda: BUILD["nnx"](built))
    jax.eval_shape(lambda: BUILD["linen"](built))
    for flavour in BUILD:
        with pytest.raises(BadConfig, match="kernel_size: expected an integer in 1..10"):
            BUILD[flavour](equal)


# --- image batches and labels, in the library and the app -----------------------------------
# Shapes, layouts and dtypes: tests/test_minibatch.py (the same entry points).

@pytest.mark.parametrize("x, message", [
    (np.where(np.arange(4 * 1024).reshape(4, 32, 32, 1) == 5, np.nan, 0).astype(np.float32),
     r"expected finite .*images, found 1 NaN and 0 Inf values \(first at index \(0, 0, 5, 0\)\)"),
    (np.full((4, 32, 32, 1), np.inf, np.float32), "found 0 NaN and 4096 Inf"),
], ids=["NaN", "Inf"])
@pytest.mark.parametrize("where", ["flax", "torch", "dataset"])
def test_nan_or_inf_in_an_image_batch_is_refused_in_one_line(x, message, where):
    state = state_numpy(torch_net(3, "float32"))
    with pytest.raises(BadImages, match=message) as e:
        if where == "flax":
            training.flax_accuracy(convert.torch_to_flax(state), x, LABELS)
        elif where == "torch":
            training.torch_accuracy(state, x, LABELS)
        else:
            data.make_dataset("x", x, LABELS, IMAGES_OK, LABELS)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("y, message", [(np.arange(3), r"expected 4 labels .* found shape \(3,\)"),
                                        (np.full(4, 10), "found values 10..10"),
                                        (np.zeros(4, np.float32), "expected integer class labels")])
def test_bad_labels_are_refused(y, message):
    with pytest.raises(ValueError, match=message):
        data.make_dataset("x", IMAGES_OK, y, IMAGES_OK, LABELS)


def test_nan_in_training_images_is_refused_before_training():
    x = IMAGES_OK.copy()
    x[2, 3, 4, 0] = np.nan
    ds = data.Dataset("x", x, LABELS, IMAGES_OK, LABELS)          # built without the checks
    with pytest.raises(ValueError, match=r"expected finite train images, found 1 NaN .* \(2, 3, 4, 0\)"):
        training.train(ds, training.TrainConfig(epochs=1, batch_size=2))


# An empty batch (N=0) is not bad input to a Net: torch's returns logits of shape (0, 10), and so
# does every Flax flavour. Each flattens with ``x.reshape(x.shape[0], math.prod(x.shape[1:]))``:
# ``x.reshape(x.shape[0], -1)`` cannot infer the ``-1`` of an empty array (``ZeroDivisionError``
# in ``jnp.reshape``). What the app builds on top refuses 0 images in one line (below).
EMPTY = np.zeros((0, 32, 32, 1), np.float32)
EMPTY_BATCH = {
    "torch": lambda net, p: net(torch.zeros(0, 1, 32, 32)),
    "nnx": lambda net, p: convert.to_nnx(p)(EMPTY),
    "functional": lambda net, p: functional.forward(p, EMPTY),
    "linen": lambda net, p: linen.Net().apply({"params": p}, EMPTY),
    "fast": lambda net, p: fast.forward(p, EMPTY),
}


@pytest.mark.parametrize("flavour", EMPTY_BATCH)
def test_every_net_returns_logits_of_shape_0_by_10_on_an_empty_batch(flavour):
    net = torch_net(3, "float32")
    assert tuple(EMPTY_BATCH[flavour](net, convert.torch_to_flax(state_numpy(net))).shape) == (0, 10)


@pytest.mark.parametrize("accuracy, params", [(training.flax_accuracy, {"conv1": None}), (training.torch_accuracy, {})],
                         ids=["flax", "torch"])
def test_accuracy_of_0_images_is_refused_in_one_line(accuracy, params):
    with pytest.raises(BadImages, match="expected at least one image to measure an accuracy on, found 0"):
        accuracy(params, np.zeros((0, 32, 32, 1), np.float32), np.zeros(0, np.int32))


# --- training that diverges ----------------------------------------------------------------------

def test_nan_loss_stops_says_the_step_and_keeps_the_last_good_weights(tmp_path, capsys):
    err = refused(capsys, "train", "--out", tmp_path / "run", "--loss", "mse", "--lr", "1e4", "--momentum", "0",
                  "--epochs", "2", "--max-steps", "3", "--quiet")
    assert "loss became" in err and "at step" in err and "kept the initial weights" in err
    first = training.initial_state(training.TrainConfig())
    for name in ("flax.orbax", "torch.safetensors"):
        kept = checkpoint.load_state(tmp_path / "run" / name)          # loads: finite, complete
        for k in first:
            np.testing.assert_array_equal(kept[k], first[k])
    assert not (tmp_path / "run" / "metrics.json").exists()          # not a finished run


def test_a_diverged_run_that_cannot_remove_the_old_one_still_says_so_in_one_line(tmp_path, capsys):
    """The note that the old weights-only run is left beside the new one joins the error's line."""
    argv = ["train", "--out", tmp_path / "top" / "run", "--loss", "mse", "--lr", "1e4", "--momentum", "0",
            "--epochs", "2", "--max-steps", "3", "--quiet"]
    (tmp_path / "top").mkdir()
    refused(capsys, *argv)
    with unremovable(tmp_path / "top" / "run" / "torch.safetensors", tmp_path / "top"):
        err = refused(capsys, *argv, "--overwrite")
    left = [p.name for p in (tmp_path / "top").iterdir() if p.name.startswith(".run.tmp-")]
    assert len(left) == 1, sorted((tmp_path / "top").iterdir())
    assert "kept the initial weights" in err and f"; note: {tmp_path / 'top' / 'run'}: written; what it held " \
        f"before is left beside it as {left[0]}, which could not be removed" in err, err


# --- IDX files and MNIST folders ---------------------------------------------------------------

def write_mnist(folder, n_train=40, n_test=20, name=lambda split, kind: f"{split}-{kind}", gz=False):
    """Random 28x28 uint8 MNIST files, under the names ``name(split, kind)`` (``.gz`` with ``gz``)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        ext = ".gz" if gz else ""
        data.write_idx(folder / (name(split, "images-idx3-ubyte") + ext),
                       rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / (name(split, "labels-idx1-ubyte") + ext), (np.arange(n) % 10).astype(np.uint8))


def _damage_mnist(folder, damage):
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if damage == "missing":
        images.unlink()
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "corrupt gzip":
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    elif damage == "wrong magic":
        images.write_bytes(b"\x03\x08\x00\x00" + images.read_bytes()[4:])    # little-endian magic
    elif damage == "labels magic":
        labels.write_bytes(b"\x01\x08\x00\x00" + labels.read_bytes()[4:])
    elif damage == "label count":
        data.write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(15, np.uint8))
    elif damage == "NaN in float images":
        nan = np.zeros((32, 28, 28), np.float32)
        nan[3, 4, 5] = np.nan
        data.write_idx(images, nan)


@pytest.mark.parametrize("damage, message", [
    ("missing", "expected train-images-idx3-ubyte or train-images-idx3-ubyte.gz"),
    ("truncated", "truncated: expected 25088 data bytes"),
    ("corrupt gzip", "corrupt or truncated gzip stream"),
    ("wrong magic", "expected an IDX magic number .* found 0x03080000"),
    ("labels magic", "train-labels-idx1-ubyte: expected an IDX magic number .* found 0x01080000"),
    ("label count", "expected 16 labels .* found 15"),
    ("NaN in float images", r"expected finite images in \S+train-images-idx3-ubyte, found 1 NaN .* \(3, 4, 5\)"),
])
def test_bad_idx_files_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, damage, message):
    folder = tmp_path / "mnist"
    write_mnist(folder, n_train=32, n_test=16)
    _damage_mnist(folder, damage)
    err = refused(capsys, "train", "--data", "mnist", "--data-dir", folder, "--out", tmp_path / "run", "--quiet")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()                            # nothing written, not even --out


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


@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_mnist_test_set_of_0_images_is_one_line_exit_2(tmp_path, capsys, command):
    write_mnist(tmp_path, n_test=0)
    if command == "eval":
        from safetensors.torch import save_file
        ckpt = tmp_path / "w.safetensors"
        save_file(TorchNet(3).state_dict(), str(ckpt))
        argv = ["eval", ckpt, "--data", "mnist", "--data-dir", tmp_path]
    else:
        argv = ["train", "--data", "mnist", "--data-dir", tmp_path, "--epochs", "1", "--max-steps", "1", "--quiet"]
    err = refused(capsys, *argv)
    assert "t10k-images-idx3-ubyte: expected at least one image" in err and "NaN" not in err


def _train_images(images):
    """Write MNIST files with these training images (the labels to match)."""
    def write(folder):
        write_mnist(folder, n_train=len(images))
        data.write_idx(folder / "train-images-idx3-ubyte", images)
    return write


@pytest.mark.parametrize("write, kind, message", [
    (lambda f: write_mnist(f, n_train=0), BadFile, r"train-images-idx3-ubyte: expected at least one image"),
    (_train_images(np.zeros((40, 28, 28), np.uint8)), BadImages,
     r"train-images-idx3-ubyte: expected images that vary \(a standard deviation > 0.*found every training pixel equal to 0"),
    (_train_images(np.full((40, 28, 28), 1e300)), BadImages,
     r"train-images-idx3-ubyte: expected values that fit float32 .* found 1e\+300, which overflows to Inf"),
], ids=["empty training file", "all zero", "beyond float32"])
def test_images_that_would_standardise_to_nan_blame_the_cause_without_warnings(tmp_path, write, kind, message):
    write(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # a numpy RuntimeWarning fails the test
        with pytest.raises(kind, match=message) as e:
            data.load_mnist(tmp_path)
    assert "NaN" not in str(e.value)


def test_float_images_near_float32s_limit_are_standardised_in_float64_without_overflow(tmp_path):
    big = np.random.default_rng(1).uniform(-3e38, 3e38, (40, 28, 28)).astype(np.float32)
    _train_images(big)(tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", big[:20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load_mnist(tmp_path)
    assert np.all(np.isfinite(ds.x_train)) and 0.5 < float(ds.x_train.std()) < 2


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    state = state_numpy(torch_net(3, "float32"))
    for name in ("w.pt", "w.safetensors", "w.orbax"):
        checkpoint.save(tmp_path / name, state)
    return tmp_path


def _damage(path, how):
    """Cut a file in half, or overwrite its first 16 bytes (an Orbax checkpoint: its _METADATA).

    Damage to Orbax's array data (manifest.ocdbt) is tested in a separate process below:
    tensorstore's pending callbacks fire after Orbax closed its event loop, which pytest
    reports as an unraisable exception in whichever test runs next (third-party noise; the
    CLI itself prints one line and exits 2).
    """
    target = path if path.is_file() else path / "_METADATA"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif how == "corrupt":
        blob = bytearray(target.read_bytes())
        blob[:16] = b"\xff" * 16
        target.write_bytes(bytes(blob))


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize("name", ["w.pt", "w.safetensors", "w.orbax"])
@pytest.mark.parametrize("command", ["eval", "convert"])
def test_damaged_checkpoint_exits_2_and_writes_nothing(saved, capsys, how, name, command):
    _damage(saved / name, how)
    argv = [command, saved / name] + ([saved / "out.safetensors"] if command == "convert" else [])
    err = refused(capsys, *argv)
    assert "truncated or corrupt" in err or "cannot be read" in err or "changed or damaged" in err, err
    assert not (saved / "out.safetensors").exists()


@pytest.mark.parametrize("name, data_args", [
    ("gone.pt", ()),
    ("gone.safetensors", ()),
    ("gone.orbax", ()),
    ("gone.pt", ("--data", "mnist")),           # named before the data, even damaged data
], ids=["pt", "safetensors", "orbax", "pt with mnist data"])
def test_missing_checkpoint_exits_2(tmp_path, capsys, name, data_args):
    if data_args:
        write_mnist(tmp_path / "mnist")
        _damage_mnist(tmp_path / "mnist", "labels magic")
        data_args = (*data_args, "--data-dir", tmp_path / "mnist")
    err = refused(capsys, "eval", tmp_path / name, *data_args)
    assert f"{name}: expected a checkpoint" in err and "found no such" in err


def _contents(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, message", [
    (lambda f: ["eval", f / "w.safetensors", "--kernel-size", "5"],
     "expected a checkpoint for kernel size 5, found one for kernel size 3"),
    (lambda f: ["convert", f / "w.orbax", f / "k5.pt", "--kernel-size", "5"], "found one for kernel size 3"),
    (lambda f: ["convert", f / "w.pt", f / "w.safetensors"], "pass --overwrite"),
    (lambda f: ["convert", f / "w.pt", f / "nowhere" / "w.safetensors"], "expected an existing folder"),
], ids=["eval other kernel size", "convert other kernel size", "overwrite", "into a missing folder"])
def test_a_checkpoint_command_that_cannot_do_what_was_asked_exits_2_and_changes_nothing(saved, capsys, argv, message):
    before = _contents(saved)
    assert message in refused(capsys, *argv(saved))
    assert _contents(saved) == before          # no k5.pt, no nowhere/, w.safetensors as it was


@pytest.mark.parametrize("change, message", [("drop fc3.bias", "missing key 'fc3.bias'"),
                                             ("add fc4.weight", "unexpected key 'fc4.weight'"),
                                             ("add 4", "expected a state_dict with string keys, found key 4 (int)")])
def test_state_dict_with_missing_or_extra_keys_is_refused(tmp_path, capsys, change, message):
    state = {k: torch.from_numpy(v) for k, v in state_numpy(torch_net(3, "float32")).items()}
    if change.startswith("drop"):
        del state["fc3.bias"]
    elif change == "add 4":
        state[4] = torch.zeros(10, 10)
    else:
        state["fc4.weight"] = torch.zeros(10, 10)
    torch.save(state, tmp_path / "bad.pt")
    err = refused(capsys, "convert", tmp_path / "bad.pt", tmp_path / "out.orbax")
    assert message in err and str(tmp_path / "bad.pt") in err, err
    assert not (tmp_path / "out.orbax").exists()


class RunsCode:
    """A pickle payload that creates a folder when unpickled: the shape of a malicious .pt."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pt_with_code_is_refused_by_the_cli(tmp_path, capsys):
    torch.save({"conv1.weight": RunsCode(tmp_path / "ran")}, tmp_path / "evil.pt")
    err = refused(capsys, "convert", tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert "refused" in err and "nothing in it was run" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name, dtype", [("int", "int32"), ("bool", "bool"), ("complex", "complex64")])
def test_eval_blames_the_weights_not_the_images_for_their_dtype(tmp_path, capsys, name, dtype):
    state = {k: v.to(getattr(torch, dtype)) if dtype != "bool" else v > 0 for k, v in TorchNet(3).state_dict().items()}
    torch.save(state, tmp_path / f"{name}.pt")
    err = refused(capsys, "eval", tmp_path / f"{name}.pt")
    assert f"expected floating-point weights (float32 or float64), found {dtype} in" in err
    assert "batch" not in err


def test_a_torchscript_archive_is_named_as_such_not_called_corrupt(tmp_path, capsys):
    with warnings.catch_warnings():          # torch.jit.script is deprecated; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TorchNet()), tmp_path / "scripted.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "scripted.pt").read_bytes()[:300])
    err = refused(capsys, "eval", tmp_path / "scripted.pt")
    assert "found a TorchScript archive (torch.jit.save)" in err and "corrupt" not in err
    err = refused(capsys, "eval", tmp_path / "cut.pt")       # the twin: a damaged file stays "corrupt"
    assert "truncated or corrupt" in err and "TorchScript" not in err


def test_a_sparse_tensor_in_a_state_dict_loads_as_its_dense_values(tmp_path):
    torch.manual_seed(0)
    state = TorchNet().state_dict()
    sparse = {k: (v.to_sparse() if k == "fc1.weight" else v) for k, v in state.items()}
    torch.save(sparse, tmp_path / "sparse.pt")
    loaded = checkpoint.load_state(tmp_path / "sparse.pt")
    assert np.array_equal(loaded["fc1.weight"], state["fc1.weight"].numpy())


@pytest.mark.slow
def test_corrupt_orbax_data_exits_2_with_one_line_in_a_real_process(tmp_path):
    """``python -m flax_lenet convert`` on an Orbax checkpoint whose array store is damaged."""
    checkpoint.save(tmp_path / "w.orbax", state_numpy(torch_net(3, "float32")))
    manifest = tmp_path / "w.orbax" / "manifest.ocdbt"
    manifest.write_bytes(b"\xff" * 16 + manifest.read_bytes()[16:])
    (tmp_path / "w.orbax" / checkpoint.SIDECAR).unlink()      # as from another tool: no checksums to catch it
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", "convert", str(tmp_path / "w.orbax"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("flax-lenet convert: error: ")
    assert "cannot be read" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr) < 600 and not (tmp_path / "out.pt").exists()


# --- --out and the files written ----------------------------------------------------------------

def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    err = refused(capsys, "train", "--out", tmp_path / "f", "--quiet")
    assert err.startswith("flax-lenet train: error: --out: ") and "expected a directory, found a file" in err
    assert (tmp_path / "f").read_text() == "keep"


def _refuse_to_write(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_unwritable_out_directory_is_refused(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() == 0:       # root ignores permission bits: make the write probe fail as it would
            import tempfile
            monkeypatch.setattr(tempfile, "mkstemp", _refuse_to_write)
        err = refused(capsys, "train", "--out", locked / "run", "--quiet")
        assert "expected a writable directory" in err and "Permission denied" in err
    finally:
        locked.chmod(0o755)


def test_the_os_refusing_to_write_a_checkpoint_exits_2(saved, capsys, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", _refuse_to_write)    # as an unwritable folder would (root ignores bits)
    err = refused(capsys, "convert", saved / "w.pt", saved / "new.safetensors")
    assert "new.safetensors: expected a writable folder" in err and "PermissionError: Permission denied" in err
    assert not (saved / "new.safetensors").exists()


def test_every_file_of_a_run_gets_the_mode_the_umask_gives(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--max-steps", "1", "--quiet", "--out", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.json", "curves.png", "torch.safetensors"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o666 & ~mask, f"{name}: {oct(mode)}"               # safetensors writes 0600
