"""The command line's checks of what it is given: image values, labels and batch sizes.

They look at shapes and dtypes (and, for ``check_finite``, values) before anything is computed.
Each one raises a ``flax_lenet.errors`` kind (a ``ValueError``) whose one-line message says what
was expected and what was found. An image batch's shape and dtype are checked as the Net
itself checks them (``flax_lenet.checks.check_images``).
"""

import numpy as np

from flax_lenet.errors import BadConfig, BadImages, BadLabels


def check_finite(x, what: str = "images") -> None:
    """Raise ``BadImages`` if a concrete array ``x`` holds NaN or Inf (not for traced values)."""
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise BadImages(f"expected finite {what}, found {int(np.isnan(a).sum())} NaN and "
                         f"{int(np.isinf(a).sum())} Inf values (first at index {first})")


def check_labels(y, count: int, what: str = "labels") -> None:
    """Raise ``BadLabels`` unless ``y`` is ``count`` integer class labels in 0..9."""
    a = np.asarray(y)
    if a.ndim != 1 or len(a) != count:
        raise BadLabels(f"{what}: expected {count} labels (one per image) of shape ({count},), "
                         f"found shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise BadLabels(f"{what}: expected integer class labels 0..9, found dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 9):
        raise BadLabels(f"{what}: expected class labels 0..9, found values {int(a.min())}..{int(a.max())}")


# The largest batch any command builds: 65,536 images of 32x32 are 256 MiB in float32 (512 MiB
# in float64), plus the Net's activations; the benchmark's largest GPU batch is this one. A
# larger --batch would only try to allocate gigabytes (100,000,000 images: 763 GiB) and fail.
MAX_BATCH = 1 << 16


def check_batch_size(batch, what: str = "batch") -> None:
    """Raise ``BadConfig`` unless ``batch`` is an integer in ``1..MAX_BATCH``, before anything is allocated."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
        raise BadConfig(f"{what}: expected a batch of 1..{MAX_BATCH} images (32x32: "
                        f"{MAX_BATCH * 32 * 32 * 4 >> 20} MiB in float32), found {batch!r}")
