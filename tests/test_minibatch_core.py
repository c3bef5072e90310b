"""The seed: "torch.nn only supports mini-batches" -- ``input.unsqueeze(0)`` <-> ``x[None]``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import flax_lenet
from flax_lenet import functional, linen
from tests.helpers import state_numpy, torch_net


def test_single_sample_needs_a_batch_dimension_in_both():
    net = torch_net(3, "float32")
    params = flax_lenet.torch_to_flax(state_numpy(net))
    image = np.random.default_rng(0).standard_normal((1, 32, 32)).astype("float32")   # C, H, W
    with pytest.raises(RuntimeError):                   # view(-1, 36) then fc1 wants 576 features
        net(torch.from_numpy(image))
    flax_image = jnp.asarray(image.transpose(1, 2, 0))                                # H, W, C
    with pytest.raises(ValueError, match=r"x\[None\].*unsqueeze\(0\)"):
        functional.forward(params, flax_image)
    batched_torch = net(torch.from_numpy(image).unsqueeze(0)).detach().numpy()
    batched_flax = np.asarray(functional.forward(params, flax_image[None]))
    np.testing.assert_allclose(batched_flax, batched_torch, rtol=0, atol=1e-5 * np.abs(batched_torch).max())


@pytest.mark.parametrize("shape, message", [
    ((2, 1, 32, 32), r"NCHW.*transpose\(0, 2, 3, 1\)"),
    ((2, 28, 28, 1), r"28x28.*padded"),
    ((2, 32, 32, 3), r"3 channels"),
    ((2, 32, 32), r"rank 3"),
])
def test_wrong_batch_gets_one_line_error_in_every_flavour(shape, message):
    x = jnp.zeros(shape)
    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    calls = [lambda: model(x), lambda: functional.forward(params, x),
             lambda: linen.Net().init(jax.random.key(0), x)]
    for call in calls:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_integer_images_are_refused():
    model = flax_lenet.Net(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"dtype int"):
        model(jnp.zeros((1, 32, 32, 1), jnp.int32))
