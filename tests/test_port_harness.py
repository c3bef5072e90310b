"""``parity.check`` validates ports other than the tutorial's, and fails a broken port naming the tensor.

Four architectures written for these tests (``tests/port_models.py``): a CNN with BatchNorm2d,
Dropout and an adaptive average pool; a transformer block with Embedding, LayerNorm and exact
GELU; a stride-2 Conv2d / GroupNorm / ConvTranspose2d autoencoder; a Conv1d classifier with a
declared flatten. Each is checked on its outputs, loss, every gradient and the parameters (and
BatchNorm statistics) after every one of 10 optimizer steps; each has a broken twin.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import port_models
from flax_lenet import linen, optim
from flax_lenet.porting import parity
from flax_lenet.errors import BadConfig, BadWeights
from flax_lenet.model import Net
from flax_lenet.porting.tolerances import FLOAT32_CPU, FLOAT64, TRAJECTORY_FLOAT32_CPU, TRAJECTORY_FLOAT64

STEPS = 10
MOMENTUM = optim.Optimizer.of("sgd", lr=0.05, momentum=0.9)
SLOW_FLOAT32 = pytest.param("float32", marks=pytest.mark.slow)
SLOW_FLOAT64 = pytest.param("float64", marks=pytest.mark.slow)


def _check(name, dtype, broken=None, steps=STEPS, **kwargs):
    make = port_models.ARCHITECTURES[name]
    torch_model, flax_model, x, options = make(broken, dtype=dtype) if broken else make(dtype=dtype)
    return parity.check(torch_model, flax_model, x, dtype=dtype, steps=steps, optimizer=MOMENTUM,
                        **{**options, **kwargs})


def _quantities(report) -> set:
    return {r.quantity for r in report.rows}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["autoencoder", "conv1d"])
def test_port_agrees_on_outputs_loss_gradients_and_ten_steps(name, dtype):
    report = _check(name, dtype)
    report.assert_ok()
    one_step = {r.rtol for r in report.rows if r.quantity not in ("params round trip", f"params after SGD steps ({STEPS})")}
    assert one_step == {(FLOAT64 if dtype == "float64" else FLOAT32_CPU).rtol}
    run = TRAJECTORY_FLOAT64 if dtype == "float64" else TRAJECTORY_FLOAT32_CPU     # a training run's tier
    assert {r.rtol for r in report.rows if r.quantity == f"params after SGD steps ({STEPS})"} == {run.rtol}
    assert "output" in _quantities(report) and f"params after SGD steps ({STEPS})" in _quantities(report)
    grads = [r for r in report.rows if r.quantity.startswith("grad ")]
    assert len(grads) == sum(1 for _ in port_models.ARCHITECTURES[name]()[0].parameters())


@pytest.mark.parametrize("dtype", [SLOW_FLOAT64, SLOW_FLOAT32])
def test_cnn_with_batchnorm_and_dropout_agrees_in_both_modes(dtype):
    report = _check("cnn", dtype)
    report.assert_ok()
    assert {"output (eval)", "output (train)"} <= _quantities(report)    # BatchNorm: the modes differ
    steps_row = next(r for r in report.rows if r.quantity.startswith("params after"))
    assert steps_row.step is not None


@pytest.mark.parametrize("dtype", [SLOW_FLOAT64, SLOW_FLOAT32])
def test_transformer_block_agrees(dtype):
    _check("block", dtype).assert_ok()


# --- broken twins: the harness fails them and names the tensor --------------------------------

@pytest.mark.x64
def test_flax_batchnorm_default_momentum_is_reported_on_running_stats():
    report = _check("cnn", "float64", broken=True)
    with pytest.raises(AssertionError, match=r"params after SGD steps \(10\) \[nnx\] worst bn\d\.running_(mean|var)"):
        report.assert_ok()
    assert all(r.ok for r in report.rows if not r.quantity.startswith("params after"))   # one step: stats only


@pytest.mark.x64
def test_layernorm_default_epsilon_is_reported():
    with pytest.raises(AssertionError, match=r"grad norm1\.weight"):
        _check("block", "float64", broken="epsilon", steps=1).assert_ok()


def test_tanh_gelu_is_reported_in_float32():
    report = _check("block", "float32", broken="gelu", steps=1)
    with pytest.raises(AssertionError, match=r"grad fc1\.weight"):
        report.assert_ok()


def test_unflipped_conv_transpose_kernel_is_reported():
    report = _check("autoencoder", "float32", broken=True)
    failing = {r.quantity for r in report.failures}
    assert {"output", "grad up.weight"} <= failing
    assert next(r for r in report.rows if r.quantity == "params round trip").ok   # broken after conversion


def test_undeclared_conv1d_flatten_is_reported():
    report = _check("conv1d", "float32", broken=True)
    with pytest.raises(AssertionError, match=r"grad fc\.weight"):
        report.assert_ok()


# --- the tutorial Net through the same harness -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_tutorial_net_all_flavours_agree_over_ten_steps(kernel_size, dtype):
    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    x, target = parity.tutorial_data(4, 0, dtype)
    models = {f: parity.tutorial_model(f, kernel_size, np.dtype(dtype)) for f in parity.FLAVOURS}
    report = parity.check(TorchNet(kernel_size), models, x, target=target, dtype=dtype, steps=STEPS,
                          optimizer=MOMENTUM, manual_lr=0.01)
    report.assert_ok()
    assert report.config["flatten"] == {"fc1": (16, *(2 * [6 if kernel_size == 3 else 5]))}
    assert {r.flavour for r in report.rows} == {"-", *parity.FLAVOURS}


def test_tutorial_net_with_wrong_flatten_is_reported():
    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    x, target = parity.tutorial_data(2, 0, "float32")
    report = parity.check(TorchNet(3), Net(3, rngs=nnx.Rngs(0)), x, target=target, flatten=None, optimizer=None)
    with pytest.raises(AssertionError, match=r"grad fc1\.weight"):
        report.assert_ok()


def test_linen_module_with_variables_is_checked():
    import jax
    import jax.numpy as jnp
    from torch_reference import Net as TorchNet
    torch.manual_seed(0)
    x, target = parity.tutorial_data(2, 0, "float32")
    module = linen.Net(3)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    report = parity.check(TorchNet(3), (module, variables), x, target=target)
    report.assert_ok()
    assert {r.flavour for r in report.rows} == {"-", "linen"}


# --- the report ---------------------------------------------------------------------------------

def test_report_prints_a_table_and_json_naming_the_worst_tensor():
    import json
    report = _check("conv1d", "float32", broken=True)
    table = report.table()
    assert "worst tensor" in table.splitlines()[0] and "FAIL" in table and "fc.weight" in table
    data = json.loads(report.to_json())
    assert data["ok"] is False and {"tensor", "step", "quantity", "ok"} <= set(data["rows"][0])


def test_per_quantity_tolerance_override_is_applied():
    report = _check("conv1d", "float32", broken=True, rtol={"output": 10.0, "loss": 10.0, "grad": 10.0, "steps": 10.0})
    assert report.ok                          # loose on purpose: shows the override is what decides
    assert {r.rtol for r in report.rows if r.quantity != "params round trip"} == {10.0}


def test_unknown_quantity_in_rtol_is_refused():
    torch_model, flax_model, x, options = port_models.make_conv1d()
    with pytest.raises(BadConfig, match="rtol"):
        parity.check(torch_model, flax_model, x, rtol={"gradient": 1e-3}, **options)


# --- what rounding alone explains: gradients zero in exact arithmetic, float32 runs -----------

class TorchBiasBeforeNorm(torch.nn.Module):
    """A Linear with a bias before a BatchNorm: in train mode the norm subtracts the batch mean,
    so the bias's gradient is zero in exact arithmetic and rounding noise in practice."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 5)
        self.bn = torch.nn.BatchNorm1d(5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.fc(x))))


class FlaxBiasBeforeNorm(nnx.Module):
    def __init__(self, *, rngs, frozen_norm: bool = False):
        self.fc = nnx.Linear(6, 5, rngs=rngs)
        self.bn = port_models.TorchBatchNorm(5)
        self.head = nnx.Linear(5, 3, rngs=rngs)
        self.frozen_norm = frozen_norm     # the broken port: normalise with the running statistics

    def __call__(self, x):
        if self.frozen_norm:
            self.bn.use_running_average = True
        return self.head(jnp.tanh(self.bn(self.fc(x))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_gradient_zero_in_exact_arithmetic_is_judged_by_its_size_and_left_out_of_adams_steps(dtype):
    x = np.random.default_rng(0).standard_normal((8, 6))
    torch.manual_seed(0)
    report = parity.check(TorchBiasBeforeNorm(), FlaxBiasBeforeNorm(rngs=nnx.Rngs(0)), x, dtype=dtype,
                          optimizer=optim.Optimizer.of("adam", lr=1e-2), steps=5)
    report.assert_ok()
    bias = next(r for r in report.rows if r.quantity == "grad fc.bias")
    assert bias.zero is not None and bias.zero[0] <= 1e-12
    assert any(n.startswith("grad fc.bias is zero in exact arithmetic") for n in report.notices)


def test_a_real_gradient_where_torch_has_zero_fails():
    """The broken twin: the Flax port normalises with running statistics, so its fc.bias gradient
    is real where torch's is zero: judged by its size, it is far over the tolerance."""
    x = np.random.default_rng(0).standard_normal((8, 6))
    torch.manual_seed(0)
    report = parity.check(TorchBiasBeforeNorm(), FlaxBiasBeforeNorm(rngs=nnx.Rngs(0), frozen_norm=True), x,
                          optimizer=optim.Optimizer.of("adam", lr=1e-2), steps=5)
    bias = next(r for r in report.rows if r.quantity == "grad fc.bias")
    assert not bias.ok and bias.zero is not None and bias.zero[1] > 1e-2


@pytest.mark.slow
def test_the_projects_own_net_passes_a_hundred_adam_steps_in_port_mode():
    """The tutorial Net through the port harness as a user would run it, 100 float32 Adam steps on
    one batch: the steps rows are judged by the training-run tier and, past it, a float64 run."""
    from torch_reference.model import Net as TorchNet
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype("float32")
    report = parity.check(TorchNet(), Net(rngs=nnx.Rngs(0)), x, optimizer=optim.Optimizer.of("adam", lr=0.01),
                          steps=100)
    report.assert_ok()
    assert report.steps_tolerance == TRAJECTORY_FLOAT32_CPU


# --- a model built with shapes only (nnx.eval_shape) --------------------------------------------

def test_a_model_built_with_eval_shape_gives_the_report_of_a_built_one():
    """``port_models`` builds every Flax port with ``nnx.eval_shape`` (no initialiser runs); the
    LSTM's ``nnx.RNN`` also keeps an RNG stream, which has no torch tensor. The report is the one
    a model built with real arrays gets, figure for figure (same process, same programs)."""
    torch_model, shapes_only, x, options = port_models.make_lstm_classifier()
    assert isinstance(nnx.state(shapes_only, nnx.RngState)["lstm"]["rngs"]["key"].get_value(), jax.ShapeDtypeStruct)
    built = port_models.FlaxLSTMClassifier(rngs=nnx.Rngs(0))
    reports = [parity.check(torch_model, m, x, steps=2, optimizer=MOMENTUM, **options) for m in (shapes_only, built)]
    assert [(r.quantity, r.max_rel) for r in reports[0].rows] == [(r.quantity, r.max_rel) for r in reports[1].rows]
    reports[0].assert_ok()


class _TorchLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class _FlaxLinearWithACounter(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros((), jnp.int32))     # not a weight: torch has no tensor for it

    def __call__(self, x):
        return self.fc(x)


def test_a_shapes_only_variable_torch_has_no_tensor_for_is_one_line():
    x = np.random.default_rng(0).standard_normal((2, 4))
    shapes_only = nnx.eval_shape(lambda: _FlaxLinearWithACounter(nnx.Rngs(0)))
    with pytest.raises(BadWeights, match=r"^the Flax model's Variable calls \(\) has shapes only \(nnx.eval_shape\) "
                                         r"and torch has no tensor for it; build the Flax model with real arrays$"):
        parity.check(_TorchLinear(), shapes_only, x)
    parity.check(_TorchLinear(), _FlaxLinearWithACounter(nnx.Rngs(0)), x).assert_ok()      # built: it runs


def test_a_shapes_only_rng_stream_of_another_key_type_is_one_line():
    """The harness starts a shapes-only RNG stream with the default key type; another is refused."""
    torch_model, _, x, options = port_models.make_cnn()
    rbg = nnx.eval_shape(lambda: port_models.FlaxCNN(rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))
    with pytest.raises(BadWeights, match=r"^an RNG stream built with nnx.eval_shape has key type key<rbg>, not the "
                                         r"default key<fry>: build the Flax model with real arrays$"):
        parity.check(torch_model, rbg, x, **options)
