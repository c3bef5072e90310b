"""A torch Net written here, independently of ``torch_reference``, agrees with every Flax flavour.

It is written the way today's tutorial writes it (``torch.flatten(x, 1)``, ``F.max_pool2d(.., 2)``),
initialised by torch, and its weights reach Flax only through ``torch_to_flax``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax import nnx

import flax_lenet
from flax_lenet import functional, linen
from flax_lenet.porting.tolerances import tolerance
from tests.helpers import assert_close

SIDE = {3: 6, 5: 5}


class IndependentNet(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, k)
        self.conv2 = nn.Conv2d(6, 16, k)
        self.fc1 = nn.Linear(16 * SIDE[k] * SIDE[k], 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _flax_loss_and_grads(flavour, params, x, y, kernel_size):
    dtype = x.dtype
    params = jax.tree.map(jnp.asarray, params)
    if flavour == "nnx":
        model = nnx.eval_shape(lambda: flax_lenet.Net(kernel_size, param_dtype=dtype, rngs=nnx.Rngs(1)))
        nnx.update(model, params)

        @nnx.jit
        def run(m):
            def loss(m):
                out = m(x)
                return jnp.mean((out - y) ** 2), out
            (l, out), g = nnx.value_and_grad(loss, has_aux=True)(m)
            return out, l, g
        out, l, g = run(model)
        return out, l, nnx.to_pure_dict(g)
    apply = functional.forward if flavour == "functional" else (
        lambda p, xb: linen.Net(kernel_size, param_dtype=dtype).apply({"params": p}, xb))

    @jax.jit
    def run(p):
        def loss(p):
            out = apply(p, x)
            return jnp.mean((out - y) ** 2), out
        (l, out), g = jax.value_and_grad(loss, has_aux=True)(p)
        return out, l, g
    return run(params)


@pytest.mark.parametrize("dtype", ("float64", "float32"))
@pytest.mark.parametrize("kernel_size", (3, 5))
@pytest.mark.parametrize("flavour", ("nnx", pytest.param("linen", marks=pytest.mark.slow),
                                     pytest.param("functional", marks=pytest.mark.slow)))
def test_independent_torch_net_agrees_with_every_flavour(flavour, kernel_size, dtype):
    torch.manual_seed(1234 + kernel_size)
    net = IndependentNet(kernel_size).to(getattr(torch, dtype))
    rng = np.random.default_rng(kernel_size)
    x = rng.standard_normal((4, 1, 32, 32)).astype(dtype)
    y = rng.standard_normal((4, 10)).astype(dtype)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    out = net(xt)
    loss = F.mse_loss(out, yt)
    loss.backward()
    torch_grads = {n: p.grad.numpy() for n, p in net.named_parameters()}

    params = flax_lenet.torch_to_flax(net.state_dict())
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    f_out, f_loss, f_grads = _flax_loss_and_grads(flavour, params, x_nhwc, jnp.asarray(y), kernel_size)
    f_grads = flax_lenet.flax_to_torch(f_grads)

    tol = tolerance(dtype)           # the suite's tiers: measured worst 1.3e-15 (float64), 8.6e-7 (float32)
    assert_close(f_out, out.detach().numpy(), tol, "logits")
    assert_close(f_loss, loss.detach().numpy(), tol, "loss")
    for name, g in torch_grads.items():
        assert_close(f_grads[name], g, tol, name)
