"""The PyTorch "Neural Networks" tutorial's ``Net`` in JAX/Flax, with proof that it matches torch.

Public API:
  Net            the Net in Flax NNX (``flax_lenet.linen.Net`` and ``flax_lenet.functional``
                 are the Linen and pure-function flavours)
  loss_fn        the tutorial's ``criterion(net(input), target)`` with ``nn.MSELoss()``
  train_step     one ``nnx.jit``-compiled optimizer step, as Flax's own examples write it
  sgd_update     the manual rule ``w - lr * g`` on a parameter tree
  torch_to_flax, flax_to_torch   exact weight conversion (``flax_lenet.convert``)
  BadInput       the base of every error that means "the input was wrong" (``flax_lenet.errors``)

Modules:
  model, linen, functional, initializers, train   the teaching files: the Net in three flavours,
                                                  torch-style initialisation, the training step
  convert, optim, accumulate                      weights and layouts; torch.optim as optax
  fast                                            speed, opt-in: ``fast.train_step`` is ``train_step``
                                                  faster on CPU (pinned to it by tests)
  parallel, cache, checks, errors                 data parallelism, JAX's persistent compilation
                                                  cache, input checks, error kinds
  porting                                         the harness for any torch model and its Flax port
  app                                             the ``flax-lenet`` command (never imported by the rest)

Importing ``flax_lenet`` changes no global state. The names above are loaded on first use
(PEP 562, a module ``__getattr__``), so ``import flax_lenet`` alone imports neither jax nor torch
and ``flax-lenet --help`` starts at once.
"""

import importlib

_NAMES = {"Net": "model", "loss_fn": "train", "train_step": "train", "sgd_update": "train",
          "torch_to_flax": "convert", "flax_to_torch": "convert", "BadInput": "errors"}
_SUBMODULES = ("convert", "fast", "functional", "initializers", "linen", "model", "optim", "train")
__all__ = [*_NAMES, *_SUBMODULES]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"flax_lenet.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"flax_lenet.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'flax_lenet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
