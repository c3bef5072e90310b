"""The Net's one construction check: a kernel size a 32x32 image can take.

It raises ``flax_lenet.errors.BadConfig`` (a ``ValueError``) whose one-line message says what was
expected and what was found. The checks of image batches, labels and batch sizes are the
command line's (``flax_lenet.app.checks``): the Net, like Flax's own examples, takes arrays as given.
"""

import numpy as np

from flax_lenet.errors import BadConfig

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
