"""The Net's two checks: a kernel size a 32x32 image can take, and a batch it can read.

Each raises a ``flax_lenet.errors`` kind (a ``ValueError``) whose one-line message says what was
expected and what was found. Without them a wrong kernel size or an NCHW batch fails deep inside
JAX (Linen's ``init`` on ``(1, 1, 32, 32)`` with a ``ZeroDivisionError``) and a complex batch
silently gives complex logits. They look only at types and shapes, so under ``jit`` they run
once, when the step is traced. The checks of labels, batch sizes and image values are the
command line's (``flax_lenet.app.checks``).
"""

import jax.numpy as jnp
import numpy as np

from flax_lenet.errors import BadConfig, BadImages

# A 32x32 image must survive conv(k) -> 2x2 pool -> conv(k) -> 2x2 pool with at least one pixel
# left for fc1: k = 10 leaves 1x1 (model.flat_side), k = 11 leaves nothing, and k = 0 has no
# weights (Flax's initialisers divide by the fan-in, 0). torch builds Net(0) with a warning and
# fails at the first call; here either one is refused when the Net is made.
KERNEL_SIZES = range(1, 11)


def check_kernel_size(kernel_size) -> int:
    """Return ``kernel_size`` as an int; raise ``BadConfig`` unless it is an integer in 1..10."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) \
            or kernel_size not in KERNEL_SIZES:
        raise BadConfig(f"kernel_size: expected an integer in {KERNEL_SIZES[0]}..{KERNEL_SIZES[-1]} (a 32x32 image "
                        f"must survive two convolutions and two 2x2 poolings; the tutorial uses 3 or 5), "
                        f"found {kernel_size!r}")
    return int(kernel_size)


IMAGE_SHAPE = (32, 32, 1)  # (H, W, C): NHWC, one channel, 32x32 as in the tutorial


def check_images(x) -> None:
    """Raise ``BadImages`` unless ``x`` is a real floating NHWC batch ``(N, 32, 32, 1)``."""
    expected = "a float batch (N, 32, 32, 1) in NHWC layout"
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise BadImages(f"expected {expected}, found a {type(x).__name__}: make it an array with jnp.asarray(x)")
    shape = tuple(x.shape)
    if len(shape) == 3 and shape == IMAGE_SHAPE:
        raise BadImages(f"expected {expected}, found a single image {shape}: add a batch dimension "
                        "with x[None] (torch: input.unsqueeze(0))")
    if len(shape) != 4:
        raise BadImages(f"expected {expected}, found rank {len(shape)} with shape {shape}")
    if shape[1:] == (1, 32, 32):
        raise BadImages(f"expected {expected}, found NCHW {shape}: transpose with x.transpose(0, 2, 3, 1)")
    if shape[1:3] != (32, 32):
        hint = " (28x28 MNIST images must be padded by 2 on each side)" if shape[1:3] == (28, 28) else ""
        raise BadImages(f"expected {expected}, found height x width {shape[1]}x{shape[2]}{hint}")
    if shape[3] != 1:
        raise BadImages(f"expected {expected}, found {shape[3]} channels in {shape}")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise BadImages(f"expected {expected}, found dtype {np.dtype(x.dtype)}: the Net's weights and "
                        "images are real; pass x.real if the imaginary part is zero")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise BadImages(f"expected {expected}, found dtype {np.dtype(x.dtype)}: cast with x.astype('float32')")
