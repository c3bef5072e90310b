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


# --- issue 3: whole training runs (flax_lenet.trajectory) -------------------------------------
# A run's difference is the worst, over every step and every parameter tensor, of the relative
# measure above. Measured with `flax_lenet.trajectory.compare` (batch 4, kernel 3, 100 steps).

TRAJECTORY_FLOAT64 = Tolerance(1e-9, (
    "float64, params after each of 100 optimizer steps (issue 3 asks for 1e-9): measured <=1e-15 "
    "for SGD in all its variants and <=9e-13 for Adam/AdamW/AMSGrad, where the first step's "
    "g / (|g| + eps) amplifies the rounding of gradients near eps. Mismatches land far outside: optax's "
    "AdamW default decay 3e-4 after 5 steps (0.3 after 100), a missing dampening 2e-2 after 5, "
    "a wrong fc1 flatten 2.0 after 3"))

TRAJECTORY_FLOAT32_CPU = Tolerance(3e-3, (
    "float32 on CPU, params after each of 100 steps: a kink (relu or max-pool switching on a "
    "rounding-sized difference) or Adam's g / (|g| + eps) on a near-zero gradient turns 1e-7 "
    "into a lasting difference. Measured over 50 runs (10 optimizer settings x 5 seeds): "
    "median 3e-7, worst 7.6e-4 (nesterov); torch float32 itself drifts up to 3.6e-4 from torch "
    "float64 on the same runs. 3e-3 is 4x the worst seen; a wrong flatten gives 2.0, optax's "
    "AdamW default decay 0.3 after 100 steps"))

TRAJECTORY_GPU = Tolerance(3e-3, (
    "float32 on a GPU with TF32 off: not measured for whole runs; assumed as CPU because one "
    "step agrees as on CPU (FLOAT32_GPU)"))

TRAJECTORY_TF32_GPU = Tolerance(5e-2, (
    "float32 on a GPU with TF32 on: not measured for whole runs; per-step TF32 differences "
    "(~1e-3) grow through the same kinks as float32, so only a loose sanity bound is given"))


def trajectory_tolerance(dtype: str, platform: str = "cpu", tf32: bool = False) -> Tolerance:
    """The tier for a multi-step training run in ``dtype`` on ``platform``."""
    tolerance(dtype, platform, tf32)                   # validates dtype
    if dtype == "float64":
        return TRAJECTORY_FLOAT64
    if platform == "cpu":
        return TRAJECTORY_FLOAT32_CPU
    return TRAJECTORY_TF32_GPU if tf32 else TRAJECTORY_GPU


# --- issue 5: side-by-side training runs ------------------------------------------------------

TRAIN_FLOAT64 = Tolerance(1e-9, (
    "float64 training, per-step losses over whole runs (issue 5's bar): each step adds ~1e-16 "
    "of rounding that later steps can amplify; measured 1.4e-14 over the 880 steps of the "
    "default run (8e-16 on the 8-step test run), so 1e-9 leaves room, yet a missing momentum "
    "or a learning-rate drop one step late moves the losses by far more (asserted > 1e-6)"))

TRAIN_FLOAT32_FIRST_STEPS = Tolerance(1e-5, (
    "float32 training, the first 8 per-step losses only: the FLOAT32_CPU reasoning for one "
    "step; later, SGD amplifies float32 rounding chaotically (measured 6e-4 relative on the "
    "epoch loss after ~250 steps), so only the final accuracies are compared from then on"))

ACCURACY_POINTS = 1.0   # issue 5: final float32 test accuracies of the two frameworks within 1 point


# --- issue 6: data parallelism (flax_lenet.parallel) ----------------------------------------

SHARDED_FLOAT32 = Tolerance(1e-6, (
    "sharded vs single-device step, float32, both in JAX on CPU: the same arithmetic except "
    "that the batch-mean gradient is summed per device and then across 8 devices (another "
    "order); measured 9e-8 on parameters after 3 SGD-momentum steps; a step that skips the "
    "cross-device gradient sum is off by ~1e-2"))

SHARDED_FLOAT64 = Tolerance(1e-14, (
    "sharded vs single-device step, float64: only the summation order differs, measured "
    "1.7e-16 after 3 steps; 1e-14 pins it to a few hundred ulps"))
