"""Weight conversion for any torch model: one rule per layer type, matched by module path.

    torch layer (module path p)        torch tensor        Flax variable (path p)       layout change
    Linear                             weight [out, in]    params  kernel [in, out]     .T (+ flatten order)
    Conv1d/2d/3d                       weight [O, I, *K]   params  kernel [*K, I, O]    transpose
    ConvTranspose1d/2d/3d              weight [I, O, *K]   params  kernel [*K, I, O]    transpose + flip K
    BatchNorm1d/2d/3d                  weight, bias        params  scale, bias          as is
                                       running_mean/var    batch_stats mean, var        as is
    LayerNorm, GroupNorm               weight, bias        params  scale, bias          as is
    Embedding                          weight [n, d]       params  embedding [n, d]     as is
    PReLU (num_parameters=1)           weight [1]          params  negative_slope []    reshape
    InstanceNorm1d/2d/3d (affine)      weight, bias        params  scale, bias          as is
    any of them                        bias [O]            params  bias [O]             as is
    MultiheadAttention                 in_proj_weight ...  query/key/value/out          whole layer (attention.py)
    LSTM, GRU                          weight_ih_l0 ...    nnx.RNN cells                whole layer (recurrent.py)
    a module with no rule              its own Parameters  params  by name              as is

Every change is a permutation of elements (a transpose, a flip, a reshape), so a round trip is
bit-identical. ``register(torch_class, Rule(...))`` adds a layer type; ``name_map`` renames module
paths when the Flax model names its layers differently (``{'features.0': 'features.layers.0'}``).

The flatten before the first Linear after a conv stack: torch flattens an NCHW feature map in
(C, H, W) order, Flax an NHWC one in (H, W, C) order, so that Linear's input axis is permuted.
``record_flattens(model, example_input)`` finds every such Linear by running the model once: a
``TorchFunctionMode`` sees each ``view``/``reshape``/``flatten`` of a 4-D or 5-D tensor to
``(N, features)`` and a forward pre-hook hands the recorded ``(C, H, W)`` to the next Linear that
takes that many features. A 3-D map (Conv1d's ``(N, C, L)``) is ambiguous with a sequence
``(N, T, D)``, which needs no permutation: declare it, ``flatten={'fc': (C, L)}``.

Layer references: https://pytorch.org/docs/stable/nn.html and
https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/index.html.
"""

import difflib
import math
import warnings
from typing import Any, Mapping

import numpy as np

from flax_lenet.errors import BadWeights
from flax_lenet.porting import attention, recurrent
from flax_lenet.porting.rule import BATCH_STATS, PARAMS, Rule

#: prefixes that torch wrappers put before every key: nn.DataParallel / DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class StateDictNotice(UserWarning):
    """Something about a state dict was changed on the way in (a wrapper prefix stripped, a cast)."""


# --- state-dict hygiene ------------------------------------------------------------------------

def tensor_to_numpy(value: Any, cast: str | None = None) -> np.ndarray:
    """A torch tensor or array-like as a fresh numpy array.

    bfloat16 (which numpy lacks) becomes ``ml_dtypes.bfloat16`` bit for bit; float16 stays
    float16; a sparse tensor gives its dense values. ``cast='float32'`` (or any numpy dtype name) converts afterwards.
    """
    if hasattr(value, "detach"):                                 # a torch tensor
        t = value.detach().cpu()
        if str(t.layout) != "torch.strided":                     # sparse: the same values, stored dense
            t = t.to_dense()
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch
            a = t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            a = t.numpy()
    else:
        a = np.asarray(value)
    return np.array(a, dtype=cast) if cast is not None else np.array(a)


def _describe(value: Any) -> str:
    return "None" if value is None else f"{type(value).__name__} {value!r}"[:80]


def clean_state_dict(state_dict: Any, *, cast: str | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """A torch ``state_dict`` as numpy arrays with wrapper prefixes stripped; and what was changed.

    Strips ``module.`` (``nn.DataParallel``, ``DistributedDataParallel``) and ``_orig_mod.``
    (``torch.compile``) when every key carries it, repeatedly (``module._orig_mod.``). Returns
    ``(state, notices)``, one notice per stripped prefix or cast.

    Raises:
      BadWeights: ``state_dict`` is not a non-empty mapping of string keys to tensors/arrays.
    """
    if not isinstance(state_dict, Mapping):
        raise BadWeights(f"expected a torch state_dict {{name: tensor}}, found {_describe(state_dict)}")
    if not state_dict:
        raise BadWeights("expected a torch state_dict {name: tensor}, found an empty mapping")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise BadWeights(f"expected a state_dict with string keys, found key {key!r} ({type(key).__name__})")
        if value is None or not (hasattr(value, "detach") or hasattr(value, "__array__")):
            raise BadWeights(f"{key}: expected a tensor or array, found {_describe(value)}")
    notices = []
    keys = list(state_dict)
    renamed = dict(zip(keys, keys))
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in renamed.values())), None)
        if prefix is None:
            break
        saver = "torch.compile" if prefix == "_orig_mod." else "nn.DataParallel / DistributedDataParallel"
        notices.append(f"stripped the {prefix!r} prefix from all {len(keys)} keys ({saver})")
        renamed = {k: v[len(prefix):] for k, v in renamed.items()}
    state = {renamed[k]: tensor_to_numpy(v) for k, v in state_dict.items()}
    if cast is not None:
        changed = sorted({str(a.dtype) for a in state.values() if a.dtype != np.dtype(cast)})
        if changed:
            notices.append(f"cast {', '.join(changed)} to {cast}")
        state = {k: a.astype(cast) for k, a in state.items()}
    return state, notices


def warn_notices(notices: list[str]) -> None:
    for notice in notices:
        warnings.warn(notice, StateDictNotice, stacklevel=3)


# --- rules -------------------------------------------------------------------------------------

def _flatten_to_flax(w: np.ndarray, feature_shape: tuple) -> np.ndarray:
    """``[out, C * prod(S)]`` in (C, *S) order -> ``[out, prod(S) * C]`` in (*S, C) order."""
    out = w.shape[0]
    return np.moveaxis(w.reshape(out, *feature_shape), 1, -1).reshape(out, -1)


def _flatten_to_torch(w: np.ndarray, feature_shape: tuple) -> np.ndarray:
    out = w.shape[0]
    c, spatial = feature_shape[0], feature_shape[1:]
    return np.moveaxis(w.reshape(out, *spatial, c), -1, 1).reshape(out, -1)


def _linear_to_flax(name, a, info):
    if name != "weight":
        return a
    if info.get("flatten"):
        a = _flatten_to_flax(a, info["flatten"])
    return a.T


def _linear_to_torch(name, a, info):
    if name != "weight":
        return a
    a = a.T
    return _flatten_to_torch(a, info["flatten"]) if info.get("flatten") else a


def _conv_to_flax(name, a, info):            # [O, I, *K] -> [*K, I, O]
    return a.transpose(*range(2, a.ndim), 1, 0) if name == "weight" else a


def _conv_to_torch(name, a, info):           # [*K, I, O] -> [O, I, *K]
    return a.transpose(a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)) if name == "weight" else a


def _spatial_flip(a):
    return a[(slice(None),) * 2 + (slice(None, None, -1),) * (a.ndim - 2)]


def _conv_transpose_to_flax(name, a, info):
    """torch ``[I, O, *K]`` -> Flax ``[*K, I, O]``, K flipped.

    torch's transposed convolution is the gradient of a convolution, which correlates with the
    kernel flipped in space; ``nnx.ConvTranspose`` (``transpose_kernel=False``, its default)
    correlates with its kernel as stored. Its padding must be ``k - 1 - p`` per side for torch's
    ``padding=p`` (pitfalls table, docs/port_your_model.md)."""
    if name != "weight":
        return a
    return _spatial_flip(a).transpose(*range(2, a.ndim), 0, 1)


def _conv_transpose_to_torch(name, a, info):
    if name != "weight":
        return a
    return _spatial_flip(a.transpose(a.ndim - 2, a.ndim - 1, *range(a.ndim - 2)))


def _prelu_to_flax(name, a, info):
    if a.shape != (1,):
        raise BadWeights(f"PReLU: expected num_parameters=1 (nnx.PReLU has one scalar slope), "
                         f"found weight of shape {a.shape}")
    return a.reshape(())


def _prelu_to_torch(name, a, info):
    return a.reshape(1)


PRELU = Rule({"weight": (PARAMS, "negative_slope")}, _prelu_to_flax, _prelu_to_torch)


def _instance_norm_to_flax(name, a, info):
    if name.startswith("running_"):
        raise BadWeights(f"InstanceNorm: expected track_running_stats=False (nnx.InstanceNorm keeps no "
                         f"running statistics), found {name}")
    return a


INSTANCE_NORM = Rule({"weight": (PARAMS, "scale"), "bias": (PARAMS, "bias"),
                      "running_mean": (PARAMS, "mean"), "running_var": (PARAMS, "var")},
                     _instance_norm_to_flax)


_AFFINE = {"weight": (PARAMS, "scale"), "bias": (PARAMS, "bias")}
_BATCHNORM = {**_AFFINE, "running_mean": (BATCH_STATS, "mean"), "running_var": (BATCH_STATS, "var")}
_WEIGHT_BIAS = {"weight": (PARAMS, "kernel"), "bias": (PARAMS, "bias")}

RULES: dict[str, Rule] = {}          # torch class name -> rule; a subclass finds its base's rule


def register(torch_class, rule: Rule) -> None:
    """Use ``rule`` for ``torch_class`` (a class or its name, e.g. ``'Linear'``) and its subclasses."""
    RULES[torch_class if isinstance(torch_class, str) else torch_class.__name__] = rule


for _names, _rule in ((("Linear",), Rule(_WEIGHT_BIAS, _linear_to_flax, _linear_to_torch)),
                      (("Conv1d", "Conv2d", "Conv3d"), Rule(_WEIGHT_BIAS, _conv_to_flax, _conv_to_torch)),
                      (("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
                       Rule(_WEIGHT_BIAS, _conv_transpose_to_flax, _conv_transpose_to_torch)),
                      (("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"), Rule(_BATCHNORM)),
                      (("LayerNorm", "GroupNorm"), Rule(_AFFINE)),
                      (("Embedding",), Rule({"weight": (PARAMS, "embedding")})),
                      (("PReLU",), PRELU),
                      (("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"), INSTANCE_NORM),
                      (("MultiheadAttention",), attention.MULTIHEAD_ATTENTION),
                      (("LSTM",), recurrent.LSTM),
                      (("GRU",), recurrent.GRU)):
    for _name in _names:
        register(_name, _rule)

#: torch tensors with no Flax counterpart: BatchNorm's step counter (Flax keeps none)
SKIPPED = {"num_batches_tracked"}


def rule_for(module, rules: Mapping[str, Rule] | None = None) -> Rule | None:
    """The rule for ``module``'s class or its nearest base: from ``rules`` (a per-call choice,
    e.g. ``{'GRU': recurrent.GRU_TORCH_CELL}``) first, then from ``RULES``."""
    for klass in type(module).__mro__:
        for table in (rules or {}, RULES):
            if klass.__name__ in table:
                return table[klass.__name__]
    return None


# --- the flatten before a Linear ---------------------------------------------------------------

def record_flattens(model, example_input) -> dict[str, tuple]:
    """``{linear module path: (C, *S)}`` for every Linear fed by a flattened 4-D/5-D feature map.

    Runs ``model(example_input)`` once under ``torch.no_grad()``; the model is left as it was.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        last = None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            src = args[0] if args else None
            if (getattr(func, "__name__", "") in ("view", "reshape", "flatten") and isinstance(src, torch.Tensor)
                    and isinstance(out, torch.Tensor) and src.dim() in (4, 5) and out.dim() == 2
                    and out.shape[1] == math.prod(src.shape[1:])):
                Recorder.last = tuple(src.shape[1:])
            return out

    found: dict[str, tuple] = {}

    def pre_hook(name):
        def hook(module, inputs):
            x = inputs[0] if inputs else None
            last = Recorder.last
            if last is not None and isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == math.prod(last):
                found.setdefault(name, last)
            Recorder.last = None
        return hook

    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad(), Recorder():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {name: shape for name, shape in found.items() if math.prod(shape[1:]) > 1}


# --- conversion --------------------------------------------------------------------------------

def rename(path: str, name_map: Mapping[str, str] | None) -> str:
    """``path`` with the longest matching module-path prefix in ``name_map`` replaced."""
    for old in sorted(name_map or {}, key=len, reverse=True):
        if path == old or path.startswith(old + "."):
            return name_map[old] + path[len(old):]
    return path


def _join(flax_path: str, relative: str) -> str:
    """A Flax module path and a key relative to it (``'leaf'`` or ``'sub.path/leaf'``) as one key;
    a model that is itself one layer (path ``''``) has just the relative key."""
    if not flax_path:
        return relative
    return f"{flax_path}.{relative}" if "/" in relative else f"{flax_path}/{relative}"


def _flax_key(path: str, leaf: str, name_map) -> str:
    """``'module.path/leaf'`` for torch module ``path``, renamed by ``name_map``."""
    return _join(rename(path, name_map), leaf)


def _layers(model, flatten: Mapping[str, tuple] | None, rules=None):
    """``(module path, module, rule, info)`` for every module with a rule and tensors of its own.

    A module with no rule but parameters of its own (a bare ``nn.Parameter``, e.g. a learned
    positional embedding) keeps them by name: ``pos`` of module ``enc`` is Flax ``enc/pos``.
    The children of a whole-layer rule belong to it and are not visited.
    """
    owners: list[str] = []
    for path, module in model.named_modules():
        if any(o == "" or path.startswith(o + ".") for o in owners):
            continue
        rule = rule_for(module, rules)
        if rule is None:
            own = [name for name, _ in module.named_parameters(recurse=False)]
            if not own:
                continue
            rule = Rule({name: (PARAMS, name) for name in own})
        if rule.convert is not None:
            owners.append(path)
        info = {"module": module, "path": path}
        if flatten and path in flatten:
            info["flatten"] = tuple(flatten[path])
        yield path, module, rule, info


def _state_with_shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def nearest(key: str, candidates) -> str:
    """`` (nearest: 'x')`` for the closest of ``candidates`` to ``key``, or ``''``."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.0)
    return f" (nearest: {close[0]!r})" if close else ""


def torch_to_flax(model, state_dict=None, *, flatten=None, name_map=None, cast=None,
                  warn: bool = True, rules=None) -> dict[str, dict[str, np.ndarray]]:
    """A torch model's weights as Flax variables: ``{'params': {path: leaf}, 'batch_stats': {...}}``.

    Args:
      model: the torch ``nn.Module`` (its layer types and shapes; its weights unless ``state_dict``).
      state_dict: weights to convert instead of the model's own; ``module.``/``_orig_mod.``
        prefixes are stripped with a ``StateDictNotice`` warning; bfloat16 kept (``ml_dtypes``).
      flatten: ``{linear path: (C, *S)}``, from ``record_flattens`` or declared.
      name_map: torch module path prefix -> Flax module path prefix.
      cast: a dtype name to cast every tensor to (e.g. ``'float32'``), or keep the dtypes.
      rules: ``{torch class name: Rule}`` used before ``RULES``, for this call only.

    Returns:
      ``{collection: {'flax.module.path/leaf': array}}`` (see ``load`` and ``to_nested``).

    Raises:
      BadWeights: a key the model lacks or a missing one, or a shape the model's layer does not
        have, naming the key, the expected and found shape and the nearest candidate key.
    """
    source = model.state_dict() if state_dict is None else state_dict
    state, notices = clean_state_dict(source, cast=cast)
    if warn:
        warn_notices(notices)
    expected = _state_with_shapes(model)
    out: dict[str, dict[str, np.ndarray]] = {PARAMS: {}, BATCH_STATS: {}}
    used = set()

    def take(key):
        if key not in state:
            unmatched = [k for k in state if k not in expected]
            raise BadWeights(f"missing key {key!r} (expected shape {expected[key]})"
                             f"{nearest(key, unmatched or state)}")
        if state[key].shape != expected[key]:
            raise BadWeights(f"{key}: expected shape {expected[key]}, found {state[key].shape}")
        used.add(key)
        return state[key]

    for path, _, rule, info in _layers(model, flatten, rules):
        if rule.convert is not None:
            prefix = f"{path}." if path else ""
            tensors = {k[len(prefix):]: take(k) for k in expected
                       if k.startswith(prefix) and k.rsplit(".", 1)[-1] not in SKIPPED}
            for (collection, relative), a in rule.convert(tensors, info).items():
                out[collection][_join(rename(path, name_map), relative)] = np.array(a, order="C")
            continue
        for tname, (collection, leaf) in rule.names.items():
            key = f"{path}.{tname}" if path else tname
            if key not in expected:
                continue                                        # e.g. bias=False, affine=False
            moved = np.array(rule.to_flax(tname, take(key), info), order="C")
            out[collection][_flax_key(path, leaf, name_map)] = moved
    extra = [k for k in state if k not in used and k.rsplit(".", 1)[-1] not in SKIPPED]
    for key in extra:
        if key not in expected:
            absent = [k for k in expected if k not in state]
            raise BadWeights(f"unexpected key {key!r} with shape {state[key].shape}{nearest(key, absent or expected)}")
        raise BadWeights(f"{key}: no conversion rule for {type(model.get_submodule(key.rpartition('.')[0])).__name__}; "
                         "add one with flax_lenet.porting.port.register(torch_class, Rule(...))")
    return out


def flax_to_torch(model, variables: Mapping[str, Mapping[str, Any]], *, flatten=None,
                  name_map=None, rules=None) -> dict[str, np.ndarray]:
    """The inverse of ``torch_to_flax``: a torch ``state_dict`` (numpy) for ``model``.

    ``variables`` is ``{collection: {'path/leaf': array}}``. Tensors with no Flax counterpart
    (BatchNorm's ``num_batches_tracked``) are taken from ``model``.
    """
    expected = model.state_dict()
    state = {}

    def flax_array(collection, flax_key, key):
        found = variables.get(collection, {})
        if flax_key not in found:
            raise BadWeights(f"missing Flax {collection} {flax_key!r} for {key} "
                             f"(expected shape {tuple(expected[key].shape)}){nearest(flax_key, found)}")
        return tensor_to_numpy(found[flax_key])

    def put(key, a, flax_key):
        state[key] = np.array(a, order="C")
        if state[key].shape != tuple(expected[key].shape):
            raise BadWeights(f"Flax {flax_key}: expected shape for {key} "
                             f"{tuple(expected[key].shape)}, found {state[key].shape} in torch layout")

    for path, _, rule, info in _layers(model, flatten, rules):
        if rule.convert is not None:
            prefix, flax_path = (f"{path}." if path else ""), rename(path, name_map)
            first = next(k for k in expected if k.startswith(prefix))
            tensors = rule.invert(lambda c, rel: flax_array(c, _join(flax_path, rel), first), info)
            for relative, a in tensors.items():
                put(prefix + relative, a, flax_path or "the model")
            continue
        for tname, (collection, leaf) in rule.names.items():
            key = f"{path}.{tname}" if path else tname
            if key not in expected:
                continue
            flax_key = _flax_key(path, leaf, name_map)
            put(key, rule.to_torch(tname, flax_array(collection, flax_key, key), info), f"{collection} {flax_key}")
    for key, value in expected.items():
        if key not in state:
            state[key] = tensor_to_numpy(value)
    return {k: state[k] for k in expected}


# --- the Flax side: NNX modules and Linen variables, as flat {collection: {'path/leaf': array}} --

def flat_keys(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{'block': {'conv': {'kernel': a}}}`` -> ``{'block.conv/kernel': a}``: the keys ``load`` takes."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_keys(value, name))
        else:
            module, _, leaf = name.rpartition(".")
            out[f"{module}/{leaf}" if module else leaf] = value
    return out


def _nnx_collections():
    from flax import nnx
    return {PARAMS: nnx.Param, BATCH_STATS: nnx.BatchStat}


def flax_variables(flax_model) -> dict[str, dict[str, Any]]:
    """``{'params': {'path/leaf': array}, 'batch_stats': {...}}`` of an NNX module or Linen variables."""
    if isinstance(flax_model, Mapping):
        return {c: flat_keys(flax_model.get(c, {})) for c in (PARAMS, BATCH_STATS)}
    from flax import nnx
    return {c: flat_keys(nnx.to_pure_dict(nnx.state(flax_model, kind))) for c, kind in _nnx_collections().items()}


def _set(tree: dict, flat_key: str, value) -> None:
    module, _, leaf = flat_key.rpartition("/")
    node = tree
    for part in module.split(".") if module else []:
        match = [k for k in node if str(k) == part]
        node = node[match[0]]
    node[[k for k in node if str(k) == leaf][0]] = value


def check_shapes(variables: Mapping, flax_model) -> None:
    """Raise ``BadWeights`` unless ``variables`` has exactly the Flax model's variables and shapes."""
    have = flax_variables(flax_model)
    for collection in (PARAMS, BATCH_STATS):
        got, want = variables.get(collection, {}), have[collection]
        for key, a in got.items():
            if key not in want:
                raise BadWeights(f"converted {collection} {key!r} {np.shape(a)} is not in the Flax model"
                                 f"{nearest(key, want)}; pass name_map={{torch path: flax path}}")
            if np.shape(a) != np.shape(want[key]):
                raise BadWeights(f"{collection} {key}: the Flax model expects shape {np.shape(want[key])}, "
                                 f"the converted torch tensor has {np.shape(a)}")
        missing = [k for k in want if k not in got]
        if missing:
            raise BadWeights(f"Flax {collection} {missing[0]!r} {np.shape(want[missing[0]])} has no torch "
                             f"tensor{nearest(missing[0], got)}; all missing: {missing}")


def load(flax_model, variables: Mapping, *, dtype=None):
    """Put converted ``variables`` into an NNX module (in place, returned) or Linen variables (a new dict).

    Shapes are checked first (``check_shapes``). ``dtype`` casts every array. An NNX module may be
    built with ``nnx.eval_shape`` (shapes only): see ``_fill_shapes_only``.
    """
    import jax.numpy as jnp
    check_shapes(variables, flax_model)

    def arr(a):
        return jnp.asarray(a, dtype) if dtype is not None else jnp.asarray(a)

    if isinstance(flax_model, Mapping):
        import copy
        new = copy.copy(dict(flax_model))
        for collection in (PARAMS, BATCH_STATS):
            if collection in new:
                tree = _plain(new[collection])
                for key, a in variables.get(collection, {}).items():
                    _set(tree, key, arr(a))
                new[collection] = tree
        return new
    from flax import nnx
    for collection, kind in _nnx_collections().items():
        tree = nnx.to_pure_dict(nnx.state(flax_model, kind))
        for key, a in variables.get(collection, {}).items():
            _set(tree, key, arr(a))
        nnx.update(flax_model, tree)
    _fill_shapes_only(flax_model)
    return flax_model


def _fill_shapes_only(flax_model) -> None:
    """Make a module built with ``nnx.eval_shape`` runnable once its weights are loaded.

    ``nnx.eval_shape`` (https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/transforms.html)
    builds a model without running an initialiser: every variable is a ``jax.ShapeDtypeStruct``.
    The weights come from torch; an RNG stream (``nnx.Dropout``'s, ``nnx.RNN``'s) has no torch
    counterpart, and the harness never draws from it (its Dropout is deterministic), so it starts
    from ``jax.random.key(0)`` and count 0. Any other variable still without a value is refused.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def shape_only(a):
        return isinstance(a, jax.ShapeDtypeStruct)

    rng = nnx.to_pure_dict(nnx.state(flax_model, nnx.RngState))
    if any(shape_only(a) for a in jax.tree.leaves(rng)):
        key = jax.random.key(0)

        def concrete(a):
            if not shape_only(a):
                return a
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                if a.dtype != key.dtype:
                    raise BadWeights(f"an RNG stream built with nnx.eval_shape has key type {a.dtype}, not the "
                                     f"default {key.dtype}: build the Flax model with real arrays")
                return jax.random.split(key, a.shape) if a.shape else key
            return jnp.zeros(a.shape, a.dtype)

        nnx.update(flax_model, jax.tree.map(concrete, rng))
    left = [(path, a) for path, a in nnx.to_flat_state(nnx.state(flax_model)) if shape_only(a.get_value())]
    if left:
        path, a = left[0]
        raise BadWeights(f"the Flax model's {type(a).__name__} {'.'.join(map(str, path))} "
                         f"{a.get_value().shape} has shapes only (nnx.eval_shape) and torch has no tensor for "
                         f"it; build the Flax model with real arrays")


def _plain(tree):
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree
