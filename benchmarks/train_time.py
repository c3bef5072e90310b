"""Training seconds of ``flax-lenet train``, Flax against torch in the same run, and its peak memory.

    python benchmarks/train_time.py [--epochs-digits 20] [--epochs-mnist 1]

Runs ``flax-lenet train`` in fresh processes: the default digits run, then an MNIST-sized run
on a synthetic IDX set (60,000 training and 10,000 test images of 28x28 random pixels with
labels 0..9; MNIST itself cannot be downloaded here, and the step costs the same on any
pixels). Prints, per run, each side's training seconds (start-up excluded, as ``metrics.json``
reports them), the one-time start-up (Flax's compilation, torch's first step), the ratio
flax / torch and the process's peak resident memory.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MNIST_SIZE = {"train": 60_000, "t10k": 10_000}


def write_synthetic_mnist(folder: Path, seed: int = 0) -> None:
    """MNIST's four IDX files at MNIST's size, random pixels, balanced labels."""
    from flax_lenet.app.data import write_idx
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in MNIST_SIZE.items():
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def run(argv: list[str], out: Path) -> dict:
    """``flax-lenet train ARGV --out OUT`` in a fresh process; its metrics and its peak RSS (MiB)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "flax_lenet", "train", *argv, "--out", str(out), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)             # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"train_time: {' '.join(argv)} failed:\n{err.read().decode()}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["peak_rss_mib"] = usage.ru_maxrss / 1024        # ru_maxrss is in KiB on Linux
    return metrics


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs-digits", type=int, default=20, help="epochs of the digits run (default: 20)")
    p.add_argument("--epochs-mnist", type=int, default=1, help="epochs of the MNIST-sized run (default: 1)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_mnist(tmp / "mnist")
        runs = {"digits (default run)": run(["--epochs", str(args.epochs_digits)], tmp / "digits"),
                "synthetic MNIST, 60,000 images": run(["--data", "mnist", "--data-dir", str(tmp / "mnist"),
                                                       "--epochs", str(args.epochs_mnist)], tmp / "mnist-run")}
    for name, m in runs.items():
        f, t = m["flax"], m["torch"]
        peak = f"{m['peak_rss_mib']:.0f} MiB"
        print(f"{name}: {m['config']['epochs']} epochs, batch {m['config']['batch_size']}; training seconds "
              f"flax {f['seconds']:.2f}, torch {t['seconds']:.2f} (flax / torch = {f['seconds'] / t['seconds']:.2f}); "
              f"start-up apart: flax {f['compile_seconds']:.2f} s, torch {t['compile_seconds']:.2f} s; "
              f"peak RSS of the process {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
