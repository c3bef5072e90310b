"""``Rule``: how one torch layer type's tensors map to Flax variables (``flax_lenet.porting.port``).

A module of its own so that the rule tables (``port``, ``attention``, ``recurrent``) can share it
without importing each other.
"""

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

PARAMS, BATCH_STATS = "params", "batch_stats"


@dataclass(frozen=True)
class Rule:
    """How one torch layer type's tensors map to Flax variables.

    Tensor by tensor: ``names``: torch tensor name -> ``(collection, flax leaf name)``;
    ``to_flax(name, array, info)`` and ``to_torch(name, array, info)`` move one tensor's layout
    (default: unchanged); ``info`` is a dict with the module and, for a Linear after a flatten,
    ``'flatten'``: the ``(C, *S)`` shape.

    Whole layer, for a layer whose tensors do not map one to one (attention's packed
    projection, a recurrent layer's gates): ``convert(tensors, info)`` takes every torch tensor
    of the layer, its children's included (``{'out_proj.weight': a, ...}``), and returns
    ``{(collection, 'sub.path/leaf'): array}`` relative to the layer's Flax path;
    ``invert(get, info)`` gives them back (``get(collection, 'sub.path/leaf')`` reads one Flax
    variable). The layer's children get no rule of their own.
    """
    names: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    to_flax: Callable[[str, np.ndarray, dict], np.ndarray] = lambda name, a, info: a
    to_torch: Callable[[str, np.ndarray, dict], np.ndarray] = lambda name, a, info: a
    convert: Callable[[dict, dict], dict] | None = None
    invert: Callable[[Callable, dict], dict] | None = None
