"""The PyTorch "Neural Networks" tutorial's ``Net`` in JAX/Flax, with proof that it matches torch.

Public API:
  Net            the Net in Flax NNX (``flax_lenet.linen.Net`` and ``flax_lenet.functional``
                 are the Linen and pure-function flavours)
  loss_fn        the tutorial's ``criterion(net(input), target)`` with ``nn.MSELoss()``
  train_step     one jit-compiled optimizer step (on CPU with a block-wise forward, ``fast``)
  train_steps    K of those steps in one compiled call (``lax.scan``), for many small batches
  sgd_update     the manual rule ``w - lr * g`` on a parameter tree
  torch_to_flax, flax_to_torch   exact weight conversion (``flax_lenet.convert``)
  BadInput       the base of every error that means "the input was wrong" (``flax_lenet.errors``)

Library modules (none of them imports torch, orbax, scikit-learn, matplotlib or tqdm when
imported; torch is loaded inside the functions that run the reference):
  model, linen, functional, initializers   the Net in three flavours; torch-style initialisation
  train, fast                              the training step; its CPU block-wise forward
  convert, optim, accumulate               weights and layouts; torch.optim as optax
  parity, trajectory, tolerances           torch-vs-Flax comparison (``parity.check``: any torch
                                           model and its Flax port), N-step runs, tolerance tiers
  port, pitfalls                           weights of any model by module path and layer type;
                                           the porting pitfalls, each with its twin test
  hooks, graph                             torch hooks <-> Flax interception, grad_fn chain <-> jaxpr
  parallel, cache, checks, errors          data parallelism, compilation cache, input checks
  construct, no_dynamo                     a Net built in one compiled call; torch.optim without
                                           torch._dynamo (start-up time, both pinned by tests)
The application (the ``flax-lenet`` command, training runs, checkpoints, data sets, the
benchmark harness and the docs generator) lives in ``flax_lenet.app`` and is never imported
by the library.
"""

# The names below are loaded on first use (PEP 562, a module ``__getattr__``): ``import flax_lenet``
# itself imports nothing heavy, so ``flax-lenet`` (``flax_lenet.app.cli``) can take over Ctrl-C
# before jax is imported, and ``flax-lenet --help`` starts in a fraction of a second. The first
# name used also imports ``flax_lenet.construct``, which makes ``Net(...)`` and the Linen
# ``Net().init`` one compiled call each (values identical to the plain ``__init__``).
import importlib

_SUBMODULES = ("convert", "functional", "linen", "model", "optim")
_NAMES = {"flax_to_torch": "convert", "torch_to_flax": "convert", "BadInput": "errors", "Net": "model",
          "loss_fn": "train", "sgd_update": "train", "train_step": "train", "train_steps": "train"}
__all__ = [*_SUBMODULES, *_NAMES]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _SUBMODULES or (name in _NAMES and name != "BadInput"):
        importlib.import_module("flax_lenet.construct")      # installs itself on the Nets
    if name in _SUBMODULES:
        return importlib.import_module(f"flax_lenet.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"flax_lenet.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flax_lenet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
