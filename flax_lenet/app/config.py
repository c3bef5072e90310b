"""The configuration of a side-by-side training run: ``flax-lenet train``'s flags and their defaults.

Apart from ``training`` (which imports jax, flax and optax) so that the command line can show its
defaults, and refuse a bad flag, without importing them.
"""

from dataclasses import dataclass

import numpy as np

from flax_lenet.errors import BadConfig

LOSSES = ("ce", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """One side-by-side training run; ``flax-lenet train`` flags override these defaults."""
    epochs: int = 20                # passes over the training set
    batch_size: int = 32            # the last partial batch is dropped (torch: drop_last=True)
    lr: float = 0.02                # SGD learning rate
    momentum: float = 0.9           # SGD momentum (torch and optax agree exactly with dampening 0)
    lr_decay_at: float = 0.7        # lr x 0.1 from this fraction of the epochs on (1.0: never)
    shift: int = 2                  # random shifts of -2..2 pixels per image and epoch (0: none)
    loss: str = "ce"                # 'ce': cross-entropy; 'mse': the tutorial's MSELoss on one-hot targets
    seed: int = 0                   # initial weights (torch.manual_seed) and batch order (numpy)
    dtype: str = "float32"          # 'float64' needs jax_enable_x64
    kernel_size: int = 3            # 3: the seed's Net; 5: today's tutorial
    max_steps_per_epoch: int | None = None  # cap on batches per epoch (smoke tests)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "shift", "seed", "kernel_size", "max_steps_per_epoch"):
            value = getattr(self, name)
            if name == "max_steps_per_epoch" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise BadConfig(f"{name}: expected an integer, found {type(value).__name__} {value!r}")
        for name in ("lr", "momentum", "lr_decay_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise BadConfig(f"{name}: expected a number, found {type(value).__name__} {value!r}")
        if self.kernel_size not in (3, 5):
            raise BadConfig(f"kernel_size: expected 3 or 5, found {self.kernel_size}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise BadConfig(f"max_steps_per_epoch: expected a positive integer or None, "
                            f"found {self.max_steps_per_epoch}")
        if self.seed >= 2 ** 64:
            raise BadConfig(f"seed: expected an integer below 2**64 (torch.manual_seed takes 64 bits), "
                            f"found {self.seed}")
        if self.loss not in LOSSES:
            raise BadConfig(f"loss: expected one of {LOSSES}, found {self.loss!r}")
        if self.dtype not in ("float32", "float64"):
            raise BadConfig(f"dtype: expected 'float32' or 'float64', found {self.dtype!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise BadConfig(f"{name}: expected a positive integer, found {getattr(self, name)}")
        if not 0.0 <= self.lr_decay_at <= 1.0:
            raise BadConfig(f"lr_decay_at: expected a fraction in [0, 1], found {self.lr_decay_at}")
        if not 0 <= self.shift <= 8:
            raise BadConfig(f"shift: expected 0..8 pixels, found {self.shift}")
        if self.seed < 0:
            raise BadConfig(f"seed: expected a non-negative integer, found {self.seed}")
        if not 0.0 <= self.momentum < 1.0:
            raise BadConfig(f"momentum: expected 0 <= momentum < 1, found {self.momentum}")
        if not 0 < self.lr < float("inf"):
            raise BadConfig(f"lr: expected a positive, finite learning rate, found {self.lr}")
