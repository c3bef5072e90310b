"""The computation graph of the tutorial's loss, in torch (``loss.grad_fn``) and JAX (a jaxpr).

The tutorial follows ``loss.grad_fn`` backwards through ``next_functions``::

    input -> conv2d -> relu -> maxpool2d -> conv2d -> relu -> maxpool2d
          -> flatten -> linear -> relu -> linear -> relu -> linear
          -> MSELoss -> loss

JAX records no graph on the arrays; ``jax.make_jaxpr(loss_fn)`` traces the same computation
into a list of primitives. Both are reduced here to the same layer names (``LAYER_OPS``), in
forward order, so the two can be printed side by side and compared layer by layer.
"""

from itertools import zip_longest

import jax
from jax.extend.core import Literal

from flax_lenet.table import format_table

#: torch ``grad_fn`` class name -> layer op.
TORCH_OPS = {
    "ConvolutionBackward0": "conv",
    "ReluBackward0": "relu",
    "MaxPool2DWithIndicesBackward0": "max_pool",
    "ViewBackward0": "flatten",
    "ReshapeAliasBackward0": "flatten",
    "AddmmBackward0": "linear",
    "MseLossBackward0": "mse",
}

#: JAX primitive -> layer op; a bias ``add`` belongs to the conv/linear before it, and the
#: primitives of the mean squared error (``sub``, ``integer_pow``, ``reduce_sum``, ``div``) to one ``mse``.
JAX_OPS = {
    "conv_general_dilated": "conv",
    "relu": "relu",
    "reduce_window_max": "max_pool",
    "reshape": "flatten",
    "dot_general": "linear",
    "sub": "mse", "integer_pow": "mse", "square": "mse", "reduce_sum": "mse", "div": "mse",
}

#: The Net's loss, layer by layer, in forward order (both kernel sizes).
LAYER_OPS = ("conv", "relu", "max_pool", "conv", "relu", "max_pool", "flatten",
             "linear", "relu", "linear", "relu", "linear", "mse")


def _depth(fn, memo) -> int:
    """Length of the longest chain of ``next_functions`` below ``fn``."""
    if fn is None:
        return 0
    if fn not in memo:
        memo[fn] = 1 + max((_depth(n, memo) for n, _ in fn.next_functions), default=0)
    return memo[fn]


def torch_graph(loss) -> list[tuple[str, str]]:
    """``[(layer op, grad_fn name), ...]`` in forward order, from ``loss.grad_fn`` backwards.

    At each node the walk follows the deepest of ``next_functions``: the activations' path.
    The shallow branches are the parameters (``AccumulateGrad``, ``TBackward0`` for ``W.T``).

    Args:
      loss: a scalar torch tensor with a ``grad_fn``.

    Returns:
      One ``(op, name)`` per node, input side first; ``op`` is ``'?'`` for an unknown node.
    """
    chain, memo, fn = [], {}, loss.grad_fn
    while fn is not None:
        name = type(fn).__name__
        chain.append((TORCH_OPS.get(name, "?"), name))
        children = [n for n, _ in fn.next_functions if n is not None]
        fn = max(children, key=lambda n: _depth(n, memo), default=None)
        if fn is not None and not fn.next_functions:      # AccumulateGrad: a leaf parameter
            fn = None
    return chain[::-1]


def _primitive_name(eqn) -> str:
    """The primitive's name; a named ``jit`` (``jax.nn.relu``) or a ``custom_jvp`` of one op
    (relu's gradient rule) gives that op's name."""
    name = eqn.primitive.name
    if name == "custom_jvp_call" and len(eqn.params["call_jaxpr"].jaxpr.eqns) == 1:
        return _primitive_name(eqn.params["call_jaxpr"].jaxpr.eqns[0])
    return eqn.params.get("name", name) if name in ("jit", "pjit") else name


def jax_graph(fn, *args) -> list[tuple[str, str]]:
    """``[(layer op, primitives), ...]`` of ``jax.make_jaxpr(fn)(*args)``, in forward order.

    Only equations on the path from the LAST argument but one (the input ``x`` of
    ``loss_fn(params, x, target)``) are layers; parameter reshapes are not. Consecutive
    primitives that form one layer are joined: ``conv_general_dilated + add`` (bias) is one conv.

    Args:
      fn: a loss ``fn(params, x, target)``. args: its arguments (only shapes matter).

    Returns:
      One ``(op, 'prim + prim')`` per layer; ``op`` is ``'?'`` for an unknown primitive.
    """
    closed = jax.make_jaxpr(fn)(*args)
    leaves = [len(jax.tree.leaves(a)) for a in args]
    start = sum(leaves[:-2])
    data = set(closed.jaxpr.invars[start:start + leaves[-2]])
    layers: list[tuple[str, list[str]]] = []
    for eqn in closed.jaxpr.eqns:
        if not any(v in data for v in eqn.invars if not isinstance(v, Literal)):
            continue
        data.update(eqn.outvars)
        prim = _primitive_name(eqn)
        op = JAX_OPS.get(prim, "?")
        last = layers[-1][0] if layers else None
        if (prim == "add" and last in ("conv", "linear")) or (op == last and op in ("mse", "max_pool")):
            layers[-1][1].append(prim)                     # a bias add, the rest of the mse or pool
        else:
            layers.append((op, [prim]))
    return [(op, " + ".join(prims)) for op, prims in layers]


def aligned(torch_ops, jax_ops) -> list[tuple[str, str, str]]:
    """Rows ``(torch grad_fn, layer op, jax primitives)``; ``'≠'`` marks a row that disagrees."""
    rows = []
    for t, j in zip_longest(torch_ops, jax_ops, fillvalue=("", "")):
        op = t[0] if t[0] == j[0] else "≠"
        rows.append((t[1], op, j[1]))
    return rows


def render(rows) -> str:
    """The aligned rows as a plain-text table, loss at the bottom as in the tutorial."""
    return format_table(("torch loss.grad_fn chain", "layer", "jax.make_jaxpr(loss_fn)"), rows)


def net_graphs(kernel_size: int = 3) -> list[tuple[str, str, str]]:
    """The tutorial Net's loss graph in torch and JAX (functional flavour), aligned; batch 1."""
    import numpy as np
    import torch

    from flax_lenet import convert, functional
    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    net = TorchNet(kernel_size)
    x, target = torch.zeros(1, 1, 32, 32), torch.zeros(1, 10)
    loss = torch.nn.MSELoss()(net(x), target)
    params = convert.torch_to_flax(net.state_dict())
    jx = jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32)
    jt = jax.ShapeDtypeStruct((1, 10), np.float32)
    return aligned(torch_graph(loss), jax_graph(functional.loss_fn, params, jx, jt))
