"""float32 training runs measured against a float64 run as truth: is Flax's as accurate as torch's own?

A grid point is an optimizer setting, a kernel size, a batch size, a learning rate and a seed.
At each, torch trains ``torch_reference.Net`` in float64 for ``STEPS`` steps: the truth. Then,
from ``MEMBERS`` float32 copies of the same start, torch and Flax (``flax_lenet.optim`` and
``train_step``, x64 off) each train in float32 on the same float32 batches. A run's distance from
the truth is the worst, over its steps and parameter tensors, of ``max|run - truth| / max|truth|``.

The copies: the float64 weights rounded to the nearest float32, and ``MEMBERS - 1`` times rounded
up or down at random, element by element. Each is within one float32 ulp of the truth's start,
as valid a float32 copy of it as the nearest one.

Why several copies, and a geometric mean, rather than one run each:
  * One run's distance is decided by a few elements. Adam's first steps move each weight by
    about ``lr * g / (|g| + eps)``, so a gradient near ``eps`` turns its own rounding into a
    visible update; which framework's rounding lands worse at that element is luck.
  * Later a relu or a max-pool whose input is within rounding of a tie can switch, in one run
    and not another; from then on that run follows another path (1e-3..0.5 away, where the
    others stay near 1e-6).
  * So the ratio of two single runs is a ratio of two draws, not a property of the code. Torch
    against itself (its nearest copy against another copy, ``benchmarks/float32_grid.py``)
    exceeds 10x as often as Flax against torch does.
  * Distances span decades, so each side's error at a point is the geometric mean over its
    copies (the mean of the logs). A median would flip between two paths on one run; an
    arithmetic mean would be the single worst run.
  * ``STEPS`` is 30: the first steps are where the bias correction ``1 - b**t`` is far from 1
    (the error this guards against), and tie switches are still rare. Over 100 steps
    (``benchmarks/float32_grid.py --steps 100``, ``docs/benchmarks.md``) they decide 3 of the 96
    points, where Flax's copies take a far path more often than torch's; torch itself takes the
    same far paths there once its oneDNN convolutions are off (another summation order), and
    single runs are over 10x at 11 of the 96 points, Flax against torch and torch against itself
    alike.

A point holds when Flax's error is at most ``tolerances.TRAJECTORY_FLOAT32_RATIO`` times torch's.
The broken twin, optax's own Adam (its ``1 - b**t`` in float32, 1.3e-5 off at t=1), fails it.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np

from flax_lenet import convert, optim
from flax_lenet.porting import parity, trajectory
from flax_lenet.porting.tolerances import TRAJECTORY_FLOAT32_RATIO

STEPS = 30
MEMBERS = parity.MEMBERS
float32_copies = parity.float32_copies      # the copies parity.check judges a failing float32 row over

#: name -> (function in flax_lenet.optim, its keyword arguments in torch's names, learning-rate scale)
SETTINGS = {
    "sgd": ("sgd", {}, 1.0),
    "sgd-momentum": ("sgd", {"momentum": 0.9}, 1.0),
    "sgd-dampening-wd": ("sgd", {"momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3}, 1.0),
    "sgd-nesterov-wd": ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, 1.0),
    "sgd-maximize": ("sgd", {"momentum": 0.9, "maximize": True}, 0.1),     # lr 1e-2 climbs to inf
    "adam": ("adam", {}, 1.0),
    "adam-wd": ("adam", {"weight_decay": 1e-2}, 1.0),
    "adam-amsgrad": ("adam", {"amsgrad": True}, 1.0),
    "adam-amsgrad-wd-maximize": ("adam", {"amsgrad": True, "weight_decay": 1e-2, "maximize": True}, 1.0),
    "adamw": ("adamw", {}, 1.0),
    "adamw-wd0.1": ("adamw", {"weight_decay": 0.1}, 1.0),
    "adamw-amsgrad": ("adamw", {"amsgrad": True}, 1.0),
}
#: (kernel size, batch, learning rate, seed): every combination of k 3/5, batch 1/16 and lr
#: 1e-2/1e-3, each with a seed (0 or 1) chosen so that both seeds meet every value
POINTS = [(k, b, lr, ((k == 5) + (b == 16) + (lr == 1e-3)) % 2)
          for k, b, lr in itertools.product((3, 5), (1, 16), (1e-2, 1e-3))]


@dataclass(frozen=True)
class Point:
    setting: str
    kernel_size: int
    batch: int
    lr: float
    seed: int
    torch: tuple        # torch's distance from the truth, one per float32 copy (the nearest first)
    flax: tuple         # Flax's, from the same copies

    @property
    def torch_error(self) -> float:
        return geometric_mean(self.torch)

    @property
    def flax_error(self) -> float:
        return geometric_mean(self.flax)

    @property
    def ratio(self) -> float:
        return self.flax_error / max(self.torch_error, 1e-30)

    @property
    def ok(self) -> bool:
        return self.ratio <= TRAJECTORY_FLOAT32_RATIO

    def __str__(self) -> str:
        return f"{self.setting} k={self.kernel_size} batch={self.batch} lr={self.lr:g} seed={self.seed}"


def geometric_mean(values) -> float:
    return math.exp(np.mean(np.log(np.maximum(np.asarray(values, np.float64), 1e-30))))


def distance(run, truth) -> float:
    """The worst, over steps and tensors, of ``max|run - truth| / max|truth|`` (NaN if a run held NaN)."""
    return float(np.max([d for q, d in trajectory.distances_from(run, truth).items() if q != "loss"]))


def point(setting: str, kernel_size: int, batch: int, lr: float, seed: int, *, steps: int = STEPS,
          members: int = MEMBERS, flax_tx=None) -> Point:
    """Measure one grid point. ``flax_tx``: an optax transformation for Flax instead of the setting's."""
    import torch

    from torch_reference import Net as TorchNet
    name, kwargs, scale = SETTINGS[setting]
    opt = optim.Optimizer.of(name, lr=lr * scale, **kwargs)
    torch.manual_seed(seed)
    state64 = convert.state_to_numpy(TorchNet(kernel_size).double().state_dict())
    xs, ys = parity.tutorial_data(batch, seed, "float64", steps=steps)
    truth = list(trajectory.torch_steps(state64, opt, xs, ys))
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    xs32_nhwc = convert.nchw_to_nhwc(xs32)
    t, f = [], []
    for copy in float32_copies(state64, members):
        t.append(distance(trajectory.torch_steps(copy, opt, xs32, ys32), truth))
        f.append(distance(trajectory.flax_steps(convert.torch_to_flax(copy), flax_tx or opt, xs32_nhwc, ys32), truth))
    return Point(setting, kernel_size, batch, lr, seed, tuple(t), tuple(f))


def half(setting: str) -> list[tuple]:
    """The half of ``POINTS`` the test suite measures for ``setting``: a half fraction of the
    k x batch x lr design (the 4 points where an even, or for the next setting an odd, number of
    k=5, batch=16 and lr=1e-3 hold). Each setting still meets every kernel size, batch size and
    learning rate twice (with one seed: 0 or 1, by the same parity), and over the twelve settings
    every point of ``POINTS`` is measured six times."""
    parity_ = list(SETTINGS).index(setting) % 2
    return [p for p in POINTS if ((p[0] == 5) + (p[1] == 16) + (p[2] == 1e-3)) % 2 == parity_]


def grid(settings=tuple(SETTINGS), *, steps: int = STEPS, members: int = MEMBERS, flax_tx=None, progress=None,
         points=None):
    """Every point of ``POINTS`` (or of ``points(setting)``, e.g. ``half``) for each setting;
    ``flax_tx(lr)`` builds a replacement for Flax; ``progress(point)`` is called as each point is
    measured."""
    for setting in settings:
        for k, b, lr, seed in (points(setting) if points else POINTS):
            p = point(setting, k, b, lr, seed, steps=steps, members=members, flax_tx=flax_tx(lr) if flax_tx else None)
            if progress:
                progress(p)
            yield p


def verdict(points) -> list[str]:
    """The points where Flax's error is over the ratio, each in words (empty: the grid holds)."""
    return [f"{p}: Flax {p.flax_error:.2g} from float64, torch {p.torch_error:.2g}, ratio {p.ratio:.3g} "
            f"> {TRAJECTORY_FLOAT32_RATIO:g}" for p in points if not p.ok]
