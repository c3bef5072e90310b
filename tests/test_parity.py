"""The core parity suite: every Flax flavour against the torch reference, from one set of weights.

Parameterised over flavour x kernel size x dtype x batch. Weights come from torch's own init
and travel to Flax through numpy (``torch_to_flax``); inputs and targets are drawn in numpy.
"""

import pytest

from flax_lenet.porting import parity
from flax_lenet.porting.tolerances import tolerance
from tests.helpers import assert_close, assert_tree_close, state_numpy, torch_net

FLAVOURS = parity.FLAVOURS
# k=3 covers every flavour x dtype x batch in the fast tier; k=5 (today's tutorial) is in the
# slow tier here and fast in test_independent_torch.py (nnx) and test_cli_compare.py (linen)
KERNEL_SIZES = (3, pytest.param(5, marks=pytest.mark.slow))
DTYPES = ("float64", "float32")
BATCHES = (1, 5)
LR = 0.01


@pytest.fixture(scope="module")
def torch_results():
    """torch's logits, loss, gradients and updated parameters, cached per configuration."""
    cache = {}

    def get(kernel_size, dtype, batch, seed=0):
        key = (kernel_size, dtype, batch, seed)
        if key not in cache:
            net = torch_net(kernel_size, dtype, seed)
            x, target = parity.tutorial_data(batch, seed, dtype)
            cache[key] = (state_numpy(net), x, target, parity.torch_run(net, x, target, LR))
        return cache[key]

    return get


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flavour_matches_torch(torch_results, flavour, kernel_size, dtype, batch):
    state, x, target, ref = torch_results(kernel_size, dtype, batch)
    got = parity.flax_run(flavour, parity.convert.torch_to_flax(state), parity.convert.nchw_to_nhwc(x), target, LR)
    tol = tolerance(dtype)
    assert_close(got["logits"], ref["logits"], tol, "logits")
    assert_close(got["loss"], ref["loss"], tol, "loss")
    assert_tree_close(got["grads"], ref["grads"], tol, "grad")             # forward pass went well
    assert_tree_close(got["manual"], ref["manual"], tol, "after w - lr*g")  # backward pass went well
    assert_tree_close(got["sgd"], ref["sgd"], tol, "after SGD step")


@pytest.mark.slow
def test_large_batch_matches_torch(torch_results):
    state, x, target, ref = torch_results(3, "float32", 64, seed=7)
    got = parity.flax_run("nnx", parity.convert.torch_to_flax(state), parity.convert.nchw_to_nhwc(x), target, LR)
    tol = tolerance("float32")
    assert_close(got["logits"], ref["logits"], tol, "logits")
    assert_tree_close(got["grads"], ref["grads"], tol, "grad")


@pytest.mark.x64
@pytest.mark.parametrize("fault", sorted(parity.FAULTS))
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_suite_catches_a_broken_conversion(torch_results, flavour, fault):
    """A wrong fc1 flatten order or a conv kernel reshaped instead of transposed must fail the suite."""
    state, x, target, ref = torch_results(3, "float64", 5)
    params = parity.convert.torch_to_flax(state)
    parity.FAULTS[fault](state, params)
    got = parity.flax_run(flavour, params, parity.convert.nchw_to_nhwc(x), target, LR)
    with pytest.raises(AssertionError):
        assert_close(got["logits"], ref["logits"], tolerance("float32"), "logits")
    with pytest.raises(AssertionError):
        assert_tree_close(got["grads"], ref["grads"], tolerance("float32"), "grad")


@pytest.mark.x64
def test_swapped_image_axes_are_caught(torch_results):
    """NCHW -> NHWC must keep H and W in place: an image with H and W swapped gives other logits."""
    state, x, target, ref = torch_results(3, "float64", 1)
    x_swapped = x.transpose(0, 1, 3, 2).copy()                   # (N, C, W, H): the wrong permutation
    got = parity.flax_run("functional", parity.convert.torch_to_flax(state),
                          parity.convert.nchw_to_nhwc(x_swapped), target, LR)
    with pytest.raises(AssertionError):
        assert_close(got["logits"], ref["logits"], tolerance("float32"), "logits")


@pytest.mark.x64
def test_train_step_returns_torch_loss_and_updates_like_sgd(torch_results):
    """``flax_lenet.train_step`` returns the loss before the step, as ``loss`` in the torch loop."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import flax_lenet
    state, x, target, ref = torch_results(3, "float64", 5)
    model = nnx.eval_shape(lambda: flax_lenet.Net(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    nnx.update(model, parity.convert.torch_to_flax(state))
    optimizer = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
    loss = flax_lenet.train_step(model, optimizer, jnp.asarray(parity.convert.nchw_to_nhwc(x)), jnp.asarray(target))
    assert_close(loss, ref["loss"], tolerance("float64"), "loss")
    after = flax_lenet.flax_to_torch(nnx.state(model, nnx.Param))
    assert_tree_close(after, ref["sgd"], tolerance("float64"), "after train_step")


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True], ids=["float32-highest", "tf32"])
def test_compare_on_gpu(tf32):
    """On a GPU both frameworks run there; full float32 and TF32 tiers each meet their tolerance."""
    rows, tol = parity.compare(dtype="float32", batch=8, tf32=tf32)
    bad = [r for r in rows if not r.ok]
    assert not bad, f"{tol}: {bad}"
