"""One fast step: ``flax-lenet train``, the N-step comparison, the ``flax:fast`` benchmark and a
data-parallel batch all run ``flax_lenet.fast``'s step, which ``tests/test_fast.py`` pins to
``train.train_step``.

A spy on ``fast.value_and_grad`` (which fast's step calls while it is traced) records the batch
size whenever the call comes from inside ``flax_lenet/fast.py``. Each user builds its own model
and runs with its own batch size, so fast's step is traced afresh for it and the spy sees it. The twins show the spy seeing nothing: the plain step, the teaching benchmark, and
``fast.value_and_grad`` called from outside ``fast.py``.
"""

import inspect

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import flax_lenet
from flax_lenet import fast, functional, optim, parallel, train
from flax_lenet.app import bench, cli, data, training
from flax_lenet.porting import trajectory


@pytest.fixture
def fast_step_batches(monkeypatch):
    """The batch sizes fast's step was traced for while the test ran."""
    seen = []
    real = fast.value_and_grad

    def spy(loss_fn, model, x, target, **kwargs):
        if inspect.currentframe().f_back.f_code.co_filename == fast.__file__:
            seen.append(x.shape[0])
        return real(loss_fn, model, x, target, **kwargs)

    monkeypatch.setattr(fast, "value_and_grad", spy)
    return seen


def test_flax_lenet_train_runs_the_fast_step(fast_step_batches, capsys):
    assert cli.main(["train", "--epochs", "1", "--max-steps", "1", "--batch-size", "9", "--quiet"]) == 0
    assert 9 in fast_step_batches


def test_side_by_side_training_runs_the_fast_step(fast_step_batches):
    d = data.load_digits()
    tiny = data.make_dataset("digits[:64]", d.x_train[:64], d.y_train[:64], d.x_test[:16], d.y_test[:16])
    training.train(tiny, training.TrainConfig(epochs=1, batch_size=7, max_steps_per_epoch=2))
    assert 7 in fast_step_batches


def test_trajectory_runs_the_fast_step(fast_step_batches):
    trajectory.compare(optim.Optimizer.of("adam", lr=1e-3), steps=2, batch=5, dtype="float32")
    assert 5 in fast_step_batches


def _bench(impl, batch):
    [result] = bench.run(bench.BenchConfig(batches=(batch,), impls=(impl,), rounds=1, min_time=0.001))
    assert result.samples_per_s


def test_the_fast_benchmark_runs_the_fast_step(fast_step_batches):
    _bench("flax:fast", 3)
    assert 3 in fast_step_batches


def _data_parallel(step, batch):
    """``flax_lenet.parallel``'s recipe: replicated model and optimizer, the batch sharded over devices."""
    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    mesh = parallel.batch_mesh()
    parallel.replicate((model, optimizer), mesh)
    n = batch * len(jax.devices())
    x = parallel.shard_batch(jnp.zeros((n, 32, 32, 1), jnp.float32), mesh)
    y = parallel.shard_batch(jnp.zeros((n, 10), jnp.float32), mesh)
    step(model, optimizer, x, y)
    return n


def test_a_data_parallel_batch_runs_the_fast_step(fast_step_batches):
    assert _data_parallel(fast.train_step, 11) in fast_step_batches


def _functional_grad(batch):
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(flax_lenet.Net(rngs=nnx.Rngs(0)), nnx.Param)))
    jax.jit(jax.grad(functional.loss_fn))(params, jnp.zeros((batch, 32, 32, 1)), jnp.zeros((batch, 10)))


def _called_from_outside_fast(batch):
    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    step = nnx.jit(lambda m, x, y: fast.value_and_grad(train.loss_fn, m, x, y))     # the spy, called from here
    step(model, jnp.zeros((batch, 32, 32, 1)), jnp.zeros((batch, 10)))


@pytest.mark.parametrize("bypass", [
    lambda: _functional_grad(13),
    lambda: _data_parallel(train.train_step, 13),            # parallel's recipe with the plain step
    lambda: _bench("flax:train_step", 13),
    lambda: _called_from_outside_fast(13),
], ids=["functional grad", "plain step, data-parallel", "teaching benchmark", "value_and_grad outside fast.py"])
def test_the_spy_sees_nothing_when_a_step_bypasses_the_fast_step(fast_step_batches, bypass):
    bypass()
    assert fast_step_batches == []
