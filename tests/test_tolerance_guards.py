"""Every tolerance tier, guarded by what the comparison computes, and a one-element fault caught.

For each tier in ``flax_lenet/porting/tolerances.py``: one element of one tensor moved by twice the tier's
intended bound (relative to the tensor's largest magnitude) must fail the comparison the tier is
used in, and half of it must pass. ``INTENDED`` below is the specification each tier was set to
(its reason in tolerances.py and the README table): loosening or tightening a tier in
tolerances.py without changing it here fails a test, whatever the docs say.
"""

import copy
import json

import numpy as np
import pytest
import torch

from flax_lenet import convert
from flax_lenet.porting import parity, tolerances
from flax_lenet.app import cli
from flax_lenet.app.training import FrameworkRun, TrainConfig, TrainResult, step_loss_diff
from helpers import assert_close, state_numpy, torch_net

LR = 0.01

#: tier name -> (the bound it is meant to be, the dtype it guards), per place the tier is used
STEP_TIERS = {
    "EXACT": (0.0, "float32"),
    "FLOAT64": (1e-12, "float64"),
    "FLOAT32_CPU": (1e-5, "float32"),
    "FLOAT32_GPU": (1e-5, "float32"),
    "TF32_GPU": (2e-2, "float32"),
}
TRAJECTORY_TIERS = {
    "TRAJECTORY_FLOAT64": (1e-9, "float64"),
    "TRAJECTORY_FLOAT32_CPU": (3e-3, "float32"),
    "TRAJECTORY_GPU": (3e-3, "float32"),
    "TRAJECTORY_TF32_GPU": (5e-2, "float32"),
}
TRAIN_TIERS = {"TRAIN_FLOAT64": (1e-9, "float64"), "TRAIN_FLOAT32_FIRST_STEPS": (1e-5, "float32")}
SHARDED_TIERS = {"SHARDED_FLOAT32": (1e-6, "float32"), "SHARDED_FLOAT64": (1e-14, "float64")}
ZERO_TIERS = {"ZERO_GRADIENT": (1e-12, "float64")}
#: tier name -> (the bound it is meant to be, the dtype it guards, where it is used)
INTENDED = {name: (bound, dtype, use)
            for use, tiers in (("step", STEP_TIERS), ("trajectory", TRAJECTORY_TIERS),
                               ("train", TRAIN_TIERS), ("sharded", SHARDED_TIERS), ("zero", ZERO_TIERS))
            for name, (bound, dtype) in tiers.items()}
ABOVE, BELOW = 2.0, 0.5     # multiples of the intended bound


def test_every_tier_has_a_guard():
    tiers = sorted(n for n, v in vars(tolerances).items() if isinstance(v, tolerances.Tolerance))
    assert tiers == sorted(INTENDED)


def test_tiers_are_chosen_by_dtype_platform_and_tf32():
    t = tolerances
    assert [t.tolerance("float64"), t.tolerance("float64", "gpu", True), t.tolerance("float32"),
            t.tolerance("float32", "gpu"), t.tolerance("float32", "gpu", True)] == \
        [t.FLOAT64, t.FLOAT64, t.FLOAT32_CPU, t.FLOAT32_GPU, t.TF32_GPU]
    assert [t.trajectory_tolerance("float64"), t.trajectory_tolerance("float32"),
            t.trajectory_tolerance("float32", "gpu"), t.trajectory_tolerance("float32", "gpu", True)] == \
        [t.TRAJECTORY_FLOAT64, t.TRAJECTORY_FLOAT32_CPU, t.TRAJECTORY_GPU, t.TRAJECTORY_TF32_GPU]
    with pytest.raises(ValueError, match="float16"):
        t.tolerance("float16")


@pytest.fixture(scope="module")
def torch_results():
    """torch's tutorial step (logits, loss, gradients, updates) per dtype, batch 2."""
    cache = {}

    def get(dtype):
        if dtype not in cache:
            net = torch_net(3, dtype)
            x, target = parity.tutorial_data(2, 0, dtype)
            cache[dtype] = (state_numpy(net), parity.torch_side(net, x, target, criterion=torch.nn.MSELoss()))
        return cache[dtype]

    return get


def moved(reference: np.ndarray, bound: float, multiple: float) -> np.ndarray:
    """A copy of ``reference`` with one element (not the largest) moved by ``multiple * bound *
    max|reference|``; for a bound of 0, by one ulp (``multiple`` > 1) or not at all."""
    out = np.array(reference, copy=True)
    flat = out.reshape(-1)
    i = int(np.argsort(np.abs(flat))[flat.size // 2])      # a middling element
    if bound == 0.0:
        if multiple > 1:
            flat[i] = np.nextafter(flat[i], np.inf, dtype=out.dtype)
        return out
    flat[i] += out.dtype.type(multiple * bound * np.max(np.abs(reference)))
    return out


def _step_rows(ref, tol, bound, multiple):
    """The gradient rows ``parity.check`` makes, with one element of the Flax side's conv2 kernel
    gradient moved; rows by quantity."""
    got = dict(ref["grads"], **{"conv2.weight": moved(ref["grads"]["conv2.weight"], bound, multiple)})
    return {f"grad {n}": parity.row(f"grad {n}", "nnx", {f"grad {n}": (got[n], ref["grads"][n])}, tol.rtol)
            for n in ref["grads"]}


def _trajectory_row(state, tol, bound, multiple):
    """``parity.diff_steps`` (the N-step rows) over 2 steps, one parameter element of the Flax side
    off at step 2, after a round trip through the Flax layout."""
    off = dict(state, **{"fc1.weight": moved(state["fc1.weight"], bound, multiple)})
    torch_run = [(1.0, state), (1.0, state)]
    flax_run = [(1.0, convert.flax_to_torch(convert.torch_to_flax(s))) for s in (state, off)]
    rows = {r.quantity: r for r in parity.diff_steps("-", torch_run, flax_run, tol.rtol)}
    assert all(r.ok for q, r in rows.items() if q != "params fc1.weight")
    return rows["params fc1.weight"]


def _loss_curve(dtype):
    return np.linspace(2.3, 0.4, 8).astype(dtype)


@pytest.mark.parametrize("multiple", [ABOVE, BELOW], ids=["2x-fails", "half-passes"])
@pytest.mark.parametrize("name", sorted(INTENDED))
def test_tier_draws_its_line_where_intended(torch_results, name, multiple):
    tol = getattr(tolerances, name)
    bound, dtype, used_in = INTENDED[name]
    should_pass = multiple < 1
    state, ref = torch_results(dtype)
    if used_in == "step":                      # parity.compare / flax-lenet compare
        rows = _step_rows(ref, tol, bound, multiple)
        assert rows.pop("grad conv2.weight").ok == should_pass
        assert all(r.ok for r in rows.values())
    elif used_in == "trajectory":              # trajectory.compare / flax-lenet compare --steps
        assert _trajectory_row(state, tol, bound, multiple).ok == should_pass
    elif used_in == "train":                   # flax-lenet train: per-step losses
        torch_losses = _loss_curve(dtype)
        flax_losses = moved(torch_losses, bound, multiple)
        assert (step_loss_diff(flax_losses, torch_losses) <= tol.rtol) == should_pass
    elif used_in == "zero":                    # parity.check: a gradient zero in exact arithmetic
        grads = dict(ref["grads"])
        largest = max(float(np.max(np.abs(g))) for g in grads.values())
        grads["fc2.bias"] = np.full_like(grads["fc2.bias"], multiple * bound * largest)    # every element there
        assert list(parity.zero_gradients(grads, tol.rtol)) == (["fc2.bias"] if should_pass else [])
    # and through the suite's own checker, on a gradient of the tier's dtype
    expected = ref["grads"]["fc2.weight"]
    if should_pass:
        assert_close(moved(expected, bound, multiple), expected, tol, name)
    else:
        with pytest.raises(AssertionError):
            assert_close(moved(expected, bound, multiple), expected, tol, name)


@pytest.mark.parametrize("points,agrees", [(2 * tolerances.ACCURACY_POINTS, False),
                                           (0.5 * tolerances.ACCURACY_POINTS, True)])
def test_accuracy_gap_is_judged_in_points(points, agrees):
    # 1.0 point is the intended bound (3.6 of the 360 test images); moving it moves this test
    assert tolerances.ACCURACY_POINTS == 1.0
    torch_acc = 0.90
    result = TrainResult(TrainConfig(), FrameworkRun(test_accuracy=[torch_acc + points / 100]),
                         FrameworkRun(test_accuracy=[torch_acc]), {}, {})
    assert result.metrics({})["difference"]["test_accuracy_agrees"] is agrees


# --- a single element off, not a whole tensor -------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compare_command_catches_one_element_off(capsys, dtype):
    args = ["compare", "--flavour", "functional", "--dtype", dtype, "--break", "element", "--json"]
    assert cli.main(args) == 1
    report = json.loads(capsys.readouterr().out)
    ok = {r["quantity"]: r["ok"] for r in report["rows"]}
    assert not report["ok"]
    assert ok["params round trip"]                              # the fault comes after the conversion
    assert not (ok["logits"] or ok["grad conv1.weight"] or ok["params after SGD step"])


def test_element_fault_moves_one_element_only():
    state = state_numpy(torch_net(3, "float32"))
    params = convert.torch_to_flax(state)
    clean = copy.deepcopy(params)
    parity.FAULTS["element"](state, params)
    changed = {f"{layer}/{k}": int(np.sum(params[layer][k] != clean[layer][k]))
               for layer in params for k in params[layer]}
    assert changed.pop("conv1/kernel") == 1 and set(changed.values()) == {0}
