"""The tutorial's training procedure in Flax NNX.

torch                                         flax_lenet
optimizer = optim.SGD(net.parameters(), lr)   optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
optimizer.zero_grad()                         (nothing: jax.grad returns fresh gradients)
loss = criterion(net(input), target)          loss, grads = nnx.value_and_grad(loss_fn)(model, x, target)
loss.backward()
optimizer.step()                              optimizer.update(model, grads)
f.data.sub_(f.grad.data * learning_rate)      jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)

``train_step`` is the one training step of the project: ``flax-lenet train``, the N-step
comparison (``flax_lenet.porting.trajectory``), the benchmark and the data-parallel step all run it.
``train_steps`` runs K of them in one compiled call, for loops over many small batches.
"""

import jax
from flax import nnx

from flax_lenet import fast
from flax_lenet.checks import check_images
from flax_lenet.functional import mse_loss


@fast.batch_mean   # a mean over the batch: train_step may add it up chunk by chunk
def loss_fn(model, x, target):
    """``criterion(net(input), target)`` with ``criterion = nn.MSELoss()``."""
    return mse_loss(model(x), target)


@fast.jit_step   # nnx.jit(static_argnames="loss_fn", graph=False), with less work per call (fast.py)
def train_step(model, optimizer, x, target, loss_fn=loss_fn):
    """One ``zero_grad(); loss = criterion(net(x), y); loss.backward(); optimizer.step()``.

    On CPU, the forward of an unmodified ``flax_lenet.Net`` is computed block-wise, one matrix
    product per conv -> relu -> max-pool block, and a large batch's gradient chunk by chunk
    (``flax_lenet.fast``): the same function as ``model(x)`` up to float rounding, about twice
    as fast on XLA:CPU. Any other model, a hooked layer, and every GPU or TPU run ``model(x)``
    on the whole batch as written.

    Args:
      model: a ``flax_lenet.Net`` (or any NNX module ``loss_fn`` accepts); updated in place,
        as torch's ``net``.
      optimizer: e.g. ``nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)``; updated in place.
      x: NHWC batch ``(N, 32, 32, 1)``. target: what ``loss_fn`` compares with, ``(N, 10)``.
      loss_fn: ``loss_fn(model, x, target) -> scalar``; default the tutorial's MSE loss.

    Returns:
      The loss before the update (torch: the ``loss`` that ``backward()`` was called on).
    """
    check_images(x)                                       # at trace time: costs nothing per step
    loss, grads = fast.value_and_grad(loss_fn, model, x, target)   # nnx.value_and_grad(loss_fn)(model, ...)
    optimizer.update(model, grads)
    return loss


@fast.jit_step
def train_steps(model, optimizer, xs, targets, loss_fn=loss_fn):
    """``train_step`` on each batch of ``xs`` in turn, all in one compiled call (``lax.scan``).

    For a loop over many small batches (the tutorial's batch of 1): one call of the Python
    dispatch and of the program per K steps instead of per step. The result is that of the
    loop ``[train_step(model, optimizer, x, t) for x, t in zip(xs, targets)]``.

    Args:
      model, optimizer, loss_fn: as ``train_step``; updated in place.
      xs: K batches ``(K, N, 32, 32, 1)``. targets: ``(K, N, 10)`` (or what ``loss_fn`` takes).

    Returns:
      The K losses, each before its update.
    """
    graphdef, state = nnx.split((model, optimizer))

    def one(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        loss = train_step.__wrapped__(model, optimizer, *batch, loss_fn=loss_fn)
        return nnx.state((model, optimizer)), loss

    state, losses = jax.lax.scan(one, state, (xs, targets))
    nnx.update((model, optimizer), state)
    return losses


@jax.jit   # one program for the whole tree; eagerly, each leaf's `*` and `-` compiled apart
def sgd_update(params, grads, learning_rate=0.01):
    """The manual rule ``weights = weights - learning_rate * gradient`` on a parameter tree."""
    return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
