"""One training step: ``flax-lenet train``, the N-step comparison, the benchmark and the
data-parallel step all run ``flax_lenet.train_step``; ``import flax_lenet`` stays light.

A spy on ``flax_lenet.fast.value_and_grad`` (which ``train_step`` calls while it is traced) records the
batch shape whenever the caller is ``train_step``. Each user runs with its own batch size, so
``train_step`` is traced afresh for it and the spy sees it.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import flax_lenet
from flax_lenet import fast, functional, optim, parallel, train
from flax_lenet.porting import trajectory
from flax_lenet.app import bench, cli, data, training

HEAVY = ("torch", "sklearn", "matplotlib", "orbax", "tqdm", "pygments")


@pytest.fixture
def traced_batches(monkeypatch):
    """The batch sizes ``train_step`` was traced for while the test ran."""
    seen = []
    real = fast.value_and_grad

    def spy(loss_fn, model, x, target):
        caller = sys._getframe(1).f_code
        if caller.co_name == "train_step" and caller.co_filename == train.__file__:
            seen.append(x.shape[0])
        return real(loss_fn, model, x, target)

    monkeypatch.setattr(fast, "value_and_grad", spy)
    return seen


def test_flax_lenet_train_runs_train_step(traced_batches, capsys):
    assert cli.main(["train", "--epochs", "1", "--max-steps", "1", "--batch-size", "9", "--quiet"]) == 0
    assert 9 in traced_batches


def test_side_by_side_training_runs_train_step(traced_batches):
    d = data.load_digits()
    tiny = data.make_dataset("digits[:64]", d.x_train[:64], d.y_train[:64], d.x_test[:16], d.y_test[:16])
    training.train(tiny, training.TrainConfig(epochs=1, batch_size=7, max_steps_per_epoch=2))
    assert 7 in traced_batches


def test_trajectory_runs_train_step(traced_batches):
    trajectory.compare(optim.preset("adam", 1e-3), steps=2, batch=5, dtype="float32")
    assert 5 in traced_batches


def test_benchmark_runs_train_step(traced_batches):
    cfg = bench.BenchConfig(batches=(3,), impls=("flax:train_step",), rounds=1, min_time=0.001)
    [result] = bench.run(cfg)
    assert result.samples_per_s and 3 in traced_batches


def test_data_parallel_step_is_train_step(traced_batches):
    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    mesh = parallel.batch_mesh()
    parallel.replicate((model, optimizer), mesh)
    x = parallel.shard_batch(jnp.zeros((11, 32, 32, 1), jnp.float32), mesh)
    y = parallel.shard_batch(jnp.zeros((11, 10), jnp.float32), mesh)
    flax_lenet.train_step(model, optimizer, x, y)
    assert 11 in traced_batches


def test_the_spy_sees_nothing_when_a_step_bypasses_train_step(traced_batches):
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(flax_lenet.Net(rngs=nnx.Rngs(0)), nnx.Param)))
    jax.jit(jax.grad(functional.loss_fn))(params, jnp.zeros((13, 32, 32, 1), jnp.float32), jnp.zeros((13, 10), jnp.float32))
    assert traced_batches == []


def _imported_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_import_flax_lenet_loads_no_torch_sklearn_matplotlib_orbax_tqdm_or_pygments():
    # jax's own debugger imports pygments when it is installed, so pygments is judged against
    # what `import jax, flax.nnx, optax` alone loads; the rest must not be loaded at all
    baseline = _imported_by("import jax, flax.nnx, optax, numpy")
    loaded = _imported_by("import flax_lenet")
    assert not {"torch", "sklearn", "matplotlib", "orbax", "tqdm"} & loaded
    assert not (set(HEAVY) & loaded) - baseline


def test_the_import_check_sees_a_heavy_import():
    assert "torch" in _imported_by("import flax_lenet.app.training; import torch_reference")
