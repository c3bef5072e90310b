"""A training run's directory: metrics, curves and both frameworks' weights, written as one unit.

    metrics.json        what both frameworks did (``TrainResult.metrics``), timings, the data
    curves.png          loss and test accuracy per epoch, Flax and torch on the same axes
    flax.orbax          the Flax-trained weights, an Orbax checkpoint in the Flax layout
    torch.safetensors   the torch-trained weights, in the torch layout

A run is one unit. ``prepare_run_dir`` takes ``out``'s lock (``files.hold``: a second writer of
``out`` is refused with one line, for the whole run, not only at its start) and removes what a
killed writer left beside it. ``write_run`` builds the whole directory beside ``out`` and swaps it
in with one rename (``files.atomic_write``), then deletes the old run. Killed (SIGKILL),
interrupted (Ctrl-C) or failing (a full disk) at any moment, ``out`` holds the old complete run or
the new complete one, never a mix (``tests/test_atomic_runs.py``).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from flax_lenet.app import files
from flax_lenet.app.files import atomic_write, os_reason
from flax_lenet.errors import BadFile

RUN_FILES = ("metrics.json", "curves.png", "flax.orbax", "torch.safetensors")


def earlier_run(out) -> list[str]:
    """The names of ``RUN_FILES`` already in the folder ``out`` (empty if none, or no folder)."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def replaceable_run(out) -> str | None:
    """Why ``out`` must not be replaced by a run (it holds files no run writes), or None."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return f"{out}: expected a directory, found a {'symbolic link' if out.is_symlink() else 'file'}"
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES) if out.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return (f"{out}: expected a new, empty or run directory, found other files ({shown}); "
                "a run directory is replaced whole, so choose another")
    return None


def prepare_run_dir(out, *, overwrite: bool = False) -> Path:
    """Check that ``out`` can take a new run, and become its one writer, before any training starts.

    ``write_run`` later replaces ``out`` whole, so ``out`` must be new, empty, or a run directory
    (nothing in it but ``RUN_FILES``): a folder holding anything else is refused, never replaced.
    The lock on ``out`` is held until ``release_run_dir`` (or the process ends).

    Raises:
      BadFile: ``out`` is a file, holds other files, holds an earlier run and ``overwrite`` is
      false, another process is writing it, or its folder cannot be written.
    """
    out = Path(out)
    reason = replaceable_run(out)
    if reason:
        raise BadFile(reason)
    earlier = earlier_run(out)
    if earlier and not overwrite:
        raise BadFile(f"{out}: expected a new or empty run directory, found an earlier run "
                      f"({', '.join(earlier)}); overwrite=True replaces it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadFile(f"{out}: expected a writable directory, found it not writable ({os_reason(e)})") from None
    files.hold(out)                 # refuses a second writer; a lock file is also a test of writing
    try:
        reason = replaceable_run(out)   # again, now that no other writer can change it
        if reason is None and earlier_run(out) and not overwrite:
            reason = f"{out}: expected a new or empty run directory, found an earlier run (written meanwhile)"
        if reason:
            raise BadFile(reason)
    except BaseException:
        files.release(out)
        raise
    return out


def release_run_dir(out) -> None:
    """Let another process write ``out`` again (the end of ``prepare_run_dir``'s hold)."""
    files.release(out)


def progress_bars(cfg, quiet):
    """A per-epoch tqdm bar over the torch and Flax batches (off when quiet or not a terminal)."""
    if quiet or not sys.stderr.isatty():
        return None, print, lambda: None
    from tqdm import tqdm
    bar = [None]

    def start(epoch, total):
        if bar[0] is not None:
            bar[0].close()
        bar[0] = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        return lambda: bar[0].update()

    def close():
        if bar[0] is not None:
            bar[0].close()

    return start, tqdm.write, close


def epoch_line(epoch: int, result) -> str:
    """``epoch  3/20  flax loss 0.1234 acc 97.22%  torch loss 0.1230 acc 97.50%  diff ...``."""
    f, t = result.flax, result.torch
    return (f"epoch {epoch + 1:>2}/{result.config.epochs}  "
            f"flax loss {f.train_loss[-1]:.4f} acc {100 * f.test_accuracy[-1]:6.2f}%  "
            f"torch loss {t.train_loss[-1]:.4f} acc {100 * t.test_accuracy[-1]:6.2f}%  "
            f"diff loss {abs(f.train_loss[-1] - t.train_loss[-1]):.1e} "
            f"acc {100 * abs(f.test_accuracy[-1] - t.test_accuracy[-1]):.2f} pt")


def plot_curves(path, result, data_name: str) -> None:
    """Loss and test accuracy per epoch, both frameworks on the same axes, to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = range(1, len(result.flax.train_loss) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, run, style in (("Flax", result.flax, dict(color="tab:blue", lw=2.5, alpha=0.7)),
                             ("torch", result.torch, dict(color="tab:orange", lw=1.2, ls="--", marker="o", ms=3))):
        ax_loss.plot(epochs, run.train_loss, label=name, **style)
        ax_acc.plot(epochs, [100 * a for a in run.test_accuracy], label=name, **style)
    ax_loss.set(xlabel="epoch", ylabel=f"mean training loss ({result.config.loss})", yscale="log",
                title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    c = result.config
    drop = round(c.lr_decay_at * c.epochs)              # epochs 1..drop at lr, then lr / 10
    for ax in (ax_loss, ax_acc):
        if drop < c.epochs:
            ax.axvline(drop + 0.5, color="grey", lw=0.8, ls=":", label="lr / 10")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Flax vs torch on {data_name}: same initial weights, same batches "
                 f"(lr {c.lr}, batch {c.batch_size}, {c.dtype})")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_run(out, result, metrics: dict | None, data_name: str, notes: list | None = None) -> None:
    """Write a run directory to ``out`` in one rename, replacing what was there.

    Args:
      out: the run directory (it may exist: ``prepare_run_dir`` has checked it may be replaced).
      result: a ``training.TrainResult``. metrics: the content of ``metrics.json``; None for a
        run that did not finish (it diverged): then only the weights are written.
      data_name: the data set's name, for the plot's title.
      notes: if given, a line is appended for an old run that could not be removed (``atomic_write``).
    """
    from flax_lenet import convert
    from flax_lenet.app import checkpoint

    def write(tmp: Path) -> None:
        tmp.mkdir()
        checkpoint.write_new(tmp / "flax.orbax", convert.flax_to_torch(result.flax_params))
        checkpoint.write_new(tmp / "torch.safetensors", result.torch_state)
        if metrics is None:
            return
        plot_curves(tmp / "curves.png", result, data_name)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        for p in tmp.iterdir():                         # the umask's mode, as for every file written
            if p.is_file():
                os.chmod(p, 0o666 & ~files.umask())

    atomic_write(out, write, overwrite=True, may_replace=replaceable_run, notes=notes)
