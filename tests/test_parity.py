"""The core parity suite: every Flax flavour against the torch reference, from one set of weights.

Everything goes through ``parity.compare`` (the tutorial through ``parity.check``, the one
comparison): converted weights, logits, loss, every gradient, the manual update ``w - lr * g``
and one SGD step, per flavour. Parameterised over kernel size x dtype x batch. Weights come from
torch's own init and travel to Flax through numpy; inputs and targets are drawn in numpy.
"""

import numpy as np
import pytest

from flax_lenet import convert
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
TENSORS = [f"{layer}.{kind}" for layer in convert.LAYERS for kind in ("weight", "bias")]
QUANTITIES = {"logits", "loss", *(f"grad {t}" for t in TENSORS), "params after w - lr*g", "params after SGD step"}


def _by_flavour(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r.flavour, {})[r.quantity] = r
    return out


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES)
def test_every_flavour_matches_torch(kernel_size, dtype, batch):
    rows, tol = parity.compare(dtype=dtype, kernel_size=kernel_size, batch=batch, lr=LR)
    assert tol == tolerance(dtype)
    found = _by_flavour(rows)
    assert found.pop("-")["params round trip"].ok
    assert sorted(found) == sorted(FLAVOURS)
    for flavour, quantities in found.items():
        assert set(quantities) == QUANTITIES, flavour          # nothing left out
        bad = [r for r in quantities.values() if not r.ok]
        assert not bad, bad                                     # forward and backward pass went well


@pytest.mark.slow
def test_large_batch_matches_torch():
    rows, _ = parity.compare(flavours=("nnx",), dtype="float32", batch=64, seed=7)
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]


@pytest.mark.x64
@pytest.mark.parametrize("fault", sorted(parity.FAULTS))
def test_suite_catches_a_broken_conversion(fault):
    """A wrong fc1 flatten order, a conv kernel reshaped instead of transposed or one element off
    fails every flavour's logits and gradients, while the conversion's round trip still holds."""
    rows, _ = parity.compare(dtype="float64", batch=5, fault=fault)
    found = _by_flavour(rows)
    assert found.pop("-")["params round trip"].ok              # the fault comes after the conversion
    for flavour, quantities in found.items():
        assert not quantities["logits"].ok, flavour
        assert not quantities["grad fc1.weight"].ok, flavour


@pytest.mark.x64
def test_swapped_image_axes_are_caught():
    """NCHW -> NHWC must keep H and W in place: an image with H and W swapped gives other logits."""
    net = torch_net(3, "float64")
    x, target = parity.tutorial_data(1, 0, "float64")
    model = parity.tutorial_model("functional", 3, np.float64)
    swapped = parity.check(net, model, x, target=target, dtype="float64", output_name="logits",
                           flax_input=lambda a: convert.nchw_to_nhwc(a.transpose(0, 1, 3, 2)))
    assert not {r.quantity: r for r in swapped.rows}["logits"].ok
    right = parity.check(net, model, x, target=target, dtype="float64", output_name="logits")
    assert right.ok, right.table()


@pytest.mark.x64
def test_train_step_returns_torch_loss_and_updates_like_sgd():
    """``flax_lenet.train_step`` returns the loss before the step, as ``loss`` in the torch loop."""
    import jax.numpy as jnp
    import optax
    import torch
    from flax import nnx

    import flax_lenet
    net = torch_net(3, "float64")
    state = state_numpy(net)
    x, target = parity.tutorial_data(5, 0, "float64")
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    opt.zero_grad()
    loss = torch.nn.MSELoss()(net(torch.from_numpy(x)), torch.from_numpy(target))
    loss.backward()
    opt.step()

    model = nnx.eval_shape(lambda: flax_lenet.Net(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    nnx.update(model, convert.torch_to_flax(state))
    optimizer = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
    got = flax_lenet.train_step(model, optimizer, jnp.asarray(convert.nchw_to_nhwc(x)), jnp.asarray(target))
    assert_close(got, loss.item(), tolerance("float64"), "loss")
    after = flax_lenet.flax_to_torch(nnx.state(model, nnx.Param))
    assert_tree_close(after, state_numpy(net), tolerance("float64"), "after train_step")


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True], ids=["float32-highest", "tf32"])
def test_compare_on_gpu(tf32):
    """On a GPU both frameworks run there; full float32 and TF32 tiers each meet their tolerance."""
    rows, tol = parity.compare(dtype="float32", batch=8, tf32=tf32)
    bad = [r for r in rows if not r.ok]
    assert not bad, f"{tol}: {bad}"
