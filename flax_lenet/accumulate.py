"""Gradient accumulation the torch way: ``backward()`` k times, then one ``step()``.

    torch                                         flax_lenet
    optimizer.zero_grad()                         tx = accumulate(optim.sgd(lr), k)
    for x, y in micro_batches:      # k of them   for x, y in micro_batches:
        criterion(net(x), y).backward()               g = jax.grad(loss_fn)(params, x, y)
    optimizer.step()                                  u, s = tx.update(g, s, params)   # zero until the k-th
                                                      params = optax.apply_updates(params, u)

torch adds every ``backward()`` into ``.grad`` until ``zero_grad()``: the optimizer sees the *sum*
of the k gradients. ``optax.MultiSteps`` *averages* by default (``use_grad_mean=True``); the
average is torch's loop with ``(criterion(net(x), y) / k).backward()``, the usual recipe, and
for equal micro-batches it is the gradient of one batch k times as large.
"""

import optax

from flax_lenet.errors import BadConfig


def accumulate(tx: optax.GradientTransformation, every_k: int, *, mean: bool = False):
    """Wrap ``tx`` to step once every ``every_k`` gradients, as torch does without ``zero_grad()``.

    Args:
      tx: the optimizer, e.g. ``flax_lenet.optim.sgd(0.01, momentum=0.9)``.
      every_k: micro-batches per optimizer step (torch: ``backward()`` calls per ``step()``).
      mean: False (default) sums the gradients, as torch's ``.grad`` does; True averages them,
        as torch with the loss divided by ``every_k``.

    Returns:
      An ``optax.GradientTransformation`` whose updates are zero except every ``every_k``-th call.
      The running gradient is kept in the gradients' own dtype: ``optax.MultiSteps`` defaults to
      a float32 accumulator, which would round a float64 run to float32 precision.
    """
    if not isinstance(every_k, int) or every_k < 1:
        raise BadConfig(f"every_k: expected a positive integer, found {every_k!r}")
    multi = optax.MultiSteps(tx, every_k, use_grad_mean=mean, accumulator_dtype=None)
    return multi.gradient_transformation()
