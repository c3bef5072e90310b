"""The PyTorch "Neural Networks" tutorial's ``Net`` in JAX/Flax, with proof that it matches torch.

Public API:
  Net            the Net in Flax NNX (``flax_lenet.linen.Net`` and ``flax_lenet.functional``
                 are the Linen and pure-function flavours)
  train_step     one jit-compiled SGD step with the tutorial's MSE loss
  sgd_update     the manual rule ``w - lr * g`` on a parameter tree
  torch_to_flax, flax_to_torch   exact weight conversion (``flax_lenet.convert``)
"""

from flax_lenet import convert as convert
from flax_lenet import functional as functional
from flax_lenet import linen as linen
from flax_lenet.convert import flax_to_torch as flax_to_torch
from flax_lenet.convert import torch_to_flax as torch_to_flax
from flax_lenet.model import Net as Net
from flax_lenet.train import loss_fn as loss_fn
from flax_lenet.train import sgd_update as sgd_update
from flax_lenet.train import train_step as train_step

__version__ = "0.1.0"

# issue 4: the hooks ↔ interception mapping and the loss graph in both frameworks
from flax_lenet import graph as graph  # noqa: E402
from flax_lenet import hooks as hooks  # noqa: E402
# issue 3: torch.optim-named optimizers (flax_lenet.optim.sgd/adam/adamw) and multi-step parity
# runs; torch-style gradient accumulation is flax_lenet.accumulate.accumulate
from flax_lenet import optim as optim  # noqa: E402
from flax_lenet import trajectory as trajectory  # noqa: E402
# issue 5: real data, side-by-side training, checkpoints (see each module's docstring)
from flax_lenet import checkpoint as checkpoint  # noqa: E402
from flax_lenet import data as data  # noqa: E402
from flax_lenet import training as training  # noqa: E402
from flax_lenet import layers as layers  # noqa: E402  fast conv/pool lowerings behind the layers
from flax_lenet import parallel as parallel  # noqa: E402  data-parallel over a batch Mesh
