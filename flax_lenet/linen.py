"""The tutorial's ``Net`` in Flax Linen: ``Net(...).init(key, x)`` then ``.apply(variables, x)``.

Layers are declared inline with ``@nn.compact``; the parameter tree is
``{'params': {'conv1': {'kernel', 'bias'}, ..., 'fc3': {...}}}``, the same inner tree
``flax_lenet.convert.torch_to_flax`` returns. Linen's ``Dense`` infers its input size, so a
wrong flatten order would not raise here: only a value test catches it.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn

from flax_lenet.checks import check_images
from flax_lenet.initializers import layer_inits
from flax_lenet.layers import conv_general_dilated, max_pool  # Flax's ops, lowered faster
from flax_lenet.model import flat_side


class Net(nn.Module):
    kernel_size: int = 3
    weight_init: str = "torch"   # NNX's init=: "torch" U(+-1/sqrt(fan_in)); "flax" lecun_normal, zero bias
    #                              (a Linen field cannot be called `init`: it would hide Module.init)
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):                                         # (N, 32, 32, 1)      k=3
        check_images(x)
        k, side, dt = self.kernel_size, flat_side(self.kernel_size), self.param_dtype
        fast = dict(conv_general_dilated=conv_general_dilated)     # lowered per platform
        conv1 = nn.Conv(6, (k, k), padding="VALID", param_dtype=dt, name="conv1", **layer_inits(self.weight_init, 1 * k * k), **fast)
        conv2 = nn.Conv(16, (k, k), padding="VALID", param_dtype=dt, name="conv2", **layer_inits(self.weight_init, 6 * k * k), **fast)
        fc1 = nn.Dense(120, param_dtype=dt, name="fc1", **layer_inits(self.weight_init, 16 * side * side))
        fc2 = nn.Dense(84, param_dtype=dt, name="fc2", **layer_inits(self.weight_init, 120))
        fc3 = nn.Dense(10, param_dtype=dt, name="fc3", **layer_inits(self.weight_init, 84))

        x = max_pool(jax.nn.relu(conv1(x)), (2, 2), strides=(2, 2))     # (N, 30, 30, 6) -> (N, 15, 15, 6)
        x = max_pool(jax.nn.relu(conv2(x)), (2, 2), strides=(2, 2))     # (N, 13, 13, 16) -> (N, 6, 6, 16)
        x = x.reshape(x.shape[0], -1)                              # (N, 576), H*W*C order
        x = jax.nn.relu(fc1(x))                                    # (N, 120)
        x = jax.nn.relu(fc2(x))                                    # (N, 84)
        x = fc3(x)                                                 # (N, 10)
        return x
