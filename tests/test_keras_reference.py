"""The tutorial's Net in Keras 3 (JAX backend) computes torch's Net after a weight transfer.

``keras_reference`` sets ``KERAS_BACKEND=jax`` before keras is first imported; the library
(``flax_lenet``) never imports keras.
"""

import subprocess
import sys

import numpy as np
import pytest

from flax_lenet import convert
from flax_lenet.porting import parity
from flax_lenet.porting.tolerances import tolerance
from tests.helpers import assert_close, assert_tree_close, state_numpy, torch_net

import keras_reference  # noqa: E402  (keras is a test dependency; this sets KERAS_BACKEND=jax first)
import keras  # noqa: E402
from keras_reference import train as keras_train  # noqa: E402

LR = 0.01


def torch_reference(dtype, batch=4, seed=0):
    import torch
    net = torch_net(3, dtype, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(dtype)
    target = rng.standard_normal((batch, 10)).astype(dtype)
    net.zero_grad()
    out = net(torch.from_numpy(x))
    torch.nn.MSELoss()(out, torch.from_numpy(target)).backward()
    grads = {f"{n}": p.grad.numpy().copy() for n, p in net.named_parameters()}
    return state_numpy(net), x, target, out.detach().numpy(), grads


def keras_run(params, x_nchw, target, dtype):
    model = keras_reference.Net(3, dtype=dtype)
    keras_reference.from_flax_params(model, params)
    x = convert.nchw_to_nhwc(x_nchw)
    logits = np.asarray(model(x))
    _, grads = keras_train.loss_and_grads(model, x, target)
    return logits, convert.flax_to_torch(keras_train.as_tree(grads))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_keras_net_matches_torch_after_a_weight_transfer(dtype):
    state, x, target, logits, grads = torch_reference(dtype)
    got_logits, got_grads = keras_run(convert.torch_to_flax(state), x, target, dtype)
    assert got_logits.dtype == np.dtype(dtype)
    tol = tolerance(dtype)
    assert_close(got_logits, logits, tol, "keras logits")
    assert_tree_close(got_grads, grads, tol, "keras grad")


@pytest.mark.parametrize("fault", ["flatten", "transpose"])
def test_keras_parity_fails_with_a_wrong_flatten_order_or_a_reshaped_kernel(fault):
    state, x, target, logits, grads = torch_reference("float32")
    params = convert.torch_to_flax(state)
    parity.FAULTS[fault](state, params)
    got_logits, got_grads = keras_run(params, x, target, "float32")
    with pytest.raises(AssertionError):
        assert_close(got_logits, logits, tolerance("float32"), "keras logits")
    with pytest.raises(AssertionError):
        assert_tree_close(got_grads, grads, tolerance("float32"), "keras grad")


def test_keras_sgd_step_equals_torch_optim_sgd():
    import torch
    state, x, target, _, _ = torch_reference("float32")
    net = torch_net(3, "float32", 0)
    optim = torch.optim.SGD(net.parameters(), lr=LR)
    optim.zero_grad()
    torch.nn.MSELoss()(net(torch.from_numpy(x)), torch.from_numpy(target)).backward()
    optim.step()
    model = keras_reference.from_flax_params(keras_reference.Net(3), convert.torch_to_flax(state))
    keras_train.sgd_step(model, convert.nchw_to_nhwc(x), target, LR)
    after = convert.flax_to_torch(keras_train.as_tree((v.value for v in model.trainable_variables)))
    assert_tree_close(after, state_numpy(net), tolerance("float32"), "params after SGD step")


class Recorder(keras.Model):
    """A model whose ``call`` records the ``training`` it is given, with a Dropout inside."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(64)
        self.dropout = keras.layers.Dropout(0.5, seed=0)
        self.seen = []

    def call(self, x, training=None):
        self.seen.append(training)
        return self.dropout(self.dense(x))          # `training` not passed on: Model.__call__ does it


def test_keras_model_call_builds_on_first_call_and_passes_training_to_call_and_its_layers():
    model, x = Recorder(), np.ones((2, 8), np.float32)
    assert not model.built and model.weights == []
    model(x)
    assert model.built and [tuple(w.shape) for w in model.weights] == [(8, 64), (64,)]
    assert model.seen and set(model.seen) == {None}       # (Keras may trace call once to build)
    assert np.asarray(model(x, training=True) == 0).any()                 # Dropout saw training=True
    assert not np.asarray(model(x, training=False) == 0).any()
    assert model.seen[-2:] == [True, False]


def test_keras_direct_call_skips_build_and_the_training_handling():
    model, x = Recorder(), np.ones((2, 8), np.float32)
    out = model.call(x, training=True)               # as torch's net.forward(x): no Model.__call__
    assert not model.built                           # the model itself was never built
    assert not np.asarray(out == 0).any()            # Dropout never saw training=True: no zeros
    assert np.asarray(model(x, training=True) == 0).any()


@pytest.mark.slow
def test_the_library_does_not_import_keras():
    code = "import sys, flax_lenet, flax_lenet.train, flax_lenet.porting.parity; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.x64
def test_keras_ops_mean_of_float64_is_only_float32_accurate_so_the_loss_divides_a_sum():
    import jax.numpy as jnp
    x = jnp.asarray(np.random.default_rng(0).standard_normal(40))
    assert x.dtype == jnp.float64
    assert 1e-12 < abs(float(keras.ops.mean(x) - jnp.mean(x))) < 1e-6           # float32 rounding
    output, target = x.reshape(4, 10), jnp.zeros((4, 10))
    assert abs(float(keras_train.mse_loss(output, target)) / float(jnp.mean(output ** 2)) - 1) < 1e-15
