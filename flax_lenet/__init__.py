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

from flax_lenet import convert as convert
from flax_lenet import functional as functional
from flax_lenet import linen as linen
from flax_lenet import model as model
from flax_lenet import optim as optim
from flax_lenet.convert import flax_to_torch as flax_to_torch
from flax_lenet.convert import torch_to_flax as torch_to_flax
from flax_lenet.errors import BadInput as BadInput
from flax_lenet.model import Net as Net
from flax_lenet.train import loss_fn as loss_fn
from flax_lenet.train import sgd_update as sgd_update
from flax_lenet.train import train_step as train_step
from flax_lenet.train import train_steps as train_steps

from flax_lenet import construct as _construct

# One compiled call builds a Net's parameters, instead of one compilation per eager op: a fresh
# process gets its Net at once (``flax_lenet.construct``; values identical to the plain __init__).
_construct.compile_construction(model.Net)
_construct.compile_init(linen.Net)

__version__ = "0.1.0"
