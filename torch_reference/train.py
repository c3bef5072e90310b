"""The tutorial's training procedure, as two small functions.

1. The manual rule ``weights = weights - learning_rate * gradient``, in place on ``.data``.
2. The ``torch.optim`` way: ``zero_grad()``, forward, loss, ``backward()``, ``step()``.
"""

import torch.nn as nn


def manual_sgd_update(net, learning_rate=0.01):
    """``f.data.sub_(f.grad.data * learning_rate)`` for every parameter, as in the tutorial."""
    for f in net.parameters():
        f.data.sub_(f.grad.data * learning_rate)


def sgd_step(net, optimizer, input, target, criterion=None):
    """One ``optim.SGD`` step on ``(input, target)``; returns the loss before the step."""
    criterion = nn.MSELoss() if criterion is None else criterion
    optimizer.zero_grad()   # zero the gradient buffers
    output = net(input)
    loss = criterion(output, target)
    loss.backward()
    optimizer.step()        # does the update
    return loss.detach()
