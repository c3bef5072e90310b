"""An empty batch (N=0): torch's Net returns logits of shape (0, 10); the Flax flavours should too.

Each flattens with ``x.reshape(x.shape[0], math.prod(x.shape[1:]))``: ``x.reshape(x.shape[0], -1)``
cannot infer the ``-1`` of an empty array (``ZeroDivisionError: integer modulo by zero`` in
``jnp.reshape``; numpy refuses the same reshape with a ValueError). The same holds for
``fast.py``'s two flattens. What the app builds on top refuses 0 images in one line
(``test_input_limits.py``).
"""

import numpy as np
import pytest
import torch

from flax_lenet import convert, fast, functional, linen
from torch_reference import Net as TorchNet

EMPTY = np.zeros((0, 32, 32, 1), np.float32)


def test_torch_net_returns_logits_of_shape_0_by_10_on_an_empty_batch():
    assert tuple(TorchNet(3)(torch.zeros(0, 1, 32, 32)).shape) == (0, 10)


def _params():
    torch.manual_seed(0)
    return convert.torch_to_flax(convert.state_to_numpy(TorchNet(3).state_dict()))


FLAVOURS = {
    "nnx": lambda p: convert.to_nnx(p)(EMPTY),
    "functional": lambda p: functional.forward(p, EMPTY),
    "linen": lambda p: linen.Net().apply({"params": p}, EMPTY),
    "fast": lambda p: fast.forward(p, EMPTY),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_flax_flavour_returns_logits_of_shape_0_by_10_on_an_empty_batch(flavour):
    assert FLAVOURS[flavour](_params()).shape == (0, 10)
