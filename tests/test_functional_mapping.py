"""``nn.Xxx`` vs ``nn.functional.xxx`` and their Flax / JAX rows, plus the gradient and update rows.

Each row of ``docs/build/mapping.py`` is backed here: every way of writing the op gives
the same values on the same inputs (float64), and the tempting wrong variant does not.
"""

import flax.linen as linen_nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax import nnx
from jax import lax

from flax_lenet import convert, functional, train
from flax_lenet.convert import nchw_to_nhwc
from flax_lenet.porting.parity import tutorial_data
from docs.build import examples
from flax_lenet.porting.tolerances import FLOAT64
from tests.helpers import assert_close, state_numpy, torch_net

pytestmark = pytest.mark.x64     # the float64 tier throughout (see conftest.py)

BATCH = 2
LR = 0.01
ACCUMULATED_STEPS = 3
RNG = np.random.default_rng(0)
X_NCHW = RNG.standard_normal((BATCH, 6, 12, 12))                      # a conv2-like activation
X_NHWC = nchw_to_nhwc(X_NCHW)
KEY = jax.random.key(0)


def nhwc(t):
    return nchw_to_nhwc(t.detach().numpy())


def agree(outputs: dict, expected) -> None:
    """Every entry of ``outputs`` equals ``expected`` within the float64 tier."""
    for how, value in outputs.items():
        assert_close(value, expected, FLOAT64, how)


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    return nn.Conv2d(6, 16, 3).double()


def conv_outputs(conv, padding="VALID"):
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)        # [O, I, kH, kW] -> [kH, kW, I, O]
    bias = conv.bias.detach().numpy()
    layer = nnx.eval_shape(lambda: nnx.Conv(6, 16, (3, 3), padding=padding, param_dtype=jnp.float64,
                                            rngs=nnx.Rngs(0)))
    nnx.update(layer, {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)})
    linen_conv = linen_nn.Conv(16, (3, 3), padding=padding)
    return {
        "nnx.Conv": layer(X_NHWC),
        "linen.Conv": linen_conv.apply({"params": {"kernel": kernel, "bias": bias}}, X_NHWC),
        "lax.conv_general_dilated": lax.conv_general_dilated(
            X_NHWC, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias,
        "functional.conv2d": functional.conv2d(X_NHWC, kernel, bias),
    }


def test_conv_row_all_calls_agree(conv):
    x = torch.from_numpy(X_NCHW)
    module, fn = examples.torch_layer_two_ways(conv, x)
    assert_close(nhwc(fn), nhwc(module), FLOAT64, "F.conv2d")
    agree(conv_outputs(conv), nhwc(module))


def test_conv_row_fails_with_flax_default_padding(conv):
    outputs = conv_outputs(conv, padding="SAME")
    with pytest.raises(ValueError, match="shape mismatch"):
        agree({k: outputs[k] for k in ("nnx.Conv", "linen.Conv")}, nhwc(conv(torch.from_numpy(X_NCHW))))


def test_flax_layer_two_ways_agree():
    layer = nnx.eval_shape(lambda: nnx.Conv(6, 16, (3, 3), padding="VALID", param_dtype=jnp.float64,
                                            rngs=nnx.Rngs(0)))
    nnx.update(layer, {"kernel": jnp.asarray(RNG.standard_normal((3, 3, 6, 16))),
                       "bias": jnp.asarray(RNG.standard_normal(16))})
    module, fn = examples.flax_layer_two_ways(layer, X_NHWC)
    assert_close(fn, module, FLOAT64, "functional.conv2d vs nnx.Conv")


def pool_outputs(strides=(2, 2)):
    window = (1, 2, 2, 1)
    return {
        "nnx.max_pool": nnx.max_pool(X_NHWC, (2, 2), strides=strides),
        "linen.max_pool": linen_nn.max_pool(X_NHWC, (2, 2), strides=strides),
        "lax.reduce_window": lax.reduce_window(X_NHWC, -jnp.inf, lax.max, window, (1, *strides, 1), "VALID"),
        "functional.max_pool2d": functional.max_pool2d(X_NHWC) if strides == (2, 2) else None,
    }


def test_max_pool_row_all_calls_agree():
    x = torch.from_numpy(X_NCHW)
    expected = nhwc(nn.MaxPool2d(2)(x))
    assert_close(nhwc(F.max_pool2d(x, 2)), expected, FLOAT64, "F.max_pool2d")
    agree(pool_outputs(), expected)


def test_max_pool_row_fails_with_flax_default_stride():
    outputs = pool_outputs(strides=(1, 1))
    with pytest.raises(ValueError, match="shape mismatch"):
        agree({"nnx.max_pool": outputs["nnx.max_pool"]}, nhwc(F.max_pool2d(torch.from_numpy(X_NCHW), 2)))


def test_relu_row_all_calls_agree():
    x = torch.from_numpy(X_NCHW)
    expected = nhwc(nn.ReLU()(x))
    assert_close(nhwc(F.relu(x)), expected, FLOAT64, "F.relu")
    agree({"nnx.relu": nnx.relu(X_NHWC), "linen.relu": linen_nn.relu(X_NHWC), "jax.nn.relu": jax.nn.relu(X_NHWC),
           "jnp.maximum": jnp.maximum(X_NHWC, 0)}, expected)
    with pytest.raises(AssertionError):
        agree({"jax.nn.gelu": jax.nn.gelu(X_NHWC)}, expected)


def test_relu_gradient_at_zero_is_torchs_in_jax_nn_relu_but_not_in_jnp_maximum():
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    F.relu(x).sum().backward()
    expected = x.grad.numpy()                                               # [0, 0, 1]
    xj = jnp.asarray([-1.0, 0.0, 2.0])
    for name, f in {"jax.nn.relu": jax.nn.relu, "nnx.relu": nnx.relu, "linen.relu": linen_nn.relu}.items():
        np.testing.assert_array_equal(jax.grad(lambda v: f(v).sum())(xj), expected, err_msg=name)
    maximum = jax.grad(lambda v: jnp.maximum(v, 0).sum())(xj)
    assert float(maximum[1]) == 0.5 and float(expected[1]) == 0.0          # same values, other gradient


def test_torch_zero_grad_sets_grad_to_none():
    net = torch_net(3, "float64")
    net(torch.zeros(1, 1, 32, 32, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()                                                         # set_to_none=True by default
    assert all(p.grad is None for p in net.parameters())


def test_linear_row_all_calls_agree():
    torch.manual_seed(0)
    layer = nn.Linear(120, 84).double()
    x = RNG.standard_normal((BATCH, 120))
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = layer(torch.from_numpy(x)).detach().numpy()
    assert_close(F.linear(torch.from_numpy(x), layer.weight, layer.bias).detach().numpy(), expected, FLOAT64, "F.linear")
    dense = nnx.eval_shape(lambda: nnx.Linear(120, 84, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    nnx.update(dense, {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b)})
    agree({"nnx.Linear": dense(x),
           "linen.Dense": linen_nn.Dense(84).apply({"params": {"kernel": w.T, "bias": b}}, x),
           "x @ W.T + b": x @ w.T + b, "functional.linear": functional.linear(x, w.T, b)}, expected)
    with pytest.raises(ValueError):                                   # W instead of W.T: wrong shape
        agree({"x @ W": functional.linear(x[:, :84], w, b)}, expected)


def test_mse_row_all_calls_agree():
    y, t = RNG.standard_normal((BATCH, 10)), RNG.standard_normal((BATCH, 10))
    expected = nn.MSELoss()(torch.from_numpy(y), torch.from_numpy(t)).numpy()
    assert_close(F.mse_loss(torch.from_numpy(y), torch.from_numpy(t)).numpy(), expected, FLOAT64, "F.mse_loss")
    agree({"functional.mse_loss": functional.mse_loss(y, t), "optax.squared_error": optax.squared_error(y, t).mean()},
          expected)
    with pytest.raises(AssertionError):                               # 0.5 * squared error
        agree({"optax.l2_loss": optax.l2_loss(y, t).mean()}, expected)


# --- gradients and updates: zero_grad, step, .data.sub_ -----------------------------------------

@pytest.fixture(scope="module")
def tutorial():
    """A float64 torch Net, the NNX model with its weights, and a batch in both layouts."""
    x, target = tutorial_data(BATCH, 0, "float64")
    return {"x_t": torch.from_numpy(x), "y_t": torch.from_numpy(target),
            "x": jnp.asarray(nchw_to_nhwc(x)), "y": jnp.asarray(target)}


def nnx_copy(net):
    return convert.to_nnx(convert.torch_to_flax(state_numpy(net)))


def torch_grads(grads):
    return convert.state_to_numpy(grads)


def test_torch_backprop_equals_nnx_grad_and_jax_grad(tutorial):
    net = torch_net(3, "float64")
    model = nnx_copy(net)
    expected = torch_grads(examples.torch_backprop(net, tutorial["x_t"], tutorial["y_t"]))
    got_nnx = convert.flax_to_torch(nnx.to_pure_dict(examples.flax_backprop(model, tutorial["x"], tutorial["y"])))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    got_fn = convert.flax_to_torch(examples.functional_backprop(params, tutorial["x"], tutorial["y"]))
    for name in expected:
        assert_close(got_nnx[name], expected[name], FLOAT64, f"nnx.grad {name}")
        assert_close(got_fn[name], expected[name], FLOAT64, f"jax.grad {name}")


def test_skipped_zero_grad_accumulates_the_sum_of_fresh_gradients(tutorial):
    net = torch_net(3, "float64")
    model = nnx_copy(net)
    once = torch_grads(examples.torch_backprop(net, tutorial["x_t"], tutorial["y_t"]))
    summed = torch_grads(examples.torch_accumulate(net, tutorial["x_t"], tutorial["y_t"], ACCUMULATED_STEPS))
    got = convert.flax_to_torch(nnx.to_pure_dict(
        examples.flax_accumulate(model, tutorial["x"], tutorial["y"], ACCUMULATED_STEPS)))
    for name in once:
        assert_close(summed[name], ACCUMULATED_STEPS * once[name], FLOAT64, f"torch sum {name}")
        assert_close(got[name], summed[name], FLOAT64, f"flax sum {name}")
    with pytest.raises(AssertionError):                                # fresh grads are not the sum
        assert_close(once["fc3.bias"], summed["fc3.bias"], FLOAT64, "one fresh gradient")


def test_optimizer_step_equals_nnx_optimizer_update(tutorial):
    from torch_reference import sgd_step
    net = torch_net(3, "float64")
    model = nnx_copy(net)
    sgd_step(net, torch.optim.SGD(net.parameters(), lr=LR), tutorial["x_t"], tutorial["y_t"])
    train.train_step(model, nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param), tutorial["x"], tutorial["y"])
    got = convert.flax_to_torch(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    for name, value in state_numpy(net).items():
        assert_close(got[name], value, FLOAT64, f"after step {name}")


def test_data_sub_equals_tree_map_update(tutorial):
    from torch_reference import manual_sgd_update
    net = torch_net(3, "float64")
    model = nnx_copy(net)
    before = state_numpy(net)
    examples.torch_backprop(net, tutorial["x_t"], tutorial["y_t"])
    manual_sgd_update(net, LR)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    grads = examples.functional_backprop(params, tutorial["x"], tutorial["y"])
    got = convert.flax_to_torch(train.sgd_update(params, grads, LR))
    after = state_numpy(net)
    for name in after:
        assert_close(got[name], after[name], FLOAT64, f"after w - lr*g {name}")
    wrong = convert.flax_to_torch(train.sgd_update(params, grads, -LR))  # gradient ascent
    with pytest.raises(AssertionError):
        assert_close(wrong["fc3.bias"], after["fc3.bias"], FLOAT64, "w + lr*g")
    assert not np.array_equal(before["fc3.bias"], after["fc3.bias"])


# --- the Linen and Keras tabs: net.apply and stateless_call give torch's numbers -----------------

def linen_copy(net):
    from flax_lenet import linen
    return linen.Net(3), {"params": jax.tree.map(jnp.asarray, convert.torch_to_flax(state_numpy(net)))}


def keras_copy(net):
    import keras_reference
    return keras_reference.from_flax_params(keras_reference.Net(3, dtype="float64"),
                                            convert.torch_to_flax(state_numpy(net)))


def keras_tree(values):
    from keras_reference import train as keras_train
    return convert.flax_to_torch(keras_train.as_tree(list(values)))


def test_linen_and_keras_layers_two_ways_agree(conv):
    import keras
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    bias = conv.bias.detach().numpy()
    expected = nhwc(conv(torch.from_numpy(X_NCHW)))
    variables = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    bound, functional_ = examples.linen_layer_two_ways(linen_nn.Conv(16, (3, 3), padding="VALID"), variables, X_NHWC)
    layer = keras.layers.Conv2D(16, 3, dtype="float64")
    layer.build((None, 12, 12, 6))
    layer.set_weights([kernel, bias])
    through, ops = examples.keras_layer_two_ways(layer, X_NHWC)
    agree({"linen apply": bound, "functional": functional_, "keras Conv2D": through, "keras.ops.conv": ops}, expected)


def test_linen_and_keras_single_image_equal_torch_unsqueeze(tutorial):
    net = torch_net(3, "float64")
    (lnet, variables), kmodel = linen_copy(net), keras_copy(net)
    expected = examples.torch_single_image(net, tutorial["x_t"][0]).detach().numpy()
    agree({"linen": examples.linen_single_image(lnet, variables, tutorial["x"][0]),
           "keras": examples.keras_single_image(kmodel, tutorial["x"][0])}, expected)


def test_linen_and_keras_loss_equal_torch_mse(tutorial):
    net = torch_net(3, "float64")
    (lnet, variables), kmodel = linen_copy(net), keras_copy(net)
    expected = examples.torch_loss(net, tutorial["x_t"], tutorial["y_t"]).detach().numpy()
    agree({"linen": examples.linen_loss(lnet, variables, tutorial["x"], tutorial["y"]),
           "keras": examples.keras_loss(kmodel, tutorial["x"], tutorial["y"])}, expected)


def test_linen_and_keras_jaxprs_have_the_nets_layers(tutorial):
    from flax_lenet.porting import graph
    net = torch_net(3, "float64")
    (lnet, variables), kmodel = linen_copy(net), keras_copy(net)
    params = variables["params"]
    expected = [op for op, _ in graph.jax_graph(functional.loss_fn, params, tutorial["x"], tutorial["y"])]
    assert expected[:3] == ["conv", "relu", "max_pool"] and expected[-1] == "mse"
    assert [op for op, _ in examples.linen_graph(lnet, variables, tutorial["x"], tutorial["y"])] == expected
    assert [op for op, _ in examples.keras_graph(kmodel, tutorial["x"], tutorial["y"])] == expected


def test_linen_and_keras_backprop_equal_torch_and_accumulate_as_a_sum(tutorial):
    from keras_reference import train as keras_train
    net = torch_net(3, "float64")
    (lnet, variables), kmodel = linen_copy(net), keras_copy(net)
    expected = torch_grads(examples.torch_backprop(net, tutorial["x_t"], tutorial["y_t"]))
    got = {"linen": convert.flax_to_torch(examples.linen_backprop(lnet, variables, tutorial["x"], tutorial["y"])),
           "keras": keras_tree(keras_train.loss_and_grads(kmodel, tutorial["x"], tutorial["y"])[1])}
    summed = {"linen": convert.flax_to_torch(examples.linen_accumulate(lnet, variables, tutorial["x"], tutorial["y"],
                                                                       ACCUMULATED_STEPS)),
              "keras": keras_tree(examples.keras_accumulate(kmodel, tutorial["x"], tutorial["y"], ACCUMULATED_STEPS))}
    for how in got:
        for name in expected:
            assert_close(got[how][name], expected[name], FLOAT64, f"{how} {name}")
            assert_close(summed[how][name], ACCUMULATED_STEPS * expected[name], FLOAT64, f"{how} sum {name}")


def test_linen_and_keras_sgd_steps_equal_torch_optim_sgd(tutorial):
    from keras_reference import train as keras_train
    from torch_reference import sgd_step
    net = torch_net(3, "float64")
    (lnet, variables), kmodel = linen_copy(net), keras_copy(net)
    sgd_step(net, torch.optim.SGD(net.parameters(), lr=LR), tutorial["x_t"], tutorial["y_t"])
    new, _ = examples.linen_sgd_step(lnet, variables, tutorial["x"], tutorial["y"], LR)
    keras_train.sgd_step(kmodel, tutorial["x"], tutorial["y"], LR)
    got = {"linen": convert.flax_to_torch(new), "keras": keras_tree(v.value for v in kmodel.trainable_variables)}
    for how in got:
        for name, value in state_numpy(net).items():
            assert_close(got[how][name], value, FLOAT64, f"{how} after step {name}")


def test_nnx_jaxpr_has_the_nets_layers(tutorial):
    """The NNX tab's ``jax.make_jaxpr`` over ``nnx.split`` traces the Net's layers, in order."""
    from flax_lenet import Net
    from flax_lenet.porting import graph
    model = Net(3, rngs=nnx.Rngs(0))
    names = [eqn.primitive.name for eqn in examples.nnx_graph(model, tutorial["x"], tutorial["y"]).jaxpr.eqns]
    convs = [i for i, n in enumerate(names) if n == "conv_general_dilated"]
    dots = [i for i, n in enumerate(names) if n == "dot_general"]
    assert len(convs) == 2 and len(dots) == 3 and convs[-1] < dots[0], names
    assert names.count("reduce_window_max") == 2 and graph.JAX_OPS["reduce_window_max"] == "max_pool"
