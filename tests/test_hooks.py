"""torch hooks ≡ Flax interception, with the same weights and inputs (float64 tier).

Each row: the torch hook and the Flax equivalent give the same tensors, and the same checker
fails when the Flax side is given a different hook effect.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flax_lenet import convert, functional, linen
from flax_lenet.porting.hooks import (linen_hooks, linen_output_grads, nnx_hooks, nnx_output_grads,
                              torch_hooks, torch_output_grads)
from flax_lenet.convert import nchw_to_nhwc
from flax_lenet.porting.parity import tutorial_data
from flax_lenet.porting.tolerances import FLOAT64
from tests.helpers import assert_close, state_numpy, torch_net

pytestmark = pytest.mark.x64     # the float64 tier throughout (see conftest.py)

BATCH = 2
LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


@pytest.fixture(scope="module")
def setup():
    """One torch Net (float64), its weights in Flax layout, an NNX model, and data."""
    net = torch_net(3, "float64")
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state_numpy(net)))
    model = convert.to_nnx(params)
    x, target = tutorial_data(BATCH, 0, "float64")
    return {"net": net, "params": params, "model": model, "x_t": torch.from_numpy(x),
            "y_t": torch.from_numpy(target), "x": jnp.asarray(nchw_to_nhwc(x)), "y": jnp.asarray(target)}


def torch_layout(a):
    """NHWC activations -> NCHW (torch's), other ranks unchanged."""
    a = np.asarray(a)
    return convert.nhwc_to_nchw(a) if a.ndim == 4 else a


# --- forward pre-hook / forward hook that replace a value -------------------------------------

def hooked_logits(s, layer, *, flax_pre=None, flax_post=None, torch_pre=None, torch_post=None):
    """Logits of torch, Linen and NNX, each with its own hooks on ``layer``."""
    handles = torch_hooks(getattr(s["net"], layer), pre=torch_pre, post=torch_post)
    try:
        expected = s["net"](s["x_t"]).detach().numpy()
    finally:
        for h in handles:
            h.remove()
    with nn.intercept_methods(linen_hooks(layer, pre=flax_pre, post=flax_post)):
        got_linen = linen.Net(3, param_dtype=jnp.float64).apply({"params": s["params"]}, s["x"])
    with nnx_hooks(s["model"], layer, pre=flax_pre, post=flax_post):
        got_nnx = s["model"](s["x"])
    return expected, {"linen": got_linen, "nnx": got_nnx}


def assert_same_logits(expected, got):
    for flavour, logits in got.items():
        assert_close(logits, expected, FLOAT64, f"{flavour} logits")


def shift_input(module, args):
    return (args[0] * 0.5 + 1.0,)


def shift_input_differently(module, args):
    return (args[0] * 0.5 + 2.0,)


def scale_output(module, args, output):
    return output * 2.0 - 0.1


def test_forward_pre_hook_replacing_input_equals_interceptor_changing_args(setup):
    expected, got = hooked_logits(setup, "conv2", torch_pre=shift_input, flax_pre=shift_input)
    assert_same_logits(expected, got)
    plain = setup["net"](setup["x_t"]).detach().numpy()
    assert np.abs(expected - plain).max() > 1e-3, "the hook must change the logits"


def test_forward_pre_hook_check_fails_for_a_different_flax_pre_hook(setup):
    expected, got = hooked_logits(setup, "conv2", torch_pre=shift_input, flax_pre=shift_input_differently)
    with pytest.raises(AssertionError):
        assert_same_logits(expected, got)


def test_forward_hook_replacing_output_equals_interceptor_post_call(setup):
    expected, got = hooked_logits(setup, "fc1", torch_post=scale_output, flax_post=scale_output)
    assert_same_logits(expected, got)


def test_forward_hook_check_fails_for_a_different_flax_post_hook(setup):
    expected, got = hooked_logits(setup, "fc1", torch_post=scale_output,
                                  flax_post=lambda m, a, y: y * 2.0)
    with pytest.raises(AssertionError):
        assert_same_logits(expected, got)


# --- forward hook that records: capture_intermediates, sow, nnx.capture -----------------------

def torch_recorded(s):
    """Every layer's output, recorded by ``register_forward_hook``."""
    store = {}
    handles = [h for name in LAYERS for h in torch_hooks(
        getattr(s["net"], name), post=lambda m, a, y, name=name: store.__setitem__(name, y.detach().numpy()))]
    try:
        s["net"](s["x_t"])
    finally:
        for h in handles:
            h.remove()
    return store


def flax_recorded(s, record=lambda m, a, y: y):
    """Every layer's output recorded four Flax ways; ``record`` picks what the hooks store."""
    net = linen.Net(3, param_dtype=jnp.float64)
    out = {}
    # Linen capture_intermediates=True: every module's __call__ output ('intermediates' collection)
    _, state = net.apply({"params": s["params"]}, s["x"], capture_intermediates=True, mutable=["intermediates"])
    out["linen capture_intermediates"] = {n: state["intermediates"][n]["__call__"][0] for n in LAYERS}
    # Linen interceptor post-call path that records (and sows)
    store = {}

    def post(module, args, y):
        module.sow("intermediates", "output", record(module, args, y))
        store[module.name] = record(module, args, y)

    with contextlib_stack([nn.intercept_methods(linen_hooks(n, post=post)) for n in LAYERS]):
        _, sown = net.apply({"params": s["params"]}, s["x"], mutable=["intermediates"])
    out["linen interceptor"] = dict(store)
    out["linen sow"] = {n: sown["intermediates"][n]["output"][0] for n in LAYERS}
    # NNX: nnx.capture(method_outputs=...) and a hook that sows inside nnx.capture
    _, inter = nnx.capture(s["model"], nnx.Intermediate, method_outputs=nnx.Intermediate)(s["x"])
    out["nnx capture method_outputs"] = {n: inter[n]["__call__"].get_value()[0] for n in LAYERS}
    with contextlib_stack([nnx_hooks(s["model"], n, post=lambda m, a, y: m.sow(
            nnx.Intermediate, "output", record(m, a, y)) and None) for n in LAYERS]):
        _, sown_nnx = nnx.capture(s["model"], nnx.Intermediate)(s["x"])
    out["nnx sow"] = {n: sown_nnx[n]["output"].get_value()[0] for n in LAYERS}
    return out


def contextlib_stack(managers):
    """Enter every context manager in ``managers``; one ``with`` for all."""
    stack = contextlib.ExitStack()
    for m in managers:
        stack.enter_context(m)
    return stack


def assert_same_records(expected, got):
    for how, records in got.items():
        assert sorted(records) == sorted(expected), how
        for name in LAYERS:
            assert_close(torch_layout(records[name]), expected[name], FLOAT64, f"{how} {name}")


def test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture(setup):
    assert_same_records(torch_recorded(setup), flax_recorded(setup))


def test_recording_check_fails_when_flax_records_a_different_value(setup):
    got = flax_recorded(setup, record=lambda m, a, y: jax.nn.relu(y))
    got = {k: v for k, v in got.items() if k in ("linen interceptor", "linen sow", "nnx sow")}
    for how, records in got.items():
        with pytest.raises(AssertionError):
            assert_same_records(torch_recorded(setup), {how: records})


# --- backward hooks ≡ perturb ----------------------------------------------------------------

GRAD_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def torch_tensor_hook_grads(s):
    """d loss / d output via ``Tensor.register_hook`` on each layer's output."""
    grads = {}

    def post(module, args, y):
        y.register_hook(lambda g, name=module._name: grads.__setitem__(name, g.detach().clone()))

    handles = []
    for name in GRAD_LAYERS:
        getattr(s["net"], name)._name = name
        handles += torch_hooks(getattr(s["net"], name), post=post)
    try:
        s["net"].zero_grad()
        torch.nn.MSELoss()(s["net"](s["x_t"]), s["y_t"]).backward()
    finally:
        for h in handles:
            h.remove()
    return {k: v.numpy() for k, v in grads.items()}


def assert_same_grads(expected, got, what, layout=torch_layout):
    assert sorted(got) == sorted(expected), what
    for name in expected:
        assert_close(layout(got[name]), np.asarray(expected[name]), FLOAT64, f"{what} d loss / d {name}")


def test_full_backward_hook_grad_output_equals_tensor_hook(setup):
    full = torch_output_grads(setup["net"], setup["x_t"], setup["y_t"], GRAD_LAYERS)
    assert_same_grads({k: v.numpy() for k, v in full.items()}, torch_tensor_hook_grads(setup),
                      "Tensor.register_hook", layout=np.asarray)


def test_backward_hook_grad_output_equals_grad_wrt_linen_perturbation(setup):
    expected = {k: v.numpy() for k, v in torch_output_grads(setup["net"], setup["x_t"], setup["y_t"], GRAD_LAYERS).items()}
    got = linen_output_grads(linen.Net(3, param_dtype=jnp.float64), setup["params"], setup["x"], setup["y"], GRAD_LAYERS)
    assert_same_grads(expected, got, "linen perturb")


def test_backward_hook_grad_output_equals_grad_wrt_nnx_perturbation(setup):
    expected = {k: v.numpy() for k, v in torch_output_grads(setup["net"], setup["x_t"], setup["y_t"], GRAD_LAYERS).items()}
    got = nnx_output_grads(setup["model"], setup["x"], setup["y"], GRAD_LAYERS)
    assert_same_grads(expected, got, "nnx perturb")


def test_gradient_check_fails_when_flax_perturbs_a_different_quantity(setup):
    expected = {k: v.numpy() for k, v in torch_output_grads(setup["net"], setup["x_t"], setup["y_t"], GRAD_LAYERS).items()}
    scaled = lambda m, a, y: 2.0 * m.perturb("output", y)  # noqa: E731  (a different network)
    for got in (linen_output_grads(linen.Net(3, param_dtype=jnp.float64), setup["params"], setup["x"],
                                   setup["y"], GRAD_LAYERS, hook=scaled),
                nnx_output_grads(setup["model"], setup["x"], setup["y"], GRAD_LAYERS, hook=scaled)):
        with pytest.raises(AssertionError):
            assert_same_grads(expected, got, "perturbing 2*y")


# --- which call paths run the hooks -----------------------------------------------------------

class Counter:
    """A pre-hook that counts its calls and leaves the input alone."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, args):
        self.calls += 1


def test_torch_forward_called_directly_skips_that_modules_hooks(setup):
    net, x = setup["net"], setup["x_t"]
    on_net, on_conv1 = Counter(), Counter()
    handles = torch_hooks(net, pre=on_net) + torch_hooks(net.conv1, pre=on_conv1)
    try:
        net(x)
        assert (on_net.calls, on_conv1.calls) == (1, 1)          # net(x): every hook
        net.forward(x)
        assert (on_net.calls, on_conv1.calls) == (1, 2)          # forward: Net's skipped, conv1's run
        net.conv1.forward(x)
        assert on_conv1.calls == 2                                # layer.forward: none
    finally:
        for h in handles:
            h.remove()


def test_linen_apply_runs_interceptors_but_a_cached_jit_trace_does_not(setup):
    net = linen.Net(3, param_dtype=jnp.float64)
    variables, x = {"params": setup["params"]}, setup["x"]
    counter = Counter()
    interceptor = linen_hooks("conv2", pre=lambda m, a: (counter(m, a), shift_input(m, a))[1])
    plain = net.apply(variables, x)
    with nn.intercept_methods(interceptor):
        hooked = net.apply(variables, x)
    assert counter.calls == 1 and np.abs(np.asarray(hooked - plain)).max() > 1e-3
    apply = jax.jit(net.apply)
    apply(variables, x)                                           # traced without the interceptor
    with nn.intercept_methods(interceptor):
        cached = apply(variables, x)                              # replayed: interceptor skipped
    assert counter.calls == 1
    assert_close(cached, plain, FLOAT64, "cached jit ignores interceptors")



def test_a_new_jit_wrapper_of_apply_replays_the_trace_made_inside_the_block(setup):
    """jax.jit keeps traces per wrapped function, and bound methods of one module compare equal:
    while the wrapper traced inside the block lives, a new ``jax.jit(net.apply)`` after the block
    replays the intercepted trace; once it is gone, a new wrapper traces afresh, without it."""
    net = linen.Net(3, param_dtype=jnp.float64)
    variables, x = {"params": setup["params"]}, setup["x"]
    interceptor = linen_hooks("fc3", post=lambda m, a, out: 2 * out)
    plain = np.asarray(net.apply(variables, x))
    traced_inside = jax.jit(net.apply)
    with nn.intercept_methods(interceptor):
        np.testing.assert_array_equal(np.asarray(traced_inside(variables, x)), 2 * plain)
    np.testing.assert_array_equal(np.asarray(jax.jit(net.apply)(variables, x)), 2 * plain)
    del traced_inside
    import gc
    gc.collect()
    np.testing.assert_array_equal(np.asarray(jax.jit(net.apply)(variables, x)), plain)

def test_nnx_hooks_run_under_call_and_nnx_jit_but_not_the_base_class_call(setup):
    model, x = setup["model"], setup["x"]
    counter = Counter()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with nnx_hooks(model, "conv1", pre=counter) as hooked:
        model(x)
        assert counter.calls == 1
        nnx.jit(lambda m, x: m(x))(model, x)
        assert counter.calls == 2                                 # traced with the hooked module
        hooked.layer(x)                                           # as torch's layer.forward(x)
        functional.forward(params, x)                             # no modules at all
        assert counter.calls == 2
    model(x)
    assert counter.calls == 2 and type(model.conv1) is nnx.Conv   # unhooked on exit
