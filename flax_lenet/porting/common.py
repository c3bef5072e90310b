"""What ``parity`` and ``localise`` share: the difference measure, train and eval modes, float32 precision.

``diff`` is the measure every row of the harness reports: ``max|flax - torch| / max|torch|``
over a whole tensor. Both sides train with Dropout off (RNG streams never match across the
frameworks) and with TF32 off unless asked for.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_lenet import convert
from flax_lenet.errors import BadConfig
from flax_lenet.porting import port


def diff(actual, expected) -> tuple[float, float]:
    """``(max|a - e|, max|a - e| / max|e|)`` over a whole array; shapes must match.

    ``actual`` is the Flax side, ``expected`` the torch reference, whose largest magnitude is the
    scale (an all-zero reference: the absolute difference). A NaN or Inf on either side gives
    ``(inf, inf)``, which no tolerance accepts; ``nonfinite`` says where it was.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: flax {a.shape} vs torch {e.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(e))):
        return float("inf"), float("inf")
    max_abs = float(np.max(np.abs(a - e))) if a.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def _count(a: np.ndarray) -> str:
    parts = [f"{n} {what}" for n, what in ((int(np.sum(np.isnan(a))), "NaN"), (int(np.sum(np.isinf(a))), "Inf")) if n]
    return " and ".join(parts)


def nonfinite(actual, expected, name: str) -> str:
    """``''`` when both arrays are finite, else e.g. ``'flax grad fc1.bias holds 1 NaN'``."""
    found = [f"{side} {name} holds {_count(np.asarray(a, np.float64))}"
             for side, a in (("flax", actual), ("torch", expected)) if not np.all(np.isfinite(a))]
    return "; ".join(found)



def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def torch_tf32(enabled: bool | None):
    """TF32 in torch's cuDNN convolutions (on by default) and CUDA matmuls (off by default).

    ``True`` or ``False`` sets both for the block; ``None`` leaves torch's defaults. The flags
    are restored on exit.
    """
    import torch
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


#: torch layer types whose forward depends on ``net.train()`` / ``net.eval()``
MODE_LAYERS = ("_BatchNorm", "_DropoutNd", "_InstanceNorm")


def has_modes(net) -> bool:
    return any(k.__name__ in MODE_LAYERS for m in net.modules() for k in type(m).__mro__)


def torch_train_mode(net):
    """``net.train()`` with every Dropout in eval mode: their random masks cannot be matched
    across frameworks (RNG streams differ), so training steps are compared without them."""
    net.train()
    for m in net.modules():
        if any(k.__name__ == "_DropoutNd" for k in type(m).__mro__):
            m.eval()
    return net


def nnx_train_mode(model):
    """``model.train()`` with every ``nnx.Dropout`` deterministic (see ``torch_train_mode``)."""
    model.train()
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Dropout):
            m.deterministic = True
    return model


@contextlib.contextmanager
def precision(tf32: bool):
    """Full float32 (TF32 off) in both frameworks unless ``tf32``; no effect on CPU."""
    with torch_tf32(tf32), jax.default_matmul_precision("default" if tf32 else "highest"):
        yield


# --- the Flax side's model and inputs ----------------------------------------------------------

def flax_kind(flax_model) -> str:
    """'nnx' for an NNX module, 'linen' for ``(linen_module, variables)``, 'function' for ``(fn, params)``."""
    import flax.linen
    if isinstance(flax_model, nnx.Module):
        return "nnx"
    if isinstance(flax_model, tuple) and len(flax_model) == 2:
        return "linen" if isinstance(flax_model[0], flax.linen.Module) else "function"
    raise BadConfig("expected an NNX module, (linen_module, variables) or (apply_fn, params), "
                    f"found {type(flax_model).__name__}")


def variables_dtype(variables: dict):
    """The dtype of the converted parameters (float32 or float64), for every array the side makes."""
    dtypes = {np.asarray(a).dtype for a in variables.get(port.PARAMS, {}).values()}
    floats = sorted(d for d in dtypes if np.issubdtype(d, np.floating))
    return floats[-1] if len(floats) == 1 else None


def default_flax_input(x: np.ndarray) -> np.ndarray:
    """A 4-D floating array is torch's NCHW: NHWC for Flax. Anything else is passed as it is."""
    return convert.nchw_to_nhwc(x) if x.ndim == 4 and np.issubdtype(x.dtype, np.floating) else x


def jax_array(a: np.ndarray):
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer) and not jax.config.jax_enable_x64:
        a = a.astype(np.int32)                 # JAX's integers are 32-bit unless x64 is on
    return jnp.asarray(a)


def flax_target(target: np.ndarray, to_flax) -> np.ndarray:
    return to_flax(target) if target.ndim == 4 else target
