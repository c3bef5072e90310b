"""The porting pitfalls table: where a PyTorch -> Flax port goes wrong by default, and the fix.

Each row names the test that proves it (``tests/test_pitfalls.py``): the default port differs
from torch by more than the project's tolerance (``flax_lenet.porting.tolerances``) and the stated fix
brings it within. docs/port_your_model.md prints this table; ``tests/test_pitfalls.py`` checks
that every row has its test.

Framework facts cited: PyTorch https://pytorch.org/docs/stable/nn.html (BatchNorm2d, LayerNorm,
GELU, Conv2d, AvgPool2d, Dropout, Embedding, ConvTranspose2d), torch.optim.Adam;
Flax https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/nn/index.html; optax
https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adam.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Pitfall:
    name: str        # the test is tests/test_pitfalls.py::test_<name>
    layer: str
    torch: str       # what torch does
    flax: str        # what the Flax default does
    fix: str

    @property
    def test(self) -> str:
        return f"tests/test_pitfalls.py::test_{self.name}"


PITFALLS = (
    Pitfall("batchnorm_momentum", "BatchNorm",
            "running = 0.9 * running + 0.1 * batch (momentum=0.1)",
            "nnx.BatchNorm momentum=0.99 weighs the old value: running = 0.99 * running + 0.01 * batch",
            "momentum=0.9 (Flax's momentum is 1 - torch's)"),
    Pitfall("batchnorm_running_var", "BatchNorm",
            "the running variance takes the unbiased batch variance (n / (n - 1)); normalising uses the biased one",
            "nnx.BatchNorm puts the biased variance into its running average",
            "flax_lenet.porting.modules.TorchBatchNorm, which updates with var * n / (n - 1)"),
    Pitfall("batchnorm_train_eval", "BatchNorm",
            "net.eval() normalises with the running statistics",
            "nnx.BatchNorm uses batch statistics until told otherwise (use_running_average=False)",
            "model.eval() before comparing eval outputs, model.train() for training"),
    Pitfall("layernorm_epsilon", "LayerNorm",
            "eps=1e-5",
            "nnx.LayerNorm epsilon=1e-6",
            "epsilon=1e-5"),
    Pitfall("gelu_exact", "GELU",
            "F.gelu / nn.GELU is exact (erf) unless approximate='tanh'",
            "jax.nn.gelu approximates with tanh by default (approximate=True)",
            "jax.nn.gelu(x, approximate=False)"),
    Pitfall("same_padding_stride_2", "Conv2d",
            "padding=1 pads one row and column on each side",
            "padding='SAME' pads the odd total at the end: with stride 2, kernel 3 and an even input, "
            "(0, 1) instead of (1, 1)",
            "explicit padding ((1, 1), (1, 1)); SAME equals torch's symmetric padding only when the total is even"),
    Pitfall("avgpool_count_include_pad", "AvgPool2d",
            "with padding > 0 and count_include_pad=False, a window on the border is divided by its cells "
            "inside the image; the default, count_include_pad=True, divides by the whole window, padding "
            "included",
            "nnx.avg_pool's default is count_include_pad=True too, so only a torch layer that sets "
            "count_include_pad=False (and pads) differs: Flax still divides by the whole window",
            "nnx.avg_pool(..., count_include_pad=False) where the torch layer sets it; nothing to do for "
            "torch's default"),
    Pitfall("dropout_eval", "Dropout",
            "identity in eval mode; masks from torch's RNG in train mode",
            "nnx.Dropout drops unless deterministic; JAX's RNG never gives torch's masks",
            "compare in eval mode (model.eval()); parity.check trains with Dropout off on both sides"),
    Pitfall("embedding_padding_idx", "Embedding",
            "padding_idx's row gets no gradient",
            "nnx.Embed has no padding_idx: that row is trained like any other",
            "stop the gradient of the padding row: jnp.where(tokens[..., None] == pad, "
            "jax.lax.stop_gradient(e), e)"),
    Pitfall("conv_transpose_flip", "ConvTranspose2d",
            "weight [I, O, kH, kW], applied as the gradient of a convolution (the kernel flipped in space)",
            "nnx.ConvTranspose (transpose_kernel=False) correlates with its kernel as stored, [kH, kW, I, O]",
            "flip the kernel's spatial axes in the conversion (flax_lenet.porting.port does) and pad k - 1 - p per side"),
    Pitfall("adam_bias_correction_float32", "Adam",
            "bias corrections 1 - beta**t in Python floats (double), applied as step_size = lr / (1 - b1**t) "
            "on m and denominator sqrt(v) / sqrt(1 - b2**t) + eps",
            "optax.adam (and optax.adamw) compute 1 - beta**t in float32, where 1 - 0.999**1 loses 1.3e-5 of its "
            "value to cancellation, and divide m and v by it before sqrt(v_hat) + eps: the same equation "
            "(eps outside the square root) in another rounding order",
            "flax_lenet.optim.adam and optim.adamw (AMSGrad or not) use neither optax step: 1 - beta**t is "
            "-expm1(t * log(beta)) in float32 and enters in torch's order, lr / (1 - b1**t) on m and eps "
            "added to sqrt(v) / sqrt(1 - b2**t); 10 Adam steps stay within parity.check's float32 steps tier"),
    Pitfall("bias_before_batchnorm", "Conv2d + BatchNorm",
            "a conv bias followed by BatchNorm has gradient 0 in exact arithmetic",
            "both frameworks return rounding noise there: noise against noise fails any relative tolerance, and "
            "Adam divides it by its own size into full steps",
            "parity.check finds such gradients in a float64 run and judges them by size (ok0), out of the steps; "
            "or bias=False / use_bias=False, as is usual before BatchNorm"),
    Pitfall("embed_dtype_fixed_at_build", "Embedding",
            "computes in the dtype of its weight",
            "nnx.Embed computes in the dtype it was built with (dtype defaults to param_dtype), "
            "whatever weights are loaded later",
            "build with param_dtype=float64 for a float64 check (parity.check prints a notice)"),
    Pitfall("rnn_two_biases", "LSTM, GRU",
            "each gate adds two trained biases, b_ih + b_hh: an optimizer step moves their sum by two updates",
            "nnx.LSTMCell and nnx.GRUCell have one bias per gate: loading bias_ih alone drops b_hh, "
            "and a step moves the one bias by one update",
            "convert b_ih + b_hh (flax_lenet.porting.recurrent does); to train step for step like torch, "
            "keep torch's bias_hh zero and frozen, or use a cell with both biases "
            "(flax_lenet.porting.modules.TorchGRUCell)"),
    Pitfall("gru_b_hn", "GRU",
            "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the reset gate scales b_hn",
            "nnx.GRUCell has no hidden bias: n = tanh(W_in x + b_in + r * W_hn h), and b_hn cannot be "
            "folded into b_in",
            "flax_lenet.porting.modules.TorchGRUCell, converted by flax_lenet.porting.recurrent.GRU_TORCH_CELL "
            "(recurrent.GRU, to nnx.GRUCell, refuses a nonzero b_hn)"),
    Pitfall("attention_softmax_float32", "MultiheadAttention",
            "float64 attention computes in float64 (measured 1.9e-16 from a numpy float64 reference)",
            "nnx.MultiHeadAttention's default attention_fn calls jax.nn.dot_product_attention, which computes "
            "the softmax in float32 whatever the input dtype: 4e-8 to 7e-8 from it with float64 weights",
            "attention_fn=flax_lenet.porting.attention.attention_in_input_dtype for a float64 check "
            "(softmax in the input dtype)"),
    Pitfall("attention_mask_polarity", "MultiheadAttention",
            "a bool attn_mask or key_padding_mask is True where a key is NOT attended",
            "nnx.MultiHeadAttention's mask is True where a key IS attended, shape [batch, heads, q, k]",
            "mask = ~(attn_mask | key_padding_mask[:, None, None, :])"),
    Pitfall("groupnorm_epsilon", "GroupNorm, InstanceNorm",
            "eps=1e-5",
            "nnx.GroupNorm and nnx.InstanceNorm epsilon=1e-6",
            "epsilon=1e-5"),
    Pitfall("float32_run_leaves_the_path", "float32 training runs",
            "a single float32 run leaves the float64 run's path where a relu or max-pool input is within "
            "rounding of a tie: 6 of 96 Adam runs (12 seeds, 8 settings, 50 steps) with oneDNN, 6 without",
            "the same, 2 of 96 runs (benchmarks/adam_outliers.py); one run against torch's is a draw",
            "judge over float32 copies of the start: parity.check takes the median over 5 when one run each "
            "is over 10x"),
)
