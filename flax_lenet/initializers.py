"""Initialisers: Flax's defaults drawn without compiling, and torch's default initialisation.

``lecun_normal()`` and ``zeros`` are Flax's default kernel and bias initialisers (the
distributions of ``nnx.initializers.lecun_normal()`` and ``zeros``), drawn on the host in numpy
from the bits of the JAX key. Flax's own run each draw as eager JAX ops, and every new shape
compiles: building a ``Net`` in a fresh process compiled some 40 small programs (3 s on 2
cores). These compile nothing when the key is concrete; under ``jax.jit``, ``nnx.eval_shape``
or ``vmap`` (a traced key) the same numpy draw runs through ``jax.pure_callback``, so a
seed gives the same weights eagerly and traced. The values for a seed are numpy's, not those
of ``jax.random`` (the distribution is the same).

torch's default initialisation of ``nn.Conv2d`` / ``nn.Linear``, for any Flax model:

torch draws a layer's weight with ``kaiming_uniform_(a=sqrt(5))``, which is U(-b, b) with
``b = sqrt(6 / ((1 + a**2) * fan_in)) = 1/sqrt(fan_in)``, and its bias from the same
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``reset_parameters`` in
https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/conv.py and ``linear.py``).
fan_in is ``in_channels * kH * kW`` for a conv and ``in_features`` for a linear layer.

Flax's defaults differ (``lecun_normal`` kernels, zero biases), and a Flax bias initialiser
only sees the bias's shape ``(out,)``, not the layer's fan_in. So instead of an initialiser
per layer, ``torch_init`` redraws a built model: every ``kernel`` (Flax's HWIO conv kernel or
``(in, out)`` dense kernel, so fan_in is the product of all axes but the last) and the
``bias`` beside it, all in one compiled call.

    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    torch_init(model, nnx.Rngs(0))                   # NNX: in place
    params = torch_init(linen_net.init(key, x)["params"], key)   # Linen: a new tree
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LECUN_TRUNCATION = 0.87962566103423978   # stddev of a unit normal truncated to [-2, 2] (Flax's)


def _host_draw(draw):
    """``init(key, shape, dtype)`` from ``draw(numpy Generator, shape) -> float64 array``."""
    def init(key, shape, dtype=jnp.float32):
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key

        def host(bits):
            return np.asarray(draw(np.random.default_rng(np.asarray(bits).ravel()), shape), dtype)
        if isinstance(bits, jax.core.Tracer):
            return jax.pure_callback(host, jax.ShapeDtypeStruct(shape, dtype), bits,
                                     vmap_method="sequential")
        return jax.device_put(host(bits))           # a transfer, not a compiled program
    return init


def lecun_normal(in_axis: int = -2, out_axis: int = -1):
    """Flax's default kernel initialiser, drawn in numpy: N(0, 1/fan_in) truncated to 2 sigma.

    ``fan_in`` is ``shape[in_axis]`` times the receptive field (every axis but ``in_axis`` and
    ``out_axis``), as ``jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")``.
    """
    def draw(rng, shape):
        axes = {a % len(shape) for a in (in_axis, out_axis)}
        fan_in = shape[in_axis] * math.prod(n for i, n in enumerate(shape) if i not in axes)
        z = rng.standard_normal(shape)
        while (out := np.abs(z) > 2).any():          # redraw the 4.6% beyond two sigma
            z[out] = rng.standard_normal(int(out.sum()))
        return z * (math.sqrt(1.0 / fan_in) / LECUN_TRUNCATION)
    return _host_draw(draw)


def zeros(key, shape, dtype=jnp.float32):
    """Flax's default bias initialiser: zeros (a transfer when eager, a constant when traced)."""
    if isinstance(key, jax.core.Tracer):
        return jnp.zeros(shape, dtype)
    return jax.device_put(np.zeros(shape, dtype))


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
