"""Train the Flax ``Net`` and the torch reference side by side on the same batches.

Both start from the same weights (torch's initialisation, converted once through numpy), see
the same batches in the same order (one numpy permutation per epoch, shared), and use the same
loss and optimizer. The torch side is the tutorial's loop::

    for input, target in batches:
        optimizer.zero_grad(); loss = criterion(net(input), target); loss.backward(); optimizer.step()

The Flax side is the same loop over ``flax_lenet.fast``'s step: ``train_step``, faster on CPU
(``fast.bound_step``, pinned to the plain step by ``tests/test_fast.py``). The random shifts are drawn in numpy, once per
epoch, and each batch is gathered and shifted from the data set's one copy
(``flax_lenet.app.data.Shifts``), so both frameworks see the same pixels. Each side's one-time start-up (Flax: tracing and compiling the
step and the evaluation; torch: its first step and evaluation) runs on copies of the models
before the clock starts, and is reported apart as ``compile_seconds``.
"""

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flax_lenet import convert, fast
from flax_lenet.app.checks import check_finite, check_labels
from flax_lenet.checks import check_images
from flax_lenet.app.config import TrainConfig
from flax_lenet.errors import BadConfig, BadImages, BadInput
from flax_lenet.app.data import NUM_CLASSES, Dataset, Shifts
from flax_lenet.porting.tolerances import ACCURACY_POINTS

@dataclass
class FrameworkRun:
    """What one framework did: per-step and per-epoch losses, test accuracy per epoch, time."""
    step_loss: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: float = 0.0            # training and evaluation, start-up excluded
    compile_seconds: float = 0.0    # the one-time start-up: Flax compiles, torch's first step


@dataclass
class TrainResult:
    config: TrainConfig
    flax: FrameworkRun
    torch: FrameworkRun
    flax_params: dict               # Flax layout, numpy: the weights the Flax side trained
    torch_state: dict               # torch layout, numpy: the weights the torch side trained

    def metrics(self, data: dict) -> dict:
        """The content of ``metrics.json`` (accuracies are None before the first epoch ends)."""
        def side(run):
            last = run.test_accuracy[-1] if run.test_accuracy else None
            return {"test_accuracy": last, "test_accuracy_per_epoch": run.test_accuracy,
                    "train_loss": run.train_loss, "step_loss": run.step_loss, "seconds": run.seconds,
                    "compile_seconds": run.compile_seconds}
        gap = step_loss_diff(self.flax.step_loss, self.torch.step_loss)
        epochs = min(len(self.flax.test_accuracy), len(self.torch.test_accuracy))
        points = 100 * abs(self.flax.test_accuracy[-1] - self.torch.test_accuracy[-1]) if epochs else None
        return {"flax": side(self.flax), "torch": side(self.torch), "data": data,
                "config": asdict(self.config),
                "difference": {"test_accuracy_points": points,
                               "test_accuracy_within_points": ACCURACY_POINTS,
                               "test_accuracy_agrees": points is not None and points <= ACCURACY_POINTS,
                               "step_loss_max_rel": gap}}


class TrainingDiverged(BadInput):
    """The loss (or a weight) became NaN or Inf; ``last_good`` holds the weights before that epoch."""

    def __init__(self, message: str, last_good: "TrainResult"):
        super().__init__(message)
        self.last_good = last_good


def step_loss_diff(a, b) -> float:
    """``max|a - b| / max|b|`` over two loss curves of equal length."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b))) if len(b) else 0.0


# --- the pieces both frameworks share ---------------------------------------------------------

LR_DECAY = 0.1


def decay_step(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The first step (0-based) that uses ``lr * LR_DECAY``."""
    return round(cfg.lr_decay_at * cfg.epochs) * steps_per_epoch


def build_optimizers(cfg: TrainConfig, torch_params, steps_per_epoch: int):
    """The ONE place the optimizer is built, for both frameworks (switch to ``flax_lenet.optim`` here).

    torch ``SGD(lr, momentum)`` and ``optax.sgd(lr, momentum)`` are the same update when
    dampening is 0: ``b = mu * b + g`` (``b = g`` on step 1), ``w = w - lr_t * b``. The
    learning rate drops to ``lr * LR_DECAY`` at ``decay_step``: torch ``MultiStepLR`` stepped
    once per batch, optax ``piecewise_constant_schedule`` on the step count.

    Returns:
      ``(optax transformation, torch optimizer, torch scheduler)``.
    """
    import torch
    milestone = decay_step(cfg, steps_per_epoch)
    schedule = optax.piecewise_constant_schedule(cfg.lr, {milestone: LR_DECAY})
    tx = optax.sgd(schedule, momentum=cfg.momentum or None)
    t_opt = torch.optim.SGD(torch_params, lr=cfg.lr, momentum=cfg.momentum)
    t_sched = torch.optim.lr_scheduler.MultiStepLR(t_opt, milestones=[milestone], gamma=LR_DECAY)
    return tx, t_opt, t_sched


class BatchOrder:
    """``(epochs, steps, batch_size)`` example indices, made one epoch at a time.

    Epoch ``e`` is the first ``steps * batch_size`` entries of the ``e``-th permutation drawn
    from ``np.random.default_rng(seed)``, reshaped to ``(steps, batch_size)``. Only the epoch in
    use is held: ``--epochs 10000000`` costs one epoch's indices, not 10 million of them.
    Iterating yields the epochs in order; ``order[e]`` gives one (going back redraws from the
    start); ``np.asarray(order)`` stacks them all.
    """

    def __init__(self, num_examples: int, steps: int, batch_size: int, epochs: int, seed: int):
        self.num_examples, self.seed = num_examples, seed
        self.shape = (epochs, steps, batch_size)
        self._rng, self._next, self._last = None, 0, None

    def __len__(self) -> int:
        return self.shape[0]

    def _draw(self) -> np.ndarray:
        _, steps, batch = self.shape
        return self._rng.permutation(self.num_examples)[:steps * batch].reshape(steps, batch)

    def __getitem__(self, epoch: int) -> np.ndarray:
        epoch = range(self.shape[0])[epoch]                   # IndexError past the end, as an array
        if self._rng is None or epoch < self._next - 1:
            self._rng, self._next = np.random.default_rng(self.seed), 0
        while self._next <= epoch:
            self._last, self._next = self._draw(), self._next + 1
        return self._last

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        _, steps, batch = self.shape
        for _ in range(self.shape[0]):
            yield rng.permutation(self.num_examples)[:steps * batch].reshape(steps, batch)

    def __array__(self, dtype=None, copy=None):
        return np.stack(list(self)).astype(dtype or np.int64, copy=False)


def batch_order(num_examples: int, cfg: TrainConfig) -> BatchOrder:
    """``(epochs, steps, batch_size)`` example indices: one shared permutation per epoch (``BatchOrder``)."""
    steps = num_examples // cfg.batch_size
    if steps == 0:
        raise BadConfig(f"batch_size: expected at most {num_examples} (the training set size), "
                        f"found {cfg.batch_size}")
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    return BatchOrder(num_examples, steps, cfg.batch_size, cfg.epochs, cfg.seed)


def initial_state(cfg: TrainConfig) -> dict:
    """torch's own initialisation of ``Net(kernel_size)`` under ``seed``, as numpy arrays."""
    import torch

    from torch_reference import Net as TorchNet
    torch.manual_seed(cfg.seed)
    net = TorchNet(cfg.kernel_size).to(getattr(torch, cfg.dtype))
    return convert.state_to_numpy(net.state_dict())


# --- Flax -------------------------------------------------------------------------------------

def ce_loss(model, x, labels):
    """``F.cross_entropy(net(x), labels)``: the mean softmax cross-entropy on class labels."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


def mse_onehot_loss(model, x, labels):
    """``nn.MSELoss()(net(x), F.one_hot(labels))``: the tutorial's loss on one-hot targets."""
    logits = model(x)
    return jnp.mean((logits - jax.nn.one_hot(labels, NUM_CLASSES, dtype=logits.dtype)) ** 2)


FLAX_LOSSES = {"ce": ce_loss, "mse": mse_onehot_loss}


EVAL_BATCH = 1000   # test images per forward pass: 10,000 at once would hold ~1 GB of activations


@nnx.jit(graph=False)
def _correct_batch(model, x, y):
    """The number of images in ``x`` that ``model`` classifies as ``y`` (block-wise on CPU)."""
    return jnp.sum(jnp.argmax(fast.view(model, x)(x), -1) == y)


def _correct(model, x: np.ndarray, y: np.ndarray, to_float=None) -> int:
    """``_correct_batch`` over ``EVAL_BATCH`` images at a time; one compiled shape per data set.

    ``to_float`` turns stored images into float ones (``Dataset.to_float``), a batch at a time.
    The last batch is padded with zero images labelled -1, which no argmax equals.
    """
    dtype, size = model.conv1.kernel[...].dtype, min(EVAL_BATCH, len(y))
    total = 0
    for start in range(0, len(y), size):
        xb, yb = x[start:start + size], np.asarray(y[start:start + size], np.int32)
        xb = to_float(xb) if to_float else xb
        if len(yb) < size:
            xb = np.concatenate([xb, np.zeros((size - len(yb),) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.full(size - len(yb), -1, np.int32)])
        total += int(_correct_batch(model, jnp.asarray(xb, dtype), jnp.asarray(yb)))
    return total


def check_some_images(x, what: str = "images") -> None:
    """An accuracy is a fraction of the images: refuse none (torch's would divide 0 by 0 as well)."""
    if len(x) == 0:
        raise BadImages(f"{what}: expected at least one image to measure an accuracy on, found 0 "
                        f"(shape {tuple(x.shape)})")


def flax_accuracy(params: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` (NHWC) that the Flax Net with ``params`` (Flax layout) classifies as ``y``."""
    check_images(x)
    check_some_images(x)
    check_finite(x)
    check_labels(y, len(x))
    return _correct(convert.to_nnx(params), np.asarray(x), np.asarray(y)) / len(y)


# --- torch ------------------------------------------------------------------------------------

def torch_criterion(loss: str):
    """``nn.CrossEntropyLoss()`` on class labels, or ``nn.MSELoss()`` on one-hot targets."""
    import torch
    import torch.nn.functional as F
    if loss == "ce":
        return torch.nn.CrossEntropyLoss()
    mse = torch.nn.MSELoss()
    return lambda output, y: mse(output, F.one_hot(y, NUM_CLASSES).to(output.dtype))


def torch_accuracy(state: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` (NHWC, transposed here to NCHW) that torch's Net with ``state`` gets right."""
    import torch

    from torch_reference import Net as TorchNet
    check_images(x)
    check_some_images(x)
    check_finite(x)
    check_labels(y, len(x))
    k = convert.kernel_size_of(convert.torch_to_flax(state))
    dtype = np.asarray(next(iter(state.values()))).dtype
    net = TorchNet(k).to(getattr(torch, str(dtype)))
    net.load_state_dict({name: torch.as_tensor(np.asarray(v)) for name, v in state.items()})
    return _torch_accuracy(net, x, np.asarray(y), dtype)


def _torch_images(x: np.ndarray, dtype):
    """NHWC numpy -> NCHW torch tensor (``convert.nhwc_to_nchw``: strides ``x.view`` accepts)."""
    import torch
    return torch.from_numpy(convert.nhwc_to_nchw(np.asarray(x, dtype)))


def _torch_accuracy(net, x: np.ndarray, y: np.ndarray, dtype, to_float=None) -> float:
    """``net``'s accuracy on NHWC ``x``, ``EVAL_BATCH`` images (made NCHW tensors) at a time."""
    import torch
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            xb = x[start:start + EVAL_BATCH]
            xb = _torch_images(to_float(xb) if to_float else xb, dtype)
            yb = torch.from_numpy(np.asarray(y[start:start + EVAL_BATCH], np.int64))
            correct += int((net(xb).argmax(-1) == yb).sum())
    return correct / len(y)


# --- side by side -----------------------------------------------------------------------------

def _first_bad(losses: np.ndarray):
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if len(bad) else None


def _finite_tree(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(tree))


def train(dataset: Dataset, cfg: TrainConfig = TrainConfig(), *,
          on_epoch: Callable[[int, "TrainResult"], None] | None = None,
          progress: Callable[[int, int], Callable[[], None]] | None = None) -> TrainResult:
    """Train the Flax Net and the torch reference side by side.

    Args:
      dataset: images ``(N, 32, 32, 1)`` NHWC (float, or uint8 with ``pixel_values``), labels
        0..9 (``flax_lenet.app.data.Dataset``).
      cfg: the run's configuration.
      on_epoch: called as ``on_epoch(epoch, result_so_far)`` after every epoch.
      progress: called as ``progress(epoch, total_ticks)`` at the start of an epoch; returns a
        ``tick()`` to call once per torch batch and once per Flax batch.

    Returns:
      A ``TrainResult`` with per-step losses, per-epoch losses and test accuracies of both
      frameworks, and the trained weights of each (numpy; Flax and torch layouts).

    Raises:
      ValueError: bad images, labels or configuration. TrainingDiverged: a loss became NaN or
        Inf; the exception holds the result up to the last finite epoch.
    """
    import copy

    import torch

    from torch_reference import Net as TorchNet
    from torch_reference import sgd_step

    if cfg.dtype == "float64" and not jax.config.jax_enable_x64:
        raise BadConfig("dtype float64: expected jax_enable_x64 to be on "
                        "(jax.config.update('jax_enable_x64', True)), found it off")
    for split, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        check_some_images(x, f"{split} images")
        check_images(dataset.to_float(x[:1]))          # uint8 grey levels are checked as floats
        check_finite(x, f"{split} images")
        check_labels(y, len(x), f"{split} labels")
    dtype = np.dtype(cfg.dtype)
    order = batch_order(len(dataset.y_train), cfg)
    steps = order.shape[1]
    state0 = initial_state(cfg)

    # torch: NCHW tensors, the tutorial's loop.
    net = TorchNet(cfg.kernel_size).to(getattr(torch, cfg.dtype))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state0.items()})
    tx, t_opt, t_sched = build_optimizers(cfg, net.parameters(), steps)
    criterion = torch_criterion(cfg.loss)
    torch_y_train = torch.from_numpy(dataset.y_train.astype(np.int64))

    # Flax: the NNX Net and an nnx.Optimizer, trained with flax_lenet.fast's step.
    model = convert.to_nnx(convert.torch_to_flax(state0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    flax_loss = FLAX_LOSSES[cfg.loss]

    fr, tr = FrameworkRun(), FrameworkRun()
    first = dataset.images("train", order[0][0]).astype(dtype), dataset.y_train[order[0][0]]
    evaluate = dict(x=dataset.x_test, y=dataset.y_test, to_float=dataset.to_float)
    start = time.perf_counter()                 # one-time start-up, on copies: not in `seconds`
    warm = copy.deepcopy(net)
    warm_opt = torch.optim.SGD(warm.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sgd_step(warm, warm_opt, _torch_images(first[0], dtype), torch.from_numpy(first[1].astype(np.int64)), criterion)
    _torch_accuracy(warm.eval(), dtype=dtype, **evaluate)
    tr.compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm_model, warm_opt = nnx.clone(model), nnx.clone(optimizer)
    fast.bound_step(warm_model, warm_opt, flax_loss, batch_mean=True)(first[0], first[1]).block_until_ready()
    _correct(warm_model, **evaluate)
    fr.compile_seconds = time.perf_counter() - start

    step = fast.bound_step(model, optimizer, flax_loss, batch_mean=True)   # both losses are batch means
    shift_rng = np.random.default_rng([cfg.seed, 1])
    result = TrainResult(cfg, fr, tr, _numpy_tree(nnx.state(model, nnx.Param)), state0)
    for epoch, epoch_order in enumerate(order):
        tick = progress(epoch, 2 * steps) if progress else (lambda: None)
        shifts = Shifts(dataset.x_train, cfg.shift, shift_rng)   # batches: gathered and shifted one at a time

        start = time.perf_counter()
        net.train()
        t_losses = []
        for idx in epoch_order:                     # the tutorial's loop, one batch at a time
            x = _torch_images(dataset.to_float(shifts[idx]), dtype)
            t_losses.append(float(sgd_step(net, t_opt, x, torch_y_train[torch.from_numpy(idx)], criterion)))
            t_sched.step()
            tick()
        net.eval()
        t_acc = _torch_accuracy(net, dtype=dtype, **evaluate)
        tr.seconds += time.perf_counter() - start

        start = time.perf_counter()
        losses = []
        for idx in epoch_order:                     # the same loop, through the library's step
            x = dataset.to_float(shifts[idx]).astype(dtype, copy=False)
            losses.append(step(x, dataset.y_train[idx]))
            tick()
        f_losses = np.asarray(jax.device_get(losses), np.float64)   # no jnp.stack: it compiles per length
        f_acc = _correct(model, **evaluate) / len(dataset.y_test)
        fr.seconds += time.perf_counter() - start

        params = nnx.state(model, nnx.Param)
        for name, losses, ok in (("flax", f_losses, _finite_tree(params)),
                                 ("torch", np.asarray(t_losses), _finite_tree(net.state_dict()))):
            bad = _first_bad(losses)
            if bad is not None:
                what = (f"the {name} loss became {losses[bad]} at step {epoch * steps + bad + 1} "
                        f"(epoch {epoch + 1}, batch {bad + 1})")
            elif not ok:
                what = f"the {name} weights became NaN or Inf at the update of step {(epoch + 1) * steps}"
            if bad is not None or not ok:
                raise TrainingDiverged(f"{what}; stopped training (a lower learning rate may help)", result)

        fr.step_loss += f_losses.tolist()
        tr.step_loss += t_losses
        fr.train_loss.append(float(np.mean(f_losses)))
        tr.train_loss.append(float(np.mean(t_losses)))
        fr.test_accuracy.append(f_acc)
        tr.test_accuracy.append(t_acc)
        result.flax_params = _numpy_tree(params)
        result.torch_state = convert.state_to_numpy(net.state_dict())
        if on_epoch:
            on_epoch(epoch, result)
    return result


def _numpy_tree(params) -> dict:
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    return jax.tree.map(lambda a: np.asarray(a).copy(), params)
