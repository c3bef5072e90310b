"""torch's ``nn.Module.__call__`` hooks, and the Flax way to get each of them.

torch runs hooks inside ``Module.__call__`` (the seed quotes it)::

    for hook in self._forward_pre_hooks.values():   # may replace the input
        ...
    result = self.forward(*input, **kwargs)
    for hook in self._forward_hooks.values():       # may record or replace the output
        ...
    (backward hooks are attached to result.grad_fn)  # see the gradient w.r.t. the output

Flax has no hook registry. Linen's ``nn.intercept_methods(interceptor)`` wraps every module
method call in a function that may change the arguments and the result; NNX modules are plain
Python objects whose submodules can be replaced by assignment (Flax's "model surgery"), so
``nnx_hooks`` puts a ``Hooked`` module in the layer's place, which calls the layer between the
hooks, and puts the layer back on exit. The gradient w.r.t. a layer's output is the gradient w.r.t. a zero
perturbation added to it (Linen ``Module.perturb``, NNX ``Module.perturb`` + ``nnx.capture``).

Hook signatures are torch's: ``pre(module, args) -> args | None`` and
``post(module, args, output) -> output | None``, so one elementwise hook serves both frameworks.

Which call paths run the hooks (each row is a test in ``tests/test_hooks.py``):

    torch   net(x)                         Net's hooks and every layer's hooks
    torch   net.forward(x)                 layers' hooks only: Net.__call__ is skipped
    torch   net.conv1.forward(x)           no hooks
    linen   net.apply(v, x)                interceptors on Net and every layer
    linen   jax.jit(apply) traced before   none: the cached trace is replayed, interceptors skipped
    nnx     model(x), nnx.jit(f)(model)    hooks of ``nnx_hooks`` layers
    nnx     hooked.layer(x)                no hooks (the layer itself, as torch's ``layer.forward``)
    any     functional.forward(params, x)  no modules, nothing to intercept
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import nnx

from flax_lenet.functional import mse_loss

# --- torch: the hooks as the tutorial's Module.__call__ runs them -----------------------------


def torch_hooks(layer, *, pre=None, post=None):
    """Register ``pre`` / ``post`` on a torch layer; returns the handles (``.remove()`` them)."""
    handles = []
    if pre is not None:
        handles.append(layer.register_forward_pre_hook(pre))
    if post is not None:
        handles.append(layer.register_forward_hook(post))
    return handles


def torch_output_grads(net, x, target, names):
    """d loss / d (output of each layer in ``names``) via ``register_full_backward_hook``; NCHW."""
    grads, handles = {}, []
    for name in names:
        def hook(module, grad_input, grad_output, name=name):
            grads[name] = grad_output[0].detach().clone()
        handles.append(getattr(net, name).register_full_backward_hook(hook))
    try:
        import torch
        net.zero_grad()
        x = x.detach().requires_grad_(True)   # else conv1's full backward hook warns: no input needs grad
        torch.nn.MSELoss()(net(x), target).backward()
    finally:
        for h in handles:
            h.remove()
    return grads


# --- the same __call__ logic, shared by both Flax flavours ------------------------------------


def _run_hooked(call, module, args, kwargs, pre, post):
    """torch's ``Module.__call__`` order: pre-hook, the call, post-hook."""
    if pre is not None:
        result = pre(module, args)
        if result is not None:
            args = result if isinstance(result, tuple) else (result,)
    output = call(*args, **kwargs)
    if post is not None:
        result = post(module, args, output)
        if result is not None:
            output = result
    return output


# --- Linen: nn.intercept_methods --------------------------------------------------------------


def linen_hooks(name, *, pre=None, post=None):
    """An interceptor that runs torch-style hooks around submodule ``name``'s ``__call__``.

    Args:
      name: the submodule's path, ``'conv1'`` (nested paths joined by ``'/'``).
      pre: ``pre(module, args) -> args | None``, as ``register_forward_pre_hook``.
      post: ``post(module, args, output) -> output | None``, as ``register_forward_hook``.

    Returns:
      An interceptor: ``with nn.intercept_methods(linen_hooks('conv1', pre=f)): net.apply(v, x)``.
    """
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or "/".join(module.path) != name:
            return next_fun(*args, **kwargs)
        return _run_hooked(next_fun, module, args, kwargs, pre, post)
    return interceptor


def perturb_output(module, args, output):
    """A post-hook adding ``module``'s zero ``'output'`` perturbation: ``output + 0``, differentiable."""
    return module.perturb("output", output)


def linen_output_grads(net, params, x, target, names, *, hook=perturb_output):
    """d loss / d (output of each layer in ``names``) via ``perturb``; NHWC.

    The interceptor adds a zero ``'perturbations'`` variable to each named layer's output;
    the gradient w.r.t. it is the gradient w.r.t. the output (torch: ``grad_output``).

    Args:
      net: a ``flax_lenet.linen.Net``. params: its inner parameter tree.
      x: NHWC batch. target: ``(N, 10)``. names: layer names, e.g. ``('conv1', 'fc1')``.
      hook: the post-hook that inserts the perturbation (default: ``perturb_output``).

    Returns:
      ``{name: gradient}`` shaped like each layer's output.
    """
    def loss(perturbations):
        variables = {"params": params, "perturbations": perturbations}
        return mse_loss(net.apply(variables, x), target)

    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(nn.intercept_methods(linen_hooks(name, post=hook)))
        _, state = net.apply({"params": params}, x, mutable=["perturbations"])
        grads = jax.grad(loss)(state["perturbations"])
    return {name: grads[name]["output"] for name in names}


# --- NNX: model surgery, a hooked module in the layer's place -------------------------------


class Hooked(nnx.Module):
    """``layer`` between torch-style hooks: ``pre(self, args)``, ``layer(*args)``, ``post(self, args, out)``.

    The hooks receive this module (``.layer`` is the layer), so a hook that sows or perturbs
    (``module.sow``, ``module.perturb``) records under the layer's old path.
    """

    def __init__(self, layer, pre=None, post=None):
        self.layer, self.pre, self.post = layer, pre, post

    def __call__(self, *args, **kwargs):
        return _run_hooked(self.layer, self, args, kwargs, self.pre, self.post)


@contextlib.contextmanager
def nnx_hooks(model, name: str, *, pre=None, post=None):
    """Within the block, ``model.<name>`` is a ``Hooked`` module that runs torch-style hooks around the layer.

    The layer itself is unchanged and put back on exit; while hooked, its variables sit one level
    deeper (``conv1/layer/kernel``: the same Variable objects, so a step taken inside the block
    trains the layer).

    Args:
      model: the NNX model. name: the layer's attribute path, ``'conv1'`` or ``'block.conv'``.
      pre: ``pre(module, args) -> args | None``. post: ``post(module, args, output) -> output | None``.

    Yields:
      The ``Hooked`` module.
    """
    *parents, last = name.split(".")
    parent = functools.reduce(getattr, parents, model)
    layer = getattr(parent, last)
    setattr(parent, last, Hooked(layer, pre, post))
    try:
        yield getattr(parent, last)
    finally:
        setattr(parent, last, layer)


def nnx_output_grads(model, x, target, names, *, hook=perturb_output):
    """d loss / d (output of each layer in ``names``) via ``perturb`` + ``nnx.capture``; NHWC.

    Args and Returns as ``linen_output_grads``, with an NNX ``model`` instead of ``net, params``.
    """
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(nnx_hooks(model, name, post=hook))
        _, perturbations = nnx.capture(model, nnx.Perturbation)(x)       # zeros, one per layer

        def loss(model, perturbations):
            return mse_loss(nnx.capture(model, init=perturbations)(x), target)

        grads = nnx.grad(loss, argnums=1)(model, perturbations)
    return {name: jnp.asarray(grads[name]["output"][...]) for name in names}
