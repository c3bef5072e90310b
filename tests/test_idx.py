"""The project's own IDX reader (MNIST, Fashion-MNIST): format, padding, and every way a file goes bad."""

import gzip
import struct

import numpy as np
import pytest

from flax_lenet.app import data
from flax_lenet.errors import BadConfig, BadFile

MNIST_PAD = 2   # 28 + 2 + 2 = 32, as LeNet-5


def idx_bytes(code: int, shape, payload: bytes) -> bytes:
    """An IDX file built by hand from the format's definition (not with ``write_idx``)."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}i", *shape) + payload


def test_reads_ubyte_file_built_from_the_format_definition(tmp_path):
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(idx_bytes(0x08, (2, 2, 3), bytes(range(12))))
    got = data.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got, np.arange(12).reshape(2, 2, 3))


def test_reads_big_endian_int32_and_float32(tmp_path):
    (tmp_path / "i").write_bytes(idx_bytes(0x0C, (2,), bytes([0, 0, 1, 2, 255, 255, 255, 254])))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i"), [258, -2])
    (tmp_path / "f").write_bytes(idx_bytes(0x0D, (1,), struct.pack(">f", 1.5)))
    assert data.read_idx(tmp_path / "f").tolist() == [1.5]


def test_reads_gzip_compressed_file(tmp_path):
    path = tmp_path / "t-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (3,), bytes([7, 8, 9]))))
    assert data.read_idx(path).tolist() == [7, 8, 9]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_then_read_keeps_values_dtype_and_shape(tmp_path, dtype, suffix):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != "uint8" else np.arange(24, dtype=dtype)
    path = tmp_path / f"a{suffix}"
    data.write_idx(path, a)
    got = data.read_idx(path)
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def write_mnist(folder, n_train=40, n_test=20, seed=0, gz=False):
    """Small MNIST-format files: random 28x28 uint8 images, labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        data.write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images)
        data.write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_is_padded_from_28_to_32_and_standardised(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = data.load_mnist(tmp_path)
    assert ds.x_train.shape == (40, 32, 32, 1) and ds.x_test.shape == (20, 32, 32, 1)
    assert ds.x_train.dtype == np.uint8                       # stored as grey levels: one copy, 1 byte a pixel
    x_train = ds.images("train")
    assert x_train.dtype == np.float32 and x_train.shape == (40, 32, 32, 1)
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    # the 2-pixel frame is the value of a 0 pixel; the inside is the image, scaled the same way
    raw = arrays["train"][0].astype(np.float32) / 255.0
    padded = np.pad(raw, ((0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)))
    mean, std = padded.mean(), padded.std()
    np.testing.assert_allclose(x_train[..., 0], (padded - mean) / std, rtol=1e-5, atol=1e-5)
    test = np.pad(arrays["t10k"][0] / np.float32(255), ((0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)))
    np.testing.assert_allclose(ds.images("test")[..., 0], (test - mean) / std, rtol=1e-5, atol=1e-5)
    frame = x_train[:, :MNIST_PAD, :, 0]
    np.testing.assert_allclose(frame, -mean / std, rtol=1e-5)


def test_wrong_magic_number_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x08\x03\x00\x00" + bytes(20))        # little-endian writer, bytes swapped
    with pytest.raises(BadFile, match="magic number .* found 0x08030000"):
        data.read_idx(path)


FULL = idx_bytes(0x08, (3, 2, 2), bytes(12))     # 16-byte header + 12 data bytes


@pytest.mark.parametrize("content, message", [
    (FULL[:2], r"4-byte magic number\), found 2 bytes"),
    (FULL[:9], "truncated: expected a 16-byte header for 3 dimensions, found 9 bytes"),
    (FULL[:-5], r"truncated: expected 12 data bytes for shape \(3, 2, 2\), found 7"),
], ids=["in the magic number", "in the header", "in the data"])
def test_truncated_file_is_refused(tmp_path, content, message):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(BadFile, match=message):
        data.read_idx(tmp_path / "x")


def test_extra_bytes_after_the_data_are_refused(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(0x08, (2,), bytes(5)))
    with pytest.raises(BadFile, match="expected 2 data bytes .* found 5"):
        data.read_idx(tmp_path / "x")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_is_refused(tmp_path, damage):
    blob = gzip.compress(idx_bytes(0x08, (100,), bytes(range(100))))
    blob = blob[: len(blob) // 2] if damage == "truncated" else blob[:10] + b"\xff" * 8 + blob[18:]
    (tmp_path / "x.gz").write_bytes(blob)
    with pytest.raises(BadFile, match="corrupt or truncated gzip"):
        data.read_idx(tmp_path / "x.gz")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(BadFile, match="expected an IDX file, found no such file"):
        data.read_idx(tmp_path / "nothere")


def test_a_folder_in_place_of_the_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").mkdir()             # only a regular file is opened
    with pytest.raises(BadFile, match=r"expected an IDX file, found a folder") as e:
        data.read_idx(tmp_path / "train-images-idx3-ubyte")
    assert "\n" not in str(e.value)


def test_labels_that_do_not_match_the_images_in_count_are_refused(tmp_path):
    write_mnist(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, np.uint8))
    with pytest.raises(BadFile, match="expected 40 labels .* found 39"):
        data.load_mnist(tmp_path)


def test_images_of_the_wrong_size_are_refused(tmp_path):
    write_mnist(tmp_path)
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((40, 32, 32), np.uint8))
    with pytest.raises(BadFile, match=r"expected images \(N, 28, 28\), found shape \(40, 32, 32\)"):
        data.load_mnist(tmp_path)


def test_missing_mnist_file_names_both_accepted_names(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BadFile, match="t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        data.load_mnist(tmp_path)


def test_a_missing_data_folder_is_named_without_command_line_flags(tmp_path):
    with pytest.raises(BadFile, match=r"nothere: expected a folder with MNIST IDX files, found nothing") as e:
        data.load_mnist(tmp_path / "nothere")
    assert "--" not in str(e.value)
    with pytest.raises(BadConfig, match="expected data_dir") as e:
        data.load("mnist")
    assert "--" not in str(e.value)
