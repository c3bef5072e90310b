"""Whole-layer conversion rules for torch's ``nn.LSTM`` and ``nn.GRU`` to Flax NNX's ``nnx.RNN``.

The Flax layout each rule targets, relative to the torch module's path ``p``:

    num_layers == 1    p is an nnx.RNN(cell)                                    p.cell.<leaf>
                       or, bidirectional, an nnx.Bidirectional(fwd, bwd)        p.forward_rnn.cell.<leaf>
                                                                                p.backward_rnn.cell.<leaf>
    num_layers > 1     p is a list (nnx.List) of those, one per layer           p.0.cell.<leaf>, p.1. ...

    rule             torch (per layer and direction)            Flax cell
    LSTM             weight_ih [4H, in], weight_hh [4H, H]       nnx.LSTMCell: ii/if_/ig/io kernel [in, H] (no bias),
                     bias_ih, bias_hh [4H], gates i, f, g, o     hi/hf/hg/ho kernel [H, H] and bias [H]
    GRU              weight_ih [3H, in], weight_hh [3H, H]       nnx.GRUCell: dense_i kernel [in, 3H], bias [3H];
                     bias_ih, bias_hh [3H], gates r, z, n        dense_h kernel [H, 3H], no bias
    GRU_TORCH_CELL   the same                                    modules.TorchGRUCell: dense_i and dense_h,
                                                                 each with kernel and bias

torch applies ``b_ih + b_hh`` where a Flax cell has one bias, so ``LSTM`` and ``GRU`` store the
sum (in float arithmetic: exact when one of the two is zero). The inverse cannot split a sum: it
puts all of it in ``bias_ih`` and zeros in ``bias_hh``. Flax -> torch -> Flax is then exact;
torch -> Flax -> torch keeps each sum, not the split, and is bit-identical only when
``bias_hh`` is zero. Training is another matter: torch's two biases are two parameters, so an
optimizer step moves their sum by two updates where the Flax cell's one bias moves by one; a
torch model trains like the Flax port only with ``bias_hh`` zero and frozen (or, for a GRU, with
``TorchGRUCell``, which has both biases, as ``GRU_TORCH_CELL`` converts them one to one).

GRU: torch's candidate gate is ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``nnx.GRUCell``
computes ``tanh(W_in x + b_in + r * W_hn h)``, with no ``b_hn``. ``GRU`` (to ``nnx.GRUCell``)
therefore sums only the r and z parts of ``bias_hh`` and refuses a nonzero ``b_hn``;
``GRU_TORCH_CELL`` converts every GRU, to ``flax_lenet.porting.modules.TorchGRUCell``. A rule
cannot see the Flax model: ``GRU`` is the built-in rule, and ``rules={'GRU': GRU_TORCH_CELL}``
(an argument of ``port.torch_to_flax`` and ``parity.check``) picks ``TorchGRUCell``; ``port.load``
refuses a layout the Flax model does not have.

``bias=False``: the Flax cells always have biases, so they get zeros (exact), and the inverse
refuses a nonzero Flax bias. Refused: ``proj_size > 0`` (no Flax cell projects its hidden
state). Not converted because not a weight: ``batch_first`` (``nnx.RNN`` takes ``[B, T, F]``
by default, ``time_major=True`` for torch's default ``[T, B, F]``), the initial state (zeros on
both sides unless passed) and ``dropout`` between layers (the Flax layers have none: compare in
eval mode or with ``dropout=0``). Each direction's output is concatenated, forward first, as
``nnx.Bidirectional`` does by default.

References: https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html,
https://pytorch.org/docs/stable/generated/torch.nn.GRU.html,
https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/recurrent.html.
"""

import numpy as np

from flax_lenet.errors import BadWeights
from flax_lenet.porting.rule import PARAMS, Rule

#: nnx.LSTMCell's input and hidden Linear layers, in torch's gate order i, f, g, o
LSTM_INPUT = ("ii", "if_", "ig", "io")
LSTM_HIDDEN = ("hi", "hf", "hg", "ho")


def directions(module):
    """``(torch suffix, Flax prefix)`` per layer and direction: ``('_l1_reverse', '1.backward_rnn.')``."""
    for layer in range(module.num_layers):
        lead = f"{layer}." if module.num_layers > 1 else ""
        yield f"_l{layer}", lead + ("forward_rnn." if module.bidirectional else "")
        if module.bidirectional:
            yield f"_l{layer}_reverse", lead + "backward_rnn."


def _refuse_projection(module) -> None:
    if getattr(module, "proj_size", 0) > 0:
        raise BadWeights(f"{type(module).__name__}: expected proj_size=0, found proj_size={module.proj_size}; "
                         "no Flax recurrent cell projects its hidden state (weight_hr)")


def _biases(tensors, suffix, like):
    """``(b_ih, b_hh)`` of one layer and direction; zeros for a torch layer with ``bias=False``."""
    if f"bias_ih{suffix}" not in tensors:
        zeros = np.zeros(like.shape[0], like.dtype)
        return zeros, zeros
    return tensors[f"bias_ih{suffix}"], tensors[f"bias_hh{suffix}"]


def _torch_biases(module, suffix, bias, flax_keys):
    """The inverse's ``{bias_ih: bias, bias_hh: 0}``; nothing, or a refusal, for ``bias=False``."""
    if module.bias:
        return {f"bias_ih{suffix}": bias, f"bias_hh{suffix}": np.zeros_like(bias)}
    if np.any(bias != 0):
        raise BadWeights(f"Flax {flax_keys}: expected zeros (the torch {type(module).__name__} has bias=False), "
                         f"found max |bias| {np.max(np.abs(bias)):.3g}")
    return {}


# --- LSTM -> nnx.LSTMCell ----------------------------------------------------------------------

def _lstm_to_flax(tensors: dict, info: dict) -> dict:
    module = info["module"]
    _refuse_projection(module)
    h = module.hidden_size
    out = {}
    for suffix, prefix in directions(module):
        w_ih, w_hh = tensors[f"weight_ih{suffix}"], tensors[f"weight_hh{suffix}"]
        b_ih, b_hh = _biases(tensors, suffix, w_ih)
        for k, (xi, hi) in enumerate(zip(LSTM_INPUT, LSTM_HIDDEN)):
            rows = slice(k * h, (k + 1) * h)
            out[(PARAMS, f"{prefix}cell.{xi}/kernel")] = w_ih[rows].T
            out[(PARAMS, f"{prefix}cell.{hi}/kernel")] = w_hh[rows].T
            out[(PARAMS, f"{prefix}cell.{hi}/bias")] = b_ih[rows] + b_hh[rows]
    return out


def _lstm_to_torch(get, info: dict) -> dict:
    module = info["module"]
    _refuse_projection(module)
    out = {}
    for suffix, prefix in directions(module):
        out[f"weight_ih{suffix}"] = np.concatenate([get(PARAMS, f"{prefix}cell.{xi}/kernel").T for xi in LSTM_INPUT])
        out[f"weight_hh{suffix}"] = np.concatenate([get(PARAMS, f"{prefix}cell.{hi}/kernel").T for hi in LSTM_HIDDEN])
        bias = np.concatenate([get(PARAMS, f"{prefix}cell.{hi}/bias") for hi in LSTM_HIDDEN])
        out.update(_torch_biases(module, suffix, bias, f"{prefix}cell.h*/bias"))
    return out


LSTM = Rule(convert=_lstm_to_flax, invert=_lstm_to_torch)


# --- GRU -> nnx.GRUCell, or -> modules.TorchGRUCell --------------------------------------------

def _gru_to_flax(tensors: dict, info: dict, *, torch_cell: bool) -> dict:
    module = info["module"]
    h = module.hidden_size
    out = {}
    for suffix, prefix in directions(module):
        w_ih, w_hh = tensors[f"weight_ih{suffix}"], tensors[f"weight_hh{suffix}"]
        b_ih, b_hh = _biases(tensors, suffix, w_ih)
        out[(PARAMS, f"{prefix}cell.dense_i/kernel")] = w_ih.T
        out[(PARAMS, f"{prefix}cell.dense_h/kernel")] = w_hh.T
        if torch_cell:
            out[(PARAMS, f"{prefix}cell.dense_i/bias")] = b_ih
            out[(PARAMS, f"{prefix}cell.dense_h/bias")] = b_hh
            continue
        b_hn = b_hh[2 * h:]
        if np.any(b_hn != 0):
            raise BadWeights(f"GRU bias_hh{suffix}: expected b_hn (the hidden n-gate bias, inside "
                             f"r * (W_hn h + b_hn)) to be zero, found max |b_hn| {np.max(np.abs(b_hn)):.3g}, and "
                             "nnx.GRUCell has none; use flax_lenet.porting.modules.TorchGRUCell with "
                             "rules={'GRU': flax_lenet.porting.recurrent.GRU_TORCH_CELL}")
        out[(PARAMS, f"{prefix}cell.dense_i/bias")] = b_ih + b_hh      # b_hn is zero: r and z summed
    return out


def _gru_to_torch(get, info: dict, *, torch_cell: bool) -> dict:
    module = info["module"]
    out = {}
    for suffix, prefix in directions(module):
        out[f"weight_ih{suffix}"] = get(PARAMS, f"{prefix}cell.dense_i/kernel").T
        out[f"weight_hh{suffix}"] = get(PARAMS, f"{prefix}cell.dense_h/kernel").T
        b_i = get(PARAMS, f"{prefix}cell.dense_i/bias")
        if not torch_cell:
            out.update(_torch_biases(module, suffix, b_i, f"{prefix}cell.dense_i/bias"))
        elif module.bias:
            out[f"bias_ih{suffix}"], out[f"bias_hh{suffix}"] = b_i, get(PARAMS, f"{prefix}cell.dense_h/bias")
        else:
            both = np.concatenate([b_i, get(PARAMS, f"{prefix}cell.dense_h/bias")])
            _torch_biases(module, suffix, both, f"{prefix}cell.dense_*/bias")
    return out


#: torch GRU -> nnx.GRUCell; refuses a nonzero b_hn
GRU = Rule(convert=lambda tensors, info: _gru_to_flax(tensors, info, torch_cell=False),
           invert=lambda get, info: _gru_to_torch(get, info, torch_cell=False))

#: torch GRU -> flax_lenet.porting.modules.TorchGRUCell: every tensor one to one
GRU_TORCH_CELL = Rule(convert=lambda tensors, info: _gru_to_flax(tensors, info, torch_cell=True),
                      invert=lambda get, info: _gru_to_torch(get, info, torch_cell=True))
