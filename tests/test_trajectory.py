"""Whole training runs agree: a torch.optim loop written here, independently of the project, against
``flax_lenet.optim`` + ``flax_lenet.functional``, compared after every one of 100 steps.

The torch side below uses only torch: its own ``nn.Sequential`` copy of the tutorial's Net, its
own loop (``zero_grad``, ``MSELoss``, ``backward``, ``step``), ``torch.optim`` directly. The only
project code it shares is the weight conversion being tested elsewhere (``flax_lenet.convert``).
"""

import numpy as np
import optax
import pytest
import torch
import torch.nn as nn

from flax_lenet import convert, optim
from flax_lenet.porting import parity, trajectory
from flax_lenet.porting.tolerances import TRAJECTORY_FLOAT32_CPU, TRAJECTORY_FLOAT64, trajectory_tolerance
from helpers import assert_close

STEPS = 100          # float64 within TRAJECTORY_FLOAT64 after every one of 100 steps
DONE_WHEN_STEPS = 40  # checked first: a failure within 40 steps is reported as such
BATCH = 4
SEED = 0

#: (torch.optim class, keyword arguments): SGD with each of its options, Adam with weight decay, AdamW.
RUNS = {
    "sgd": ("SGD", {"lr": 0.01}),
    "sgd-momentum0.9-dampening0.2-wd1e-3": ("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.2,
                                                    "weight_decay": 1e-3}),
    "nesterov-wd1e-3": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    "maximize": ("SGD", {"lr": 1e-3, "momentum": 0.9, "maximize": True}),   # lr 0.01 diverges to inf
    "adam-wd1e-2": ("Adam", {"weight_decay": 1e-2}),
    "adamw-defaults": ("AdamW", {}),
}
# Plain momentum, plain Adam and AMSGrad are checked option by option in test_optim.py; each run
# here costs a compile, and these six already take every code path of flax_lenet.optim but AMSGrad.
FLAX_NAMES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see conftest.py


# --- the independent torch side --------------------------------------------------------------

def sequential_net(state: dict) -> nn.Sequential:
    """The tutorial's Net as an ``nn.Sequential``, loaded from a ``conv1.weight``-style state."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),        # (N, 6, 30, 30) -> (N, 6, 15, 15)
        nn.Conv2d(6, 16, 3), nn.ReLU(), nn.MaxPool2d(2),       # (N, 16, 13, 13) -> (N, 16, 6, 6)
        nn.Flatten(),                                          # (N, 576), C*H*W order
        nn.Linear(576, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).double()
    net.load_state_dict({_SEQ[k.split(".")[0]] + "." + k.split(".")[1]: torch.from_numpy(v) for k, v in state.items()})
    return net


_SEQ = {"conv1": "0", "conv2": "3", "fc1": "7", "fc2": "9", "fc3": "11"}
_NAMED = {v: k for k, v in _SEQ.items()}


def torch_loop(state: dict, optimizer: str, kwargs: dict, xs, ys) -> list[dict]:
    """``state`` after every step of a plain torch.optim loop."""
    net = sequential_net(state)
    opt = getattr(torch.optim, optimizer)(net.parameters(), **kwargs)
    criterion = nn.MSELoss()
    after = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = criterion(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        after.append({_NAMED[k.split(".")[0]] + "." + k.split(".")[1]: v
                      for k, v in convert.state_to_numpy(net.state_dict()).items()})
    return after


def initial_state(seed: int) -> dict:
    """torch-shaped float64 weights drawn in numpy, U(+-1/sqrt(fan_in)) as torch would."""
    rng, shapes, state = np.random.default_rng(seed), convert.torch_shapes(3), {}
    for layer in convert.LAYERS:
        weight, bias = shapes[f"{layer}.weight"], shapes[f"{layer}.bias"]
        bound = 1.0 / np.sqrt(np.prod(weight[1:]))                 # fan_in = in * kH * kW
        state[f"{layer}.weight"] = rng.uniform(-bound, bound, weight)
        state[f"{layer}.bias"] = rng.uniform(-bound, bound, bias)
    return state


@pytest.fixture(scope="module")
def problem():
    state = initial_state(SEED)
    xs, ys = parity.tutorial_data(BATCH, SEED, "float64", steps=STEPS)
    return state, xs, ys


def flax_loop(state, tx, xs, ys) -> list[dict]:
    """``flax_lenet.optim`` + ``functional`` from the same weights: params (torch layout) after every step."""
    xs_nhwc = np.ascontiguousarray(xs.transpose(0, 1, 3, 4, 2))    # (T, N, 1, 32, 32) -> (T, N, 32, 32, 1)
    return [convert.flax_to_torch(p) for _, p in
            trajectory.flax_steps(convert.torch_to_flax(state), tx, xs_nhwc, ys)]


def assert_runs_agree(actual, expected, tol, what):
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected), start=1):
        for name in e:
            assert_close(a[name], e[name], tol, f"{what}: step {step} {name}")


@pytest.mark.x64
@pytest.mark.parametrize("run", list(RUNS))
def test_torch_optim_loop_matches_flax_optim_float64(run, problem):
    optimizer, kwargs = RUNS[run]
    state, xs, ys = problem
    expected = torch_loop(state, optimizer, kwargs, xs, ys)
    actual = flax_loop(state, optim.Optimizer.of(FLAX_NAMES[optimizer], **kwargs), xs, ys)
    assert_runs_agree(actual[:DONE_WHEN_STEPS], expected[:DONE_WHEN_STEPS], TRAJECTORY_FLOAT64, run)
    assert_runs_agree(actual, expected, TRAJECTORY_FLOAT64, run)
    moved = max(np.abs(expected[-1][k] - state[k]).max() for k in state)
    assert moved > 1e3 * TRAJECTORY_FLOAT64.rtol, f"{run}: the weights barely moved ({moved:.1e})"


# --- the same checker, fed a wrong optimizer, fails --------------------------------------------

@pytest.mark.x64
@pytest.mark.parametrize("run, wrong_tx", [
    ("adamw-defaults", optax.adamw(1e-3)),                           # optax's weight decay is 1e-4
    ("sgd-momentum0.9-dampening0.2-wd1e-3",
     optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.01, momentum=0.9))),  # no dampening
], ids=["optax.adamw-defaults", "optax.sgd-no-dampening"])
def test_trajectory_check_fails_for_a_mismatched_optimizer(run, wrong_tx, problem):
    optimizer, kwargs = RUNS[run]
    state, xs, ys = problem
    steps = 5
    expected = torch_loop(state, optimizer, kwargs, xs[:steps], ys[:steps])
    with pytest.raises(AssertionError):
        assert_runs_agree(flax_loop(state, wrong_tx, xs[:steps], ys[:steps]), expected, TRAJECTORY_FLOAT64, run)


# --- the library runner behind `flax-lenet compare --steps` ------------------------------------

def test_float32_adamw_run_stays_within_the_measured_drift():
    rows, tol = trajectory.compare(optim.Optimizer.of("adamw", lr=1e-3), steps=STEPS, dtype="float32", batch=BATCH)
    assert tol in (TRAJECTORY_FLOAT32_CPU, trajectory_tolerance("float32", "gpu"))
    bad = [r for r in rows if not r.ok]
    assert not bad, f"adamw float32: {bad}"


@pytest.mark.x64
def test_compare_reports_the_worst_step_and_fails_on_a_broken_conversion():
    rows, _ = trajectory.compare(optim.Optimizer.of("sgd", lr=0.01), steps=3, dtype="float64", batch=BATCH)
    assert [r.quantity for r in rows] == ["loss"] + [f"params {k}" for k in convert.torch_shapes(3)]
    assert all(r.ok and 1 <= r.step <= 3 for r in rows)
    broken, _ = trajectory.compare(optim.Optimizer.of("sgd", lr=0.01), steps=3, dtype="float64", batch=BATCH,
                                   fault="flatten")
    fc1 = next(r for r in broken if r.quantity == "params fc1.weight")
    assert not fc1.ok and fc1.max_rel > 1e3 * fc1.rtol


@pytest.mark.gpu
def test_float32_run_on_gpu_with_tf32_off_stays_within_the_gpu_bound():
    rows, tol = trajectory.compare(optim.Optimizer.of("adamw", lr=1e-3), steps=STEPS, dtype="float32", batch=BATCH)
    assert tol.rtol == trajectory_tolerance("float32", "gpu", tf32=False).rtol
    bad = [r for r in rows if not r.ok]
    assert not bad, f"adamw float32 on GPU: {bad}"


# --- one run that leaves the path is not a porting error --------------------------------------
# benchmarks/adam_outliers.py (docs/benchmarks.md): over 12 seeds of each Adam configuration, 50
# steps at batch 8, single float32 runs more than 10x their framework's median distance from the
# float64 run: Flax 2 of 96, torch 6 of 96 with oneDNN and 6 without. These are Flax's two.
FAR_RUNS = {
    "adamw-amsgrad seed 2 (528x its median)": (optim.Optimizer.of("adamw", lr=1e-3, amsgrad=True), 2),
    "adamw lr 3e-3 wd 0.05 seed 9 (21x; torch's run is far too)": (optim.Optimizer.of("adamw", lr=3e-3, weight_decay=0.05), 9),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAR_RUNS))
def test_a_float32_run_that_leaves_the_path_is_judged_over_copies_not_called_a_porting_error(name):
    opt, seed = FAR_RUNS[name]
    rows, _ = trajectory.compare(opt, steps=50, dtype="float32", batch=8, seed=seed)
    assert all(r.ok for r in rows), [(r.quantity, r.float64) for r in rows if not r.ok]
    # where torch's own run stays near the truth, one run per framework is not enough to tell
    assert any(r.copies == parity.MEMBERS for r in rows) == ("528x" in name)


@pytest.mark.slow
def test_a_port_error_moves_every_copy_and_still_fails():
    """The twin: one conv1 element off by a tenth of the kernel's largest, on the same run."""
    opt, seed = FAR_RUNS["adamw-amsgrad seed 2 (528x its median)"]
    rows, _ = trajectory.compare(opt, steps=50, dtype="float32", batch=8, seed=seed, fault="element")
    failed = [r for r in rows if not r.ok]
    assert failed and all(r.copies == parity.MEMBERS for r in failed)
