"""The tutorial's ``Net`` as pure functions of ``(params, x)``: the analogue of ``torch.nn.functional``.

``nn.Conv2d`` holds its weight and calls ``F.conv2d(input, weight, bias)``; here every layer is
a plain ``jax.lax`` / ``jax.nn`` call (conv and pool through ``flax_lenet.layers``, which
lowers the same operations faster) and the weights are passed in. ``params`` is the inner
Linen tree, ``{'conv1': {'kernel': (kH, kW, I, O), 'bias': (O,)}, ..., 'fc3': {...}}``.
"""

import jax
import jax.numpy as jnp

from flax_lenet import layers
from flax_lenet.checks import check_images


def conv2d(x, kernel, bias):
    """``F.conv2d(x, w, b)`` with stride 1 and no padding, in NHWC / HWIO layout."""
    # lax.conv_general_dilated, lowered per platform (flax_lenet.layers)
    y = layers.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def max_pool2d(x, size=2):
    """``F.max_pool2d(x, size)``: non-overlapping ``size x size`` windows, stride = size."""
    # = lax.reduce_window(x, -inf, lax.max, (1, size, size, 1), (1, size, size, 1), "VALID")
    return layers.max_pool(x, (size, size), strides=(size, size))


def linear(x, kernel, bias):
    """``F.linear(x, W, b) = x @ W.T + b``; Flax stores ``W.T`` as the kernel ``(in, out)``."""
    return x @ kernel + bias


def forward(params, x):                                            # (N, 32, 32, 1)      k=3
    """Logits ``(N, 10)`` of the Net with weights ``params`` on the NHWC batch ``x``."""
    check_images(x)
    p = params
    x = max_pool2d(jax.nn.relu(conv2d(x, **p["conv1"])))           # (N, 30, 30, 6) -> (N, 15, 15, 6)
    x = max_pool2d(jax.nn.relu(conv2d(x, **p["conv2"])))           # (N, 13, 13, 16) -> (N, 6, 6, 16)
    x = x.reshape(x.shape[0], -1)                                  # (N, 576), H*W*C order
    x = jax.nn.relu(linear(x, **p["fc1"]))                         # (N, 120)
    x = jax.nn.relu(linear(x, **p["fc2"]))                         # (N, 84)
    return linear(x, **p["fc3"])                                   # (N, 10)


def mse_loss(logits, target):
    """``nn.MSELoss()``: the mean of the squared error over all N*10 elements."""
    return jnp.mean((logits - target) ** 2)


def loss_fn(params, x, target):
    """The tutorial's loss, ``criterion(net(input), target)``, as a function of the weights."""
    return mse_loss(forward(params, x), target)
