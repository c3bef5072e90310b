"""``flax-lenet train``, ``eval`` and ``convert`` end to end, on a tiny configuration."""

import contextlib
import io
import json

import pytest

from flax_lenet.app import cli
from tests.test_idx import write_mnist

# Two epochs of 6 batches: the test checks the plumbing and the files; the full default run
# (>= 97% for both frameworks in under 60 s) is too long for the suite and is run by hand.
TINY = ["--epochs", "2", "--max-steps", "6", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run, not quiet: its directory and what it printed."""
    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["train", "--out", str(out), *[a for a in TINY if a != "--quiet"]]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def run_dir(trained):
    return trained[0]


def test_train_writes_metrics_curves_and_both_checkpoints(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["curves.png", "flax.orbax", "metrics.json", "torch.safetensors"]
    m = json.loads((run_dir / "metrics.json").read_text())
    for side in ("flax", "torch"):
        assert len(m[side]["train_loss"]) == 2 and len(m[side]["step_loss"]) == 12
        assert 0.0 <= m[side]["test_accuracy"] <= 1.0 and m[side]["seconds"] > 0
    assert m["data"]["name"] == "digits" and m["data"]["test"] == 360
    assert m["config"]["epochs"] == 2 and m["config"]["loss"] == "ce"
    gap = m["difference"]["test_accuracy_points"]
    assert gap == pytest.approx(100 * abs(m["flax"]["test_accuracy"] - m["torch"]["test_accuracy"]))
    assert m["difference"]["test_accuracy_agrees"] == (gap <= 1.0)
    png = (run_dir / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000      # a real figure, not an empty canvas


def test_eval_reports_the_accuracy_that_training_reported(run_dir, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    for ckpt, side in (("torch.safetensors", "torch"), ("flax.orbax", "flax")):
        rc, out, err = run(capsys, "eval", run_dir / ckpt, "--json")
        assert rc == 0, err
        report = json.loads(out)
        assert report[side] == pytest.approx(m[side]["test_accuracy"], abs=1e-12)
        assert report["flax"] == report["torch"]       # either framework runs either checkpoint


def test_weights_trained_in_either_framework_keep_their_accuracy_through_convert(run_dir, tmp_path, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    for src, dst, side in (("torch.safetensors", "from_torch.orbax", "torch"),
                           ("flax.orbax", "from_flax.pt", "flax")):
        rc, out, err = run(capsys, "convert", run_dir / src, tmp_path / dst)
        assert rc == 0, err
        rc, out, err = run(capsys, "eval", tmp_path / dst, "--json")
        report = json.loads(out)
        assert report["flax"] == report["torch"] == pytest.approx(m[side]["test_accuracy"], abs=1e-12)


def test_an_existing_run_is_replaced_only_with_overwrite(run_dir, tmp_path, capsys):
    import shutil
    earlier = shutil.copytree(run_dir, tmp_path / "run")
    before = (earlier / "metrics.json").read_bytes()
    rc, out, err = run(capsys, "train", "--out", earlier, *TINY)
    assert rc == 2 and "earlier run" in err and "--overwrite" in err
    assert (earlier / "metrics.json").read_bytes() == before
    rc, out, err = run(capsys, "train", "--out", earlier, "--overwrite", "--epochs", "1", "--max-steps", "2", "--quiet")
    assert rc == 0, err
    assert json.loads((earlier / "metrics.json").read_text())["config"]["epochs"] == 1
    assert sorted(p.name for p in earlier.iterdir()) == sorted(p.name for p in run_dir.iterdir())


def test_train_on_small_mnist_idx_files(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=64, n_test=32, gz=True)
    rc, out, err = run(capsys, "train", "--data", "mnist", "--data-dir", tmp_path / "mnist",
                       "--out", tmp_path / "run", "--batch-size", "16", *TINY)
    assert rc == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["data"]["train"] == 64 and m["data"]["test"] == 32 and m["data"]["image_shape"] == [32, 32, 1]
    rc, out, err = run(capsys, "eval", tmp_path / "run" / "torch.safetensors", "--data", "mnist",
                       "--data-dir", tmp_path / "mnist")
    assert rc == 0 and "(32 images)" in out


def test_per_epoch_lines_show_both_frameworks_and_their_difference(trained):
    out = trained[1]
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 2
    line = lines[-1]
    assert "flax loss" in line and "torch loss" in line and "diff loss" in line and "pt" in line
    assert "test accuracy: flax" in out


def test_overwrite_replaces_the_run_whole_and_never_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "curves.png").write_bytes(b"old")
    rc, _, _ = run(capsys, "train", "--out", out, "--overwrite", *TINY)
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "flax.orbax", "metrics.json", "torch.safetensors"]
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)                 # the new run's plot
    assert [p.name for p in tmp_path.iterdir()] == ["run"]                          # no temporary left
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.txt").write_text("keep")
    rc, _, err = run(capsys, "train", "--out", photos, "--overwrite", *TINY)
    assert rc == 2 and "found other files (a.txt)" in err
    assert [p.name for p in photos.iterdir()] == ["a.txt"]
