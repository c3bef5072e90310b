"""Small paired examples, torch then Flax, for the tutorial steps the model files do not show.

Each pair is run by a test that checks the two agree; the docs pull them with ``inspect``.
"""

import jax
import torch.nn as nn
import torch.nn.functional as F
from flax import nnx

from flax_lenet import functional
from flax_lenet.train import loss_fn


def torch_layer_two_ways(conv: nn.Conv2d, x):
    """``nn.Conv2d`` holds the weights and calls ``F.conv2d`` with them."""
    return conv(x), F.conv2d(x, conv.weight, conv.bias)


def flax_layer_two_ways(conv: nnx.Conv, x):
    """``nnx.Conv`` holds the kernel; ``functional.conv2d`` takes it as an argument."""
    return conv(x), functional.conv2d(x, conv.kernel[...], conv.bias[...])


def torch_single_image(net, image):
    """torch.nn takes mini-batches only: ``(1, 32, 32)`` -> ``(1, 1, 32, 32)``."""
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
