"""torch's default initialisation of ``nn.Conv2d`` / ``nn.Linear``, for any Flax model.

torch draws a layer's weight with ``kaiming_uniform_(a=sqrt(5))``, which is U(-b, b) with
``b = sqrt(6 / ((1 + a**2) * fan_in)) = 1/sqrt(fan_in)``, and its bias from the same
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``reset_parameters`` in
https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/conv.py and ``linear.py``).
fan_in is ``in_channels * kH * kW`` for a conv and ``in_features`` for a linear layer.

Flax's defaults differ (``lecun_normal`` kernels, zero biases), and a Flax bias initialiser
only sees the bias's shape ``(out,)``, not the layer's fan_in. So instead of an initialiser
per layer, ``torch_init`` redraws a built model: every ``kernel`` (Flax's HWIO conv kernel or
``(in, out)`` dense kernel, so fan_in is the product of all axes but the last) and the
``bias`` beside it, under one ``jax.jit``.

    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    torch_init(model, nnx.Rngs(0))                   # NNX: in place
    params = torch_init(linen_net.init(key, x)["params"], key)   # Linen: a new tree
"""

import math

import jax
from flax import nnx, traverse_util


@jax.jit
def _draw(key, params):
    """A tree like ``params`` with each layer's kernel and bias from U(+-1/sqrt(fan_in))."""
    flat = traverse_util.flatten_dict(params)                 # {('conv1', 'kernel'): array, ...}
    kernels = [path for path in flat if path[-1] == "kernel"]
    keys = jax.random.split(key, 2 * len(kernels))
    for i, path in enumerate(kernels):
        bound = 1.0 / math.sqrt(math.prod(flat[path].shape[:-1]))
        for j, leaf in enumerate((path, path[:-1] + ("bias",))):
            if leaf in flat:
                flat[leaf] = jax.random.uniform(keys[2 * i + j], flat[leaf].shape, flat[leaf].dtype, -bound, bound)
    return traverse_util.unflatten_dict(flat)


def torch_init(model_or_params, rngs_or_key):
    """Redraw every kernel and bias as torch's ``Conv2d`` / ``Linear`` would.

    Args:
      model_or_params: an NNX module (changed in place and returned) or a Linen-style
        parameter tree ``{'conv1': {'kernel', 'bias'}, ...}`` (a new tree is returned).
      rngs_or_key: ``nnx.Rngs`` (its ``params`` stream is used) or a ``jax.random`` key.

    Returns:
      The module, or the new parameter tree.
    """
    key = rngs_or_key.params() if isinstance(rngs_or_key, nnx.Rngs) else rngs_or_key
    if isinstance(model_or_params, nnx.Module):
        state = nnx.state(model_or_params, nnx.Param)
        nnx.replace_by_pure_dict(state, _draw(key, nnx.to_pure_dict(state)))
        nnx.update(model_or_params, state)
        return model_or_params
    return _draw(key, model_or_params)
