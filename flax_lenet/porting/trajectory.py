"""N training steps of the tutorial's Net in torch and in Flax from the same weights and batches.

    torch (torch_steps)                               flax (flax_steps)
    opt = torch.optim.SGD(net.parameters(), **kw)     opt = nnx.Optimizer(model, optim.sgd(**kw), wrt=nnx.Param)
    opt.zero_grad()                                   (nothing: jax.grad returns fresh gradients)
    loss = MSELoss()(net(x_t), y_t); loss.backward()  loss = fast.train_step(model, opt, x_t, y_t)
    opt.step()

``compare`` runs them through ``parity.check`` (one batch per step, one row per tensor with its
worst step). One step's error is the rounding of one update; over many steps it is fed back
through the network and (Adam) divided by ``sqrt(v)``, so ``flax_lenet.porting.tolerances`` has
its own trajectory tiers, measured. Weights and batches travel through numpy, never a shared seed.
"""

import jax
import jax.numpy as jnp
import numpy as np

from flax_lenet import convert, fast
from flax_lenet.errors import BadConfig
from flax_lenet.optim import Optimizer
from flax_lenet.porting import parity
from flax_lenet.porting.parity import Row
from flax_lenet.porting.tolerances import Tolerance, trajectory_tolerance


def torch_steps(state: dict, opt: Optimizer, xs: np.ndarray, ys: np.ndarray):
    """Train ``torch_reference.Net`` from ``state``; yield ``(loss, state_dict as numpy)`` after each step."""
    import torch

    from torch_reference import Net
    dev = parity.torch_device()
    weights = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    net = Net(state["conv1.weight"].shape[-1]).to(weights["conv1.weight"].dtype)
    net.load_state_dict(weights)
    net = net.to(dev)
    criterion = torch.nn.MSELoss()
    optimizer = opt.torch(net.parameters())
    for x, y in zip(xs, ys):
        optimizer.zero_grad()
        loss = criterion(net(torch.from_numpy(x).to(dev)), torch.from_numpy(y).to(dev))
        loss.backward()
        optimizer.step()
        yield loss.item(), convert.state_to_numpy(net.state_dict())


def flax_steps(params: dict, opt, xs_nhwc: np.ndarray, ys: np.ndarray):
    """Train the NNX Net from ``params`` with ``fast.train_step`` and ``opt`` (an ``Optimizer``
    or any optax transformation); yield ``(loss, params)`` after each step."""
    from flax import nnx
    tx = opt.optax() if isinstance(opt, Optimizer) else opt
    dtype = xs_nhwc.dtype
    model = convert.to_nnx(jax.tree.map(lambda a: jnp.asarray(a, dtype), params))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for x, y in zip(xs_nhwc, ys):
        loss = fast.train_step(model, optimizer, jnp.asarray(x), jnp.asarray(y))
        yield float(loss), nnx.to_pure_dict(nnx.state(model, nnx.Param))


def compare(opt: Optimizer, *, steps: int = 100, dtype: str = "float64", kernel_size: int = 3,
            batch: int = 4, seed: int = 0, tf32: bool = False, fault=None) -> tuple[list[Row], Tolerance]:
    """Train torch and Flax side by side for ``steps`` steps and diff them after every step.

    The run is ``parity.check`` with one batch per step and one row per tensor: the NNX Net
    trained by ``flax_lenet.fast.train_step`` against ``torch_reference.Net`` and ``torch.optim``.

    Args:
      opt: the optimizer, e.g. ``Optimizer.of('adam', lr=1e-3)``.
      steps: number of training steps; one fresh batch per step.
      dtype: 'float32' or 'float64' (needs ``jax_enable_x64``).
      kernel_size, batch, seed: the Net (3 or 5), batch size, seed of torch's init and the data.
      tf32: on a GPU, leave TF32 on in both frameworks. fault: a ``parity.FAULTS`` key.

    Returns:
      ``(rows, tolerance)``: one ``Row`` per quantity with its largest difference over the run
      and the step where it happened. In float32 a row over the tolerance is also measured
      against a float64 run (``parity.check``): ``row.float64``.
    """
    import torch

    from torch_reference import Net as TorchNet
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise BadConfig("dtype float64 needs jax.config.update('jax_enable_x64', True) at start-up, found it off")
    dev = parity.torch_device()
    tol = trajectory_tolerance(dtype, "cpu" if dev.type == "cpu" else "gpu", tf32)
    torch.manual_seed(seed)
    net = TorchNet(kernel_size)
    xs, ys = parity.tutorial_data(batch, seed, dtype, steps=steps)
    model = parity.tutorial_model("nnx", kernel_size, jnp.dtype(dtype))
    report = parity.check(net, model, xs[0], target=ys[0], optimizer=opt, steps=steps, dtype=dtype, tf32=tf32,
                          tamper=parity.fault_tamper(fault), step_fn=fast.train_step, batches=(xs, ys),
                          per_tensor_steps=True, rtol={"steps": tol})
    return [r for r in report.rows if r.step is not None], tol


def distances_from(run, truth) -> dict[str, float]:
    """Per quantity (``'loss'``, ``'params NAME'``): the worst, over the steps, of a run's
    relative distance from the ``truth`` run (both in torch layout)."""
    worst: dict[str, float] = {}
    for (loss, state), (true_loss, true_state) in zip(run, truth):
        if "conv1.weight" not in state:
            state = convert.flax_to_torch(state)
        pairs = {"loss": (loss, true_loss), **{f"params {n}": (state[n], t) for n, t in true_state.items()}}
        for name, (a, t) in pairs.items():
            d = parity.diff(np.asarray(a, np.float64), np.asarray(t, np.float64))[1]
            worst[name] = max(worst.get(name, 0.0), d) if d == d else float("nan")
    return worst
