"""Small paired examples, torch then Flax, for the tutorial steps the model files do not show.

Each pair is run by a test that checks the two agree; the docs pull them with ``inspect``.
"""

import jax
import optax
import torch.nn as nn
import torch.nn.functional as F
from flax import linen
from flax import nnx

from keras_reference import train as keras_train  # first: the package sets KERAS_BACKEND=jax
import keras  # noqa: E402,I001
from flax_lenet import functional
from flax_lenet.porting import graph
from flax_lenet.train import loss_fn, mse_loss


def torch_layer_two_ways(conv: nn.Conv2d, x):
    """``nn.Conv2d`` holds the weights and calls ``F.conv2d`` with them."""
    return conv(x), F.conv2d(x, conv.weight, conv.bias)


def flax_layer_two_ways(conv: nnx.Conv, x):
    """``nnx.Conv`` holds the kernel; ``functional.conv2d`` takes it as an argument."""
    return conv(x), functional.conv2d(x, conv.kernel[...], conv.bias[...])


def torch_single_image(net, image):
    """The Net needs a batch dimension: ``(1, 32, 32)`` -> ``(1, 1, 32, 32)``."""
    return net(image.unsqueeze(0))             # (1, 10)


def flax_single_image(model, image):
    """The same in Flax: ``(32, 32, 1)`` -> ``(1, 32, 32, 1)``; a bare image raises ValueError."""
    return model(image[None])                  # (1, 10)


def torch_loss(net, input, target):
    """The tutorial's loss: ``criterion = nn.MSELoss(); loss = criterion(net(input), target)``."""
    output = net(input)
    criterion = nn.MSELoss()
    loss = criterion(output, target)
    return loss


def torch_backprop(net, input, target):
    """``zero_grad()`` then ``backward()``: the gradients land in each parameter's ``.grad``."""
    net.zero_grad()                            # .grad = None for every parameter (set_to_none=True)
    loss = torch_loss(net, input, target)
    loss.backward()
    return {name: p.grad for name, p in net.named_parameters()}


@nnx.jit
def flax_backprop(model, x, target):
    """``nnx.grad`` returns fresh gradients, a tree shaped like the parameters: nothing to zero."""
    return nnx.grad(loss_fn)(model, x, target)


def nnx_graph(model, x, target):
    """``jax.make_jaxpr`` of the loss as a function of the model's state (``nnx.split``)."""
    graphdef, state = nnx.split(model)
    return jax.make_jaxpr(lambda state: loss_fn(nnx.merge(graphdef, state), x, target))(state)


@jax.jit
def functional_backprop(params, x, target):
    """``jax.grad`` of a pure loss function of the parameters."""
    return jax.grad(functional.loss_fn)(params, x, target)


def torch_accumulate(net, input, target, steps):
    """Without ``zero_grad()`` between calls, ``backward()`` adds into ``.grad``: a running sum."""
    net.zero_grad()
    for _ in range(steps):
        torch_loss(net, input, target).backward()
    return {name: p.grad for name, p in net.named_parameters()}


def flax_accumulate(model, x, target, steps):
    """The same sum in Flax is explicit: add the fresh gradients of each call."""
    grads = [flax_backprop(model, x, target) for _ in range(steps)]
    return jax.tree.map(lambda *g: sum(g), *grads)


# --- Linen: the same steps through net.apply ---------------------------------------------------


def linen_layer_two_ways(conv: linen.Conv, variables, x):
    """``conv.apply`` binds the kernel; ``functional.conv2d`` takes it as an argument."""
    return conv.apply(variables, x), functional.conv2d(x, **variables["params"])


def linen_single_image(net, variables, image):
    """``net.apply`` on ``image[None]``: ``(32, 32, 1)`` -> ``(1, 32, 32, 1)``."""
    return net.apply(variables, image[None])   # (1, 10)


def linen_loss(net, variables, x, target):
    """The loss as a function of ``variables``: ``mse_loss(net.apply(variables, x), target)``."""
    output = net.apply(variables, x)
    return mse_loss(output, target)


def linen_graph(net, variables, x, target):
    """``jax.make_jaxpr`` of that loss, grouped into layers as for the functional flavour."""
    return graph.jax_graph(lambda v, x, t: linen_loss(net, v, x, t), variables, x, target)


def linen_backprop(net, variables, x, target):
    """``jax.grad`` of the loss w.r.t. ``variables``: fresh gradients, shaped like them."""
    return jax.grad(linen_loss, argnums=1)(net, variables, x, target)


def linen_accumulate(net, variables, x, target, steps):
    """No ``.grad`` buffers: a running sum is an explicit sum of fresh gradients."""
    grads = [linen_backprop(net, variables, x, target) for _ in range(steps)]
    return jax.tree.map(lambda *g: sum(g), *grads)


def linen_sgd_step(net, variables, x, target, learning_rate=0.01):
    """``optimizer.step()``: ``optax.sgd``'s update applied to a new ``variables`` tree."""
    tx = optax.sgd(learning_rate)
    opt_state = tx.init(variables)              # kept across steps in a training loop
    loss, grads = jax.value_and_grad(linen_loss, argnums=1)(net, variables, x, target)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), loss


# --- Keras (JAX backend): Model.__call__ -> call, stateless_call under jax.grad ------------------


def keras_layer_two_ways(conv: keras.layers.Conv2D, x):
    """``Conv2D`` holds the kernel; ``keras.ops.conv`` takes it as an argument."""
    return conv(x), keras.ops.conv(x, conv.kernel, padding="valid") + conv.bias


def keras_single_image(model, image):
    """``model(image[None])``: Keras layers expect a batch axis too."""
    return model(image[None])                  # (1, 10)


def keras_loss(model, x, target):
    """``criterion(net(input), target)``: ``model(x)`` then the mean squared error."""
    output = model(x)
    return keras_train.mse_loss(output, target)


def keras_graph(model, x, target):
    """``jax.make_jaxpr`` of ``stateless_call`` + loss: Keras on JAX traces to the same primitives."""
    def loss(trainable, x, target):
        output, _ = model.stateless_call(trainable, [], x)
        return keras_train.mse_loss(output, target)
    return graph.jax_graph(loss, [v.value for v in model.trainable_variables], x, target)


def keras_accumulate(model, x, target, steps):
    """A running sum is an explicit sum of fresh gradients here too."""
    grads = [keras_train.loss_and_grads(model, x, target)[1] for _ in range(steps)]
    return [sum(g) for g in zip(*grads)]
