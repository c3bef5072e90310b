"""The tutorial's ``Net`` as pure functions of ``(params, x)``, as ``torch.nn.functional``.

``nn.Conv2d`` holds its weight and calls ``F.conv2d(input, weight, bias)``; here every layer is
a plain ``jax.lax`` / ``jax.nn`` call and the weights are passed in. ``params`` is the inner
Linen tree, ``{'conv1': {'kernel': (kH, kW, I, O), 'bias': (O,)}, ..., 'fc3': {...}}``.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax


def conv2d(x, kernel, bias):
    """``F.conv2d(x, w, b)`` with stride 1 and no padding, in NHWC / HWIO layout."""
    y = lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def max_pool2d(x, size=2):
    """``F.max_pool2d(x, size)``: non-overlapping ``size x size`` windows, stride = size."""
    window = (1, size, size, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")


def linear(x, kernel, bias):
    """``F.linear(x, W, b) = x @ W.T + b``; Flax stores ``W.T`` as the kernel ``(in, out)``."""
    return x @ kernel + bias


def forward(params, x):                                                # (N, 32, 32, 1)   k=3
    """Logits ``(N, 10)`` of the Net with weights ``params`` on the NHWC batch ``x``."""
    p = params
    x = max_pool2d(jax.nn.relu(conv2d(x, **p["conv1"])))                 # (N, 15, 15, 6)
    x = max_pool2d(jax.nn.relu(conv2d(x, **p["conv2"])))                 # (N, 6, 6, 16)
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))      # (N, 576), H*W*C (torch: C*H*W)
    x = jax.nn.relu(linear(x, **p["fc1"]))                               # (N, 120)
    x = jax.nn.relu(linear(x, **p["fc2"]))                               # (N, 84)
    return linear(x, **p["fc3"])                                         # (N, 10)


def mse_loss(logits, target):
    """``nn.MSELoss()``: the mean of the squared error over all N*10 elements."""
    return jnp.mean((logits - target) ** 2)


def loss_fn(params, x, target):
    """The tutorial's loss, ``criterion(net(input), target)``, as a function of the weights."""
    return mse_loss(forward(params, x), target)
