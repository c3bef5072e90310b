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
from flax import nnx


def _draw(key, params):
    """A tree like ``params`` with each layer's kernel and bias from U(+-1/sqrt(fan_in))."""
    layers = _layers(params)
    keys = jax.random.split(key, 2 * len(layers))
    out = jax.tree.map(lambda a: a, params)
    for i, (path, layer) in enumerate(layers):
        bound = 1.0 / math.sqrt(math.prod(layer["kernel"].shape[:-1]))
        new = dict(layer)
        for j, name in enumerate(("kernel", "bias")):
            if name in layer:
                a = layer[name]
                new[name] = jax.random.uniform(keys[2 * i + j], a.shape, a.dtype, -bound, bound)
        _set(out, path, new)
    return out


_draw_jit = jax.jit(_draw)


def _layers(tree, path=()) -> list:
    """``[(path, layer dict)]`` for every dict in ``tree`` that holds a ``kernel``."""
    if not isinstance(tree, dict):
        return []
    if "kernel" in tree:
        return [(path, tree)]
    return [found for key in tree for found in _layers(tree[key], path + (key,))]


def _set(tree, path, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


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
        new = _draw_jit(key, nnx.to_pure_dict(state))
        nnx.replace_by_pure_dict(state, new)
        nnx.update(model_or_params, state)
        return model_or_params
    return _draw_jit(key, _plain_dicts(model_or_params))


def _plain_dicts(tree):
    """Nested mappings (Linen's dicts or FrozenDicts) as plain dicts."""
    if hasattr(tree, "items"):
        return {k: _plain_dicts(v) for k, v in tree.items()}
    return tree
