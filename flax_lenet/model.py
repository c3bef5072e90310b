"""The tutorial's ``Net`` in Flax NNX, line for line beside ``torch_reference/model.py``.

Layers are made in ``__init__`` and used in ``__call__`` (torch: ``__init__`` and ``forward``).
Differences from torch, each marked where it happens:
  * input is NHWC ``(N, 32, 32, 1)``, not NCHW ``(N, 1, 32, 32)``;
  * ``nnx.Conv`` pads 'SAME' by default and torch pads 0: ``padding='VALID'``;
  * ``nnx.max_pool``'s stride defaults to 1 and torch's to the window: ``strides=(2, 2)``;
  * ``max_pool`` and the convs' ``conv_general_dilated`` come from ``flax_lenet.layers``: the
    same operations as Flax's, lowered faster (and with torch's gradient rule for pool ties);
  * the flatten before ``fc1`` is in H*W*C order, not C*H*W: ``flax_lenet.convert``
    permutes ``fc1``'s weight once so the two agree.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from flax_lenet.checks import check_images
from flax_lenet.initializers import layer_inits
from flax_lenet.layers import conv_general_dilated, max_pool


def flat_side(kernel_size: int) -> int:
    """Height (= width) of the feature map before ``fc1``: 6 for 3x3 kernels, 5 for 5x5."""
    return (((32 - kernel_size + 1) // 2) - kernel_size + 1) // 2


class Net(nnx.Module):

    def __init__(self, kernel_size: int = 3, *, init: str = "torch",
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        k, side = kernel_size, flat_side(kernel_size)
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        conv = dict(conv_general_dilated=conv_general_dilated, **kw)  # lowered per platform
        # 1 input image channel, 6 output channels, k x k convolution, no padding
        self.conv1 = nnx.Conv(1, 6, (k, k), padding="VALID", **layer_inits(init, 1 * k * k), **conv)
        self.conv2 = nnx.Conv(6, 16, (k, k), padding="VALID", **layer_inits(init, 6 * k * k), **conv)
        # an affine operation: y = xW + b
        self.fc1 = nnx.Linear(16 * side * side, 120, **layer_inits(init, 16 * side * side), **kw)
        self.fc2 = nnx.Linear(120, 84, **layer_inits(init, 120), **kw)
        self.fc3 = nnx.Linear(84, 10, **layer_inits(init, 84), **kw)

    def __call__(self, x):                                         # (N, 32, 32, 1)      k=3
        check_images(x)
        # Max pooling over a (2, 2) window, stride 2
        x = max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))      # (N, 30, 30, 6) -> (N, 15, 15, 6)
        x = max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))      # (N, 13, 13, 16) -> (N, 6, 6, 16)
        x = x.reshape(x.shape[0], -1)                              # (N, 576), H*W*C order
        x = jax.nn.relu(self.fc1(x))                               # (N, 120)
        x = jax.nn.relu(self.fc2(x))                               # (N, 84)
        x = self.fc3(x)                                            # (N, 10)
        return x
