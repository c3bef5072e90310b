"""The comparison metric every parity claim rests on, pinned to its definition on hand-computed arrays.

``parity.diff(flax, torch)`` is ``(max|flax - torch|, max|flax - torch| / max|torch|)`` over the
whole tensor: the maximum (not the mean) of the element differences, scaled by the torch side (the
reference, second argument). A NaN or Inf on either side fails the comparison, and the report names
the tensor and the side that held it.
"""

import math

import numpy as np
import pytest

from flax_lenet import convert
from flax_lenet.porting import parity
from flax_lenet.app import cli
from flax_lenet.porting.tolerances import EXACT, FLOAT32_CPU, TRAJECTORY_FLOAT32_CPU
from helpers import assert_close, state_numpy, torch_net

LR = 0.01


# --- the definition, on numbers worked out by hand ---------------------------------------------

def test_difference_is_the_largest_element_difference_not_the_mean():
    torch_side = np.array([1.0, -2.0, 3.0, -4.0])
    flax_side = np.array([1.0, -2.0, 3.0, -4.5])        # one element off by 0.5; the mean is 0.125
    assert parity.diff(flax_side, torch_side) == (0.5, 0.125)   # 0.5 / max|torch| = 0.5 / 4


def test_relative_difference_is_scaled_by_the_torch_side():
    torch_side = np.array([[1.0, 2.0], [3.0, 4.0]])
    flax_side = np.array([[1.0, 2.0], [3.0, 5.0]])      # max|flax| = 5, max|torch| = 4
    assert parity.diff(flax_side, torch_side) == (1.0, 0.25)
    assert parity.diff(torch_side, flax_side) == (1.0, 0.2)  # the arguments are not interchangeable


def test_the_scale_is_the_largest_magnitude_of_either_sign():
    torch_side = np.array([-8.0, 2.0])
    flax_side = np.array([-8.0, 4.0])
    assert parity.diff(flax_side, torch_side) == (2.0, 0.25)   # 2 / |-8|, not 2 / 2


def test_an_all_zero_reference_reports_the_absolute_difference():
    assert parity.diff(np.array([0.0, -0.5]), np.zeros(2)) == (0.5, 0.5)
    assert parity.diff(np.zeros(3), np.zeros(3)) == (0.0, 0.0)


def test_scalars_and_empty_tensors():
    assert parity.diff(np.float32(2.5), np.float32(2.0)) == (0.5, 0.25)
    assert parity.diff(np.zeros((0, 3)), np.zeros((0, 3))) == (0.0, 0.0)


def test_difference_is_computed_in_float64():
    # 1 + 2**-30 is exact in float64; a float32 subtraction would round it to 1 and report 0
    flax_side = np.array([1.0 + 2.0 ** -30])
    assert parity.diff(flax_side, np.array([1.0])) == (2.0 ** -30, 2.0 ** -30)


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"shape mismatch: flax \(2, 3\) vs torch \(3, 2\)"):
        parity.diff(np.zeros((2, 3)), np.zeros((3, 2)))


# --- NaN and Inf fail, on either side, and the report says where -------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["flax", "torch"])
def test_a_non_finite_element_fails_the_comparison(bad, side):
    clean = np.array([1.0, 2.0, 3.0])
    dirty = clean.copy()
    dirty[1] = bad
    pair = (dirty, clean) if side == "flax" else (clean, dirty)
    assert parity.diff(*pair) == (math.inf, math.inf)
    row = parity.Row("grad fc1.bias", "nnx", *parity.diff(*pair), FLOAT32_CPU.rtol)
    assert not row.ok
    with pytest.raises(AssertionError):
        assert_close(*pair, FLOAT32_CPU, "fc1.bias")


def test_nan_in_both_at_the_same_place_is_not_agreement():
    a = np.array([np.nan, 1.0])
    assert parity.diff(a, a.copy()) == (math.inf, math.inf)


@pytest.mark.parametrize("max_rel", [math.nan, math.inf])
def test_a_row_with_a_nan_or_inf_difference_is_not_ok(max_rel):
    assert not parity.Row("loss", "nnx", max_rel, max_rel, 1.0).ok
    assert not parity.Row("loss", "-", max_rel, max_rel, 1.0, step=1).ok


def test_nonfinite_names_the_side_and_counts():
    clean = np.ones(4)
    both = np.array([np.nan, np.inf, -np.inf, np.nan])
    assert parity.nonfinite(clean, clean, "grad fc1.bias") == ""
    assert parity.nonfinite(both, clean, "grad fc1.bias") == "flax grad fc1.bias holds 2 NaN and 2 Inf"
    assert (parity.nonfinite(clean, both[:2], "loss") == "torch loss holds 1 NaN and 1 Inf")


def _tutorial_rows(monkeypatch, side: str, edit) -> dict:
    """``parity.compare`` (functional flavour, float32, batch 2) with ``edit`` applied to what one
    side (``'torch'`` or ``'flax'``) returned; rows by quantity."""
    real = getattr(parity, f"{side}_side")

    def edited(*args, **kwargs):
        out = real(*args, **kwargs)
        edit(out)
        return out

    monkeypatch.setattr(parity, f"{side}_side", edited)
    rows, _ = parity.compare(flavours=("functional",), dtype="float32", batch=2, lr=LR)
    return {r.quantity: r for r in rows if r.flavour != "-"}


def test_a_row_reports_which_tensor_held_a_nan(monkeypatch):
    def nan(out):
        out["grads"]["params"]["fc1/bias"] = np.asarray(out["grads"]["params"]["fc1/bias"]).copy()
        out["grads"]["params"]["fc1/bias"][7] = np.nan
    rows = _tutorial_rows(monkeypatch, "flax", nan)
    bad = rows.pop("grad fc1.bias")
    assert not bad.ok and bad.max_rel == math.inf
    assert bad.note == "flax grad fc1.bias holds 1 NaN"
    assert bad.as_dict()["ok"] is False and bad.as_dict()["note"] == bad.note
    assert all(r.ok and r.note == "" for r in rows.values())     # the clean tensors still agree


def test_a_parameter_row_names_the_tensor_among_ten(monkeypatch):
    def inf(out):
        loss, state = out["steps"][0]
        state["fc2.weight"][3, 4] = np.inf                        # the reference side this time
    rows = _tutorial_rows(monkeypatch, "torch", inf)
    bad = rows["params after SGD step"]
    assert not bad.ok
    assert bad.note == "torch params after SGD step: fc2.weight holds 1 Inf"
    assert rows["params after w - lr*g"].ok


def test_trajectory_rows_fail_and_name_the_step_of_a_nan():
    state = state_numpy(torch_net(3, "float32"))
    flax_run = []
    for step in (1, 2, 3):
        params = convert.flax_to_torch(convert.torch_to_flax(state))
        if step == 2:
            params["fc3.weight"][1, 5] = np.nan
        flax_run.append((0.5, params))
    torch_run = [(0.5, state)] * 3
    rows = {r.quantity: r for r in parity.diff_steps("-", torch_run, flax_run, TRAJECTORY_FLOAT32_CPU.rtol)}
    bad = rows.pop("params fc3.weight")
    assert not bad.ok and bad.step == 2 and bad.max_rel == math.inf
    assert bad.note == "flax params fc3.weight at step 2 holds 1 NaN"
    assert all(r.ok and r.note == "" for r in rows.values())


def test_compare_command_names_a_nan_tensor(capsys, monkeypatch):
    real = parity.torch_side                 # the torch half of parity.check, which compare runs

    def torch_side_with_a_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        out["grads"]["conv2.bias"][0] = np.nan
        return out

    monkeypatch.setattr(parity, "torch_side", torch_side_with_a_nan)
    assert cli.main(["compare", "--flavour", "functional"]) == 1
    out = capsys.readouterr().out
    assert "not finite: torch grad conv2.bias holds 1 NaN" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("grad conv2.bias"))
    assert line.split()[-1] == "FAIL" and "inf" in line


def test_the_exact_tier_accepts_no_difference_at_all():
    a = np.array([0.25, -1.5])
    b = a.copy()
    b[0] = np.nextafter(b[0], 1.0)                      # one ulp
    assert parity.Row("round trip", "-", *parity.diff(a, a.copy()), EXACT.rtol).ok
    assert not parity.Row("round trip", "-", *parity.diff(b, a), EXACT.rtol).ok


def test_a_float32_row_over_its_tolerance_is_judged_by_its_distance_from_float64_up_to_the_ratio():
    """Over rtol, a float32 row holds when Flax is at most ``TRAJECTORY_FLOAT32_RATIO`` times as
    far from the float64 run as torch is: at the ratio exactly, and below it; not above it."""
    from flax_lenet.porting.tolerances import TRAJECTORY_FLOAT32_RATIO as ratio

    def row(torch_d, flax_d):
        return parity.Row("params after Adam steps (100)", "nnx", 1.0, 1e-3, 1e-5, float64=(torch_d, flax_d))
    assert row(1e-4, ratio * 1e-4).ok                  # the bound itself holds
    assert row(1e-4, 0.5 * ratio * 1e-4).ok
    assert not row(1e-4, 1.01 * ratio * 1e-4).ok
    assert not row(1e-4, float("nan")).ok
    assert not parity.Row("loss", "nnx", 1.0, 1e-3, 1e-5).ok   # no float64 run: rtol alone decides
    assert [row(1e-4, ratio * 1e-4).mark, row(1e-4, 2 * ratio * 1e-4).mark] == ["ok*", "FAIL"]
    assert not parity.Row("loss", "nnx", math.inf, math.inf, 1e-5, float64=(math.inf, math.inf)).ok   # never Inf


def test_a_gradient_zero_in_exact_arithmetic_is_judged_by_its_noise_and_the_rest_by_rtol():
    """``Row.zero`` = (float64 size, the larger float32 side's size there, the difference
    elsewhere): ok when the noise and the rest are each within rtol (the bound itself holds)."""
    def row(noise, rest):
        return parity.Row("grad fc.bias", "nnx", 1e-8, 4.0, 1e-5, zero=(1e-16, noise, rest))
    assert row(1e-5, 1e-5).ok and row(3e-6, 2e-6).ok and row(3e-6, 2e-6).mark == "ok0"
    assert not row(2e-5, 1e-6).ok                       # the noise is too large to be noise
    assert not row(1e-6, 2e-5).ok                       # the other elements differ
    assert "the larger float32 side is 3.0e-06 of it there, the difference elsewhere 2.0e-06" in \
        row(3e-6, 2e-6).explain()
    assert not parity.Row("grad fc.bias", "nnx", math.inf, math.inf, 1e-5, zero=(0.0, 0.0, 0.0)).ok


def test_a_tie_between_steps_names_the_first_step_of_the_difference():
    """The worst step of a quantity is where its largest difference first appears: a difference
    that stays the same at later steps (a tie) is reported at the step it began."""
    torch_run = [(0.5, {"w": np.ones(3)})] * 3
    flax_run = [(0.5, {"w": np.ones(3)}), (0.5, {"w": np.array([1.0, 1.5, 1.0])}), (0.5, {"w": np.array([1.0, 1.5, 1.0])})]
    rows = {r.quantity: r for r in parity.diff_steps("-", torch_run, flax_run, TRAJECTORY_FLOAT32_CPU.rtol)}
    assert rows["params w"].step == 2 and rows["params w"].max_rel == 0.5
    assert rows["loss"].step == 1 and rows["loss"].max_rel == 0.0
