"""Use ``torch.optim`` without importing ``torch._dynamo`` (about 1 s of start-up).

Two places in ``torch/optim/optimizer.py`` import ``torch._dynamo`` on first use although
nothing is being compiled:

* ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
  ``load_state_dict`` are wrapped in ``torch._disable_dynamo`` (``torch/_compile.py``): on
  its first call the wrapper imports ``torch._dynamo`` to build ``torch._dynamo.disable(fn)``
  and caches that in ``fn.__dynamo_disable``. Its only job is to stop ``torch.compile`` from
  tracing into the method. Inside ``eager_optim()`` that cache holds the method itself; on exit
  the entries this context made are removed, so a later ``torch.compile`` gets torch's own
  wrapper as usual.
* every optimizer's ``step`` is wrapped in ``_use_grad_for_differentiable``, which imports
  ``torch._dynamo`` to put ``graph_break()`` around the step, and sets grad mode to
  ``defaults['differentiable']``. ``step(optimizer)`` calls the step itself under that grad
  mode (an optimizer with step hooks takes torch's own path, which runs them).

When ``torch._dynamo`` has not been imported nothing can be compiling, so both compute exactly
what torch's own path computes (``tests/test_no_dynamo.py`` checks the parameters bit for bit).
With ``torch._dynamo`` already imported they are torch's own path.

    with eager_optim():
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        opt.zero_grad(); loss_fn(net(x), y).backward(); step(opt)
"""

import contextlib
import sys

_MARK = "__dynamo_disable"      # the attribute torch._disable_dynamo caches its wrapper in


def _wrapped_methods(cls) -> list:
    """The functions behind ``cls``'s ``torch._disable_dynamo``-wrapped methods."""
    found = []
    for klass in cls.__mro__:
        for value in vars(klass).values():
            inner = getattr(value, "__wrapped__", None)
            code = getattr(value, "__code__", None)
            if inner is not None and code is not None and code.co_qualname == "_disable_dynamo.<locals>.inner":
                found.append(inner)
    return found


@contextlib.contextmanager
def eager_optim():
    """Within: ``torch.optim`` optimizers run without importing ``torch._dynamo``."""
    import torch.optim
    if "torch._dynamo" in sys.modules:
        yield
        return
    made = [fn for fn in _wrapped_methods(torch.optim.Optimizer) if not hasattr(fn, _MARK)]
    for fn in made:
        setattr(fn, _MARK, fn)
    try:
        yield
    finally:
        for fn in made:
            if getattr(fn, _MARK, None) is fn:
                delattr(fn, _MARK)


def step(optimizer, closure=None):
    """``optimizer.step(closure)``, without importing ``torch._dynamo`` when it is not loaded.

    With step hooks registered (``register_step_pre_hook`` / ``..._post_hook``, global or on this
    optimizer) this is ``optimizer.step(closure)``: torch's wrapper runs them.
    """
    import torch
    from torch.optim import optimizer as base
    hooks = (base._global_optimizer_pre_hooks, base._global_optimizer_post_hooks,
             optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks)
    if "torch._dynamo" in sys.modules or any(hooks):
        return optimizer.step(closure)
    fn = type(optimizer).step
    while hasattr(fn, "__wrapped__"):       # torch's profile-hook wrapper, then _use_grad
        fn = fn.__wrapped__
    with torch.set_grad_enabled(optimizer.defaults["differentiable"]):
        return fn(optimizer, closure)
