"""Every tolerance the parity suite and ``flax-lenet compare`` use, each with its reason.

A difference is measured as ``max|flax - torch| / max|torch|`` over a whole tensor (the
"relative" column): robust to the many exact zeros that relu and max-pool put into
gradients, and still O(1) for a missing transpose or a wrong flatten order (which moves whole
weights to other positions), so no tolerance below can hide one.

Every "measured" figure below comes from this project's own code (``flax_lenet.porting.parity``,
``flax_lenet.porting.trajectory``, ``flax-lenet train``), on CPU: no GPU has run this project, so
the GPU tiers are estimates, marked "not measured". Facts about the frameworks come from their
documentation, cited beside the tier that relies on them.
"""

from dataclasses import dataclass


def _text(paragraph: str) -> str:
    """A triple-quoted reason as one line of prose."""
    return " ".join(paragraph.split())


@dataclass(frozen=True)
class Tolerance:
    rtol: float   # bound on max|a - b| / max|b|
    reason: str


EXACT = Tolerance(0.0, "conversion is a pure permutation of array elements: bit-identical")

FLOAT64 = Tolerance(1e-12, _text("""
    float64 truth tier: unit roundoff 1.1e-16, a few hundred accumulated terms per dot product;
    measured differences are ~1e-15, so 1e-12 leaves 1000x headroom over what is seen and is
    1e10x below a transposed weight"""))

# Flax's "Convert PyTorch models to Flax" guide checks each converted layer with
# np.testing.assert_almost_equal(..., decimal=6), an absolute bound of 1.5e-6:
#   https://flax.readthedocs.io/en/stable/migrating/convert_pytorch_to_flax.html
# Hugging Face transformers' PyTorch/Flax equivalence tests bound max|diff| of the outputs by
# 1e-5 (check_pt_flax_outputs, tol=1e-5, in tests/test_modeling_common.py):
#   https://github.com/huggingface/transformers/blob/v4.40.0/tests/test_modeling_common.py
FLOAT32_CPU = Tolerance(1e-5, _text("""
    float32 on CPU: unit roundoff 6e-8, but XLA and oneDNN sum convolutions and dots in
    different orders; measured ~1e-7..2e-6 on gradients (max over seeds and batches), Flax's
    conversion guide settles for ~1e-6 per layer and Hugging Face's equivalence tests for 1e-5
    on outputs"""))

# TF32: torch uses it for cuDNN convolutions by default (torch.backends.cudnn.allow_tf32=True)
# but not for matmuls (torch.backends.cuda.matmul.allow_tf32=False since 1.12):
#   https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices
# JAX computes float32 dots and convolutions at reduced precision by default (TF32 on recent
# NVIDIA GPUs) unless jax_default_matmul_precision asks for more:
#   https://docs.jax.dev/en/latest/201/precision.html
#   https://docs.jax.dev/en/latest/_autosummary/jax.default_matmul_precision.html
# TF32 keeps 10 explicit mantissa bits, so its unit roundoff is 2**-11 = 4.9e-4 (the TF32 section
# of torch's CUDA notes above). Neither GPU tier is measured: no GPU has run this project. Both are
# estimates from the documented precisions (TF32 off: the same IEEE float32 arithmetic as on CPU;
# TF32 on: TF32's unit roundoff), not from a GPU run; benchmarks/gpu.sh and `pytest -m gpu`
# (test_parity.py::test_compare_on_gpu) check them on any CUDA machine.
FLOAT32_GPU = Tolerance(1e-5, _text("""
    float32 on a GPU with TF32 off in both frameworks (jax_default_matmul_precision='highest',
    torch cudnn/matmul allow_tf32=False): not measured, an estimate: CPU's tier, because the
    documented precision is then IEEE float32 as on CPU, summed in other orders (torch's CUDA
    notes on TF32, JAX's default_matmul_precision)"""))

TF32_GPU = Tolerance(2e-2, _text("""
    float32 on a GPU with TF32 on (both frameworks' default for convs, JAX's for dots): 10-bit
    mantissa, unit roundoff 4.9e-4 (torch's CUDA notes on TF32), the two frameworks round
    different operands, and gradients pass through two more TF32 products; not measured, an
    estimate from that unit roundoff"""))


def tolerance(dtype: str, platform: str = "cpu", tf32: bool = False) -> Tolerance:
    """The tier for ``dtype`` ('float32' | 'float64') on ``platform`` ('cpu' | 'gpu')."""
    if dtype == "float64":
        return FLOAT64
    if dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'float64', found {dtype!r}")
    if platform == "cpu":
        return FLOAT32_CPU
    return TF32_GPU if tf32 else FLOAT32_GPU


# A gradient that is zero in exact arithmetic: a bias before a normalisation, attention's key bias
# (a softmax is unchanged by a constant added to a row of its logits). Rounding leaves noise there
# which no relative tolerance can judge (noise against noise), and Adam divides it by its own size
# into full steps. Such a gradient is recognised in a float64 run and judged by its size instead.
ZERO_GRADIENT = Tolerance(1e-12, _text("""
    a float64 gradient at most 1e-12 of the run's largest is zero in exact arithmetic: float64
    rounding leaves ~1e-16 of the largest there, a gradient genuinely that small would not move
    a float32 weight (float32 resolves 6e-8), and the float32 noise itself must stay within the
    float32 tier of the largest gradient"""))

# --- whole training runs (flax_lenet.porting.trajectory) ----------------------------------------------
# A run's difference is the worst, over every step and every parameter tensor, of the relative
# measure above. Measured with `flax_lenet.porting.trajectory.compare` (batch 4, kernel 3, 100 steps).
# The optimizer defaults the mismatches below rely on: torch.optim.AdamW's weight_decay is 1e-2,
# optax.adamw's 1e-4; torch.optim.SGD's dampening scales the gradient added to the momentum
# buffer, optax.sgd has no dampening:
#   https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html
#   https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adamw
#   https://pytorch.org/docs/stable/generated/torch.optim.SGD.html

TRAJECTORY_FLOAT64 = Tolerance(1e-9, _text("""
    float64, params after each of 100 optimizer steps: measured <=1e-15 for SGD in all its
    variants and <=9e-13 for Adam/AdamW/AMSGrad, where the first step's g / (|g| + eps)
    amplifies the rounding of gradients near eps; 1e-9 leaves 1000x headroom over that.
    Mismatches land far outside: optax's AdamW default decay 3e-4 after 5 steps (0.3 after 100),
    a missing dampening 2e-2 after 5, a wrong fc1 flatten 2.0 after 3"""))

TRAJECTORY_FLOAT32_CPU = Tolerance(3e-3, _text("""
    float32 on CPU, params after each of 100 steps, at flax-lenet compare's default flags (batch 1,
    kernel 3, lr 0.01, seed 0): measured 6.0e-5 (adam), 1.5e-5 (adamw), <=1e-6 (sgd presets) once
    Adam's bias correction 1 - b^t is computed as torch does (optax's float32 one gave 9.1e-3);
    3e-3 is 50x the worst, and a wrong flatten gives 2.0. Beyond those flags a relu or max-pool
    input within rounding of a tie switches in one run and not the other, and the runs part by up
    to 1: a row over 3e-3 is then judged against a float64 run, by TRAJECTORY_FLOAT32_RATIO, the
    ratio the float32 grid (benchmarks/accuracy.py) holds at every point"""))

# The grid of benchmarks/accuracy.py: 12 optimizer settings (SGD plain, momentum, dampening + weight
# decay, nesterov + weight decay, maximize; Adam plain, weight decay, AMSGrad, AMSGrad + weight
# decay + maximize; AdamW 1e-2, 0.1, AMSGrad) x kernel 3, 5 x batch 1, 16 x lr 1e-2, 1e-3, seeds 0
# and 1: 96 points, each 5 float32 copies of the start trained 30 steps in both frameworks.
# Figures: python benchmarks/float32_grid.py (docs/benchmarks.md).
# Its reason: a float32 run is judged against a float64 run as truth: Flax's error (the geometric
# mean over 5 float32 copies of the start) may be at most 10x torch's own, at every point of the
# grid. Measured: worst point 3.5x, each setting's median 0.92..1.23; optax's own Adam, whose bias
# correction is float32, reaches 54.7x (4 of its 8 points over 10x). Single runs are no measure:
# torch's nearest copy against its own second copy is over 10x, one way or the other, at 10 of the
# 96 points.
TRAJECTORY_FLOAT32_RATIO = 10.0

TRAJECTORY_GPU = Tolerance(3e-3, _text("""
    float32 on a GPU with TF32 off: not measured, an estimate: CPU's tier, because the one-step
    tier FLOAT32_GPU is CPU's (itself an estimate from the documented float32 precision)"""))

TRAJECTORY_TF32_GPU = Tolerance(5e-2, _text("""
    float32 on a GPU with TF32 on: not measured, an estimate; per-step TF32 differences, expected
    ~1e-3 from TF32's unit roundoff 4.9e-4, would grow through the same kinks as float32, so only
    a loose sanity bound is given"""))


def trajectory_tolerance(dtype: str, platform: str = "cpu", tf32: bool = False) -> Tolerance:
    """The tier for a multi-step training run in ``dtype`` on ``platform``."""
    tolerance(dtype, platform, tf32)                   # validates dtype
    if dtype == "float64":
        return TRAJECTORY_FLOAT64
    if platform == "cpu":
        return TRAJECTORY_FLOAT32_CPU
    return TRAJECTORY_TF32_GPU if tf32 else TRAJECTORY_GPU


# --- side-by-side training runs (flax-lenet train) ---------------------------------------------

TRAIN_FLOAT64 = Tolerance(1e-9, _text("""
    float64 training, per-step losses over whole runs: each step adds ~1e-16 of rounding that
    later steps can amplify; measured 1.4e-14 over the 880 steps of the default run (8e-16 on
    the 8-step test run), so 1e-9 leaves room, yet a missing momentum or a learning-rate drop
    one step late moves the losses by far more (asserted > 1e-6)"""))

TRAIN_FLOAT32_FIRST_STEPS = Tolerance(1e-5, _text("""
    float32 training, the first 8 per-step losses only: the FLOAT32_CPU reasoning for one step;
    later, SGD amplifies float32 rounding chaotically (measured 6e-4 relative on the epoch loss
    after ~250 steps), so only the final accuracies are compared from then on"""))

# Final float32 test accuracies of the two frameworks agree within 1 percentage point: float32
# runs part ways after ~250 steps (see TRAIN_FLOAT32_FIRST_STEPS), so only their outcomes can be
# compared; on the 360 test images of the default data set one point is 3.6 images.
ACCURACY_POINTS = 1.0


# --- data parallelism (flax_lenet.parallel) -------------------------------------------------

SHARDED_FLOAT32 = Tolerance(1e-6, _text("""
    sharded vs single-device step, float32, both in JAX on CPU: the same arithmetic except that
    the batch-mean gradient is summed per device and then across 8 devices (another order);
    measured 9e-8 on parameters after 3 SGD-momentum steps; a step that skips the cross-device
    gradient sum is off by ~1e-2"""))

SHARDED_FLOAT64 = Tolerance(1e-14, _text("""
    sharded vs single-device step, float64: only the summation order differs, measured 1.7e-16
    after 3 steps; 1e-14 pins it to a few hundred ulps"""))
