"""The tutorial's ``Net`` in Flax Linen: ``Net(...).init(key, x)``, then ``.apply(variables, x)``.

Layers are declared inline in ``@nn.compact`` and named as torch's attributes, so the
parameter tree is ``{'params': {'conv1': {'kernel', 'bias'}, ..., 'fc3': {...}}}``, the inner
tree ``flax_lenet.convert.torch_to_flax`` returns. The differences from torch are the NNX
Net's (``flax_lenet.model``): NHWC input, ``padding='VALID'``, ``strides=(2, 2)`` and the H*W*C
flatten. Linen's ``Conv`` and ``Dense`` infer their input size, so a wrong flatten order would
not raise here: only a value test catches it. An NCHW, integer or complex batch is refused in
one line, as by the NNX Net.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from flax_lenet.checks import check_images, check_kernel_size


class Net(nn.Module):
    kernel_size: int = 3
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):                                             # (N, 32, 32, 1)   k=3
        check_images(x)  # a real NHWC batch; an NCHW one is refused with the transpose to use
        k, dtype = check_kernel_size(self.kernel_size), self.param_dtype  # k: 1..10
        conv1 = nn.Conv(6, (k, k), padding="VALID", param_dtype=dtype, name="conv1")
        conv2 = nn.Conv(16, (k, k), padding="VALID", param_dtype=dtype, name="conv2")
        fc1 = nn.Dense(120, param_dtype=dtype, name="fc1")
        fc2 = nn.Dense(84, param_dtype=dtype, name="fc2")
        fc3 = nn.Dense(10, param_dtype=dtype, name="fc3")

        # Max pooling over a (2, 2) window, stride 2 (torch's default stride is the window)
        x = nn.max_pool(nn.relu(conv1(x)), (2, 2), strides=(2, 2))        # (N, 15, 15, 6)
        x = nn.max_pool(nn.relu(conv2(x)), (2, 2), strides=(2, 2))        # (N, 6, 6, 16)
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (N, 576), H*W*C (torch: C*H*W)
        x = nn.relu(fc1(x))                                                # (N, 120)
        x = nn.relu(fc2(x))                                                # (N, 84)
        x = fc3(x)                                                         # (N, 10)
        return x
