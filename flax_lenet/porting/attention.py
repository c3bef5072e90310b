"""``nn.MultiheadAttention`` -> ``nnx.MultiHeadAttention``: a whole-layer rule, and a float64-exact attention.

E = embed_dim, H = num_heads, D = E / H; torch's head h owns features ``h * D .. (h + 1) * D - 1``
of each projection (it views ``[..., E]`` as ``[..., H, D]``), so a row-major reshape splits heads.

    torch tensor                          Flax variable (params)            layout change
    in_proj_weight [3E, E] (q | k | v)    query/key/value kernel [E, H, D]  rows split in 3, .T, reshape
    q_proj_weight [E, E]                  query/kernel [E, H, D]            .T, reshape
    k_proj_weight [E, kdim]               key/kernel [kdim, H, D]           .T, reshape
    v_proj_weight [E, vdim]               value/kernel [vdim, H, D]         .T, reshape
    in_proj_bias [3E] (q | k | v)         query/key/value bias [H, D]       split in 3, reshape
    out_proj.weight [E, E]                out/kernel [H, D, E]              .T, reshape
    out_proj.bias [E]                     out/bias [E]                      as is

torch keeps separate ``q/k/v_proj_weight`` when kdim or vdim differ from embed_dim;
``nnx.MultiHeadAttention(H, E, in_kv_features=kdim)`` takes one feature count for key and value, so
a layer with kdim != vdim needs its ``value`` projection replaced by an ``nnx.LinearGeneral(vdim,
(H, D))``. ``bias=False`` is ``use_bias=False``. ``add_bias_kv`` (a learned key and value appended to
every sequence) and ``add_zero_attn`` (a zero key and value appended) have no Flax counterpart and
are refused. Every change is a permutation of elements, so a round trip is bit-identical.

``nnx.MultiHeadAttention``'s default attention (``nnx.dot_product_attention``, which calls
``jax.nn.dot_product_attention``) computes the softmax in float32 whatever the input dtype; with
float64 weights and inputs it differs from torch by ~1e-7. ``attention_in_input_dtype`` computes
it in the input dtype: pass it as ``attention_fn`` for a float64 check (pitfalls table).

References: https://pytorch.org/docs/stable/generated/torch.nn.MultiheadAttention.html and
https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/attention.html.
"""

import math

import numpy as np

from flax_lenet.errors import BadConfig, BadWeights
from flax_lenet.porting.rule import PARAMS, Rule

_PROJECTIONS = ("query", "key", "value")
_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _refuse_unsupported(module) -> None:
    if getattr(module, "bias_k", None) is not None:
        raise BadWeights("MultiheadAttention: expected add_bias_kv=False (nnx.MultiHeadAttention has no "
                         "bias_k/bias_v), found add_bias_kv=True")
    if getattr(module, "add_zero_attn", False):
        raise BadWeights("MultiheadAttention: expected add_zero_attn=False (nnx.MultiHeadAttention has no "
                         "zero key/value), found add_zero_attn=True")


def _heads(module) -> tuple[int, int]:
    return module.num_heads, module.embed_dim // module.num_heads


def _convert(tensors: dict, info: dict) -> dict:
    module = info["module"]
    _refuse_unsupported(module)
    h, d = _heads(module)
    if "in_proj_weight" in tensors:
        weights = np.split(tensors["in_proj_weight"], 3)
    else:
        weights = [tensors[name] for name in _SEPARATE]
    out = {(PARAMS, f"{name}/kernel"): w.T.reshape(-1, h, d) for name, w in zip(_PROJECTIONS, weights)}
    if "in_proj_bias" in tensors:
        for name, b in zip(_PROJECTIONS, np.split(tensors["in_proj_bias"], 3)):
            out[(PARAMS, f"{name}/bias")] = b.reshape(h, d)
    out[(PARAMS, "out/kernel")] = tensors["out_proj.weight"].T.reshape(h, d, -1)
    if "out_proj.bias" in tensors:
        out[(PARAMS, "out/bias")] = tensors["out_proj.bias"]
    return out


def _invert(get, info: dict) -> dict:
    module = info["module"]
    _refuse_unsupported(module)
    weights = []
    for name in _PROJECTIONS:
        kernel = np.asarray(get(PARAMS, f"{name}/kernel"))
        weights.append(kernel.reshape(kernel.shape[0], -1).T)
    if module.in_proj_weight is not None:
        out = {"in_proj_weight": np.concatenate(weights)}
    else:
        out = dict(zip(_SEPARATE, weights))
    if module.in_proj_bias is not None:
        out["in_proj_bias"] = np.concatenate([np.asarray(get(PARAMS, f"{n}/bias")).reshape(-1) for n in _PROJECTIONS])
    kernel = np.asarray(get(PARAMS, "out/kernel"))
    out["out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    if module.out_proj.bias is not None:
        out["out_proj.bias"] = np.asarray(get(PARAMS, "out/bias"))
    return out


MULTIHEAD_ATTENTION = Rule(convert=_convert, invert=_invert)


def attention_in_input_dtype(query, key, value, *, mask=None, is_causal=False, dropout_rate=0.0,
                             deterministic=True, dtype=None, precision=None, **_):
    """Scaled dot-product attention with the softmax in the dtype of ``query`` (float64 stays float64).

    An ``attention_fn`` for ``nnx.MultiHeadAttention``: ``query [..., q, H, D]``, ``key``/``value
    [..., k, H, D]``; ``mask`` True = attend (Flax's convention), broadcastable to ``[..., H, q, k]``;
    ``dtype``, when given, is the dtype computed in. Attention dropout and ``sow_weights`` are not supported.
    """
    import jax
    import jax.numpy as jnp
    if dropout_rate > 0 and not deterministic:
        raise BadConfig(f"attention_in_input_dtype: expected no attention dropout, found dropout_rate={dropout_rate}")
    if dtype is not None:
        query, key, value = (jnp.asarray(a, dtype) for a in (query, key, value))
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision) / math.sqrt(query.shape[-1])
    if is_causal:
        causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), value, precision=precision)
