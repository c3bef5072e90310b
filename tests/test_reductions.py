"""Where "PyTorch averages the gradient over the batch" (the seed) really comes from: the loss's
``reduction='mean'``, not the optimizer. Each claim is checked in float64 against torch.

    torch                                   JAX / optax
    nn.MSELoss()        (mean over N*10)    jnp.mean((y - t)**2) = optax.squared_error(y, t).mean()
    nn.MSELoss(reduction='sum')             optax.squared_error(y, t).sum()      = N*10 x the mean
                                            optax.l2_loss(y, t).mean()           = 0.5 x MSELoss
    F.cross_entropy(logits, labels)         optax.softmax_cross_entropy_with_integer_labels(..).mean()
    out.backward(ct)                        jax.vjp(f, params, x)[1](ct)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from flax_lenet import convert, functional
from flax_lenet.porting import parity
from flax_lenet.porting.tolerances import FLOAT64
from helpers import assert_close, torch_net

N = 4
OUT = 10


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),   # see conftest.py
              pytest.mark.x64]                             # every claim here is checked in float64


@pytest.fixture(scope="module")
def setup():
    """A float64 torch Net, its Flax params, a batch (NCHW and NHWC), targets and class labels."""
    net = torch_net(3, "float64")
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(net.state_dict()))
    x, target = parity.tutorial_data(N, 1, "float64")
    labels = np.random.default_rng(2).integers(0, OUT, N)
    return net, params, x, jnp.asarray(parity.convert.nchw_to_nhwc(x)), target, labels


def torch_param_grads(net, loss_of_output) -> dict:
    """``.grad`` of every parameter after ``loss_of_output(net(x)).backward()`` on a fresh graph."""
    net.zero_grad()
    loss_of_output().backward()
    return convert.state_to_numpy({k: p.grad for k, p in net.named_parameters()})


#: ``(d_params, d_x)`` of ``functional.forward`` for the cotangent ``ct`` on the logits: ``jax.vjp``.
_forward_vjp = jax.jit(lambda params, x, ct: jax.vjp(functional.forward, params, x)[1](ct))
_forward = jax.jit(functional.forward)


def jax_param_grads(params, x_nhwc, loss_of_logits) -> dict:
    """``jax.grad(lambda p: loss_of_logits(forward(p, x)))(params)`` in torch layout.

    Computed by the chain rule ``jax.grad`` applies itself, ``vjp(forward)(grad(loss)(logits))``,
    so that one compiled backward pass serves every loss: the losses differ only in ``dL/dlogits``.
    """
    logits = _forward(params, x_nhwc)
    return convert.flax_to_torch(_forward_vjp(params, x_nhwc, jax.grad(loss_of_logits)(logits))[0])


def assert_grads_close(actual, expected, what, tol=FLOAT64):
    for k in expected:
        assert_close(actual[k], expected[k], tol, f"{what} {k}")


def test_mse_mean_reduction_is_the_average_that_torch_gradients_carry(setup):
    net, params, x, x_nhwc, target, _ = setup
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    mean = torch_param_grads(net, lambda: torch.nn.MSELoss()(net(xt), tt))
    total = torch_param_grads(net, lambda: torch.nn.MSELoss(reduction="sum")(net(xt), tt))
    # the "average over the batch" is the loss's 1/(N*10): reduction='sum' undoes it exactly
    assert_grads_close(total, {k: N * OUT * v for k, v in mean.items()}, "sum = N*10 x mean")
    with pytest.raises(AssertionError):
        assert_grads_close(total, mean, "sum vs mean without the factor")
    # JAX: the same mean is jnp.mean, and optax.squared_error(...).mean()
    assert_grads_close(jax_param_grads(params, x_nhwc, lambda y: functional.mse_loss(y, target)), mean, "jnp.mean")
    sq = jax_param_grads(params, x_nhwc, lambda y: optax.squared_error(y, target).mean())
    assert_grads_close(sq, mean, "optax.squared_error().mean()")
    sq_sum = jax_param_grads(params, x_nhwc, lambda y: optax.squared_error(y, target).sum())
    assert_grads_close(sq_sum, total, "optax.squared_error().sum()")


def test_batch_mean_gradient_is_the_mean_of_per_example_gradients(setup):
    """The gradient of MSELoss on N examples = the average of the N single-example gradients."""
    net, params, x, x_nhwc, target, _ = setup
    batch = torch_param_grads(net, lambda: torch.nn.MSELoss()(net(torch.from_numpy(x)), torch.from_numpy(target)))
    each = [jax_param_grads(params, x_nhwc[i:i + 1], lambda y, i=i: functional.mse_loss(y, target[i:i + 1]))
            for i in range(N)]
    assert_grads_close({k: sum(g[k] for g in each) / N for k in batch}, batch, "mean of per-example")


def test_sgd_does_not_average_reduction_sum_needs_lr_over_n_times_10(setup):
    """torch.optim.SGD applies ``.grad`` as it is: the 1/(N*10) lives in the loss alone."""
    net, _, x, _, target, _ = setup
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def params_after_one_step(reduction, lr):
        net.load_state_dict(start)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        opt.zero_grad()
        torch.nn.MSELoss(reduction=reduction)(net(torch.from_numpy(x)), torch.from_numpy(target)).backward()
        opt.step()
        return convert.state_to_numpy(net.state_dict())

    lr = 0.1
    mean = params_after_one_step("mean", lr)
    assert_grads_close(params_after_one_step("sum", lr / (N * OUT)), mean, "sum with lr/(N*10)")
    with pytest.raises(AssertionError):
        assert_grads_close(params_after_one_step("sum", lr), mean, "sum with the same lr")
    net.load_state_dict(start)


def test_l2_loss_has_half_the_gradient_of_mse_loss(setup):
    net, params, x, x_nhwc, target, _ = setup
    mse = torch_param_grads(net, lambda: torch.nn.MSELoss()(net(torch.from_numpy(x)), torch.from_numpy(target)))
    l2 = jax_param_grads(params, x_nhwc, lambda y: optax.l2_loss(y, target).mean())
    assert_grads_close({k: 2.0 * v for k, v in l2.items()}, mse, "2 x l2_loss")
    with pytest.raises(AssertionError):
        assert_grads_close(l2, mse, "l2_loss as if it were MSELoss")


def test_cross_entropy_is_mean_of_optax_softmax_cross_entropy_with_integer_labels(setup):
    net, params, x, x_nhwc, _, labels = setup
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
    for reduction, reduce in (("mean", jnp.mean), ("sum", jnp.sum)):
        net.zero_grad()
        loss = F.cross_entropy(net(xt), lt, reduction=reduction)
        loss.backward()
        expected = convert.state_to_numpy({k: p.grad for k, p in net.named_parameters()})

        def jax_loss(y, reduce=reduce):
            return reduce(optax.softmax_cross_entropy_with_integer_labels(y, labels))

        value = jax_loss(_forward(params, x_nhwc))
        assert_close(value, loss.detach().numpy(), FLOAT64, f"cross-entropy loss ({reduction})")
        assert_grads_close(jax_param_grads(params, x_nhwc, jax_loss), expected, f"cross-entropy ({reduction})")
    summed = jax_param_grads(params, x_nhwc, lambda y: optax.softmax_cross_entropy_with_integer_labels(y, labels).sum())
    with pytest.raises(AssertionError):   # the per-example losses summed are not F.cross_entropy's mean
        assert_grads_close(summed, torch_param_grads(net, lambda: F.cross_entropy(net(xt), lt)), "sum vs mean")


def test_backward_with_a_cotangent_is_jax_vjp(setup):
    """The tutorial's ``net.zero_grad(); out.backward(torch.randn(1, 10))``."""
    net, params, x, x_nhwc, _, _ = setup
    ct = np.random.default_rng(3).standard_normal((1, OUT))          # the tutorial's randn(1, 10), via numpy
    xt = torch.from_numpy(x[:1]).requires_grad_(True)
    net.zero_grad()
    out = net(xt)
    out.backward(torch.from_numpy(ct))
    expected = convert.state_to_numpy({k: p.grad for k, p in net.named_parameters()})
    d_params, d_x = _forward_vjp(params, x_nhwc[:1], jnp.asarray(ct))
    assert_grads_close(convert.flax_to_torch(d_params), expected, "vjp params")
    assert_close(convert.nhwc_to_nchw(d_x), xt.grad.numpy(), FLOAT64, "vjp input (NHWC -> NCHW)")
    d_params_ones, _ = _forward_vjp(params, x_nhwc[:1], jnp.ones((1, OUT)))                       # out.sum().backward(): another cotangent
    with pytest.raises(AssertionError):
        assert_grads_close(convert.flax_to_torch(d_params_ones), expected, "vjp with ones")
