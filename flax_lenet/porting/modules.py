"""NNX layers that compute what a torch layer computes where Flax's own layer does not.

  TorchBatchNorm   ``nn.BatchNorm1d/2d/3d``: torch's momentum and its unbiased running variance
  TorchGRUCell     ``nn.GRU``'s cell, with the hidden n-gate bias ``b_hn`` that ``nnx.GRUCell`` lacks

Both hold the variables ``flax_lenet.porting.port`` converts to (``port.load`` fills them):
TorchBatchNorm's ``scale``, ``bias`` and ``mean``, ``var`` take BatchNorm's ``weight``, ``bias``,
``running_mean``, ``running_var``; TorchGRUCell's ``dense_i`` and ``dense_h`` take
``weight_ih``/``bias_ih`` and ``weight_hh``/``bias_hh`` (``recurrent.GRU_TORCH_CELL``).
"""

import jax
import jax.numpy as jnp
from flax import nnx


class TorchBatchNorm(nnx.Module):
    """``nn.BatchNorm{1,2,3}d`` in NNX: channels last, torch's momentum and running variance.

    torch: ``running = (1 - momentum) * running + momentum * batch`` with ``momentum=0.1``, and
    the running variance takes the *unbiased* batch variance (``n / (n - 1)``), while the
    normalisation uses the biased one (https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html).
    ``nnx.BatchNorm(momentum=0.9)`` matches the first, never the second.

    ``model.train()`` / ``model.eval()`` (and ``nnx.view(model, use_running_average=...)``) switch
    ``use_running_average`` as they do for ``nnx.BatchNorm``; ``__call__(x, use_running_average=...)``
    overrides it for one call. torch's ``momentum=None`` (a cumulative average) is not supported.
    """

    def __init__(self, features: int, *, momentum: float = 0.1, eps: float = 1e-5, unbiased: bool = True,
                 use_running_average: bool = False, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((features,), param_dtype))
        self.momentum, self.eps, self.unbiased = momentum, eps, unbiased
        self.use_running_average = use_running_average

    def set_view(self, use_running_average: bool | None = None):
        """Used by ``nnx.view``: ``use_running_average=True`` normalises with the running statistics."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x, use_running_average: bool | None = None):
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average:
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


def _torch_uniform(hidden_features: int):
    """torch's recurrent init: every weight and bias from U(-1/sqrt(H), 1/sqrt(H))."""
    bound = hidden_features ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class TorchGRUCell(nnx.RNNCellBase):
    """``nn.GRU``'s cell for ``nnx.RNN``: torch's equations, both biases included.

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    (https://pytorch.org/docs/stable/generated/torch.nn.GRU.html). ``nnx.GRUCell`` has the same
    layout without ``dense_h``'s bias, so it has no ``b_hn``
    (https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/recurrent.html).
    ``dense_i``: kernel ``[in, 3H]`` and bias ``[3H]`` (torch's ``weight_ih.T``, ``bias_ih``);
    ``dense_h``: kernel ``[H, 3H]`` and bias ``[3H]`` (``weight_hh.T``, ``bias_hh``); gates r, z, n
    in torch's order. Initialised as torch does, U(-1/sqrt(H), 1/sqrt(H)); the carry starts at
    zeros, as torch's ``h0``, in the dtype of the loaded ``dense_h`` kernel.
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.in_features, self.hidden_features = in_features, hidden_features
        init = _torch_uniform(hidden_features)
        self.dense_i = nnx.Linear(in_features, 3 * hidden_features, kernel_init=init, bias_init=init,
                                  param_dtype=param_dtype, rngs=rngs)
        self.dense_h = nnx.Linear(hidden_features, 3 * hidden_features, kernel_init=init, bias_init=init,
                                  param_dtype=param_dtype, rngs=rngs)

    def __call__(self, carry, inputs):
        h = carry
        xi_r, xi_z, xi_n = jnp.split(self.dense_i(inputs), 3, axis=-1)
        hh_r, hh_z, hh_n = jnp.split(self.dense_h(h), 3, axis=-1)    # hh_n = W_hn h + b_hn
        r = jax.nn.sigmoid(xi_r + hh_r)
        z = jax.nn.sigmoid(xi_z + hh_z)
        n = jnp.tanh(xi_n + r * hh_n)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h

    def initialize_carry(self, input_shape, rngs=None):
        """Zeros ``[*batch, H]`` for an input step of shape ``[*batch, in_features]`` (``rngs`` unused)."""
        return jnp.zeros((*input_shape[:-1], self.hidden_features), self.dense_h.kernel[...].dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1
