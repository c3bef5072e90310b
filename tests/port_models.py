"""Small torch models and their Flax ports, written for the harness's tests and the porting guide.

Each ``make_*`` returns ``(torch_model, flax_model, inputs, options)``: ``options`` are the extra
``parity.check`` arguments the port needs (a loss, a declared flatten, an input layout). Each
port follows the pitfalls table in docs/port_your_model.md; the ``broken`` argument builds the
port as it is easy to get wrong, which the harness must report as failing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax import nnx


# --- BatchNorm as torch computes it ------------------------------------------------------------

class TorchBatchNorm(nnx.Module):
    """``nn.BatchNorm{1,2}d`` in NNX: channels last, torch's momentum and running variance.

    torch: ``running = (1 - momentum) * running + momentum * batch`` with ``momentum=0.1``, and
    the running variance takes the *unbiased* batch variance (``n / (n - 1)``), while the
    normalisation uses the biased one (https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html).
    ``nnx.BatchNorm(momentum=0.9)`` matches the first, never the second.
    """

    def __init__(self, features: int, *, momentum: float = 0.1, eps: float = 1e-5, unbiased: bool = True):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.mean = nnx.BatchStat(jnp.zeros((features,)))
        self.var = nnx.BatchStat(jnp.ones((features,)))
        self.momentum, self.eps, self.unbiased = momentum, eps, unbiased
        self.use_running_average = False

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean, var = x.mean(axes), x.var(axes)
            n = x.size // x.shape[-1]
            running_var = var * n / (n - 1) if self.unbiased else var
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * running_var
        return (x - mean) / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]


# --- 1. a CNN with BatchNorm2d, Dropout and an adaptive average pool --------------------------

class TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        # no conv bias before a BatchNorm: its gradient is 0 in exact arithmetic (pitfalls table)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):                                   # (N, 3, 16, 16)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)    # (N, 8, 8, 8)
        x = F.relu(self.bn2(self.conv2(x)))                     # (N, 16, 8, 8)
        x = F.adaptive_avg_pool2d(self.drop(x), 1)              # (N, 16, 1, 1)
        return self.fc(torch.flatten(x, 1))                     # (N, 10)


class FlaxCNN(nnx.Module):
    def __init__(self, *, broken: bool = False, rngs: nnx.Rngs):
        def norm(c):       # broken: Flax's default BatchNorm, momentum 0.99 (torch: 0.1, i.e. Flax 0.9)
            return nnx.BatchNorm(c, rngs=rngs) if broken else TorchBatchNorm(c)
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = norm(8)
        self.conv2 = nnx.Conv(8, 16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn2 = norm(16)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):                                  # (N, 16, 16, 3)
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), strides=(2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = self.drop(x).mean(axis=(1, 2))                  # adaptive_avg_pool2d(x, 1): the mean over H, W
        return self.fc(x)


def make_cnn(broken: bool = False, batch: int = 4, dtype: str = "float32"):
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((batch, 3, 16, 16))
    return TorchCNN(), FlaxCNN(broken=broken, rngs=nnx.Rngs(0)), x, {"loss": "mse"}


# --- 2. a tiny transformer block: Embedding, LayerNorm, GELU, attention -----------------------

class TorchBlock(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):                              # (N, T) integers
        x = self.embed(tokens)                              # (N, T, d)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))   # exact (erf) GELU
        return self.head(x.mean(dim=1))                     # (N, classes)


class FlaxBlock(nnx.Module):
    def __init__(self, vocab: int = 32, d: int = 16, classes: int = 5, *, broken: str | None = None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        eps = 1e-6 if broken == "epsilon" else 1e-5          # broken: Flax's LayerNorm default 1e-6
        # nnx.Embed computes in the dtype it was built with, whatever weights are loaded later
        self.embed = nnx.Embed(vocab, d, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.proj = nnx.Linear(d, d, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, classes, rngs=rngs)
        self.approximate = broken == "gelu"                  # broken: jax.nn.gelu's default (tanh)

    def __call__(self, tokens):
        x = self.embed(tokens)
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        att = jax.nn.softmax(q @ jnp.swapaxes(k, -2, -1) / q.shape[-1] ** 0.5, axis=-1)
        x = x + self.proj(att @ v)
        x = x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=self.approximate))
        return self.head(x.mean(axis=1))


def make_block(broken: str | None = None, batch: int = 4, dtype: str = "float32"):
    torch.manual_seed(0)
    tokens = np.random.default_rng(1).integers(0, 32, (batch, 6))
    flax_model = FlaxBlock(broken=broken, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    return TorchBlock(), flax_model, tokens, {"loss": "cross_entropy"}


# --- 3. a convolutional autoencoder: stride-2 Conv2d, GroupNorm, ConvTranspose2d ---------------

class TorchAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(2, 8, 4, stride=2, padding=1)           # 8x8 -> 4x4
        self.norm = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 2, 4, stride=2, padding=1)    # 4x4 -> 8x8

    def forward(self, x):
        return self.up(F.relu(self.norm(self.down(x))))


class FlaxAutoencoder(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.down = nnx.Conv(2, 8, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), rngs=rngs)
        self.norm = nnx.GroupNorm(8, num_groups=2, epsilon=1e-5, rngs=rngs)
        # torch's ConvTranspose2d(padding=p) is a convolution of the dilated input padded by k - 1 - p
        self.up = nnx.ConvTranspose(8, 2, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), rngs=rngs)

    def __call__(self, x):
        return self.up(nnx.relu(self.norm(self.down(x))))


def unflip_up_kernel(state, variables):
    """A broken port: ``up``'s kernel transposed but not flipped, as a plain conv rule would."""
    variables["params"]["up/kernel"] = np.ascontiguousarray(state["up.weight"].transpose(2, 3, 0, 1))


def make_autoencoder(broken: bool = False, batch: int = 3, dtype: str = "float32"):
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((batch, 2, 8, 8))
    return TorchAutoencoder(), FlaxAutoencoder(rngs=nnx.Rngs(0)), x, {"tamper": unflip_up_kernel if broken else None}


# --- 4. a Conv1d classifier: the flatten of an (N, C, L) map, declared ---------------------------

class TorchConv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3)                      # (N, 3, 12) -> (N, 6, 10)
        self.fc = nn.Linear(60, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class FlaxConv1d(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 6, (3,), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(60, 4, rngs=rngs)

    def __call__(self, x):                                  # (N, L, C)
        x = nnx.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], -1))           # (L, C) order


def make_conv1d(broken: bool = False, batch: int = 4, dtype: str = "float32"):
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((batch, 3, 12))
    # a 3-D map is not flattened by rule (it could be a sequence): declare its (C, L)
    options = {"flatten": None if broken else {"fc": (6, 10)},
               "flax_input": lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))}
    return TorchConv1d(), FlaxConv1d(rngs=nnx.Rngs(0)), x, options


ARCHITECTURES = {"cnn": make_cnn, "block": make_block, "autoencoder": make_autoencoder, "conv1d": make_conv1d}
