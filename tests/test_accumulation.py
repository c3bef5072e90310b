"""The tutorial's remark, executable: without ``zero_grad()`` torch *adds* gradients; optax's
``MultiSteps`` *averages* them unless told otherwise (``flax_lenet.accumulate``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from flax_lenet import convert, functional, optim
from flax_lenet.porting import parity
from flax_lenet.accumulate import accumulate
from flax_lenet.porting.tolerances import FLOAT64
from helpers import assert_close, torch_net

K = 3               # micro-batches per optimizer step
MICRO = 2           # examples per micro-batch
CYCLES = 2          # optimizer steps
LR, MOMENTUM = 0.01, 0.9

_grad = jax.jit(jax.grad(functional.loss_fn))


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),   # see conftest.py
              pytest.mark.x64]                             # every claim here is checked in float64


@pytest.fixture(scope="module")
def setup():
    """A float64 torch Net, its Flax params, and CYCLES * K micro-batches (NCHW and NHWC)."""
    net = torch_net(3, "float64")
    state = convert.state_to_numpy(net.state_dict())
    xs, ys = zip(*(parity.tutorial_data(MICRO, seed, "float64") for seed in range(CYCLES * K)))
    return net, state, list(xs), list(ys)


def torch_grads(net) -> dict:
    return convert.state_to_numpy({k: p.grad for k, p in net.named_parameters()})


def jax_grads(state, x, y) -> dict:
    """``jax.grad`` of the tutorial loss on one micro-batch, in torch layout."""
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state))
    return convert.flax_to_torch(_grad(params, jnp.asarray(parity.convert.nchw_to_nhwc(x)), jnp.asarray(y)))


def assert_grads_close(actual, expected, what):
    for k in expected:
        assert_close(actual[k], expected[k], FLOAT64, f"{what} {k}")


def test_backward_without_zero_grad_is_the_sum_of_jax_grads(setup):
    net, state, xs, ys = setup
    net.zero_grad()
    for x, y in zip(xs[:K], ys[:K]):                       # K backward() calls, no zero_grad() between
        torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    accumulated = torch_grads(net)
    each = [jax_grads(state, x, y) for x, y in zip(xs[:K], ys[:K])]
    total = {k: sum(g[k] for g in each) for k in accumulated}
    assert_grads_close(total, accumulated, "sum of jax.grad vs .grad after K backward()")
    # the same checker, against what a reader might expect instead: fresh or averaged gradients
    with pytest.raises(AssertionError):
        assert_grads_close(each[-1], accumulated, "last gradient only")
    with pytest.raises(AssertionError):
        assert_grads_close({k: v / K for k, v in total.items()}, accumulated, "mean")


def torch_accumulated_training(net, xs, ys, loss_scale=1.0) -> list[dict]:
    """``zero_grad(); K x backward(); step()`` per cycle, SGD with momentum; state after each step."""
    import copy
    net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    after = []
    for c in range(CYCLES):
        opt.zero_grad()
        for x, y in zip(xs[c * K:(c + 1) * K], ys[c * K:(c + 1) * K]):
            (torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y)) * loss_scale).backward()
        opt.step()
        after.append(convert.state_to_numpy(net.state_dict()))
    return after


def optax_accumulated_training(state, xs, ys, tx) -> list[dict]:
    """One ``tx.update`` per micro-batch; params (torch layout) after every K-th, unchanged between."""
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state))
    opt_state, update = tx.init(params), jax.jit(tx.update)
    after = []
    for i, (x, y) in enumerate(zip(xs, ys), start=1):
        before = params
        grads = _grad(params, jnp.asarray(parity.convert.nchw_to_nhwc(x)), jnp.asarray(y))
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if i % K:
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=f"moved at micro-step {i}"),
                         params, before)
        else:
            after.append(convert.flax_to_torch(params))
    return after


def assert_training_close(actual, expected, what):
    for step, (a, e) in enumerate(zip(actual, expected), start=1):
        assert_grads_close(a, e, f"{what} step {step}")


def test_accumulate_then_step_is_multisteps_with_summed_grads(setup):
    net, state, xs, ys = setup
    expected = torch_accumulated_training(net, xs, ys)
    tx = accumulate(optim.sgd(LR, momentum=MOMENTUM), K)
    assert_training_close(optax_accumulated_training(state, xs, ys, tx), expected,
                          "accumulate = MultiSteps(use_grad_mean=False, accumulator_dtype=None)")


def test_multisteps_defaults_are_not_torch_accumulation(setup):
    """optax's defaults average (K times smaller steps) and accumulate in float32 (rounding)."""
    net, state, xs, ys = setup
    expected = torch_accumulated_training(net, xs, ys)
    averaged = optax.MultiSteps(optim.sgd(LR, momentum=MOMENTUM), K).gradient_transformation()
    with pytest.raises(AssertionError):
        assert_training_close(optax_accumulated_training(state, xs, ys, averaged), expected, "use_grad_mean=True")
    float32_sum = optax.MultiSteps(optim.sgd(LR, momentum=MOMENTUM), K, use_grad_mean=False).gradient_transformation()
    with pytest.raises(AssertionError, match="max rel diff"):
        assert_training_close(optax_accumulated_training(state, xs, ys, float32_sum), expected, "float32 accumulator")


def test_grad_mean_is_torch_with_the_loss_divided_by_k(setup):
    net, state, xs, ys = setup
    expected = torch_accumulated_training(net, xs, ys, loss_scale=1.0 / K)
    tx = accumulate(optim.sgd(LR, momentum=MOMENTUM), K, mean=True)
    assert_training_close(optax_accumulated_training(state, xs, ys, tx), expected, "accumulate(mean=True)")


def test_grad_mean_of_equal_micro_batches_is_the_big_batch_gradient(setup):
    """MSELoss averages over N*10: K micro-batches of MICRO, averaged, = one batch of K*MICRO."""
    _, state, xs, ys = setup
    mean = {k: sum(jax_grads(state, x, y)[k] for x, y in zip(xs[:K], ys[:K])) / K for k in state}
    big = jax_grads(state, np.concatenate(xs[:K]), np.concatenate(ys[:K]))
    assert_grads_close(mean, big, "mean of micro-batch grads vs big batch")


def test_accumulate_refuses_a_non_positive_k():
    with pytest.raises(ValueError, match="every_k: expected a positive integer, found 0"):
        accumulate(optim.sgd(LR), 0)
