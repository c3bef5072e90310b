"""The PyTorch "Neural Networks" tutorial's ``Net`` in JAX/Flax, with proof that it matches torch.

Public API:
  Net            the Net in Flax NNX (``flax_lenet.linen.Net`` and ``flax_lenet.functional``
                 are the Linen and pure-function flavours)
  train_step     one jit-compiled SGD step with the tutorial's MSE loss
  sgd_update     the manual rule ``w - lr * g`` on a parameter tree
  torch_to_flax, flax_to_torch   exact weight conversion (``flax_lenet.convert``)

Modules:
  convert, tolerances, parity     conversion, tolerance tiers, the torch-vs-Flax comparison
  optim, accumulate, trajectory   torch.optim as optax, torch-style accumulation, N-step runs
  hooks, graph                    torch hooks <-> Flax interception, grad_fn chain <-> jaxpr
  data, training, checkpoint      digits/MNIST, side-by-side training, .pt/.safetensors/Orbax
  layers, fused                   CPU lowerings: per layer, and train_step's block-wise forward
  parallel, cache                 data-parallel step, compilation cache
"""

from flax_lenet import checkpoint as checkpoint
from flax_lenet import convert as convert
from flax_lenet import data as data
from flax_lenet import functional as functional
from flax_lenet import fused as fused
from flax_lenet import graph as graph
from flax_lenet import hooks as hooks
from flax_lenet import layers as layers
from flax_lenet import linen as linen
from flax_lenet import optim as optim
from flax_lenet import parallel as parallel
from flax_lenet import trajectory as trajectory
from flax_lenet import training as training
from flax_lenet.convert import flax_to_torch as flax_to_torch
from flax_lenet.convert import torch_to_flax as torch_to_flax
from flax_lenet.model import Net as Net
from flax_lenet.train import loss_fn as loss_fn
from flax_lenet.train import sgd_update as sgd_update
from flax_lenet.train import train_step as train_step

__version__ = "0.1.0"
