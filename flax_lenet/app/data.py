"""Real handwritten digits for the side-by-side training run, as NHWC ``(N, 32, 32, 1)`` float batches.

Two sources, both without a download:

* ``load_digits()``: scikit-learn's 1,797 handwritten digits (8x8, grey levels 0..16, shipped
  inside scikit-learn), resized to 32x32 and split 80/20, stratified, with a fixed seed;
* ``load_mnist(data_dir)``: the standard MNIST IDX files (Fashion-MNIST uses the same format),
  28x28 images padded by 2 pixels on each side to 32x32, as LeNet-5 does.

Images are scaled to [0, 1] and standardised with the training set's mean and standard
deviation (MNIST's grey levels are kept as bytes, one copy of the set, and made float32 per
batch: ``Dataset.images``, ``Dataset.to_float``); the layout is NHWC, as ``flax_lenet.Net``
expects (torch: ``.transpose(0, 3, 1, 2)``).
The IDX reader and writer are the project's own (``read_idx``, ``write_idx``); the reader checks a
header against ``MAX_IDX_BYTES`` and the file's size before reading data, reads a ``.gz`` as a
stream that stops at the declared size, and opens regular files only. A missing, unreadable,
damaged or oversized file raises ``BadFile``, bad images or labels ``BadImages``/``BadLabels``,
an unknown data set ``BadConfig`` (``flax_lenet.errors``).
"""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flax_lenet.app.checks import check_finite, check_labels
from flax_lenet.checks import check_images
from flax_lenet.errors import BadConfig, BadFile, BadImages, BadInput

NUM_CLASSES = 10
DIGITS_TEST_FRACTION = 0.2      # 360 of the 1,797 digits are held out
DIGITS_SPLIT_SEED = 0           # the split is fixed: it does not follow --seed
MNIST_SIDE = 28
MNIST_PAD = (32 - MNIST_SIDE) // 2  # 2 pixels on each side, as LeNet-5

# IDX type codes (http://yann.lecun.com/exdb/mnist/): the third byte of the magic number.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclass(frozen=True)
class Dataset:
    """Train and test images ``(N, 32, 32, 1)`` in NHWC, labels ``(N,)`` int32 in 0..9.

    ``x_train`` and ``x_test`` hold the images once, as stored: float32, ready for the Net, or
    (MNIST) uint8 grey levels, one byte a pixel, with ``pixel_values`` the float32 value of each
    level 0..255 (scaled to [0, 1] and standardised). ``images(split, idx)`` and ``to_float``
    give float32 images either way; training gathers its batches from the stored copy, so
    60,000 MNIST images cost 61 MB, not 245 MB, and no other copy of the set is made.
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pixel_values: np.ndarray | None = None      # (256,) float32 for uint8 images; None for float

    def to_float(self, x: np.ndarray) -> np.ndarray:
        """Stored images (a batch of ``x_train`` or ``x_test``) as float32 images for the Net."""
        return self.pixel_values[x] if self.pixel_values is not None else np.asarray(x, np.float32)

    def images(self, split: str = "train", idx=slice(None)) -> np.ndarray:
        """``x_train[idx]`` (``split='train'``) or ``x_test[idx]`` (``'test'``) as float32 images."""
        return self.to_float((self.x_train if split == "train" else self.x_test)[idx])

    def describe(self) -> dict:
        return {"name": self.name, "train": int(len(self.y_train)), "test": int(len(self.y_test)),
                "image_shape": list(self.x_train.shape[1:]), "layout": "NHWC"}


def _mean_std(x: np.ndarray, rows: int = 4096):
    """The mean and standard deviation of every element of ``x``, without a copy of ``x``.

    ``x.std()`` makes a temporary the size of ``x`` (245 MB for MNIST in float32); the squared
    deviations are summed here in float64 over blocks of ``rows`` images instead.
    """
    mean = float(x.mean(dtype=np.float64))     # float32 sums of values near 3e38 would overflow
    squares = 0.0
    for start in range(0, len(x), rows):
        d = x[start:start + rows].astype(np.float64).ravel() - mean
        squares += float(d @ d)
    return mean, float(np.sqrt(squares / max(x.size, 1)))


def check_spread(mean: float, std: float, what: str) -> None:
    """Refuse training images that cannot be standardised: a zero or non-finite standard deviation."""
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise BadImages(f"{what}: expected values whose mean and standard deviation are finite, found "
                        f"mean {mean:.3g} and standard deviation {std:.3g} (the values overflow float64)")
    if std == 0:
        raise BadImages(f"{what}: expected images that vary (a standard deviation > 0, to standardise "
                        f"them by), found every training pixel equal to {mean:.6g}")


def _standardise(x_train: np.ndarray, x_test: np.ndarray, what: str = "training images"):
    """Subtract the training mean and divide by the training standard deviation, in place.

    Both arrays must be fresh float arrays the caller owns: the one copy of the data set is
    standardised where it lies (the training loop gathers batches from it).
    """
    with np.errstate(over="ignore", invalid="ignore"):      # an overflow is refused just below, in words
        mean, std = _mean_std(x_train)
    check_spread(mean, std, what)
    for x in (x_train, x_test):
        x -= mean
        x /= std
    return x_train, x_test


def make_dataset(name, x_train, y_train, x_test, y_test) -> Dataset:
    """Check a dataset in the Net's layout and wrap it; raises ``BadImages``/``BadLabels`` on bad input."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        check_images(x)
        if len(x) == 0:
            raise BadImages(f"{name} {split} images: expected at least one image, found 0 (shape {tuple(x.shape)})")
        check_finite(x, f"{name} {split} images")
        check_labels(y, len(x), f"{name} {split}")
    return Dataset(name, np.asarray(x_train, np.float32), np.asarray(y_train, np.int32),
                   np.asarray(x_test, np.float32), np.asarray(y_test, np.int32))


def _grey_level_values(x_train: np.ndarray, rows: int = 4096, what: str = "training images") -> np.ndarray:
    """The float32 image value of each uint8 grey level: ``(level / 255 - mean) / std``.

    ``mean`` and ``std`` are the training images' (after ``/ 255``), computed exactly in float64
    from a histogram of the grey levels, counted ``rows`` images at a time.
    """
    counts = np.zeros(256, np.int64)
    for start in range(0, len(x_train), rows):
        counts += np.bincount(x_train[start:start + rows].ravel(), minlength=256)
    scaled = np.arange(256, dtype=np.float32) / np.float32(255.0)          # as the float path scales
    levels, n = scaled.astype(np.float64), max(int(counts.sum()), 1)
    mean = float(counts @ levels) / n
    std = float(np.sqrt(counts @ (levels - mean) ** 2 / n))
    check_spread(mean, std, what)
    values = scaled - mean
    values /= std
    return values


def resize_nearest(images: np.ndarray, side: int) -> np.ndarray:
    """``(N, h, h) -> (N, side, side)`` by repeating each pixel ``side // h`` times (no interpolation)."""
    factor, rest = divmod(side, images.shape[-1])
    if rest:
        raise BadImages(f"expected an image side that divides {side}, found {images.shape[-1]}")
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def load_digits() -> Dataset:
    """scikit-learn's handwritten digits, resized 8x8 -> 32x32, fixed stratified 80/20 split.

    Returns:
      A ``Dataset`` with 1,437 training and 360 test images ``(N, 32, 32, 1)`` float32.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = digits.images.astype(np.float32) / 16.0                # (1797, 8, 8), grey levels 0..16
    images = resize_nearest(images, 32)[..., None]                  # (1797, 32, 32, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED)
    x_train, x_test = _standardise(x_train, x_test)
    return make_dataset("digits", x_train, y_train, x_test, y_test)


# --- IDX files (MNIST, Fashion-MNIST) ----------------------------------------------------------

# What an IDX file may declare. MNIST's largest file holds 47 MB (60,000 x 28 x 28 bytes),
# EMNIST's 547 MB; the header is checked against these limits, and against the file's own size,
# before any data is read, and a .gz is decompressed as a stream that stops at the declared size.
MAX_IDX_BYTES = 1 << 30         # 1 GiB of data
MAX_IDX_NDIM = 8                # MNIST's files have 1 (labels) or 3 (images) dimensions


def _idx_header(read, name: str, size: int | None):
    """Read and check an IDX header through ``read(n)``; return ``(dtype, shape, header bytes)``.

    ``size`` is the file's size in bytes when known (an uncompressed file), so that a header
    that does not match the file is refused before its data is read.
    """
    magic = read(4)
    if len(magic) < 4:
        raise BadFile(f"{name}: expected an IDX file (4-byte magic number), found {len(magic)} bytes")
    zero, code, ndim = magic[:2], magic[2], magic[3]
    if zero != b"\x00\x00" or code not in IDX_DTYPES or ndim == 0:
        raise BadFile(f"{name}: expected an IDX magic number 0x0000TTDD (type TT in "
                      f"{{08,09,0B,0C,0D,0E}}, DD dimensions >= 1), found 0x{magic.hex().upper()}")
    if ndim > MAX_IDX_NDIM:
        raise BadFile(f"{name}: expected an IDX file of 1..{MAX_IDX_NDIM} dimensions (MNIST's have 1 or 3), "
                      f"found {ndim} in its magic number 0x{magic.hex().upper()}")
    header = 4 + 4 * ndim
    sizes = read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise BadFile(f"{name}: truncated: expected a {header}-byte header for {ndim} dimensions, "
                      f"found {4 + len(sizes)} bytes")
    shape = struct.unpack(f">{ndim}i", sizes)
    if min(shape) < 0:
        raise BadFile(f"{name}: expected dimension sizes >= 0 in the IDX header, found shape {shape}")
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize           # Python ints: no overflow
    if expected > MAX_IDX_BYTES:
        raise BadFile(f"{name}: expected an IDX file of at most {MAX_IDX_BYTES} data bytes (1 GiB), "
                      f"found a header declaring {expected} for shape {shape}")
    if size is not None and size - header != expected:
        found = size - header
        if found < expected:
            raise BadFile(f"{name}: truncated: expected {expected} data bytes for shape {shape}, found {found}")
        raise BadFile(f"{name}: expected {expected} data bytes for shape {shape}, found {found} "
                      f"({found - expected} extra: not an IDX file of this shape)")
    return dtype, shape, header


def _read_idx_stream(f, name: str, size: int | None = None) -> np.ndarray:
    """Read one IDX array from the binary stream ``f``: the header, then exactly its data.

    The data is read into one buffer of the declared size; one byte more is asked for to see
    that nothing follows. A gzip stream is thus never decompressed past the declared size.
    """
    dtype, shape, header = _idx_header(f.read, name, size)
    expected = math.prod(shape) * dtype.itemsize
    buffer = np.empty(expected, np.uint8)
    view, filled = memoryview(buffer), 0
    while filled < expected:
        n = f.readinto(view[filled:])
        if not n:
            raise BadFile(f"{name}: truncated: expected {expected} data bytes for shape {shape}, found {filled}")
        filled += n
    if f.read(1):
        raise BadFile(f"{name}: expected {expected} data bytes for shape {shape}, found more "
                      "(extra data after them: not an IDX file of this shape)")
    return buffer.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)   # bytes: no copy


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) into a numpy array of its own dtype and shape.

    The header is read and checked first: at most ``MAX_IDX_NDIM`` dimensions, no negative
    size, at most ``MAX_IDX_BYTES`` of data, and (uncompressed) exactly the file's size. A
    ``.gz`` is decompressed as a stream that stops at the declared size, so a small file that
    unpacks to gigabytes costs no more memory than its header declares.

    Args:
      path: the file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``; a
        regular file (a FIFO or a device is refused before it is opened).

    Returns:
      The array, e.g. ``(60000, 28, 28)`` uint8 for MNIST training images.

    Raises:
      BadFile: no such file, not a regular file, an unreadable file, a wrong magic number, a
      header beyond the limits, a truncated or corrupt file, or a size that does not match the header.
    """
    from flax_lenet.app.paths import require_regular_file
    path = Path(path)
    st = require_regular_file(path, "an IDX file")
    gz = path.suffix == ".gz"
    try:
        with open(path, "rb") as raw:
            if not gz:
                return _read_idx_stream(raw, str(path), st.st_size)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx_stream(f, str(path))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BadFile(f"{path}: expected a gzip-compressed IDX file, found a corrupt or "
                      f"truncated gzip stream ({e})") from None
    except OSError as e:
        raise BadFile(f"{path}: expected a readable IDX file, found {type(e).__name__} "
                      f"({e.strerror or e})") from None


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise BadInput(f"expected an array of a dtype IDX can hold, one of {sorted(str(d) for d in codes)}, "
                       f"found {array.dtype}")
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
            + array.astype(IDX_DTYPES[code]).tobytes())
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    from flax_lenet.app.files import write_bytes
    write_bytes(path, data)


MNIST_SOURCES = ("https://yann.lecun.com/exdb/mnist/ or torchvision's mirror "
                 "https://ossci-datasets.s3.amazonaws.com/mnist/, or torchvision.datasets.MNIST(DIR, download=True)")


def _spellings(stem: str) -> tuple:
    """``train-images-idx3-ubyte``, ``train-images.idx3-ubyte`` (many mirrors), each optionally ``.gz``."""
    dotted = stem.replace("-idx", ".idx")
    return stem, stem + ".gz", dotted, dotted + ".gz"


def mnist_folder(data_dir: Path) -> Path:
    """The folder holding the IDX files: ``data_dir`` itself, or torchvision's ``raw`` or ``MNIST/raw`` in it."""
    stem = MNIST_FILES["train_images"]
    for folder in (data_dir, data_dir / "raw", data_dir / "MNIST" / "raw"):
        if any((folder / name).exists() for name in _spellings(stem)):
            return folder
    return data_dir


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in _spellings(stem):
        if (data_dir / name).exists():
            return data_dir / name
    dotted = _spellings(stem)[2]
    raise BadFile(f"{data_dir}: expected {stem} or {stem}.gz (MNIST IDX format; also spelled {dotted}, "
                  f"also in raw/ or MNIST/raw/ as torchvision keeps them), found neither; MNIST is at "
                  f"{MNIST_SOURCES}")


def _mnist_split(data_dir: Path, split: str):
    images_path = _find_idx(data_dir, MNIST_FILES[f"{split}_images"])
    labels_path = _find_idx(data_dir, MNIST_FILES[f"{split}_labels"])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise BadFile(f"{images_path}: expected images (N, 28, 28), found shape {images.shape}")
    if len(images) == 0:
        raise BadFile(f"{images_path}: expected at least one image (N, 28, 28), found an empty file of "
                      f"shape {images.shape}")
    if labels.ndim != 1:
        raise BadFile(f"{labels_path}: expected labels (N,), found shape {labels.shape}")
    if len(labels) != len(images):
        raise BadFile(f"{labels_path}: expected {len(images)} labels (one per image in "
                      f"{images_path.name}), found {len(labels)}")
    check_finite(images, f"images in {images_path}")
    check_float32_range(images, images_path)
    dtype = np.uint8 if images.dtype == np.uint8 else np.float32       # grey levels stay bytes
    x = np.zeros((len(images), 32, 32, 1), dtype)                      # the padding is 0 pixels
    x[:, MNIST_PAD:MNIST_PAD + MNIST_SIDE, MNIST_PAD:MNIST_PAD + MNIST_SIDE, 0] = images
    return x, labels                                                    # (N, 32, 32, 1)


def check_float32_range(images: np.ndarray, path) -> None:
    """Refuse images whose values do not fit float32 (they would become Inf)."""
    if images.dtype.itemsize <= 2 or images.dtype == np.float32:
        return
    biggest = max(-float(images.min()), float(images.max())) if images.size else 0.0
    if biggest > float(np.finfo(np.float32).max):
        raise BadImages(f"images in {path}: expected values that fit float32 (|x| <= 3.4e38), found "
                        f"{biggest:.3g}, which overflows to Inf")


def load_mnist(data_dir) -> Dataset:
    """MNIST (or Fashion-MNIST) from the four standard IDX files in ``data_dir``, padded 28 -> 32.

    Args:
      data_dir: a folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz`` and
        each also accepted as ``train-images.idx3-ubyte`` (as many mirrors name them); or
        torchvision's folder, with the files in ``raw/`` or ``MNIST/raw/`` under ``data_dir``.

    Returns:
      A ``Dataset`` of ``(N, 32, 32, 1)`` images standardised with the training statistics:
      uint8 IDX files (MNIST's) stay uint8 grey levels with ``pixel_values`` (their float32
      values, ``(level / 255 - mean) / std``); other IDX dtypes become float32 images.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BadFile(f"{data_dir}: expected a folder with MNIST IDX files, found "
                      f"{'a file' if data_dir.exists() else 'nothing'}")
    data_dir = mnist_folder(data_dir)
    x_train, y_train = _mnist_split(data_dir, "train")
    x_test, y_test = _mnist_split(data_dir, "test")
    name = f"mnist:{data_dir}"
    what = f"training images in {_find_idx(data_dir, MNIST_FILES['train_images'])}"
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        x_train, x_test = _standardise(x_train.astype(np.float32, copy=False),
                                       x_test.astype(np.float32, copy=False), what)
        return make_dataset(name, x_train, y_train, x_test, y_test)
    for split, y in (("train", y_train), ("test", y_test)):
        check_labels(y, len(y), f"{name} {split}")
    values = _grey_level_values(x_train, what=what)
    return Dataset(name, x_train, np.asarray(y_train, np.int32), x_test, np.asarray(y_test, np.int32), values)


def load(name: str = "digits", data_dir=None) -> Dataset:
    """``'digits'`` (default, no download) or ``'mnist'`` (IDX files in ``data_dir``)."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        if data_dir is None:
            raise BadConfig("name='mnist': expected data_dir, a folder with the IDX files, found None")
        return load_mnist(data_dir)
    raise BadConfig(f"name: expected 'digits' or 'mnist', found {name!r}")


class Shifts:
    """One epoch's random shifts of ``x`` ``(N, H, W, C)``, drawn up front and applied per batch.

    Every image gets its own shift of ``-max_shift..max_shift`` pixels in each direction (two
    small integer arrays, drawn from ``rng`` in one go); ``shifts[idx]`` is the batch
    ``x[idx]``, shifted, a fresh array. Borders are filled by repeating the edge pixel. Pure
    data movement in numpy, so both frameworks see exactly the same pixels, and no shifted
    copy of the whole data set is ever made.
    """

    def __init__(self, x: np.ndarray, max_shift: int, rng: np.random.Generator):
        self.x, self.max_shift = x, max_shift
        n, span = len(x), 2 * max_shift + 1
        self.dy, self.dx = (rng.integers(0, span, n), rng.integers(0, span, n)) if max_shift else (None, None)

    def __getitem__(self, idx) -> np.ndarray:
        batch = self.x[idx]
        if not self.max_shift:
            return batch
        s, (h, w) = self.max_shift, batch.shape[1:3]
        padded = np.pad(batch, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
        rows = (self.dy[idx][:, None] + np.arange(h))[:, :, None]         # (B, H, 1)
        cols = (self.dx[idx][:, None] + np.arange(w))[:, None, :]         # (B, 1, W)
        return padded[np.arange(len(batch))[:, None, None], rows, cols]   # (B, H, W, C)


def random_shifts(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Every image of ``x`` ``(N, H, W, C)`` shifted as ``Shifts`` does (the whole set at once)."""
    if max_shift == 0:
        return x
    return Shifts(x, max_shift, rng)[np.arange(len(x))]
