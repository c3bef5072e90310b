"""The tutorial's training procedure in Flax NNX, as Flax's own ``examples/mnist/train.py`` writes it.

torch                                         flax_lenet
optimizer = optim.SGD(net.parameters(), lr)   optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
optimizer.zero_grad()                         (nothing: jax.grad returns fresh gradients)
loss = criterion(net(input), target)          loss, grads = nnx.value_and_grad(loss_fn)(model, x, target)
loss.backward()
optimizer.step()                              optimizer.update(model, grads)
f.data.sub_(f.grad.data * learning_rate)      jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
"""

import jax
from flax import nnx

from flax_lenet.functional import mse_loss


def loss_fn(model, x, target):
    """``criterion(net(input), target)`` with ``criterion = nn.MSELoss()``."""
    return mse_loss(model(x), target)


@nnx.jit(static_argnames="loss_fn")
def train_step(model, optimizer, x, target, loss_fn=loss_fn):
    """One ``zero_grad(); loss = criterion(net(x), y); loss.backward(); optimizer.step()``.

    Args:
      model: a ``flax_lenet.Net`` (or any NNX module ``loss_fn`` accepts); updated in place,
        as torch's ``net``.
      optimizer: e.g. ``nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)``; updated in place.
      x: NHWC batch ``(N, 32, 32, 1)``. target: what ``loss_fn`` compares with, ``(N, 10)``.
      loss_fn: ``loss_fn(model, x, target) -> scalar``; default the tutorial's MSE loss.

    Returns:
      The loss before the update (torch: the ``loss`` that ``backward()`` was called on).
    """
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, target)
    optimizer.update(model, grads)
    return loss


@jax.jit
def sgd_update(params, grads, learning_rate=0.01):
    """The manual rule ``weights = weights - learning_rate * gradient`` on a parameter tree."""
    return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
