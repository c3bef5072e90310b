"""The PyTorch tutorial's ``Net``, kept as the reference the Flax port is checked against."""

from torch_reference.model import Net as Net
from torch_reference.train import manual_sgd_update as manual_sgd_update
from torch_reference.train import sgd_step as sgd_step
