"""``nn.MultiheadAttention`` -> ``nnx.MultiHeadAttention`` (``flax_lenet.porting.attention``), float64 against torch.

Each layout (packed or separate q/k/v projections, with and without bias, batch first or sequence
first, self- and cross-attention) is checked on its output within FLOAT64 and on a bit-identical
round trip of its weights; a broken rule (heads split feature-minor, key and value swapped, the
output kernel not transposed) fails it by more than even the float32 tier. Then: which side loses
float64 precision (against a numpy reference), masks, and a transformer block through
``parity.check``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

import port_models
from flax_lenet import optim
from flax_lenet.errors import BadWeights
from flax_lenet.porting import attention, parity, port
from flax_lenet.porting.tolerances import FLOAT32_CPU, FLOAT64

E, H = 8, 2                      # embed_dim, num_heads
D = E // H


def rel(actual, expected) -> float:
    return parity.diff(np.asarray(actual), np.asarray(expected))[1]


# name: (MultiheadAttention keyword arguments, batch_first, cross-attention)
CASES = {
    "packed-self-batch-first": ({}, True, False),
    "packed-cross-seq-first": ({}, False, True),
    "packed-no-bias": ({"bias": False}, True, True),
    "separate-kdim-vdim-6": ({"kdim": 6, "vdim": 6}, True, True),
    "separate-kdim-5-vdim-7-seq-first": ({"kdim": 5, "vdim": 7}, False, True),
    "separate-no-bias": ({"kdim": 6, "vdim": 6, "bias": False}, True, True),
}


def torch_layer(kwargs, batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, **kwargs).double()
    with torch.no_grad():                  # torch starts its biases at 0, which would hide a swapped one
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.uniform_(-1, 1)
    return mha


def flax_layer(kwargs, attention_fn=attention.attention_in_input_dtype):
    kdim, vdim, bias = kwargs.get("kdim", E), kwargs.get("vdim", E), kwargs.get("bias", True)
    layer = nnx.MultiHeadAttention(H, E, in_kv_features=kdim, use_bias=bias, decode=False,
                                   attention_fn=attention_fn, rngs=nnx.Rngs(0))
    if vdim != kdim:                       # one in_kv_features for key and value: value gets its own
        layer.value = nnx.LinearGeneral(vdim, (H, D), use_bias=bias, rngs=nnx.Rngs(0))
    return layer


def inputs(kwargs, batch_first, cross):
    """q, k, v in torch's layout: (N, T, features) batch first, else (T, N, features)."""
    rng = np.random.default_rng(1)
    n, t, s = 2, 5, 6
    q = rng.standard_normal((n, t, E))
    if cross:
        k, v = rng.standard_normal((n, s, kwargs.get("kdim", E))), rng.standard_normal((n, s, kwargs.get("vdim", E)))
    else:
        k = v = q
    return tuple(a if batch_first else np.ascontiguousarray(a.swapaxes(0, 1)) for a in (q, k, v))


def torch_out(mha, qkv, **masks):
    with torch.no_grad():
        return mha(*(torch.from_numpy(a) for a in qkv), need_weights=False, **masks)[0].numpy()


def flax_out(layer, qkv, batch_first, **masks):
    """The Flax layer on torch-layout inputs: sequence-first ones are transposed in and out."""
    if not batch_first:
        qkv = [a.swapaxes(0, 1) for a in qkv]
    out = layer(*(jnp.asarray(a) for a in qkv), **masks)
    return np.asarray(out) if batch_first else np.asarray(out).swapaxes(0, 1)


@pytest.mark.x64
@pytest.mark.parametrize("case", CASES)
def test_converted_layer_computes_what_torch_computes_and_round_trips(case):
    kwargs, batch_first, cross = CASES[case]
    mha, qkv = torch_layer(kwargs, batch_first), inputs(*CASES[case])
    layer = port.load(flax_layer(kwargs), port.torch_to_flax(mha), dtype=jnp.float64)
    assert rel(flax_out(layer, qkv, batch_first), torch_out(mha, qkv)) <= FLOAT64.rtol
    back = port.flax_to_torch(mha, port.flax_variables(layer))
    for key, value in mha.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key, strict=True)


# --- broken rules: each edits what the rule converts ----------------------------------------

def heads_feature_minor(out):
    """Feature f of a projection taken as head f % H (a [D, H] reshape): heads get strided features."""
    for (c, leaf), a in list(out.items()):
        if leaf.endswith("/kernel") and leaf != "out/kernel":
            out[(c, leaf)] = a.reshape(a.shape[0], D, H).swapaxes(1, 2)
        elif leaf.endswith("/bias") and leaf != "out/bias":
            out[(c, leaf)] = a.reshape(D, H).T
        elif leaf == "out/kernel":
            out[(c, leaf)] = a.reshape(D, H, -1).swapaxes(0, 1)


def key_value_swapped(out):
    for leaf in ("kernel", "bias"):
        k, v = ("params", f"key/{leaf}"), ("params", f"value/{leaf}")
        if k in out:
            out[k], out[v] = out[v], out[k]


def out_kernel_not_transposed(out, tensors):
    out[("params", "out/kernel")] = tensors["out_proj.weight"].reshape(H, D, E)


BROKEN = {"heads-feature-minor": lambda out, tensors: heads_feature_minor(out),
          "key-value-swapped": lambda out, tensors: key_value_swapped(out),
          "out-kernel-not-transposed": out_kernel_not_transposed}


@pytest.mark.x64
@pytest.mark.parametrize("case,broken", [(c, b) for c in CASES for b in BROKEN
                                         if not (b == "key-value-swapped" and CASES[c][0].get("kdim") != CASES[c][0].get("vdim"))])
def test_broken_rule_fails_by_more_than_the_float32_tier(case, broken):
    kwargs, batch_first, cross = CASES[case]
    mha, qkv = torch_layer(kwargs, batch_first), inputs(*CASES[case])
    tensors = {k: v.numpy() for k, v in mha.state_dict().items()}
    out = attention.MULTIHEAD_ATTENTION.convert(tensors, {"module": mha})
    BROKEN[broken](out, tensors)
    layer = port.load(flax_layer(kwargs), {"params": {leaf: a for (_, leaf), a in out.items()}}, dtype=jnp.float64)
    assert rel(flax_out(layer, qkv, batch_first), torch_out(mha, qkv)) > FLOAT32_CPU.rtol


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_options_without_a_flax_counterpart_are_refused_by_name(option):
    mha = nn.MultiheadAttention(E, H, **{option: True})
    with pytest.raises(BadWeights, match=rf"expected {option}=False .* found {option}=True") as e:
        port.torch_to_flax(mha)
    assert "\n" not in str(e.value)


# --- float64: which side loses precision ------------------------------------------------------

def numpy_attention(mha, q, k, v):
    """The layer in plain numpy float64 (batch first, packed weights): the reference for both sides."""
    w, b = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    heads = [(x @ w[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E]).reshape(*x.shape[:-1], H, D)
             for i, x in enumerate((q, k, v))]
    logits = np.einsum("nqhd,nkhd->nhqk", heads[0], heads[1]) / np.sqrt(D)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("nhqk,nkhd->nqhd", p, heads[2]).reshape(*q.shape[:-1], E)
    return o @ mha.out_proj.weight.detach().numpy().T + mha.out_proj.bias.detach().numpy()


@pytest.mark.x64
def test_float64_precision_is_lost_in_the_flax_softmax_not_in_torch():
    kwargs = {}
    mha, qkv = torch_layer(kwargs, True), inputs(kwargs, True, True)
    reference = numpy_attention(mha, *qkv)
    assert rel(torch_out(mha, qkv), reference) <= FLOAT64.rtol
    variables = port.torch_to_flax(mha)
    default = port.load(flax_layer(kwargs, nnx.dot_product_attention), variables, dtype=jnp.float64)
    assert rel(flax_out(default, qkv, True), reference) > FLOAT64.rtol
    fixed = port.load(flax_layer(kwargs), variables, dtype=jnp.float64)
    assert rel(flax_out(fixed, qkv, True), reference) <= FLOAT64.rtol
    # the loss is jax.nn.dot_product_attention's, which nnx's default calls: float64 in and out, float32 inside
    q, k, v = (jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, H, D))) for _ in range(3))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(D)
    exact = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
    fused = jax.nn.dot_product_attention(q, k, v)
    assert fused.dtype == jnp.float64 and rel(fused, exact) > FLOAT64.rtol


@pytest.mark.x64
def test_causal_and_key_padding_masks_inverted_agree():
    kwargs = {}
    mha, (q, k, v) = torch_layer(kwargs, True), inputs(kwargs, True, True)
    t, s = q.shape[1], k.shape[1]
    causal = np.triu(np.ones((t, s), bool), 1)                           # torch: True = not attended
    padding = np.zeros((2, s), bool)
    padding[1, -2:] = True
    expected = torch_out(mha, (q, k, v), attn_mask=torch.from_numpy(causal),
                         key_padding_mask=torch.from_numpy(padding))
    flax_mask = ~(causal[None, None] | padding[:, None, None, :])        # Flax: True = attended
    layer = port.load(flax_layer(kwargs), port.torch_to_flax(mha), dtype=jnp.float64)
    assert rel(flax_out(layer, (q, k, v), True, mask=jnp.asarray(flax_mask)), expected) <= FLOAT64.rtol
    padding_only = jnp.asarray(~padding[:, None, None, :])
    assert rel(flax_out(layer, (q, k, v), True, mask=padding_only, is_causal=True), expected) <= FLOAT64.rtol
    causal_only = torch_out(mha, (q, k, v), attn_mask=torch.from_numpy(causal))
    assert rel(flax_out(layer, (q, k, v), True, is_causal=True), causal_only) <= FLOAT64.rtol
    unmasked = flax_out(layer, (q, k, v), True)
    assert rel(unmasked, expected) > FLOAT32_CPU.rtol


# --- a transformer block through the harness ----------------------------------------------------

ADAM = optim.Optimizer.of("adam", lr=1e-3)


def test_transformer_block_agrees_over_ten_float32_adam_steps():
    torch_model, flax_model, tokens, options = port_models.make_transformer()
    report = parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=10, dtype="float32", **options)
    report.assert_ok()
    assert any(r.quantity == "grad attn.in_proj_weight" for r in report.rows)


@pytest.mark.x64
def test_transformer_block_agrees_in_float64_over_ten_adam_steps():
    """Every row within the one-step float64 tier, the steps too: the key-bias slice of
    in_proj_bias, zero in exact arithmetic, is left out of them (Adam would step on its noise)."""
    torch_model, flax_model, tokens, options = port_models.make_transformer(dtype="float64")
    report = parity.check(torch_model, flax_model, tokens, optimizer=ADAM, steps=10, dtype="float64", **options)
    assert max(r.max_rel for r in report.rows) <= FLOAT64.rtol, report.table()
    assert any(n.startswith("grad attn.in_proj_bias is zero in exact arithmetic at 16 of 48") for n in report.notices)


def test_transformer_block_with_key_and_value_swapped_fails():
    torch_model, flax_model, tokens, options = port_models.make_transformer(broken="kv")
    report = parity.check(torch_model, flax_model, tokens, optimizer=None, dtype="float32", **options)
    assert {"output", "grad attn.in_proj_weight"} <= {r.quantity for r in report.failures}
    assert report.divergences[0].line().startswith(
        "first difference: attn (torch MultiheadAttention ↔ flax MultiHeadAttention): output")
    assert next(r for r in report.rows if r.quantity == "params round trip").ok       # broken after conversion
