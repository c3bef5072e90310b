"""torch.nn takes mini-batches only (``input.unsqueeze(0)``); what each Flax flavour does with one image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flax_lenet import convert, functional, linen
from flax_lenet.parity import nchw_to_nhwc, tutorial_data
from flax_lenet.app.sidebyside import examples
from flax_lenet.tolerances import FLOAT64
from tests.helpers import assert_close, state_numpy, torch_net

pytestmark = pytest.mark.x64     # the float64 tier throughout (see conftest.py)

SEED_FLAT_FEATURES = 576                 # 16 * 6 * 6, fc1's input for 3x3 kernels
UNBATCHED_FLAT_FEATURES = 96             # (6, 6, 16).reshape(6, -1): the "batch" is the height


@pytest.fixture(scope="module")
def setup():
    net = torch_net(3, "float64")
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state_numpy(net)))
    model = convert.to_nnx(params)
    x, _ = tutorial_data(1, 0, "float64")
    return {"net": net, "params": params, "model": model,
            "image_t": torch.from_numpy(x[0]), "image": jnp.asarray(nchw_to_nhwc(x)[0])}


def flavours(s):
    """Each Flax flavour as ``f(x) -> logits``."""
    module = linen.Net(3, param_dtype=jnp.float64)
    return {"nnx": s["model"], "linen": lambda x: module.apply({"params": s["params"]}, x),
            "functional": lambda x: functional.forward(s["params"], x)}


def test_unsqueeze0_equals_x_none_in_every_flavour(setup):
    expected = examples.torch_single_image(setup["net"], setup["image_t"]).detach().numpy()
    assert expected.shape == (1, 10)
    assert_close(examples.flax_single_image(setup["model"], setup["image"]), expected, FLOAT64, "nnx x[None]")
    for name, f in flavours(setup).items():
        assert_close(f(setup["image"][None]), expected, FLOAT64, f"{name} x[None]")


@pytest.mark.parametrize("flavour", ["nnx", "linen", "functional"])
def test_each_flavour_rejects_a_single_image_with_a_one_line_hint(setup, flavour):
    with pytest.raises(ValueError, match=r"found a single image \(32, 32, 1\).*x\[None\]") as info:
        flavours(setup)[flavour](setup["image"])
    assert "\n" not in str(info.value)


def test_torch_net_fails_on_a_single_image_at_fc1(setup):
    # Conv2d and max_pool2d accept (C, H, W) today; the tutorial's view(-1, num_flat_features)
    # then reads (16, 6, 6) as 16 rows of 36: fc1 raises.
    with pytest.raises(RuntimeError, match=r"16x36 and 576x120"):
        setup["net"](setup["image_t"])


def test_flax_layers_accept_a_single_image_but_the_flatten_then_reads_height_as_batch(setup):
    image = setup["image"]
    conv = setup["model"].conv1
    assert_close(conv(image), conv(image[None])[0], FLOAT64, "nnx.Conv unbatched")    # layers: fine
    x = nnx.max_pool(jax.nn.relu(setup["model"].conv2(nnx.max_pool(
        jax.nn.relu(conv(image)), (2, 2), strides=(2, 2)))), (2, 2), strides=(2, 2))
    assert x.shape == (6, 6, 16)
    assert x.reshape(x.shape[0], -1).shape == (6, UNBATCHED_FLAT_FEATURES)             # the flatten: wrong


def init_shapes(x):
    """Parameter shapes ``linen.Net(3)`` would create for ``x`` (traced, not run)."""
    variables = jax.eval_shape(lambda: linen.Net(3).init(jax.random.key(0), x))
    return jax.tree.map(lambda a: a.shape, variables)


def test_without_the_check_linen_init_would_silently_build_a_wrong_fc1(setup, monkeypatch):
    monkeypatch.setattr(linen, "check_images", lambda x: None)
    shapes = init_shapes(setup["image"])
    assert shapes["params"]["fc1"]["kernel"] == (UNBATCHED_FLAT_FEATURES, 120)           # no error raised
    monkeypatch.undo()
    with pytest.raises(ValueError, match="single image"):
        init_shapes(setup["image"])
    batched = init_shapes(setup["image"][None])
    assert batched["params"]["fc1"]["kernel"] == (SEED_FLAT_FEATURES, 120)


def test_vmap_over_single_images_equals_the_batch(setup):
    x, _ = tutorial_data(3, 1, "float64")
    batch = jnp.asarray(nchw_to_nhwc(x))
    per_image = jax.vmap(lambda img: functional.forward(setup["params"], img[None])[0])(batch)
    assert_close(per_image, np.asarray(functional.forward(setup["params"], batch)), FLOAT64, "vmap")


@pytest.mark.parametrize("shape, dtype, message", [
    ((2, 1, 32, 32), jnp.float64, r"NCHW.*transpose\(0, 2, 3, 1\)"),
    ((2, 28, 28, 1), jnp.float64, r"28x28.*padded"),
    ((2, 32, 32, 3), jnp.float64, r"3 channels"),
    ((2, 32, 32), jnp.float64, r"rank 3"),
    ((2, 32, 32, 1), jnp.int32, r"dtype int32"),
], ids=["NCHW", "28x28", "channels", "rank", "int dtype"])
@pytest.mark.parametrize("flavour", ["nnx", "linen", "linen-init", "functional"])
def test_every_flavour_refuses_a_wrong_batch_with_one_line(setup, flavour, shape, dtype, message):
    calls = {**flavours(setup), "linen-init": lambda x: linen.Net(3).init(jax.random.key(0), x)}
    with pytest.raises(ValueError, match=message) as info:
        calls[flavour](jnp.zeros(shape, dtype))
    assert "\n" not in str(info.value)
