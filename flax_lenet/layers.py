"""Fast lowerings of the Net's convolution and max-pool, chosen behind the layer.

The model files read as the tutorial does; only two names come from here:

``conv_general_dilated``
    A drop-in for ``jax.lax.conv_general_dilated`` (``nnx.Conv(..., conv_general_dilated=...)``)
    that changes how a stride-1, unpadded, undilated NHWC/HWIO convolution runs on CPU
    (``lax.platform_dependent`` picks at lowering time; GPUs and TPUs keep the library op):

    * one input channel (``conv1``): XLA:CPU's general convolution spent half the Net's forward
      time here. It is ``y[n, i, j, o] = sum_ab x[n, i+a, j+b, 0] * w[a, b, 0, o]``, computed as
      ``kH * kW`` shifted multiply-adds (``shifted_conv``), and differentiated as such;
    * several input channels (``conv2``): the forward stays the library convolution, but its
      two gradients, which XLA:CPU computed 2-3x slower than the forward, are written as
      matrix products (``conv_with_matmul_grads``): the input gradient is one ``g @ W^T``
      spread back over the ``kH * kW`` offsets, the kernel gradient one small product of the
      shifted input with ``g`` per offset.

    Any other case falls through to ``lax.conv_general_dilated`` unchanged.

``max_pool``
    A drop-in for ``nnx.max_pool`` / ``nn.max_pool``. For non-overlapping windows
    (``strides == window_shape``, 'VALID') it is a reshape + max whose gradient goes to the
    *first* maximum of each window in row-major order, as torch's ``max_pool2d`` does (a plain
    ``jnp.max`` would split it between ties; ``reduce_window``'s gradient, select-and-scatter,
    is slow on XLA:CPU). Other windows fall through to Flax's ``max_pool``.

Every flavour of the Net (NNX, Linen, functional) uses both, so the parity suite covers them;
``tests/test_lowering.py`` pins each lowering to the library op it replaces.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

#: the layout the Net uses: activations NHWC, kernels HWIO
_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def shifted_conv(x, kernel):
    """Stride-1 'VALID' NHWC/HWIO convolution as ``kH * kW`` shifted products (no bias)."""
    kh, kw, _, _ = kernel.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    y = None
    for a in range(kh):
        for b in range(kw):
            term = x[:, a:a + h, b:b + w, :] @ kernel[a, b]         # (N, h, w, I) @ (I, O)
            y = term if y is None else y + term
    return y


def _library_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)


@jax.custom_vjp
def conv_with_matmul_grads(x, kernel):
    """Stride-1 'VALID' NHWC/HWIO convolution (the library op), with its gradients as matmuls."""
    return _library_conv(x, kernel)


def _conv_fwd(x, kernel):
    return _library_conv(x, kernel), (x, kernel)


def _conv_bwd(res, g):
    x, kernel = res
    kh, kw, i, o = kernel.shape
    n, h, w, _ = g.shape
    height, width = x.shape[1], x.shape[2]
    offsets = [(a, b) for a in range(kh) for b in range(kw)]
    # input gradient: output pixel (i, j) sends g @ W[a, b].T to input pixel (i + a, j + b)
    back = (g.reshape(-1, o) @ kernel.reshape(kh * kw * i, o).T).reshape(n, h, w, kh * kw, i)
    grad_x = sum(jnp.pad(back[:, :, :, a * kw + b],
                         ((0, 0), (a, height - h - a), (b, width - w - b), (0, 0)))
                 for a, b in offsets)
    # kernel gradient at offset (a, b): the input shifted by (a, b), times g, over all pixels
    g_rows = g.reshape(-1, o)
    grad_kernel = jnp.stack([x[:, a:a + h, b:b + w, :].reshape(-1, i).T @ g_rows
                             for a, b in offsets])
    return grad_x.astype(x.dtype), grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_with_matmul_grads.defvjp(_conv_fwd, _conv_bwd)


def _is_plain(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, preferred_element_type):
    """True for the case the CPU lowerings cover: the Net's two convolutions."""
    def ones(v):
        return v is None or all(int(s) == 1 for s in v)
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if isinstance(padding, str):
        valid = padding.upper() == "VALID"
    else:
        valid = all(tuple(p) == (0, 0) for p in padding)
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return (valid and ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
            and dims == _NHWC and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
    """``jax.lax.conv_general_dilated``, with the CPU lowerings above for the Net's convolutions.

    Args:
      lhs, rhs, window_strides, padding, ...: as ``jax.lax.conv_general_dilated``.

    Returns:
      The convolution, the same array ``lax.conv_general_dilated`` returns up to float rounding.
    """
    def library(l, r):
        return lax.conv_general_dilated(
            l, r, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)

    if kwargs.get("out_sharding") is None:
        kwargs.pop("out_sharding", None)
    if kwargs or not _is_plain(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                               dimension_numbers, feature_group_count, batch_group_count,
                               preferred_element_type):
        return library(lhs, rhs)
    cpu = shifted_conv if rhs.shape[2] == 1 else conv_with_matmul_grads
    return lax.platform_dependent(lhs, rhs, cpu=cpu, default=library)


def _pool_max(x, size):
    n, h, w, c = x.shape
    return x.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))


def _pool_fwd(x, size):
    n, h, w, c = x.shape
    win = x.reshape(n, h // size, size, w // size, size, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(n, h // size, w // size, c, size * size)      # window last, row-major
    first = jnp.argmax(win, axis=-1)                                # first max, as torch
    return jnp.take_along_axis(win, first[..., None], -1)[..., 0], (first, x.shape)


def _pool_bwd(size, res, g):  # nondiff ``size`` comes first
    first, shape = res
    n, h, w, c = shape
    onehot = first[..., None] == jnp.arange(size * size, dtype=first.dtype)
    dwin = jnp.where(onehot, g[..., None], jnp.zeros((), g.dtype))   # (n, h/s, w/s, c, s*s)
    dwin = dwin.reshape(n, h // size, w // size, c, size, size).transpose(0, 1, 4, 2, 5, 3)
    return (dwin.reshape(shape),)


_pool = jax.custom_vjp(_pool_max, nondiff_argnums=(1,))
_pool.defvjp(_pool_fwd, _pool_bwd)


def first_max_pool(x, size: int):
    """Max over non-overlapping ``size x size`` NHWC windows (floor); gradient to each window's first max."""
    n, h, w, c = x.shape
    x = x[:, :h - h % size, :w - w % size, :]                       # 13 -> 12, as torch's floor
    return _pool(x, size)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """``nnx.max_pool`` / ``nn.max_pool``, as reshape + max when windows do not overlap.

    Args:
      inputs: NHWC array.
      window_shape: ``(kH, kW)``. strides: ``(sH, sW)``; Flax's default is 1, torch's the window.
      padding: 'VALID' (the fast case) or anything ``flax.linen.max_pool`` takes.

    Returns:
      The pooled array, equal to ``flax.linen.max_pool``'s; its gradient goes to the first
      maximum of each window (torch's ``max_pool2d`` rule).
    """
    window = tuple(int(s) for s in window_shape)
    fast = (inputs.ndim == 4 and len(window) == 2 and window[0] == window[1]
            and strides is not None and tuple(int(s) for s in strides) == window
            and isinstance(padding, str) and padding.upper() == "VALID")
    if not fast:
        return nn.max_pool(inputs, window, strides=strides, padding=padding)
    return first_max_pool(inputs, window[0])

