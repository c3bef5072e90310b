"""Small torch models and their Flax ports, written for the harness's tests and the porting guide.

Each ``make_*`` returns ``(torch_model, flax_model, inputs, options)``: ``options`` are the extra
``parity.check`` arguments the port needs (a loss, a declared flatten, an input layout). Each
port follows the pitfalls table in docs/porting.md; the ``broken`` argument builds the
port as it is easy to get wrong, which the harness must report as failing. Each Flax port is built
with ``nnx.eval_shape`` (shapes only, no initialiser runs): ``parity.check`` replaces every weight
with torch's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax import nnx

from flax_lenet.porting.modules import TorchBatchNorm   # torch's BatchNorm in NNX, used by FlaxCNN


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
    return TorchCNN(), nnx.eval_shape(lambda: FlaxCNN(broken=broken, rngs=nnx.Rngs(0))), x, {"loss": "mse"}


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
    flax_model = nnx.eval_shape(lambda: FlaxBlock(broken=broken, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0)))
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
    flax_model = nnx.eval_shape(lambda: FlaxAutoencoder(rngs=nnx.Rngs(0)))
    return TorchAutoencoder(), flax_model, x, {"tamper": unflip_up_kernel if broken else None}


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
    return TorchConv1d(), nnx.eval_shape(lambda: FlaxConv1d(rngs=nnx.Rngs(0))), x, options




# --- 5. a transformer block with nn.MultiheadAttention (flax_lenet.porting.attention's rule) ------

class TorchTransformer(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 4, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):                              # (N, T) integers
        x = self.embed(tokens)                              # (N, T, d)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))   # exact (erf) GELU
        return self.head(x.mean(dim=1))                     # (N, classes)


class FlaxTransformer(nnx.Module):
    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 4, classes: int = 5, *, broken: str | None = None,
                 param_dtype=jnp.float32, attention_fn=nnx.dot_product_attention, rngs: nnx.Rngs):
        eps = 1e-6 if broken == "epsilon" else 1e-5          # broken: Flax's LayerNorm default 1e-6
        self.embed = nnx.Embed(vocab, d, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        # attention_fn: the default computes its softmax in float32 even for float64 inputs (pitfalls table)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, attention_fn=attention_fn, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(self.norm1(x))                    # self-attention: key = value = query
        x = x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        return self.head(x.mean(axis=1))


def swap_key_value(state, variables):
    """A broken port: the attention's key and value projections swapped, as a rule splitting q|k|v wrongly would."""
    params = variables["params"]
    for leaf in ("kernel", "bias"):
        params[f"attn.key/{leaf}"], params[f"attn.value/{leaf}"] = params[f"attn.value/{leaf}"], params[f"attn.key/{leaf}"]


def make_transformer(broken: str | None = None, batch: int = 4, dtype: str = "float32"):
    """``broken``: ``'kv'`` (key and value swapped) or ``'epsilon'`` (LayerNorm epsilon 1e-6)."""
    from flax_lenet.porting.attention import attention_in_input_dtype
    torch.manual_seed(0)
    tokens = np.random.default_rng(1).integers(0, 32, (batch, 6))
    attention_fn = attention_in_input_dtype if dtype == "float64" else nnx.dot_product_attention
    flax_model = nnx.eval_shape(lambda: FlaxTransformer(broken=broken, param_dtype=jnp.dtype(dtype),
                                                        attention_fn=attention_fn, rngs=nnx.Rngs(0)))
    return TorchTransformer(), flax_model, tokens, {"loss": "cross_entropy",
                                                     "tamper": swap_key_value if broken == "kv" else None}


# --- 6. an LSTM text classifier: Embedding, LSTM(batch_first=True), the last step, Linear -------

class TorchLSTMClassifier(nn.Module):
    """Tokens -> nn.Embedding -> nn.LSTM(batch_first=True) -> the last step's output -> nn.Linear.

    ``bias_hh_l0`` starts at zero and is frozen: nnx.LSTMCell has one bias per gate where torch
    adds two, so the port stores their sum, and with both trained each optimizer step would move
    that sum by two updates where the Flax bias moves by one (pitfalls table). ``two_biases=True``
    trains both, as torch does by default.
    """

    def __init__(self, vocab: int = 16, d: int = 6, hidden: int = 5, classes: int = 3, *, two_biases: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        if not two_biases:
            with torch.no_grad():
                self.lstm.bias_hh_l0.zero_()
            self.lstm.bias_hh_l0.requires_grad_(False)

    def forward(self, tokens):                              # (N, T) integers
        out, _ = self.lstm(self.embed(tokens))              # (N, T, hidden)
        return self.head(out[:, -1])                        # (N, classes)


class FlaxLSTMClassifier(nnx.Module):
    def __init__(self, vocab: int = 16, d: int = 6, hidden: int = 5, classes: int = 3, *,
                 broken: str | None = None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, param_dtype=param_dtype, rngs=rngs)
        # nnx.RNN takes (N, T, d) as torch's batch_first=True; broken: time_major, a scan over the batch
        # param_dtype: the LSTM's carry (zeros) is made in it, whatever weights are loaded later
        self.lstm = nnx.RNN(nnx.LSTMCell(d, hidden, param_dtype=param_dtype, rngs=rngs),
                            time_major=broken == "time_major")
        self.head = nnx.Linear(hidden, classes, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[:, -1])


def make_lstm_classifier(broken: str | None = None, batch: int = 4, dtype: str = "float32"):
    """``broken``: 'time_major' (the Flax port scans over the batch axis) or 'two_biases' (torch
    trains both of its LSTM biases, which one Flax bias cannot follow)."""
    torch.manual_seed(0)
    tokens = np.random.default_rng(1).integers(0, 16, (batch, 7))
    flax_model = nnx.eval_shape(lambda: FlaxLSTMClassifier(broken=broken, param_dtype=jnp.dtype(dtype),
                                                          rngs=nnx.Rngs(0)))
    return TorchLSTMClassifier(two_biases=broken == "two_biases"), flax_model, tokens, {"loss": "cross_entropy"}


ARCHITECTURES = {"cnn": make_cnn, "block": make_block, "autoencoder": make_autoencoder, "conv1d": make_conv1d,
                 "transformer": make_transformer, "lstm": make_lstm_classifier}


def flax_lstm_scanning_the_batch():
    """The LSTM classifier's broken port as a zero-argument factory, for ``flax-lenet compare --flax``."""
    return FlaxLSTMClassifier(broken="time_major", rngs=nnx.Rngs(0))
