"""Shape and dtype checks on the image batch, shared by every flavour.

They run on static shapes, so they cost nothing under ``jit``. Each one raises a
``ValueError`` whose one-line message says what was expected and what was found.
"""

import jax.numpy as jnp
import numpy as np

IMAGE_SHAPE = (32, 32, 1)  # (H, W, C): NHWC, one channel, 32x32 as in the tutorial


def check_images(x) -> None:
    """Raise ``ValueError`` unless ``x`` is a float NHWC batch ``(N, 32, 32, 1)``."""
    shape = tuple(x.shape)
    expected = "a float batch (N, 32, 32, 1) in NHWC layout"
    if len(shape) == 3 and shape == IMAGE_SHAPE:
        raise ValueError(
            f"expected {expected}, found a single image {shape}: add a batch dimension "
            "with x[None] (torch: input.unsqueeze(0))"
        )
    if len(shape) != 4:
        raise ValueError(f"expected {expected}, found rank {len(shape)} with shape {shape}")
    if shape[1:] == (1, 32, 32):
        raise ValueError(
            f"expected {expected}, found NCHW {shape}: transpose with "
            "x.transpose(0, 2, 3, 1)"
        )
    if shape[1:3] != (32, 32):
        hint = " (28x28 MNIST images must be padded by 2 on each side)" if shape[1:3] == (28, 28) else ""
        raise ValueError(f"expected {expected}, found height x width {shape[1]}x{shape[2]}{hint}")
    if shape[3] != 1:
        raise ValueError(f"expected {expected}, found {shape[3]} channels in {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"expected {expected}, found dtype {np.dtype(x.dtype)}: cast with x.astype('float32')")
