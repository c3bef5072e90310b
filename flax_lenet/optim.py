"""``torch.optim.SGD``, ``Adam`` and ``AdamW`` as optax transformations, argument for argument.

    torch                                            flax_lenet.optim
    optim.SGD(net.parameters(), lr, momentum, ...)   tx = sgd(lr, momentum, ...)
    optim.Adam(net.parameters(), lr, betas, ...)     tx = adam(lr, betas, ...)
    optim.AdamW(net.parameters(), lr, betas, ...)    tx = adamw(lr, betas, ...)
    optimizer.step()                                 updates, state = tx.update(grads, state, params)
                                                     params = optax.apply_updates(params, updates)

Same names, same defaults, same update to the last rounding error (``tests/test_trajectory*.py``
checks 100 steps). Each function is built from optax's own transforms where optax already
computes torch's equation *and* arithmetic; two steps are written here: SGD's dampening
(``_dampened_trace``, no optax equivalent) and torch's Adam/AdamW/AMSGrad step (``_torch_adam``:
optax's AMSGrad is another equation, and optax's Adam computes its bias correction in float32
where torch uses double).
Arguments torch refuses raise ``BadConfig`` (a ``ValueError``) with torch's own message.
"""

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from flax_lenet.errors import BadConfig


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise BadConfig(message)


def _check_common(lr, weight_decay) -> None:
    _check(lr >= 0.0, f"Invalid learning rate: {lr}")
    _check(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")


def _prefix(maximize: bool, weight_decay: float) -> list:
    """torch's first two lines: ``g <- -g`` if maximize, then ``g <- g + weight_decay * theta``."""
    steps = [optax.scale(-1.0)] if maximize else []
    if weight_decay:
        steps.append(optax.add_decayed_weights(weight_decay))
    return steps


def _chain(steps: list) -> optax.GradientTransformation:
    return steps[0] if len(steps) == 1 else optax.chain(*steps)


class DampenedTraceState(NamedTuple):
    count: jax.Array          # steps taken, int32
    trace: optax.Params       # torch's momentum_buffer


def _dampened_trace(momentum: float, dampening: float) -> optax.GradientTransformation:
    """torch's momentum buffer with dampening: ``b_1 = g``; ``b_t = mu * b_{t-1} + (1 - tau) * g``.

    optax has no equivalent: ``optax.trace`` is ``b_t = mu * b_{t-1} + g`` (tau = 0), and
    ``optax.ema`` starts from 0 and debiases. torch does *not* dampen the first step.
    """

    def init(params):
        return DampenedTraceState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        first = state.count == 0
        trace = jax.tree.map(lambda g, b: jnp.where(first, g, momentum * b + (1.0 - dampening) * g),
                             updates, state.trace)
        return trace, DampenedTraceState(optax.safe_increment(state.count), trace)

    return optax.GradientTransformation(init, update)


def sgd(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    r"""``torch.optim.SGD`` as an optax transformation.

    torch's update, per parameter ``theta`` with gradient ``g`` at step ``t``::

        g <- -g                                   if maximize
        g <- g + weight_decay * theta             if weight_decay != 0
        b_1 = g;  b_t = mu * b_{t-1} + (1 - tau) * g          if momentum mu != 0 (tau: dampening)
        g <- g + mu * b_t  if nesterov  else  g <- b_t
        theta <- theta - lr * g

    optax: ``chain(scale(-1), add_decayed_weights(weight_decay), sgd(lr, momentum, nesterov))``.
    ``optax.trace`` starts its buffer at 0, so its ``b_1 = g`` is torch's: exact when tau = 0,
    nesterov included. For tau != 0 the buffer is ``_dampened_trace`` (first step undampened).

    Args:
      lr, momentum, dampening, weight_decay, nesterov, maximize: as ``torch.optim.SGD``.

    Returns:
      An ``optax.GradientTransformation``; ``optax.apply_updates`` adds its output to the params.

    Raises:
      BadConfig: the arguments torch refuses (negative lr, momentum or weight decay; nesterov
        without momentum or with dampening), with torch's message.
    """
    _check_common(lr, weight_decay)
    _check(momentum >= 0.0, f"Invalid momentum value: {momentum}")
    _check(not (nesterov and (momentum <= 0 or dampening != 0)),
           "Nesterov momentum requires a momentum and zero dampening")
    if momentum and dampening:
        core = optax.chain(_dampened_trace(momentum, dampening), optax.scale_by_learning_rate(lr))
    else:
        core = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    return _chain(_prefix(maximize, weight_decay) + [core])


def _check_adam(lr, betas, eps, weight_decay) -> None:
    _check_common(lr, weight_decay)
    _check(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _check(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
    _check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")


class TorchAdamState(NamedTuple):
    count: jax.Array          # steps taken, int32
    mu: optax.Params          # exp_avg
    nu: optax.Params          # exp_avg_sq
    nu_max: optax.Params      # max_exp_avg_sq: the running max of the *raw* exp_avg_sq (AMSGrad; else ())


def _one_minus_power(beta: float, t):
    """``1 - beta**t`` without cancellation: ``-expm1(t * log(beta))``.

    torch computes its bias corrections in Python floats (double). ``1 - 0.999**t`` in float32
    loses 2e-5 of its value to cancellation at small t (optax's ``bias_correction`` computes it
    so); through Adam's ``g / (|g| + eps)`` on small gradients, and AMSGrad's running max, that
    error made float32 runs leave torch's by 1e-2..0.4 (relative) within 100 steps; this stays ~1e-7.
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    return -jnp.expm1(t * log_beta)


def _torch_adam(lr: float, b1: float, b2: float, eps: float, amsgrad: bool,
                decoupled_weight_decay: float = 0.0) -> optax.GradientTransformation:
    """torch's Adam/AdamW step, written in torch's order of operations (``torch.optim.adam``,
    ``_single_tensor_adam``)::

        theta <- theta * (1 - lr * wd)                     (AdamW only)
        m <- m.lerp(g, 1 - b1);  v <- v * b2 + (1 - b2) * g * g;  v_max <- max(v_max, v)  (AMSGrad)
        step_size = lr / (1 - b1^t);  denom = sqrt(v or v_max) / sqrt(1 - b2^t) + eps
        theta <- theta - step_size * m / denom

    torch computes ``1 - b^t`` and ``step_size`` in Python floats (double); here ``1 - b^t`` is
    ``_one_minus_power`` (float32 to ~1e-7, where optax's ``1 - b**t`` is off by 1.3e-5 at t=1).
    AMSGrad takes the max of the raw ``v`` and corrects it with the current step's ``1 - b2^t``
    (``optax.scale_by_amsgrad`` takes the max of the bias-*corrected* ``v``; they differ from
    the second step on). The output is the whole update, ``theta_new - theta``.
    """

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return TorchAdamState(jnp.zeros([], jnp.int32), zeros, zeros, zeros if amsgrad else ())

    def update(updates, state, params=None):
        if decoupled_weight_decay and params is None:
            raise BadConfig("adamw: expected the params in tx.update(grads, state, params), found None")
        count = optax.safe_increment(state.count)
        # torch's lerp(g, w) with w = 1 - b1 < 0.5 is m + w * (g - m); else g - (g - m) * (1 - w)
        w1 = 1.0 - b1
        lerp = (lambda g, m: m + w1 * (g - m)) if w1 < 0.5 else (lambda g, m: g - (g - m) * (1.0 - w1))
        mu = jax.tree.map(lerp, updates, state.mu)
        nu = jax.tree.map(lambda g, v: v * b2 + (1.0 - b2) * g * g, updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else ()

        def step(m, v):
            t = count.astype(m.dtype)
            step_size = lr / _one_minus_power(b1, t)
            denom = jnp.sqrt(v) / jnp.sqrt(_one_minus_power(b2, t)) + eps
            return (-step_size * m) / denom

        out = jax.tree.map(step, mu, nu_max if amsgrad else nu)
        if decoupled_weight_decay:      # theta * (1 - lr * wd) - step, as one update
            out = jax.tree.map(lambda u, p: u - (lr * decoupled_weight_decay) * p, out, params)
        return out, TorchAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False):
    r"""``torch.optim.Adam`` as an optax transformation.

    torch's update, per parameter ``theta`` with gradient ``g`` at step ``t``::

        g <- -g                                   if maximize
        g <- g + weight_decay * theta             if weight_decay != 0  (coupled L2, not AdamW)
        m_t = b1 * m_{t-1} + (1 - b1) * g;   v_t = b2 * v_{t-1} + (1 - b2) * g^2
        theta <- theta - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

    optax: ``chain(scale(-1), add_decayed_weights(weight_decay), <Adam step>)``. The step is
    ``_torch_adam``, not ``optax.adam``: ``optax.scale_by_adam`` has the same equation (eps outside
    the square root, as torch; optax #571) but computes ``1 - b**t`` in float32, 1.3e-5 off at
    t=1, which moved float32 runs 1e-2 away from torch's within 100 steps. With ``amsgrad`` the
    ``v_t`` in the denominator is torch's ``max_{s<=t} v_s`` (optax's own AMSGrad takes the max
    after bias correction).

    Args:
      lr, betas, eps, weight_decay, amsgrad, maximize: as ``torch.optim.Adam``.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      BadConfig: the arguments torch refuses (negative lr, eps or weight decay; a beta
        outside [0, 1)), with torch's message.
    """
    _check_adam(lr, betas, eps, weight_decay)
    b1, b2 = betas
    return _chain(_prefix(maximize, weight_decay) + [_torch_adam(lr, b1, b2, eps, amsgrad)])


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False):
    r"""``torch.optim.AdamW`` as an optax transformation; note torch's default weight decay 1e-2.

    torch's update, per parameter ``theta`` with gradient ``g`` at step ``t``::

        g <- -g                                   if maximize
        theta <- theta * (1 - lr * weight_decay)  (decoupled: the decay never enters m or v)
        m_t, v_t as Adam;  theta <- theta - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

    optax: ``chain(scale(-1), <AdamW step>)``; the step (``_torch_adam``, as ``adam``) computes
    ``theta - lr * weight_decay * theta - step``: torch's two updates as one sum. ``optax.adamw``
    has the same equation (and its own default ``weight_decay`` is 1e-4, optax #417; this
    function's is torch's 1e-2) but computes its bias correction in float32, as ``optax.adam``.

    Args:
      lr, betas, eps, weight_decay, amsgrad, maximize: as ``torch.optim.AdamW``.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      BadConfig: the arguments torch refuses, with torch's message.
    """
    _check_adam(lr, betas, eps, weight_decay)
    b1, b2 = betas
    return _chain(_prefix(maximize, False) + [_torch_adam(lr, b1, b2, eps, amsgrad, weight_decay)])


# --- one configuration, built the same way in both frameworks ----------------------------------

TORCH_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


@dataclass(frozen=True)
class Optimizer:
    """One optimizer configuration: ``torch.optim.<Class>(**kwargs)`` and this module's ``<name>(**kwargs)``."""
    name: str            # 'sgd' | 'adam' | 'adamw'
    kwargs: tuple = ()   # sorted (argument, value) pairs, torch's names

    @classmethod
    def of(cls, name: str, **kwargs) -> "Optimizer":
        """``Optimizer.of('sgd', lr=0.01, momentum=0.9)``."""
        if name not in TORCH_CLASSES:
            raise BadConfig(f"optimizer must be one of {sorted(TORCH_CLASSES)}, found {name!r}")
        return cls(name, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))

    def torch(self, parameters):
        """``torch.optim.<Class>(parameters, **kwargs)``."""
        import torch
        return getattr(torch.optim, TORCH_CLASSES[self.name])(parameters, **dict(self.kwargs))

    def optax(self) -> optax.GradientTransformation:
        """This module's ``<name>(**kwargs)``, one object per configuration: a jitted step compiles
        once per optimizer object, so runs of one configuration share a compiled step."""
        return _optax_of(self)

    def __str__(self) -> str:
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.kwargs) + ")"


@functools.lru_cache(maxsize=None)
def _optax_of(opt: Optimizer) -> optax.GradientTransformation:
    return globals()[opt.name](**dict(opt.kwargs))
