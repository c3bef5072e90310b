"""Bad input: a one-line error that says what was expected and what was found, exit 2, nothing lost."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from flax_lenet.app import checkpoint, cli, data, training
from tests.helpers import state_numpy, torch_net
from tests.test_idx import write_mnist

IMAGES_OK = np.zeros((4, 32, 32, 1), np.float32)
LABELS = np.arange(4, dtype=np.int32)


def run_cli(capsys, *argv):
    """``flax-lenet ARGV`` in process; asserts the one-line, exit-2 contract and returns stderr."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and err.startswith(f"flax-lenet {argv[0]}: error: "), err
    assert "Traceback" not in err
    return err


# --- image batches, in the library --------------------------------------------------------------

@pytest.mark.parametrize("x, message", [
    (np.zeros((32, 32, 1), np.float32), r"found a single image \(32, 32, 1\): add a batch dimension"),
    (np.zeros((4, 32, 32), np.float32), "found rank 3"),
    (np.zeros((4, 28, 28, 1), np.float32), "found height x width 28x28 .* padded by 2"),
    (np.zeros((4, 32, 32, 3), np.float32), "found 3 channels"),
    (np.zeros((4, 1, 32, 32), np.float32), r"found NCHW .* x.transpose\(0, 2, 3, 1\)"),
    (np.zeros((4, 32, 32, 1), np.uint8), "found dtype uint8: cast"),
    (np.where(np.arange(4 * 1024).reshape(4, 32, 32, 1) == 5, np.nan, 0).astype(np.float32),
     r"expected finite .*images, found 1 NaN and 0 Inf values \(first at index \(0, 0, 5, 0\)\)"),
    (np.full((4, 32, 32, 1), np.inf, np.float32), "found 0 NaN and 4096 Inf"),
], ids=["single image", "rank", "28x28", "channels", "NCHW", "int dtype", "NaN", "Inf"])
@pytest.mark.parametrize("where", ["flax", "torch", "dataset"])
def test_bad_image_batch_is_refused_in_the_library(x, message, where):
    state = state_numpy(torch_net(3, "float32"))
    from flax_lenet import convert
    with pytest.raises(ValueError, match=message):
        if where == "flax":
            training.flax_accuracy(convert.torch_to_flax(state), x, LABELS)
        elif where == "torch":
            training.torch_accuracy(state, x, LABELS)
        else:
            data.make_dataset("x", x, LABELS, IMAGES_OK, LABELS)


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


# --- training that diverges ----------------------------------------------------------------------

def test_nan_loss_stops_says_the_step_and_keeps_the_last_good_weights(tmp_path, capsys):
    err = run_cli(capsys, "train", "--out", tmp_path / "run", "--loss", "mse", "--lr", "1e4", "--momentum", "0",
                  "--epochs", "2", "--max-steps", "3", "--quiet")
    assert "loss became" in err and "at step" in err and "kept the initial weights" in err
    for name in ("flax.orbax", "torch.safetensors"):
        kept = checkpoint.load_state(tmp_path / "run" / name)          # loads: finite, complete
        first = training.initial_state(training.TrainConfig())
        for k in first:
            np.testing.assert_array_equal(kept[k], first[k])
    assert not (tmp_path / "run" / "metrics.json").exists()          # not a finished run


# --- IDX files -------------------------------------------------------------------------------

def _mnist(tmp_path, damage):
    folder = tmp_path / "mnist"
    write_mnist(folder, n_train=32, n_test=16)
    images = folder / "train-images-idx3-ubyte"
    if damage == "missing":
        images.unlink()
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "corrupt gzip":
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    elif damage == "wrong magic":
        images.write_bytes(b"\x03\x08\x00\x00" + images.read_bytes()[4:])    # little-endian magic
    elif damage == "label count":
        data.write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(15, np.uint8))
    return folder


@pytest.mark.parametrize("damage, message", [
    ("missing", "expected train-images-idx3-ubyte or train-images-idx3-ubyte.gz"),
    ("truncated", "truncated: expected 25088 data bytes"),
    ("corrupt gzip", "corrupt or truncated gzip stream"),
    ("wrong magic", "expected an IDX magic number .* found 0x03080000"),
    ("label count", "expected 16 labels .* found 15"),
])
def test_bad_idx_files_exit_2_with_one_line(tmp_path, capsys, damage, message):
    folder = _mnist(tmp_path, damage)
    err = run_cli(capsys, "train", "--data", "mnist", "--data-dir", folder, "--out", tmp_path / "run", "--quiet")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()                            # nothing written, not even --out


def test_wrong_magic_number_names_what_was_found(tmp_path, capsys):
    folder = _mnist(tmp_path, None)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x01\x08\x00\x00" + path.read_bytes()[4:])
    err = run_cli(capsys, "eval", tmp_path / "nothing.pt", "--data", "mnist", "--data-dir", folder)
    assert "no such file" in err
    err = run_cli(capsys, "train", "--data", "mnist", "--data-dir", folder, "--quiet")
    assert "magic number" in err and "found 0x01080000" in err


def test_nan_in_float_idx_images_exits_2(tmp_path, capsys):
    folder = _mnist(tmp_path, None)
    images = np.zeros((32, 28, 28), np.float32)
    images[3, 4, 5] = np.nan
    data.write_idx(folder / "train-images-idx3-ubyte", images)
    err = run_cli(capsys, "train", "--data", "mnist", "--data-dir", folder, "--quiet")
    assert re.search(r"expected finite images in \S+train-images-idx3-ubyte, found 1 NaN .* \(3, 4, 5\)", err), err


def test_mnist_without_data_dir_is_a_usage_error(capsys):
    assert "expected --data-dir DIR" in run_cli(capsys, "train", "--data", "mnist")


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    state = state_numpy(torch_net(3, "float32"))
    for name in ("w.pt", "w.safetensors", "w.orbax"):
        checkpoint.save(tmp_path / name, state)
    return tmp_path, state


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
    folder, _ = saved
    _damage(folder / name, how)
    argv = [command, folder / name] + ([folder / "out.safetensors"] if command == "convert" else [])
    err = run_cli(capsys, *argv)
    assert "truncated or corrupt" in err or "cannot be read" in err or "changed or damaged" in err, err
    assert not (folder / "out.safetensors").exists()


@pytest.mark.parametrize("name", ["gone.pt", "gone.safetensors", "gone.orbax"])
def test_missing_checkpoint_exits_2(tmp_path, capsys, name):
    assert "found no such" in run_cli(capsys, "eval", tmp_path / name)


def test_checkpoint_for_the_other_kernel_size_is_refused(saved, capsys):
    folder, _ = saved
    err = run_cli(capsys, "eval", folder / "w.safetensors", "--kernel-size", "5")
    assert "expected a checkpoint for kernel size 5, found one for kernel size 3" in err
    err = run_cli(capsys, "convert", folder / "w.orbax", folder / "k5.pt", "--kernel-size", "5")
    assert "kernel size 3" in err and not (folder / "k5.pt").exists()


@pytest.mark.parametrize("change, message", [("drop fc3.bias", "missing key 'fc3.bias'"),
                                             ("add fc4.weight", "unexpected key 'fc4.weight'")])
def test_state_dict_with_missing_or_extra_keys_is_refused(tmp_path, capsys, change, message):
    state = {k: torch.from_numpy(v) for k, v in state_numpy(torch_net(3, "float32")).items()}
    if change.startswith("drop"):
        del state["fc3.bias"]
    else:
        state["fc4.weight"] = torch.zeros(10, 10)
    torch.save(state, tmp_path / "bad.pt")
    assert message in run_cli(capsys, "convert", tmp_path / "bad.pt", tmp_path / "out.orbax")
    assert not (tmp_path / "out.orbax").exists()


def test_convert_refuses_to_overwrite_an_existing_output(saved, capsys):
    folder, _ = saved
    before = (folder / "w.safetensors").read_bytes()
    assert "pass --overwrite" in run_cli(capsys, "convert", folder / "w.pt", folder / "w.safetensors")
    assert (folder / "w.safetensors").read_bytes() == before


def test_pt_with_code_is_refused_by_the_cli(tmp_path, capsys):
    from tests.test_checkpoint import _RunsCode
    torch.save({"conv1.weight": _RunsCode(tmp_path / "ran")}, tmp_path / "evil.pt")
    err = run_cli(capsys, "convert", tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert "refused" in err and "nothing in it was run" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.safetensors").exists()


# --- --out -----------------------------------------------------------------------------------

def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    err = run_cli(capsys, "train", "--out", tmp_path / "f", "--quiet")
    assert err.startswith("flax-lenet train: error: --out: ") and "expected a directory, found a file" in err
    assert (tmp_path / "f").read_text() == "keep"


def test_unwritable_out_directory_is_refused(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        import os
        if os.geteuid() == 0:       # root ignores permission bits: make the write probe fail as it would
            import tempfile

            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        err = run_cli(capsys, "train", "--out", locked / "run", "--quiet")
        assert "expected a writable directory" in err and "Permission denied" in err
    finally:
        locked.chmod(0o755)


def test_convert_into_a_missing_folder_exits_2(saved, capsys):
    folder, _ = saved
    err = run_cli(capsys, "convert", folder / "w.pt", folder / "nowhere" / "w.safetensors")
    assert "expected an existing folder" in err and not (folder / "nowhere").exists()


def test_the_os_refusing_to_write_a_checkpoint_exits_2(saved, capsys, monkeypatch):
    import pathlib

    def refuse(*args, **kwargs):     # as an unwritable folder would (root ignores permission bits)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    folder, _ = saved
    err = run_cli(capsys, "convert", folder / "w.pt", folder / "new.safetensors")
    assert "new.safetensors: expected a writable folder" in err and "PermissionError: Permission denied" in err
    assert not (folder / "new.safetensors").exists()


def test_corrupt_orbax_data_exits_2_with_one_line_in_a_real_process(tmp_path):
    """``python -m flax_lenet eval`` on an Orbax checkpoint whose array store is damaged."""
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
