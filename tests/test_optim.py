"""``flax_lenet.optim`` is ``torch.optim``: same names, same defaults, same refusals, same updates.

The update checks drive both optimizers with one fixed sequence of random gradients on a small
parameter tree (no network), so every combination of options is cheap to cover; whole training
runs of the Net are in ``test_trajectory.py``.
"""

import inspect

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from flax_lenet import convert, optim
from flax_lenet.porting.tolerances import FLOAT64
from helpers import assert_close

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
STEPS = 12          # enough for momentum, dampening and AMSGrad's running max to matter
SHAPES = {"w": (5, 3), "b": (3,)}
FLOAT32_ROUNDING = 1e-6     # a few float32 ulps (6e-8 each)

CONFIGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.2}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.1, "momentum": 0.5, "nesterov": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("sgd", {"lr": 0.1, "weight_decay": 1e-2, "maximize": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "maximize": True}),
    ("sgd", {"lr": 0.1, "dampening": 0.5}),                  # dampening without momentum: ignored
    ("adam", {}),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", {"lr": 1e-2, "weight_decay": 1e-2}),
    ("adam", {"lr": 1e-2, "amsgrad": True}),
    ("adam", {"lr": 1e-2, "weight_decay": 1e-2, "amsgrad": True, "maximize": True}),
    ("adamw", {}),
    ("adamw", {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
    ("adamw", {"lr": 1e-2, "amsgrad": True}),
    # b1 < 0.5: torch's exp_avg.lerp_(g, 1 - b1) has a weight over 0.5 and takes its second form
    ("adam", {"lr": 1e-2, "betas": (0.3, 0.999)}),
    ("adamw", {"lr": 1e-2, "betas": (0.0, 0.99)}),          # b1 = 0, legal in torch: m_t = g_t
]


def _ids(config):
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _problem(seed=0):
    """Initial params and a gradient sequence whose scale varies per step, as numpy float64."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) * rng.uniform(0.1, 3.0) for k, s in SHAPES.items()}
             for _ in range(STEPS)]
    return params, grads


def torch_params_after_each_step(name, kwargs, params, grads):
    """``torch.optim`` on leaf tensors whose ``.grad`` is set to each gradient in turn."""
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = TORCH[name](list(leaves.values()), **kwargs)
    out = []
    for g in grads:
        for k, t in leaves.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        out.append(convert.state_to_numpy(leaves))
    return out


def optax_params_after_each_step(tx, params, grads):
    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(p)
    out = []
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
        out.append({k: np.asarray(v) for k, v in p.items()})
    return out


def assert_same_trajectory(actual, expected, tol, what):
    for step, (a, e) in enumerate(zip(actual, expected), start=1):
        for k in e:
            assert_close(a[k], e[k], tol, f"{what} step {step} {k}")


@pytest.mark.x64
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_update_matches_torch_optim_float64(config):
    name, kwargs = config
    params, grads = _problem()
    expected = torch_params_after_each_step(name, kwargs, params, grads)
    actual = optax_params_after_each_step(getattr(optim, name)(**kwargs), params, grads)
    assert_same_trajectory(actual, expected, FLOAT64, _ids(config))


# --- optax's own transforms where they differ from torch: the reason for the custom code ----

@pytest.mark.x64
@pytest.mark.parametrize("torch_kwargs, plain_optax", [
    ({"lr": 0.1, "momentum": 0.9, "dampening": 0.2}, optax.sgd(0.1, momentum=0.9)),
    ({"lr": 0.1, "momentum": 0.9, "dampening": 0.2},
     # b_t = 0.9 b_{t-1} + 0.1 g, scaled by 0.8 / 0.1: torch's recursion, but b_1 = 0.8 g, not g
     optax.chain(optax.ema(0.9, debias=False), optax.scale(-0.1 * 0.8 / 0.1))),
], ids=["optax.sgd-ignores-dampening", "optax.ema-dampens-the-first-step"])
def test_optax_momentum_is_not_torch_dampening(torch_kwargs, plain_optax):
    params, grads = _problem()
    expected = torch_params_after_each_step("sgd", torch_kwargs, params, grads)
    with pytest.raises(AssertionError):
        assert_same_trajectory(optax_params_after_each_step(plain_optax, params, grads), expected, FLOAT64, "")


@pytest.mark.x64
def test_optax_amsgrad_is_not_torch_amsgrad():
    params, grads = _problem()
    expected = torch_params_after_each_step("adam", {"lr": 1e-2, "amsgrad": True}, params, grads)
    with pytest.raises(AssertionError, match="step 2"):    # identical on step 1, then the max differs
        assert_same_trajectory(optax_params_after_each_step(optax.amsgrad(1e-2), params, grads),
                               expected, FLOAT64, "optax.amsgrad")


@pytest.mark.x64
def test_optax_adamw_default_weight_decay_is_not_torch_default():
    params, grads = _problem()
    expected = torch_params_after_each_step("adamw", {}, params, grads)
    with pytest.raises(AssertionError):
        assert_same_trajectory(optax_params_after_each_step(optax.adamw(1e-3), params, grads),
                               expected, FLOAT64, "optax.adamw defaults")
    assert inspect.signature(optim.adamw).parameters["weight_decay"].default == 1e-2


@pytest.mark.x64
def test_maximize_negates_before_weight_decay():
    """torch: g <- -g, then g + wd*theta; decaying first and negating after is another optimizer."""
    kwargs = {"lr": 0.1, "weight_decay": 0.1, "maximize": True}
    params, grads = _problem()
    expected = torch_params_after_each_step("sgd", kwargs, params, grads)
    swapped = optax.chain(optax.add_decayed_weights(0.1), optax.scale(-1.0), optax.sgd(0.1))
    with pytest.raises(AssertionError):
        assert_same_trajectory(optax_params_after_each_step(swapped, params, grads), expected, FLOAT64, "")


# --- names, defaults, refusals ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TORCH))
def test_argument_names_and_defaults_are_torchs(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    theirs = inspect.signature(TORCH[name].__init__).parameters
    for arg, p in ours.items():
        assert arg in theirs, f"{name}: torch.optim has no argument {arg!r}"
        assert p.default == theirs[arg].default, f"{name}({arg}=...): default {p.default} vs torch {theirs[arg].default}"


REFUSED = [
    ("sgd", {"lr": -0.1}),
    ("sgd", {"lr": 0.1, "momentum": -0.5}),
    ("sgd", {"lr": 0.1, "weight_decay": -1e-4}),
    ("sgd", {"lr": 0.1, "nesterov": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("adam", {"lr": -1e-3}),
    ("adam", {"eps": -1e-8}),
    ("adam", {"betas": (1.0, 0.999)}),
    ("adam", {"betas": (0.9, -0.1)}),
    ("adam", {"weight_decay": -1e-2}),
    ("adamw", {"lr": -1e-3}),
    ("adamw", {"betas": (0.9, 1.5)}),
]


@pytest.mark.parametrize("config", REFUSED, ids=_ids)
def test_refuses_what_torch_refuses_with_torchs_reason(config):
    name, kwargs = config
    with pytest.raises(ValueError) as theirs:
        TORCH[name]([torch.zeros(1, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError) as ours:
        getattr(optim, name)(**kwargs)
    assert str(ours.value) == str(theirs.value)


def test_amsgrad_bias_correction_has_no_float32_cancellation():
    """``1 - beta**t`` in float32 loses 2e-5 to cancellation; torch computes it in double."""
    from flax_lenet.optim import _one_minus_power
    t = jnp.arange(1, 101, dtype=jnp.float32)
    exact = 1.0 - 0.999 ** np.arange(1, 101, dtype=np.float64)
    ours = np.asarray(_one_minus_power(0.999, t), np.float64)
    naive = np.asarray(1.0 - jnp.float32(0.999) ** t, np.float64)
    assert np.max(np.abs(ours / exact - 1)) < FLOAT32_ROUNDING
    assert np.max(np.abs(naive / exact - 1)) > 10 * FLOAT32_ROUNDING
    assert float(_one_minus_power(0.0, jnp.float32(3))) == 1.0          # betas[0] = 0 is legal in torch


def _float32_problem():
    """Small params (1e-3) so that one update (lr 1e-3) is as large as a param: an error in the
    update's bias correction shows in the params, not under their rounding."""
    params, grads = _problem()
    params = {k: (1e-3 * v).astype(np.float32) for k, v in params.items()}
    return params, [{k: v.astype(np.float32) for k, v in g.items()} for g in grads]


def _worst_float32_gap(actual, expected) -> float:
    return max(float(np.max(np.abs(a[k] - e[k])) / np.max(np.abs(e[k])))
               for a, e in zip(actual, expected) for k in e)


@pytest.mark.parametrize("name, kwargs", [("adam", {}), ("adam", {"amsgrad": True}), ("adamw", {}),
                                          ("adam", {"weight_decay": 1e-2})],
                         ids=["adam", "amsgrad", "adamw", "adam-wd"])
def test_float32_adam_updates_match_torch_to_float32_rounding(name, kwargs):
    params, grads = _float32_problem()
    expected = torch_params_after_each_step(name, {"lr": 1e-3, **kwargs}, params, grads)
    actual = optax_params_after_each_step(getattr(optim, name)(lr=1e-3, **kwargs), params, grads)
    assert _worst_float32_gap(actual, expected) <= FLOAT32_ROUNDING


@pytest.mark.parametrize("name, kwargs, tx", [
    ("adam", {"lr": 1e-3}, optax.adam(1e-3, eps=1e-8)),
    ("adamw", {"lr": 1e-3}, optax.adamw(1e-3, weight_decay=1e-2)),
], ids=["optax.adam", "optax.adamw"])
def test_optax_float32_bias_correction_is_off_by_more_than_rounding(name, kwargs, tx):
    """The broken twin: ``1 - b**t`` in float32 (optax) against torch's double."""
    params, grads = _float32_problem()
    expected = torch_params_after_each_step(name, kwargs, params, grads)
    assert _worst_float32_gap(optax_params_after_each_step(tx, params, grads), expected) > 5 * FLOAT32_ROUNDING


def test_adam_first_moment_at_b1_one_half_is_torchs_second_lerp_form_bit_for_bit():
    """torch's ``exp_avg.lerp_(g, w)``, ``w = 1 - b1``, is ``m + w * (g - m)`` for ``w < 0.5`` and
    ``g - (g - m) * (1 - w)`` from 0.5 on. The two differ by a rounding, under any tolerance, but
    at ``w = 0.5`` exactly they can be compared bit for bit on any CPU: with ``d = g - m`` (one
    rounding), ``0.5 * d`` is exact, so each form is one rounding of an exact value, whether a
    kernel fuses the product into an FMA or not (torch's vectorised lerp is ``fmadd(w - 1, d, g)``,
    its scalar one the second form: both exact products by -0.5). Step 1 gives ``m = 0.5 * g1``
    exactly in every form; step 2 is the one compared, on gradients of mixed magnitudes, where
    ``g - m`` often rounds and the forms part (values far from float32's subnormals)."""
    shape = SHAPES["w"]                # the float32 tests' shape: JAX's eager ops are compiled per shape
    rng = np.random.default_rng(0)
    g1 = rng.standard_normal(shape).astype(np.float32)
    g2 = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(np.float32)
    half = np.float32(0.5)
    m = half * g1
    second_form = g2 - (g2 - m) * half                  # torch's for w >= 0.5
    first_form = m + half * (g2 - m)                    # torch's for w < 0.5
    assert np.count_nonzero(second_form != first_form) > 0      # the test can tell the forms apart

    tx = optim.adam(lr=1e-3, betas=(0.5, 0.999))
    state = tx.init(jnp.zeros(shape, jnp.float32))
    for g in (g1, g2):
        _, state = tx.update(jnp.asarray(g), state)
    ours = np.asarray(state.mu)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, second_form)

    param = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.Adam([param], lr=1e-3, betas=(0.5, 0.999), foreach=False)
    for g in (g1, g2):
        param.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_array_equal(opt.state[param]["exp_avg"].numpy(), second_form)
