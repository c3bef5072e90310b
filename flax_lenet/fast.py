"""Speed, in one place and opt-in: ``fast.train_step`` is ``train.train_step``, faster on CPU.

``flax-lenet train``, its benchmark, the N-step comparison and the data-parallel step choose it;
``tests/test_fast.py`` pins it to the plain step (float64 to 1e-12, float32 to its tier, with a
broken twin). It is faster in three ways, each with public JAX/Flax means only:

* the Net's forward on CPU, one matrix product per conv block (below);
* a large batch's gradient on CPU in chunks that stay in cache (``value_and_grad``);
* less Python work per call: ``nnx.jit(..., graph=False)`` treats the model and optimizer as
  plain pytrees, and ``bound_step`` binds them once with ``nnx.jit_partial``.

The forward
-----------

Layer by layer (``Net.__call__``), XLA:CPU spends most of a training step moving data: shifted
copies of the input for each of the ``k * k`` kernel offsets, the pool's windows gathered
back out of the conv's output, and the same again in the backward pass. This module computes
the same function with the data laid out so that both convolutions become one dense matrix
product each, and the pools become a max over a small axis of that product:

* **Space to depth.** Cut the input into ``r x r`` blocks (``r = 4`` for ``conv1``, ``2`` for
  ``conv2``). A block of conv outputs ``y[r*u : r*u + r, r*v : r*v + r]`` depends only on the
  ``d x d`` input patch starting at ``(r*u, r*v)``, ``d = r + k - 1``. The patches of all
  blocks, side by side, form a matrix ``P`` (one row per block, ``d * d * C`` columns), and
  ``P @ W_big`` gives every output of every block at once; ``W_big`` holds the kernel's
  weights at the offsets each output needs (zeros elsewhere) and is built from the kernel by
  one gather (``block_kernel``), so its gradient flows back to the ``k x k`` kernel.
* **Pool inside the block.** The output columns are ordered ``(e, f, di, dj, channel)``:
  output ``(r*u + 2*e + di, r*v + 2*f + dj)``. The 2x2 pool window of pooled pixel
  ``(r/2 * u + e, r/2 * v + f)`` is the ``(di, dj)`` axis of the same row, so the pool is a
  max over that axis (``window_max``, gradient to the first maximum in row-major order, as
  torch's ``max_pool2d`` and XLA's ``reduce_window`` max on CPU).
* **Blocks feed blocks.** ``conv1``'s pooled output comes out as 2x2 blocks of the pooled
  map, which is exactly ``conv2``'s input cut into ``r = 2`` blocks: no transpose in between.
  ``conv2``'s last row and column for k=3 (13 is odd: its pool's floor drops them) are never
  computed, nor the ``conv1`` outputs that only they read.

XLA:CPU runs these products, their gradients and the pool as a handful of large kernels. The
result equals ``Net.__call__`` up to float rounding (``tests/test_fast.py``: float64 to 1e-12,
gradients included, ties included, k = 3 and 5). ``train_step`` uses it through ``view``: only
on CPU (``lax.platform_dependent``; GPUs and TPUs run ``model(x)``) and only for a Net that is
exactly ``flax_lenet.Net`` as built (``applies_to``); anything else, a hooked or swapped layer,
a subclass or another dtype, runs ``model(x)``.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from flax_lenet import convert, functional, train
from flax_lenet.model import Net, flat_side

_NET_CALL = Net.__call__  # if the class's __call__ is replaced, model(x) is no longer this forward

# --- the pool: max over the window axis, gradient to the first maximum (torch's rule) ------


def _window_max(y, axis):
    return jnp.max(y, axis=axis)


def _window_max_fwd(y, axis):
    return jnp.max(y, axis=axis), (jnp.argmax(y, axis=axis), y.shape)


def _window_max_bwd(axis, res, g):  # nondiff ``axis`` comes first
    first, shape = res
    hit = jnp.expand_dims(first, axis) == lax.broadcasted_iota(first.dtype, shape, axis)
    return (jnp.where(hit, jnp.expand_dims(g, axis), jnp.zeros((), g.dtype)),)


window_max = jax.custom_vjp(_window_max, nondiff_argnums=(1,))
window_max.defvjp(_window_max_fwd, _window_max_bwd)
window_max.__doc__ = "Max over ``axis``; the gradient goes to the first maximum along it (torch's rule)."


# --- space to depth -----------------------------------------------------------------------


def patch_offsets(d, r, channels):
    """(row, col, channel) of each column of ``patches``, in the order ``patches`` makes them."""
    cols = []
    for s, t in itertools.product(range(math.ceil(d / r)), repeat=2):
        rows_s, cols_t = min(r, d - r * s), min(r, d - r * t)
        for ry, rx, c in itertools.product(range(rows_s), range(cols_t), range(channels)):
            cols.append((r * s + ry, r * t + rx, c))
    return np.array(cols)


def patches(blocks, out, d):
    """The ``d x d`` input patch of each of ``out x out`` output blocks, flattened.

    Args:
      blocks: ``(N, B, B, r, r, C)``: the input cut into ``r x r`` blocks,
        ``blocks[n, u, v, i, j, c] = x[n, r*u + i, r*v + j, c]``.
      out: blocks of output per side. d: patch side, ``r + k - 1``.

    Returns:
      ``(N, out, out, d * d * C)``; column order as ``patch_offsets``.
    """
    n, r = blocks.shape[0], blocks.shape[3]
    parts = []
    for s, t in itertools.product(range(math.ceil(d / r)), repeat=2):
        part = blocks[:, s:s + out, t:t + out, :min(r, d - r * s), :min(r, d - r * t), :]
        parts.append(part.reshape(n, out, out, math.prod(part.shape[3:])))
    return jnp.concatenate(parts, axis=-1)


def block_kernel(kernel, r):
    """``W_big`` with ``patches(...) @ W_big`` = the conv's ``r x r`` output block, pool-ordered.

    Args:
      kernel: HWIO ``(k, k, C, O)``. r: block side (even).

    Returns:
      ``(d * d * C, r * r * O)``, ``d = r + k - 1``; column ``(e, f, di, dj, o)`` is output
      ``(2*e + di, 2*f + dj)`` of the block, channel ``o``.
    """
    k, _, c, o = kernel.shape
    offsets = patch_offsets(r + k - 1, r, c)                     # (F, 3): row, col, channel
    g = r // 2
    pos = np.array([(2 * e + di, 2 * f + dj)
                    for e, f, di, dj in itertools.product(range(g), range(g), range(2), range(2))])
    a = offsets[:, None, 0] - pos[None, :, 0]                      # kernel row for (column, output)
    b = offsets[:, None, 1] - pos[None, :, 1]
    valid = (a >= 0) & (a < k) & (b >= 0) & (b < k)
    ci = np.broadcast_to(offsets[:, None, 2], a.shape)
    w = kernel[np.where(valid, a, 0), np.where(valid, b, 0), ci]   # (F, r*r, O)
    w = jnp.where(valid[..., None], w, jnp.zeros((), kernel.dtype))
    return w.reshape(len(offsets), r * r * o)


def conv_relu_pool(blocks, kernel, bias, out, r):
    """``max_pool(relu(conv(x) + bias), 2, 2)`` on ``out x out`` blocks of ``r x r`` outputs.

    Args:
      blocks: the input in ``r x r`` blocks ``(N, B, B, r, r, C)`` (see ``patches``).
      kernel, bias: the conv's ``(k, k, C, O)`` and ``(O,)``. out: output blocks per side.

    Returns:
      The pooled map in ``r/2 x r/2`` blocks: ``(N, out, out, r/2, r/2, O)``.
    """
    n, k, o, g = blocks.shape[0], kernel.shape[0], kernel.shape[3], r // 2
    p = patches(blocks, out, r + k - 1)
    y = p.reshape(-1, p.shape[-1]) @ block_kernel(kernel, r)     # (N*out*out, r*r*O)
    y = jax.nn.relu(y.reshape(-1, g * g, 4, o) + bias)
    return window_max(y, 2).reshape(n, out, out, g, g, o)


def forward(params, x):
    """The Net's logits, ``functional.forward(params, x)``, computed block-wise (module doc).

    Args:
      params: the Linen-style tree ``{'conv1': {'kernel', 'bias'}, ..., 'fc3': {...}}``.
      x: NHWC ``(N, 32, 32, 1)``.
    """
    n = x.shape[0]
    k = params["conv1"]["kernel"].shape[0]
    side = flat_side(k)                                           # conv2's pooled side: 6 (k=3), 5 (k=5)
    out1 = side + math.ceil((k + 1) / 2) - 1                      # conv1 blocks of 4 that conv2 reads
    blocks = x.reshape(n, 8, 4, 8, 4, 1).transpose(0, 1, 3, 2, 4, 5)
    h = conv_relu_pool(blocks, **params["conv1"], out=out1, r=4)    # (N, 7, 7, 2, 2, 6)
    h = conv_relu_pool(h, **params["conv2"], out=side, r=2)         # (N, side, side, 1, 1, 16)
    h = h.reshape(n, math.prod(h.shape[1:]))                        # H*W*C order, as Net's flatten
    h = jax.nn.relu(functional.linear(h, **params["fc1"]))
    h = jax.nn.relu(functional.linear(h, **params["fc2"]))
    return functional.linear(h, **params["fc3"])


# --- when train_step may use it ------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _plain_graphdef(kernel_size: int, dtype):
    """The structure of ``Net(kernel_size, param_dtype=dtype)`` as built (abstract: no weights drawn)."""
    return nnx.graphdef(nnx.eval_shape(lambda: Net(kernel_size, param_dtype=dtype, rngs=nnx.Rngs(0))))


def applies_to(model, x) -> bool:
    """True when ``forward`` computes exactly ``model(x)``: an unmodified ``flax_lenet.Net``.

    The model's structure (classes, layer settings, dtypes) must equal that of a Net built with
    kernel size 3 or 5 and ``param_dtype=x.dtype``; a subclass, a hooked or swapped layer
    (``flax_lenet.porting.hooks.nnx_hooks``), a changed padding or another dtype all differ.
    """
    if type(model) is not Net or Net.__call__ is not _NET_CALL or tuple(x.shape[1:]) != (32, 32, 1):
        return False
    graphdef = nnx.graphdef(model)
    return any(graphdef == _plain_graphdef(k, jnp.dtype(x.dtype)) for k in (3, 5))


class _Blockwise(nnx.Module):
    """The Net's own layers (the same Variables), called block-wise on CPU, layer by layer elsewhere.

    It has the Net's attributes, so gradients taken through it have the Net's structure.
    """

    def __init__(self, net):
        self.conv1, self.conv2, self.fc1, self.fc2, self.fc3 = net.conv1, net.conv2, net.fc1, net.fc2, net.fc3

    def __call__(self, x):
        params = {name: {"kernel": getattr(self, name).kernel[...], "bias": getattr(self, name).bias[...]}
                  for name in convert.LAYERS}
        return lax.platform_dependent(x, cpu=lambda x: forward(params, x), default=lambda x: _NET_CALL(self, x))


# --- large batches: the gradient in chunks ------------------------------------------------

CHUNK = 128   # samples per chunk: a chunk's patch matrices and their gradients stay in cache


def _in_chunks(loss, params, x, target):
    """``jax.value_and_grad(loss)(params, x, target)`` as a ``lax.scan`` over chunks of the batch.

    Chunk ``c`` holds samples ``c, c + K, c + 2K, ...`` (``K`` chunks): strided, so that a batch
    sharded over devices (``flax_lenet.parallel``) stays sharded inside every chunk. The
    ``N mod K`` samples left over form one more, smaller term.
    """
    n = x.shape[0]
    k = -(-n // CHUNK)                                   # chunks of at most CHUNK samples
    m = n - n % k

    def strided(a):                                      # (m, ...) -> (k, m // k, ...)
        return jnp.moveaxis(a[:m].reshape(m // k, k, *a.shape[1:]), 1, 0)

    def add(acc, chunk):
        value = jax.value_and_grad(loss)(params, *chunk)
        return jax.tree.map(lambda a, v: a + v * ((m // k) / n), acc, value), None

    zero = (jnp.zeros((), x.dtype), jax.tree.map(jnp.zeros_like, params))
    total, _ = lax.scan(add, zero, (strided(x), strided(target)))
    if m < n:
        value = jax.value_and_grad(loss)(params, x[m:], target[m:])
        total = jax.tree.map(lambda a, v: a + v * ((n - m) / n), total, value)
    return total


def value_and_grad(loss_fn, model, x, target, *, batch_mean: bool = False):
    """``nnx.value_and_grad(loss_fn)(model, x, target)``, computed faster on CPU.

    The forward is ``view(model, x)``'s. With ``batch_mean`` (``loss_fn`` is a mean of
    per-sample terms over the batch, as ``nn.MSELoss()`` and ``F.cross_entropy`` are) and a batch
    of more than ``CHUNK`` samples, CPU computes the value and gradient chunk by chunk and adds
    them, weighted by chunk size: the same sum in another order. Past a few hundred samples the
    whole batch's intermediates no longer fit in the CPU's caches and a step's time grew faster
    than the batch. GPUs and TPUs take the whole batch at once.
    """
    net = view(model, x)
    if net is model or not batch_mean or x.shape[0] <= CHUNK:
        return nnx.value_and_grad(loss_fn)(net, x, target)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(params, x, target):
        return loss_fn(nnx.merge(graphdef, params, rest), x, target)

    return lax.platform_dependent(x, target, cpu=lambda x, t: _in_chunks(loss, params, x, t),
                                  default=lambda x, t: jax.value_and_grad(loss)(params, x, t))


def view(model, x):
    """``model``, or a module that computes ``model(x)`` block-wise on CPU when ``applies_to`` holds.

    ``nnx.value_and_grad(loss_fn)(view(model, x), x, y)`` is ``loss_fn``'s value and gradient
    (with the Net's structure), computed faster on CPU.
    """
    return _Blockwise(model) if applies_to(model, x) else model


# --- the step -------------------------------------------------------------------------------


def _step(model, optimizer, x, target, loss_fn, batch_mean):
    loss, grads = value_and_grad(loss_fn, model, x, target, batch_mean=batch_mean)
    optimizer.update(model, grads)
    return loss


_jit_step = nnx.jit(_step, static_argnames=("loss_fn", "batch_mean"), graph=False)


def train_step(model, optimizer, x, target, loss_fn=train.loss_fn):
    """``train.train_step(model, optimizer, x, target, loss_fn)``, faster on CPU (module doc).

    The same arguments, the same result up to float rounding, the same updates in place. A large
    batch is taken in chunks only for the tutorial's loss, ``train.loss_fn``; for another loss
    that is a batch mean, use ``bound_step(..., batch_mean=True)``.
    """
    return _jit_step(model, optimizer, x, target, loss_fn=loss_fn, batch_mean=loss_fn is train.loss_fn)


def bound_step(model, optimizer, loss_fn=train.loss_fn, *, batch_mean: bool | None = None):
    """``step(x, target)`` = ``train_step(model, optimizer, x, target, loss_fn)``, for a training loop.

    ``model`` and ``optimizer`` are flattened once (``nnx.jit_partial``), not at every call: at
    batch 1 that per-call work is much of a step. Their values may change between calls (they
    are updated in place, as by ``train_step``), their structure may not: a layer replaced or
    a hook installed after binding is not seen; bind again.

    Args:
      model, optimizer, loss_fn: as ``train_step``.
      batch_mean: ``loss_fn`` is a mean over the batch, so a large batch may be taken in chunks
        (``value_and_grad``); default: only for ``train.loss_fn``.
    """
    batch_mean = loss_fn is train.loss_fn if batch_mean is None else batch_mean
    step = nnx.jit_partial(_step, model, optimizer, static_argnames=("loss_fn", "batch_mean"), graph=False)
    return functools.partial(step, loss_fn=loss_fn, batch_mean=batch_mean)
