"""Build a Net's parameters in one compiled call, so that a fresh process gets its Net at once.

``flax_lenet.Net(rngs=nnx.Rngs(0))`` runs ``model.Net.__init__``, which draws every kernel
eagerly: JAX compiles each eager op for its shape, 23 small XLA compilations in all (the five
``lecun_normal`` draws, ``jax.random.truncated_normal``, the costliest). A second ``Net()`` in
the same process reuses them; a new process pays again.

Here the same ``__init__`` runs once under ``jax.jit``, traced into one program and compiled
with XLA's backend optimisation level 1: the program runs once per shape, so compile time is
what counts, and the draws are integer threefry rounds and a few float ops per element (level 0
compiles faster still but fuses no multiply-adds, which leaves some values 1 ulp from eager). The
values are the eager ``__init__``'s bit for bit, and the ``Rngs`` passed in advance exactly as
they would (``tests/test_construct.py`` pins both against ``plain()``, which turns this off).
``benchmarks/startup.py`` measures a fresh-process ``Net()``.

Installed on ``model.Net`` and ``linen.Net`` when this module is imported, which the first use
of a name of ``flax_lenet`` (``flax_lenet.Net``, ``flax_lenet.train_step``, ...) and every module
that trains (``flax_lenet.fast``) do; ``from flax_lenet.model import Net`` alone keeps the plain
eager ``__init__`` (the same values, built op by op):
  * NNX: ``Net(...)`` builds through ``_build``. Subclasses, a ``Net()`` made inside a JAX
    transform (``nnx.eval_shape``, ``jax.jit``, ...) and arguments that cannot be static
    (unhashable values) take the plain eager path.
  * Linen: ``Net(...).init(key, x)`` is ``jax.jit(Module.init)`` with the same options, the idiom
    the Flax docs recommend for initialising a Linen model.
"""

import contextlib
import dataclasses
import functools
import threading

import jax
import numpy as np
from flax import nnx
from flax.nnx import graphlib

COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}   # run once: compile time is what counts


class _Switch(threading.local):
    plain = False      # True inside a compiled build (its own __init__ runs plainly) and in plain()


_switch = _Switch()


@contextlib.contextmanager
def plain():
    """Within: Nets are built by their plain eager ``__init__`` / ``Module.init``."""
    before, _switch.plain = _switch.plain, True
    try:
        yield
    finally:
        _switch.plain = before


def _traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _hashable(values) -> bool:
    try:
        hash(values)
    except TypeError:
        return False
    return True


_GRAPHDEFS: dict = {}     # spec -> the built module's graphdef (``_structure``), once per spec


@functools.partial(jax.jit, static_argnums=0, compiler_options=COMPILER_OPTIONS)
def _build_jit(spec, node_state):
    cls, treedef, static, where, node_def = spec
    nodes = nnx.merge(node_def, node_state)
    leaves = [value for _, value in static]
    for i, node in zip(where, nodes):
        leaves[i] = node
    args, kwargs = jax.tree.unflatten(treedef, leaves)
    with plain():
        model = cls(*args, **kwargs)
    return nnx.state(model), nnx.state(nodes)


def _structure(spec, nodes):
    """The graphdef ``cls(...)`` builds, traced abstractly on copies of the graph-node arguments."""
    cls, treedef, static, where, _ = spec

    def build():
        leaves = [value for _, value in static]
        for i, node in zip(where, nodes):
            leaves[i] = nnx.clone(node)
        args, kwargs = jax.tree.unflatten(treedef, leaves)
        with plain():
            return cls(*args, **kwargs)
    return nnx.graphdef(nnx.eval_shape(build))


def _build(cls, args, kwargs):
    """``cls(*args, **kwargs)`` in one compiled call, or ``None`` when it must be built plainly."""
    leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=graphlib.is_graph_node)
    where = tuple(i for i, leaf in enumerate(leaves) if graphlib.is_graph_node(leaf))
    # (type, value): equal values of other types (3 and 3.0, 1 and True) are other builds, each
    # checked by __init__ itself, never a cached build of the other
    static = tuple((None, None) if i in where else (type(leaf), leaf) for i, leaf in enumerate(leaves))
    nodes = [leaves[i] for i in where]
    node_def, node_state = nnx.split(nodes)
    spec = (cls, treedef, static, where, node_def)
    if not _hashable(spec) or _traced(node_state) or _traced([value for _, value in static]):
        return None
    state, node_state = _build_jit(spec, node_state)
    if spec not in _GRAPHDEFS:      # static structure cannot leave a jit as an output: trace it abstractly
        _GRAPHDEFS[spec] = _structure(spec, nodes)
    nnx.update(nodes, node_state)
    return nnx.merge(_GRAPHDEFS[spec], state)


def compile_construction(cls) -> None:
    """Make ``cls(...)`` (an NNX module class) build through one compiled call."""
    if "_pytree_meta_construct" in vars(cls):
        return                                              # installed already
    meta_construct = type(cls)._pytree_meta_construct      # the metaclass's: self.__init__(...)

    def construct(klass, self, *args, **kwargs):
        built = None if (klass is not cls or _switch.plain) else _build(cls, args, kwargs)
        if built is None:
            return meta_construct(klass, self, *args, **kwargs)
        for name, value in vars(built).items():
            object.__setattr__(self, name, value)

    cls._pytree_meta_construct = classmethod(construct)


_PLAIN_INIT: dict = {}    # Linen class -> its plain ``init``


@functools.partial(jax.jit, static_argnums=(0, 1, 2), compiler_options=COMPILER_OPTIONS)
def _init_jit(module, field_types, kwargs, rngs, *args):
    return _PLAIN_INIT[type(module)](module, rngs, *args, **dict(kwargs))


def _field_types(module) -> tuple:
    """The types of a Linen module's fields: ``Net(3.0)`` equals ``Net(3)`` (and hashes alike),
    so without them it would reuse the compiled init of ``Net(3)`` instead of being checked."""
    return tuple(type(getattr(module, f.name, None)) for f in dataclasses.fields(module))


def compile_init(cls) -> None:
    """Make ``cls(...).init(rngs, *arrays)`` (a Linen module class) one compiled call."""
    if cls in _PLAIN_INIT:
        return                                              # installed already
    plain_init = _PLAIN_INIT[cls] = cls.init

    @functools.wraps(plain_init)
    def init(self, rngs, *args, **kwargs):
        kwargs_items = tuple(sorted(kwargs.items()))
        arrays = all(isinstance(a, (jax.Array, np.ndarray)) for a in jax.tree.leaves(args))
        if (type(self) is not cls or _switch.plain or not arrays or not _hashable((self, kwargs_items))
                or _traced((rngs, args))):
            return plain_init(self, rngs, *args, **kwargs)
        return _init_jit(self, _field_types(self), kwargs_items, rngs, *args)

    cls.init = init


def _install() -> None:
    from flax_lenet import linen, model
    compile_construction(model.Net)
    compile_init(linen.Net)


_install()
