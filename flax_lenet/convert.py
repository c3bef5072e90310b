"""Exact weight conversion between the torch ``state_dict`` and the Flax parameter tree of the Net.

This is ``flax_lenet.porting.port`` (one rule per layer type) with the Net's layers and its one
flatten declared, so it needs no torch model: every layout change is a pure permutation (no
arithmetic), and a round trip is bit-identical.

    torch key        torch shape              flax path          flax shape
    conv{1,2}.weight [O, I, kH, kW]   ->      conv*/kernel       [kH, kW, I, O]   port's Conv2d rule
    fc{1,2,3}.weight [out, in]        ->      fc*/kernel         [in, out]        port's Linear rule
    *.bias           [O]              ->      */bias             [O]              as is

The flatten before ``fc1`` is the one place the two networks differ beyond a transpose: torch
flattens the NCHW map ``(N, 16, side, side)`` in (C, H, W) order, Flax the NHWC map in (H, W, C)
order, so fc1's input axis is permuted (``port``'s Linear rule with ``flatten=(16, side, side)``).
"""

from typing import Any, Mapping

import numpy as np

from flax_lenet.checks import KERNEL_SIZES
from flax_lenet.errors import BadWeights
from flax_lenet.model import flat_side
from flax_lenet.porting import port

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def _rule(layer: str, kernel_size: int) -> tuple[port.Rule, dict]:
    """``port``'s rule for one of the Net's layers, and its info: fc1 is fed by the flatten."""
    if layer.startswith("conv"):
        return port.RULES["Conv2d"], {}
    side = flat_side(kernel_size)
    return port.RULES["Linear"], ({"flatten": (16, side, side)} if layer == "fc1" else {})


def torch_shapes(kernel_size: int) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` shapes of ``torch_reference.Net(kernel_size)``, in ``parameters()`` order."""
    k, side = kernel_size, flat_side(kernel_size)
    return {
        "conv1.weight": (6, 1, k, k), "conv1.bias": (6,),
        "conv2.weight": (16, 6, k, k), "conv2.bias": (16,),
        "fc1.weight": (120, 16 * side * side), "fc1.bias": (120,),
        "fc2.weight": (84, 120), "fc2.bias": (84,),
        "fc3.weight": (10, 84), "fc3.bias": (10,),
    }


def flax_shapes(kernel_size: int) -> dict[str, tuple[int, ...]]:
    """The Flax shapes, keyed ``'conv1/kernel'`` etc., in the same order (``port``'s rules on empty arrays)."""
    out = {}
    for key, shape in torch_shapes(kernel_size).items():
        layer, kind = key.split(".")
        rule, info = _rule(layer, kernel_size)
        out[f"{layer}/{'kernel' if kind == 'weight' else kind}"] = rule.to_flax(kind, np.empty(shape), info).shape
    return out


def clean_state(state_dict: Any) -> dict[str, np.ndarray]:
    """A loaded torch ``state_dict`` as numpy arrays, wrapper prefixes stripped.

    ``module.`` (``nn.DataParallel``) and ``_orig_mod.`` (``torch.compile``) are stripped with a
    ``port.StateDictNotice`` warning; bfloat16 and float16 keep their dtype (``port.clean_state_dict``).
    """
    state, notices = port.clean_state_dict(state_dict)
    port.warn_notices(notices)
    return state


def _require_mapping(obj: Any, expected: str) -> None:
    """Raise ``BadWeights`` unless ``obj`` is a mapping (a state_dict or a parameter tree)."""
    if not isinstance(obj, Mapping):
        raise BadWeights(f"expected {expected}, found {type(obj).__name__}")


def _infer_kernel_size(shapes: Mapping[str, tuple], key: str, axis: int, found: str) -> int:
    if key not in shapes:
        raise BadWeights(f"missing key {key!r}: expected a Net state with keys {list(LAYERS)}; found {found}")
    shape = shapes[key]
    k = shape[axis] if len(shape) == 4 else None
    if k not in KERNEL_SIZES:
        raise BadWeights(f"{key}: expected a 4-d kernel with a kernel size in {KERNEL_SIZES[0]}..{KERNEL_SIZES[-1]} "
                         f"(the map before fc1 keeps a pixel), found shape {shape}")
    return k


def _check(found: Mapping[str, tuple], expected: Mapping[str, tuple], what: str) -> None:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing:
        raise BadWeights(f"{what}: missing key {missing[0]!r} (expected shape {expected[missing[0]]}); "
                         f"all missing: {missing}")
    if extra:
        raise BadWeights(f"{what}: unexpected key {extra[0]!r} with shape {found[extra[0]]}; all extra: {extra}")
    for key, shape in expected.items():
        if tuple(found[key]) != shape:
            raise BadWeights(f"{what}: {key} has shape {tuple(found[key])}, expected {shape}")


def torch_to_flax(state_dict: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Convert a torch ``Net`` ``state_dict`` to the Flax parameter tree.

    Args:
      state_dict: ``{'conv1.weight': ..., ..., 'fc3.bias': ...}`` of torch tensors or numpy
        arrays, from ``Net(kernel_size=3)`` or ``Net(kernel_size=5)`` (inferred from shapes).

    Returns:
      ``{'conv1': {'kernel', 'bias'}, ..., 'fc3': {...}}`` of numpy arrays, dtype kept. Use it as
      ``linen.Net().apply({'params': p}, x)``, ``functional.forward(p, x)`` or
      ``nnx.update(model, p)``.

    ``module.`` / ``_orig_mod.`` prefixes (``nn.DataParallel``, ``torch.compile``) are stripped
    with a ``port.StateDictNotice`` warning; bfloat16 arrives as ``ml_dtypes.bfloat16``.

    Raises:
      BadWeights (a ``ValueError``): a key is missing or unexpected, or a shape is wrong.
    """
    _require_mapping(state_dict, "a torch state_dict {'conv1.weight': tensor, ...}")
    arrays = clean_state(state_dict)
    shapes = {k: a.shape for k, a in arrays.items()}
    k = _infer_kernel_size(shapes, "conv1.weight", 3, f"keys {sorted(shapes)}")
    _check(shapes, torch_shapes(k), f"torch state_dict (kernel size {k})")
    out = {}
    for layer in LAYERS:
        rule, info = _rule(layer, k)
        out[layer] = {"kernel": np.array(rule.to_flax("weight", arrays[f"{layer}.weight"], info), order="C"),
                      "bias": np.array(arrays[f"{layer}.bias"])}
    return out


def _flax_tree(params: Any) -> Mapping[str, Any]:
    if hasattr(params, "to_pure_dict"):                     # an nnx.State
        from flax import nnx
        params = nnx.to_pure_dict(params)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]                           # Linen variables
    return params


def flatten_flax(params: Any) -> dict[str, np.ndarray]:
    """``{'conv1': {'kernel': a}}`` -> ``{'conv1/kernel': a}`` as numpy arrays."""
    tree = _flax_tree(params)
    _require_mapping(tree, "a Flax parameter tree {'conv1': {'kernel': ..., 'bias': ...}, ...}")
    flat = {}
    for layer, leaves in tree.items():
        if not isinstance(leaves, Mapping):
            flat[str(layer)] = port.tensor_to_numpy(leaves)
            continue
        for name, value in leaves.items():
            flat[f"{layer}/{name}"] = port.tensor_to_numpy(value)
    return flat


def flax_to_torch(params: Any) -> dict[str, np.ndarray]:
    """Convert Flax parameters to a torch ``state_dict`` of numpy arrays.

    Args:
      params: the inner tree ``{'conv1': {'kernel', 'bias'}, ...}``, Linen variables
        ``{'params': ...}``, or an ``nnx.State`` (``nnx.state(model, nnx.Param)``).

    Returns:
      ``{'conv1.weight': ..., ..., 'fc3.bias': ...}``; load it with
      ``net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    flat = flatten_flax(params)
    shapes = {k: a.shape for k, a in flat.items()}
    k = _infer_kernel_size(shapes, "conv1/kernel", 0, f"keys {sorted(shapes)}")
    _check(shapes, flax_shapes(k), f"flax params (kernel size {k})")
    state = {}
    for layer in LAYERS:
        rule, info = _rule(layer, k)
        state[f"{layer}.weight"] = np.array(rule.to_torch("weight", flat[f"{layer}/kernel"], info), order="C")
        state[f"{layer}.bias"] = np.array(flat[f"{layer}/bias"])
    return state


def kernel_size_of(params: Any) -> int:
    """The kernel size (3 or 5 in the tutorial; any of ``KERNEL_SIZES``) of a Flax parameter tree."""
    return _infer_kernel_size({k: a.shape for k, a in flatten_flax(params).items()}, "conv1/kernel", 0, "")


def to_nnx(params: Any):
    """A new NNX ``Net`` holding ``params`` (kernel size and dtype read off the arrays).

    The Net is built abstractly (``nnx.eval_shape``): no random initialiser is compiled or run,
    which on CPU costs seconds, since every weight is replaced anyway. ``params`` may be the
    Flax tree or its Linen/``nnx.State`` forms, as ``flax_to_torch`` takes.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flax_lenet.model import Net
    tree = _flax_tree(params)
    kernel_size = kernel_size_of(tree)
    dtype = jnp.asarray(tree["conv1"]["kernel"]).dtype
    model = nnx.eval_shape(lambda: Net(kernel_size, param_dtype=dtype, rngs=nnx.Rngs(0)))
    nnx.update(model, jax.tree.map(jnp.asarray, dict(tree)))
    return model


# --- activations and state dicts between the frameworks ----------------------------------------

def nchw_to_nhwc(x) -> np.ndarray:
    """``(..., C, H, W) -> (..., H, W, C)``: torch's image layout to Flax's, C-contiguous."""
    x = np.asarray(x)
    return np.ascontiguousarray(np.moveaxis(x, -3, -1))


def nhwc_to_nchw(x) -> np.ndarray:
    """``(..., H, W, C) -> (..., C, H, W)``, with fresh C-order strides.

    ``np.ascontiguousarray`` would keep the transposed strides for one channel (numpy calls that
    array contiguous already), and the tutorial's ``x.view(...)`` fails on them in torch.
    """
    return np.array(np.moveaxis(np.asarray(x), -1, -3), order="C")


def state_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{name: tensor}`` (a torch ``state_dict``, or numpy arrays) as fresh numpy arrays (bfloat16 kept)."""
    return {name: port.tensor_to_numpy(v) for name, v in state_dict.items()}
