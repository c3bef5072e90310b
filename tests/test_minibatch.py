"""One image instead of a mini-batch: ``input.unsqueeze(0)`` / ``x[None]``, and where a wrong batch is caught.

torch's layers accept one unbatched image, and so do Flax's; torch's Net then fails at ``fc1``
because the flatten reads the image's height as the batch, and Linen's ``init`` would silently
build a wrong ``fc1``. Both Flax Nets check the batch's shape and dtype first
(``flax_lenet.checks.check_images``, one line each, at trace time under ``jit``), as the app does
where it takes images in; a NaN or Inf in a batch is ``tests/test_bad_input.py``'s.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import optax
from flax import nnx

import flax_lenet.model

from flax_lenet import convert, functional, linen, train
from flax_lenet.convert import nchw_to_nhwc
from flax_lenet.errors import BadImages
from flax_lenet.porting.parity import tutorial_data
from docs.build import examples
from flax_lenet.porting.tolerances import FLOAT64
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


@pytest.mark.parametrize("flavour, error, message", [
    ("nnx", BadImages, r"found a single image \(32, 32, 1\): add a batch dimension with x\[None\]"),
    ("linen", BadImages, r"found a single image \(32, 32, 1\): add a batch dimension with x\[None\]"),
    ("functional", TypeError, r"lhs and rhs ndim to be equal, got 3 and 4"),   # lax.conv: rank 4 only
])
def test_each_flavour_refuses_a_single_image(setup, flavour, error, message):
    with pytest.raises(error, match=message):
        flavours(setup)[flavour](setup["image"])


def test_without_the_nets_check_a_single_image_fails_at_fc1_as_in_torch(setup, monkeypatch):
    """The twin: with ``check_images`` taken out of the NNX Net it fails where torch's does, at fc1:
    (6, 6, 16) flattens to 6 rows of 96 features and fc1 wants 576."""
    monkeypatch.setattr(flax_lenet.model, "check_images", lambda x: None)
    with pytest.raises(TypeError, match=r"\(96,\) and \(576,\)"):
        setup["model"](setup["image"])


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


def test_linen_init_refuses_a_single_image_that_would_silently_build_a_wrong_fc1(setup, monkeypatch):
    assert init_shapes(setup["image"][None])["params"]["fc1"]["kernel"] == (SEED_FLAT_FEATURES, 120)
    with pytest.raises(BadImages, match=r"found a single image"):
        init_shapes(setup["image"])
    # Without the check, Dense infers its input size: nothing raises, fc1 is (96, 120), not (576, 120)
    monkeypatch.setattr(linen, "check_images", lambda x: None)
    assert init_shapes(setup["image"])["params"]["fc1"]["kernel"] == (UNBATCHED_FLAT_FEATURES, 120)


def test_vmap_over_single_images_equals_the_batch(setup):
    x, _ = tutorial_data(3, 1, "float64")
    batch = jnp.asarray(nchw_to_nhwc(x))
    per_image = jax.vmap(lambda img: functional.forward(setup["params"], img[None])[0])(batch)
    assert_close(per_image, np.asarray(functional.forward(setup["params"], batch)), FLOAT64, "vmap")


# Both Flax Nets check an image batch's shape and dtype, and so does the app where data comes in
# (the same function, ``flax_lenet.checks.check_images``); the training steps call the Net.

def _entry_points(setup):
    """Every entry point that takes an NHWC image batch, each as ``f(x)``."""
    from flax_lenet.app import data, training
    state = convert.flax_to_torch(setup["params"])
    ok, labels = np.zeros((2, 32, 32, 1), np.float32), np.arange(2)
    return {"nnx Net": lambda x: setup["model"](jnp.asarray(x)),
            "linen init": lambda x: linen.Net(3).init(jax.random.key(0), jnp.asarray(x)),
            "train_step": lambda x: train.train_step(setup["model"], nnx.Optimizer(
                setup["model"], optax.sgd(0.01), wrt=nnx.Param), jnp.asarray(x), jnp.zeros((2, 10))),
            "flax accuracy": lambda x: training.flax_accuracy(setup["params"], np.asarray(x), labels),
            "torch accuracy": lambda x: training.torch_accuracy(state, np.asarray(x), labels),
            "dataset": lambda x: data.make_dataset("x", np.asarray(x), labels, ok, labels)}


@pytest.mark.parametrize("shape, dtype, message", [
    ((32, 32, 1), np.float64, r"found a single image \(32, 32, 1\): add a batch dimension with x\[None\]"),
    ((2, 1, 32, 32), np.float64, r"found NCHW .*x\.transpose\(0, 2, 3, 1\)"),
    ((2, 28, 28, 1), np.float64, r"found height x width 28x28 .* padded by 2"),
    ((2, 32, 32, 3), np.float64, r"found 3 channels"),
    ((2, 32, 32), np.float64, r"found rank 3"),
    ((2, 32, 32, 1), np.int32, r"found dtype int32: cast"),
    ((2, 32, 32, 1), np.uint8, r"found dtype uint8: cast"),
    ((2, 32, 32, 1), np.complex64, r"found dtype complex64: the Net's weights and images are real"),
], ids=["single image", "NCHW", "28x28", "channels", "rank", "int32", "uint8", "complex"])
@pytest.mark.parametrize("entry", ["nnx Net", "linen init", "train_step", "flax accuracy", "torch accuracy", "dataset"])
def test_every_entry_point_refuses_a_wrong_batch_with_one_line(setup, entry, shape, dtype, message):
    with pytest.raises(BadImages, match=message) as info:
        _entry_points(setup)[entry](np.zeros(shape, dtype))
    assert "\n" not in str(info.value) and str(info.value).startswith("expected a float batch (N, 32, 32, 1)")


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_without_the_nets_check_complex_images_give_complex_logits_and_nchw_fails_inside_jax(setup, monkeypatch, flavour):
    """The twin of the refusals: Flax's layers alone take a complex batch and return complex logits
    without a word, and Linen's ``init`` on an NCHW batch raises ``ZeroDivisionError``."""
    monkeypatch.setattr(flax_lenet.model if flavour == "nnx" else linen, "check_images", lambda x: None)
    logits = flavours(setup)[flavour](jnp.zeros((2, 32, 32, 1), jnp.complex128))
    assert jnp.issubdtype(logits.dtype, jnp.complexfloating)
    if flavour == "linen":
        with pytest.raises(ZeroDivisionError):
            init_shapes(jnp.zeros((2, 1, 32, 32)))
