"""``loss.grad_fn`` ↔ ``jax.make_jaxpr(loss_fn)``: the same graph, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flax_lenet import convert, functional, linen
from flax_lenet.porting import graph
from flax_lenet.porting.graph import LAYER_OPS
from flax_lenet.model import Net
from tests.helpers import state_numpy, torch_net

X = jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32)
TARGET = jax.ShapeDtypeStruct((1, 10), np.float32)


def torch_loss(kernel_size, criterion=torch.nn.MSELoss()):
    net = torch_net(kernel_size, "float32")
    return criterion(net(torch.zeros(1, 1, 32, 32)), torch.zeros(1, 10)), net


def flax_losses(kernel_size):
    """``(loss_fn, params)`` for the functional, Linen and NNX flavours."""
    _, net = torch_loss(kernel_size)
    params = convert.torch_to_flax(state_numpy(net))
    model = nnx.eval_shape(lambda: Net(kernel_size, rngs=nnx.Rngs(0)))   # only traced
    graphdef, state = nnx.split(model)
    module = linen.Net(kernel_size)
    return {
        "functional": (functional.loss_fn, params),
        "linen": (lambda p, x, t: functional.mse_loss(module.apply({"params": p}, x), t), params),
        "nnx": (lambda s, x, t: functional.mse_loss(nnx.merge(graphdef, s)(x), t), state),
    }


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_torch_grad_fn_chain_walks_the_nets_layers(kernel_size):
    loss, _ = torch_loss(kernel_size)
    assert [op for op, _ in graph.torch_graph(loss)] == list(LAYER_OPS)


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("flavour", ["functional", "linen", "nnx"])
def test_jaxpr_of_the_loss_has_the_nets_layers(flavour, kernel_size):
    fn, params = flax_losses(kernel_size)[flavour]
    assert [op for op, _ in graph.jax_graph(fn, params, X, TARGET)] == list(LAYER_OPS)


def test_grad_fn_chain_and_jaxpr_correspond_layer_by_layer():
    rows = graph.net_graphs(3)
    assert [op for _, op, _ in rows] == list(LAYER_OPS)
    assert rows[0] == ("ConvolutionBackward0", "conv", "conv_general_dilated + add")
    assert rows[-1] == ("MseLossBackward0", "mse", "sub + integer_pow + reduce_sum + div")


def relu_after_pool(params, x, target):
    """The Net with max-pool and relu swapped in the first block: same values, another graph."""
    p = params
    x = jax.nn.relu(functional.max_pool2d(functional.conv2d(x, **p["conv1"])))
    x = functional.max_pool2d(jax.nn.relu(functional.conv2d(x, **p["conv2"])))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(functional.linear(x, **p["fc1"]))
    x = jax.nn.relu(functional.linear(x, **p["fc2"]))
    return functional.mse_loss(functional.linear(x, **p["fc3"]), target)


def test_graph_comparison_fails_for_a_different_network():
    loss, net = torch_loss(3)
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state_numpy(net)))
    rows = graph.aligned(graph.torch_graph(loss), graph.jax_graph(relu_after_pool, params, X, TARGET))
    assert [r[1] for r in rows].count("≠") == 2                     # relu <-> max_pool
    l1, _ = torch_loss(3, torch.nn.L1Loss())
    rows = graph.aligned(graph.torch_graph(l1), graph.jax_graph(functional.loss_fn, params, X, TARGET))
    assert "≠" in [r[1] for r in rows] and rows[-1][0] != "MseLossBackward0"  # L1 = mean(abs(sub))


def test_render_puts_each_torch_node_beside_its_primitives():
    text = graph.render(graph.net_graphs(3))
    lines = text.splitlines()
    assert len(lines) == 2 + len(LAYER_OPS)
    assert lines[2].split() == ["ConvolutionBackward0", "conv", "conv_general_dilated", "+", "add"]
