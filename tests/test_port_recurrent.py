"""torch's nn.LSTM and nn.GRU ported to nnx.RNN (``flax_lenet.porting.recurrent``), and the NNX
layers that compute what torch does where Flax's own do not (``flax_lenet.porting.modules``).

Each layer is run in torch and, after ``port.torch_to_flax`` and ``port.load``, in Flax, in
float64: the outputs agree within ``FLOAT64``. Each claim has a broken twin, a conversion as it is
easy to get wrong (the two biases not summed, gates out of order, the directions swapped, b_hn
dropped), which misses by more than even the float32 tier allows. References:
https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html,
https://pytorch.org/docs/stable/generated/torch.nn.GRU.html,
https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/recurrent.html.
"""


import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

import port_models
from flax_lenet import optim
from flax_lenet.errors import BadWeights
from flax_lenet.porting import modules, parity, port, recurrent
from flax_lenet.porting.tolerances import FLOAT32_CPU, FLOAT64

#: a broken twin must miss by more than this: even the float32 tier would catch it
WIDE = FLOAT32_CPU.rtol
IN, HIDDEN, BATCH, STEPS = 3, 4, 2, 5
ADAM = optim.Optimizer.of("adam", lr=1e-3)
#: every value of num_layers, bidirectional and batch_first, and every pair of them, in 4 layers
TORCH_CELL = {"GRU": recurrent.GRU_TORCH_CELL}        # the rule for modules.TorchGRUCell, for one call
LAYOUTS = [(1, False, True), (1, True, False), (2, False, False), (2, True, True)]


def torch_layer(kind, layers, bidirectional, batch_first, **kwargs):
    torch.manual_seed(0)
    return kind(IN, HIDDEN, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                **kwargs).double()


def flax_layer(cell, layers, bidirectional):
    """The layout ``recurrent`` converts to: an nnx.RNN or nnx.Bidirectional, a list of them for 2 layers."""
    def rnn(features):
        return nnx.RNN(cell(features, HIDDEN, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))

    def layer(i):
        features = IN if i == 0 else HIDDEN * (2 if bidirectional else 1)
        return nnx.Bidirectional(rnn(features), rnn(features)) if bidirectional else rnn(features)
    return layer(0) if layers == 1 else nnx.List([layer(i) for i in range(layers)])


@nnx.jit(static_argnames="batch_first")
def run_flax(rnn, x, batch_first):
    """The stack on torch's layout: nnx.RNN takes [B, T, F], torch's default is [T, B, F]."""
    h = x if batch_first else jnp.swapaxes(x, 0, 1)
    for layer in rnn if isinstance(rnn, nnx.List) else [rnn]:
        h = layer(h)
    return h if batch_first else jnp.swapaxes(h, 0, 1)


def sequence(batch_first):
    x = np.random.default_rng(1).standard_normal((BATCH, STEPS, IN))
    return x if batch_first else np.ascontiguousarray(x.swapaxes(0, 1))


def output_diff(layer, flax_model, state_dict=None, rules=None) -> float:
    """max rel difference of the Flax output from torch's, the weights converted from ``state_dict``
    (default: the layer's own) with ``rules`` before the built-in ones."""
    x = sequence(layer.batch_first)
    expected = layer(torch.from_numpy(x))[0].detach().numpy()
    port.load(flax_model, port.torch_to_flax(layer, state_dict, rules=rules), dtype=jnp.float64)
    return parity.diff(run_flax(flax_model, jnp.asarray(x), batch_first=layer.batch_first), expected)[1]


def broken(layer, fault: str) -> dict:
    """The layer's state dict as a wrong conversion would read it.

    'unsummed': bias_hh left out; 'b_hn': only bias_hh's n part left out (nnx.GRUCell's missing
    bias); 'gates': the first two gates swapped (LSTM i and f, GRU r and z); 'directions':
    forward and reverse swapped."""
    h = layer.hidden_size
    state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    for key, v in state.items():
        if fault == "unsummed" and key.startswith("bias_hh"):
            v.zero_()
        elif fault == "b_hn" and key.startswith("bias_hh"):
            v[2 * h:] = 0
        elif fault == "gates":
            state[key] = torch.cat([v[h:2 * h], v[:h], v[2 * h:]])
    if fault == "directions":
        state = {(k[:-len("_reverse")] if k.endswith("_reverse") else k + "_reverse"): v for k, v in state.items()}
    return state


def faults(layer, *names):
    return [*names, "gates"] + (["directions"] if layer.bidirectional else [])


def zero_b_hn(gru):
    with torch.no_grad():
        for name, p in gru.named_parameters():
            if name.startswith("bias_hh"):
                p[2 * gru.hidden_size:] = 0
    return gru


# --- LSTM -> nnx.LSTMCell ----------------------------------------------------------------------

@pytest.mark.x64
@pytest.mark.parametrize("layers, bidirectional, batch_first", LAYOUTS)
def test_lstm_matches_torch(layers, bidirectional, batch_first):
    lstm = torch_layer(nn.LSTM, layers, bidirectional, batch_first)
    flax_model = flax_layer(nnx.LSTMCell, layers, bidirectional)
    assert output_diff(lstm, flax_model) <= FLOAT64.rtol
    for fault in faults(lstm, "unsummed"):
        assert output_diff(lstm, flax_model, broken(lstm, fault)) > WIDE, fault


@pytest.mark.x64
def test_lstm_round_trips_keep_the_bias_sum_not_its_split():
    lstm = torch_layer(nn.LSTM, 2, True, True)
    state = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    flax_model = port.load(flax_layer(nnx.LSTMCell, 2, True), port.torch_to_flax(lstm), dtype=jnp.float64)
    variables = port.flax_variables(flax_model)
    back = port.flax_to_torch(lstm, variables)
    for key in state:
        if key.startswith("weight"):
            np.testing.assert_array_equal(back[key], state[key])
        elif key.startswith("bias_ih"):
            hh = key.replace("bias_ih", "bias_hh")
            np.testing.assert_array_equal(back[key], state[key] + state[hh])       # the sum, in bias_ih
            np.testing.assert_array_equal(back[hh], 0)
            assert parity.diff(back[key], state[key])[1] > WIDE                     # not torch's split
    again = port.torch_to_flax(lstm, back)                                          # Flax -> torch -> Flax
    for key, a in variables[port.PARAMS].items():
        np.testing.assert_array_equal(again[port.PARAMS][key], a)


@pytest.mark.x64
@pytest.mark.parametrize("kind, cell", [(nn.LSTM, nnx.LSTMCell), (nn.GRU, nnx.GRUCell)])
def test_bias_free_layer_gets_zero_flax_biases_and_refuses_them_back_nonzero(kind, cell):
    layer = torch_layer(kind, 1, False, True, bias=False)
    flax_model = flax_layer(cell, 1, False)
    assert output_diff(layer, flax_model) <= FLOAT64.rtol
    bias = flax_model.cell.hf.bias if cell is nnx.LSTMCell else flax_model.cell.dense_i.bias
    bias[...] = bias[...].at[0].set(0.5)
    x = sequence(True)
    expected = layer(torch.from_numpy(x))[0].detach().numpy()
    assert parity.diff(run_flax(flax_model, jnp.asarray(x), batch_first=True), expected)[1] > WIDE
    with pytest.raises(BadWeights, match=r"^Flax cell\.[^\n]*expected zeros \(the torch (LSTM|GRU) has bias=False\), "
                                         r"found max \|bias\| 0\.5$"):
        port.flax_to_torch(layer, port.flax_variables(flax_model))


def test_lstm_projection_is_refused():
    lstm = nn.LSTM(IN, HIDDEN, proj_size=2)
    with pytest.raises(BadWeights, match=r"^LSTM: expected proj_size=0, found proj_size=2; [^\n]*$"):
        port.torch_to_flax(lstm)


# --- GRU -> nnx.GRUCell (b_hn zero) or modules.TorchGRUCell ------------------------------------

@pytest.mark.x64
@pytest.mark.parametrize("layers, bidirectional, batch_first", LAYOUTS)
def test_gru_with_zero_b_hn_matches_nnx_grucell(layers, bidirectional, batch_first):
    gru = zero_b_hn(torch_layer(nn.GRU, layers, bidirectional, batch_first))
    flax_model = flax_layer(nnx.GRUCell, layers, bidirectional)
    assert output_diff(gru, flax_model) <= FLOAT64.rtol
    for fault in faults(gru, "unsummed"):
        assert output_diff(gru, flax_model, broken(gru, fault)) > WIDE, fault


@pytest.mark.x64
@pytest.mark.parametrize("layers, bidirectional, batch_first", LAYOUTS)
def test_gru_with_biases_matches_torch_gru_cell(layers, bidirectional, batch_first):
    gru = torch_layer(nn.GRU, layers, bidirectional, batch_first)
    flax_model = flax_layer(modules.TorchGRUCell, layers, bidirectional)
    assert output_diff(gru, flax_model, rules=TORCH_CELL) <= FLOAT64.rtol
    for fault in faults(gru, "b_hn"):             # b_hn: what converting to nnx.GRUCell would lose
        assert output_diff(gru, flax_model, broken(gru, fault), rules=TORCH_CELL) > WIDE, fault


@pytest.mark.x64
def test_torch_gru_cell_round_trips_exactly():
    gru = torch_layer(nn.GRU, 2, True, True)
    state = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    back = port.flax_to_torch(gru, port.torch_to_flax(gru, rules=TORCH_CELL), rules=TORCH_CELL)
    assert back.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


@pytest.mark.x64
def test_gru_with_nonzero_b_hn_is_refused_for_nnx_grucell():
    gru = zero_b_hn(torch_layer(nn.GRU, 2, True, True))
    port.load(flax_layer(nnx.GRUCell, 2, True), port.torch_to_flax(gru))            # b_hn zero: converts
    with torch.no_grad():
        gru.bias_hh_l1_reverse[2 * HIDDEN] = 0.25                                   # one element of one b_hn
    with pytest.raises(BadWeights) as refused:
        port.torch_to_flax(gru)
    message = str(refused.value)
    assert message.startswith("GRU bias_hh_l1_reverse: expected b_hn ") and "\n" not in message
    assert "found max |b_hn| 0.25" in message and "modules.TorchGRUCell" in message


# --- modules.TorchBatchNorm -----------------------------------------------------------------------

def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


@pytest.mark.x64
def test_torch_batchnorm_follows_torch_over_train_steps_and_in_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    variables = port.torch_to_flax(bn)
    ours = port.load(modules.TorchBatchNorm(3), variables, dtype=jnp.float64)
    flax_default = port.load(nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0)), variables,
                             dtype=jnp.float64)
    xs = np.random.default_rng(1).standard_normal((3, 4, 5, 5, 3)) * 2 + 1          # 3 steps, NHWC
    for x in xs:
        expected = bn.train()(nchw(x)).detach().numpy()
        assert parity.diff(nchw(ours(jnp.asarray(x))).numpy(), expected)[1] <= FLOAT64.rtol
        flax_default(jnp.asarray(x))
    for name, torch_stat in (("mean", bn.running_mean), ("var", bn.running_var)):
        assert parity.diff(getattr(ours, name)[...], torch_stat)[1] <= FLOAT64.rtol, name
    assert parity.diff(flax_default.var[...], bn.running_var)[1] > WIDE        # the biased variance
    x = xs[0]
    expected = bn.eval()(nchw(x)).detach().numpy()
    assert parity.diff(nchw(nnx.clone(ours)(jnp.asarray(x))).numpy(), expected)[1] > WIDE    # still training
    viewed = nnx.view(ours, use_running_average=True)
    assert parity.diff(nchw(viewed(jnp.asarray(x))).numpy(), expected)[1] <= FLOAT64.rtol
    ours.eval()
    assert parity.diff(nchw(ours(jnp.asarray(x))).numpy(), expected)[1] <= FLOAT64.rtol


# --- an LSTM text classifier through parity.check --------------------------------------------------

def test_lstm_classifier_agrees_over_ten_adam_steps_in_float32():
    torch_model, flax_model, tokens, options = port_models.make_lstm_classifier()
    parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=10, dtype="float32", **options).assert_ok()


@pytest.mark.x64
def test_lstm_classifier_agrees_over_ten_adam_steps_in_float64():
    torch_model, flax_model, tokens, options = port_models.make_lstm_classifier(dtype="float64")
    report = parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=10, dtype="float64", **options)
    report.assert_ok()
    assert {r.rtol for r in report.rows if r.quantity in ("output", "loss")} == {FLOAT64.rtol}


@pytest.mark.x64
def test_lstm_classifier_scanning_the_batch_axis_is_reported():
    torch_model, flax_model, tokens, options = port_models.make_lstm_classifier("time_major", dtype="float64")
    report = parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=1, dtype="float64", **options)
    assert {"output", "loss", "grad lstm.weight_ih_l0"} <= {r.quantity for r in report.failures}
    assert min(r.max_rel for r in report.failures) > WIDE
    assert report.divergences[0].line().startswith("first difference: lstm (torch LSTM ↔ flax RNN): output")


@pytest.mark.x64
def test_lstm_classifier_training_both_torch_biases_is_reported():
    """torch trains bias_ih and bias_hh, two parameters whose sum is nnx.LSTMCell's one bias: the
    outputs, the loss and the other gradients agree; the split, its gradient and the steps do not."""
    torch_model, flax_model, tokens, options = port_models.make_lstm_classifier("two_biases", dtype="float64")
    report = parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=2, dtype="float64", **options)
    failing = {r.quantity: r for r in report.failures}
    assert set(failing) == {"params round trip", "grad lstm.bias_hh_l0", "params after Adam steps (2)"}
    assert all(r.tensor.startswith("lstm.bias_") and r.max_rel > WIDE for r in failing.values())
