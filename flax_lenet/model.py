"""The tutorial's ``Net`` in Flax NNX, line for line beside ``torch_reference/model.py``.

Layers are made in ``__init__`` and used in ``__call__`` (torch: ``__init__`` and ``forward``).
The differences from torch, each marked where it happens:
  * the input is NHWC ``(N, 32, 32, 1)``, not NCHW ``(N, 1, 32, 32)``;
  * ``nnx.Conv`` pads 'SAME' by default and torch pads nothing: ``padding='VALID'``;
  * ``nnx.max_pool``'s stride defaults to 1 and torch's to the window: ``strides=(2, 2)``;
  * the flatten before ``fc1`` is in H*W*C order, not C*H*W: ``flax_lenet.convert`` permutes
    ``fc1``'s weight once so that the two agree.
Flax's default initialisers are not torch's (lecun-normal kernels and zero biases against
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both): ``flax_lenet.initializers.torch_init(model, rngs)``
redraws the weights as torch does. Like torch's Net, this one refuses a batch it cannot read
(an NCHW, integer or complex one) with a one-line ``ValueError``; Flax's layers alone would
fail deep inside JAX or return complex logits.
"""

import math

import jax.numpy as jnp
from flax import nnx

from flax_lenet.checks import check_images, check_kernel_size


def flat_side(kernel_size: int) -> int:
    """Height (= width) of the feature map before ``fc1``: 6 for 3x3 kernels, 5 for 5x5."""
    return (((32 - kernel_size + 1) // 2) - kernel_size + 1) // 2


class Net(nnx.Module):

    def __init__(self, kernel_size: int = 3, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        k, side, dtype = check_kernel_size(kernel_size), flat_side(kernel_size), param_dtype  # k: 1..10
        # 1 input image channel, 6 output channels, k x k convolution; no padding, as torch
        self.conv1 = nnx.Conv(1, 6, (k, k), padding="VALID", param_dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (k, k), padding="VALID", param_dtype=dtype, rngs=rngs)
        # an affine operation: y = xW + b (torch: y = xW^T + b)
        self.fc1 = nnx.Linear(16 * side * side, 120, param_dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, param_dtype=dtype, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):                                             # (N, 32, 32, 1)   k=3
        check_images(x)  # a real NHWC batch; an NCHW one is refused with the transpose to use
        # Max pooling over a (2, 2) window, stride 2 (torch's default stride is the window)
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))  # (N, 15, 15, 6)
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))  # (N, 6, 6, 16)
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (N, 576), H*W*C (torch: C*H*W)
        x = nnx.relu(self.fc1(x))                                          # (N, 120)
        x = nnx.relu(self.fc2(x))                                          # (N, 84)
        x = self.fc3(x)                                                    # (N, 10)
        return x
