"""The tutorial's training procedure in Flax NNX.

torch                                         flax_lenet
optimizer = optim.SGD(net.parameters(), lr)   optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
optimizer.zero_grad()                         (nothing: jax.grad returns fresh gradients)
loss = criterion(net(input), target)          loss, grads = nnx.value_and_grad(loss_fn)(model)
loss.backward()
optimizer.step()                              optimizer.update(model, grads)
f.data.sub_(f.grad.data * learning_rate)      jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
"""

import jax
from flax import nnx

from flax_lenet import fused
from flax_lenet.functional import mse_loss


def loss_fn(model, x, target):
    """``criterion(net(input), target)`` with ``criterion = nn.MSELoss()``."""
    return mse_loss(model(x), target)


def _step_loss(model, x, target):
    """``loss_fn``, with the Net's forward computed block-wise on CPU (``flax_lenet.fused``)."""
    return mse_loss(fused.net_logits(model, x), target)


@nnx.jit(graph=False)  # the Net is a tree (no shared Variables): skips the per-call graph walk
def train_step(model, optimizer, x, target):
    """One ``zero_grad(); loss = criterion(net(x), y); loss.backward(); optimizer.step()``.

    Args:
      model: a ``flax_lenet.Net``; updated in place, as torch's ``net``.
      optimizer: ``nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)``.
      x: NHWC batch ``(N, 32, 32, 1)``. target: ``(N, 10)``.

    Returns:
      The loss before the update (torch: the ``loss`` that ``backward()`` was called on).
    """
    # = nnx.value_and_grad(loss_fn): on CPU the Net's forward is computed block-wise (flax_lenet.fused)
    loss, grads = nnx.value_and_grad(_step_loss)(model, x, target)
    optimizer.update(model, grads)
    return loss


def sgd_update(params, grads, learning_rate=0.01):
    """The manual rule ``weights = weights - learning_rate * gradient`` on a parameter tree."""
    return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
