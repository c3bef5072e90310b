"""Every tolerance the parity suite and ``flax-lenet compare`` use, each with its reason.

A difference is measured as ``max|flax - torch| / max|torch|`` over a whole tensor (the
"relative" column): robust to the many exact zeros that relu and max-pool put into
gradients, and still O(1) for a missing transpose or a wrong flatten order (which moves whole
weights to other positions), so no tolerance below can hide one.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float   # bound on max|a - b| / max|b|
    reason: str


EXACT = Tolerance(0.0, "conversion is a pure permutation of array elements: bit-identical")

FLOAT64 = Tolerance(1e-12, (
    "float64 truth tier: unit roundoff 1.1e-16, a few hundred accumulated terms per dot "
    "product; measured differences are ~1e-15 (issue 2 asks for 1e-10; 1e-12 leaves 1000x "
    "headroom over what is seen and is 1e10x below a transposed weight)"))

FLOAT32_CPU = Tolerance(1e-5, (
    "float32 on CPU: unit roundoff 6e-8, but XLA and oneDNN sum convolutions and dots in "
    "different orders; measured ~1e-7..2e-6 on gradients (max over seeds and batches), "
    "Flax's conversion guide settles for 1e-6 per layer and Hugging Face for 1e-5 on outputs"))

FLOAT32_GPU = Tolerance(1e-5, (
    "float32 on a GPU with TF32 off in both frameworks (jax_default_matmul_precision="
    "'highest', torch cudnn/matmul allow_tf32=False): as CPU; REFERENCE.md measured 1.0e-6 "
    "on logits on an H200"))

TF32_GPU = Tolerance(2e-2, (
    "float32 on a GPU with TF32 on (both frameworks' default for convs, JAX's for dots): "
    "10-bit mantissa, unit roundoff 4.9e-4, and the two frameworks round different operands; "
    "REFERENCE.md measured 1.1e-3 on logits, gradients pass through two more TF32 products"))


def tolerance(dtype: str, platform: str = "cpu", tf32: bool = False) -> Tolerance:
    """The tier for ``dtype`` ('float32' | 'float64') on ``platform`` ('cpu' | 'gpu')."""
    if dtype == "float64":
        return FLOAT64
    if dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'float64', found {dtype!r}")
    if platform == "cpu":
        return FLOAT32_CPU
    return TF32_GPU if tf32 else FLOAT32_GPU


# --- issue 6: data parallelism (flax_lenet.parallel) ----------------------------------------

SHARDED_FLOAT32 = Tolerance(1e-6, (
    "sharded vs single-device step, float32, both in JAX on CPU: the same arithmetic except "
    "that the batch-mean gradient is summed per device and then across 8 devices (another "
    "order); measured 9e-8 on parameters after 3 SGD-momentum steps; a step that skips the "
    "cross-device gradient sum is off by ~1e-2"))

SHARDED_FLOAT64 = Tolerance(1e-14, (
    "sharded vs single-device step, float64: only the summation order differs, measured "
    "1.7e-16 after 3 steps; 1e-14 pins it to a few hundred ulps"))
