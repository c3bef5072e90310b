"""Initialisers that reproduce ``torch.nn.Conv2d`` / ``torch.nn.Linear`` defaults in Flax.

torch draws the weight with ``kaiming_uniform_(a=sqrt(5))``, which is U(-b, b) with
``b = sqrt(6 / ((1 + a**2) * fan_in)) = 1/sqrt(fan_in)``, and the bias from the same
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (pytorch #57109). fan_in = in_channels * kH * kW for a
conv and in_features for a linear layer.

In Flax the kernel is ``variance_scaling(1/3, 'fan_in', 'uniform')``: its bound is
sqrt(3 * scale / fan_in) = 1/sqrt(fan_in). Flax reads fan_in from the kernel's shape
(``in_axis=-2, out_axis=-1``, right for HWIO and (in, out)); a bias initialiser only sees
``(out,)``, so it must be told the layer's fan_in (jax #4862).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

#: ``init="torch"`` (default) draws like torch; ``init="flax"`` keeps Flax's own defaults.
INITS = ("torch", "flax")

torch_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the bias torch gives a layer with this fan_in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def layer_inits(init: str, fan_in: int) -> dict:
    """``kernel_init``/``bias_init`` keyword arguments for one layer under ``init``."""
    if init == "torch":
        return {"kernel_init": torch_kernel_init, "bias_init": torch_bias_init(fan_in)}
    if init == "flax":
        return {}  # lecun_normal kernels, zero biases
    raise ValueError(f"init must be one of {INITS}, found {init!r}")
