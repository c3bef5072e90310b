"""Peak resident memory of a MNIST-sized data set, measured in a fresh process.

The child loads a synthetic 60,000-image IDX set (``write_idx``, MNIST's size and dtype) and
gathers one epoch's worth of shifted float32 batches from it, as the training loop does, then
prints how far its peak resident memory rose above what it held before loading. One copy of
the set is 61 MB (uint8, padded to 32x32) plus 10 MB of test images; a float32 copy of the
training images alone would be 245 MB.

The peak is the child's ``VmHWM`` (``/proc/self/status``), not ``resource.getrusage``'s
``ru_maxrss``: Linux carries the forking process's peak over ``exec`` into ``ru_maxrss``, so a
child of this (large) pytest process would report pytest's peak. ``VmHWM`` belongs to the
address space the child's ``exec`` made.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flax_lenet.app import data

MNIST_SIZE = {"train": 60_000, "t10k": 10_000}
# The loader's rise in peak RSS: the stored set (71 MB) plus the file's bytes while parsing
# (2 x 47 MB). Measured: 103 MiB; with one float32 copy of the training images 307 MiB; the
# loader before it (float32 set, standardised into a second copy) rose by 772 MiB.
LOADER_BOUND_MIB = 220
# A whole `flax-lenet train --data mnist` process (torch, jax, compiled steps, the data set).
# Measured: ~860 MiB; before batches were gathered from one uint8 copy: 2.2 GiB.
TRAIN_BOUND_MIB = 1024

PEAK = """
def _peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
"""
CHILD = PEAK + """
import json, sys
import numpy as np
from flax_lenet.app import data
from flax_lenet.app.training import TrainConfig, batch_order

def peak():
    return _peak_mib()

before = peak()
ds = data.load_mnist(sys.argv[1])
order = batch_order(len(ds.y_train), TrainConfig(epochs=1, batch_size=256))
shifts = data.Shifts(ds.x_train, 2, np.random.default_rng(0))
total = 0.0
for idx in order[0]:
    total += float(ds.to_float(shifts[idx]).sum())
if sys.argv[2] == "float-copy":          # the broken twin: a float32 copy of the whole set
    total += float(ds.images("train").sum())
print(json.dumps({"rise_mib": peak() - before, "batches": len(order[0])}))
"""


@pytest.fixture(scope="module")
def mnist_sized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist-sized")
    rng = np.random.default_rng(0)
    for split, n in MNIST_SIZE.items():
        data.write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return folder


def child_env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                FLAX_LENET_CACHE="0", JAX_PLATFORMS="cpu")


def loader_rise(folder, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_mnist_sized_set_and_an_epoch_of_batches_fit_in_one_small_copy(mnist_sized):
    found = loader_rise(mnist_sized, "batches")
    assert found["batches"] == 60_000 // 256
    assert found["rise_mib"] < LOADER_BOUND_MIB, found


@pytest.mark.slow     # a broken twin in a fresh process: seconds, off the fast tier
def test_the_memory_bound_catches_a_float_copy_of_the_set(mnist_sized):
    """The broken twin: one float32 copy of the training images breaks the bound."""
    found = loader_rise(mnist_sized, "float-copy")
    assert found["rise_mib"] >= LOADER_BOUND_MIB, found


TRAIN = PEAK + """
import sys
from flax_lenet.app import cli
assert cli.main(["train", "--data", "mnist", "--data-dir", sys.argv[1], "--epochs", "1",
                 "--max-steps", "20", "--quiet"]) == 0
print(_peak_mib())
"""


@pytest.mark.slow
def test_train_on_a_mnist_sized_set_stays_under_1_gib(mnist_sized):
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(mnist_sized)], env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < TRAIN_BOUND_MIB
