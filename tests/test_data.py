"""The embedded default data set: scikit-learn's handwritten digits at 32x32, fixed stratified split."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_digits

from flax_lenet.app import data

DIGITS = 1_797
DIGITS_TRAIN = 1_437
DIGITS_TEST = 360


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_digits_are_nhwc_32x32_float_batches(digits):
    assert digits.x_train.shape == (DIGITS_TRAIN, 32, 32, 1)
    assert digits.x_test.shape == (DIGITS_TEST, 32, 32, 1)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert DIGITS_TRAIN + DIGITS_TEST == DIGITS


def test_digits_are_standardised_with_training_statistics(digits):
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert abs(float(digits.x_train.std()) - 1.0) < 1e-5
    assert abs(float(digits.x_test.mean())) > 1e-4      # the test set is not standardised on itself


def test_split_is_stratified(digits):
    counts = np.bincount(digits.y_test, minlength=10)
    share = np.bincount(sk_digits().target, minlength=10) * DIGITS_TEST / DIGITS
    assert np.all(np.abs(counts - share) <= 1), counts   # each class within one image of its share


def test_split_is_fixed_and_disjoint(digits):
    again = data.load_digits()
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    np.testing.assert_array_equal(again.y_train, digits.y_train)
    # every test image comes from sklearn's set, and none of them is also a training image
    small = lambda x: x[:, ::4, ::4, 0]                                       # noqa: E731
    train_keys = {a.tobytes() for a in small(digits.x_train)}
    overlap = sum(a.tobytes() in train_keys for a in small(digits.x_test))
    duplicates_in_sklearn = DIGITS - len({a.tobytes() for a in sk_digits().images})
    assert overlap <= duplicates_in_sklearn


def test_images_are_sklearns_digits_with_each_pixel_repeated_4x4(digits):
    sk = sk_digits()
    img8 = digits.x_train[:, ::4, ::4, 0]                                     # one pixel per 4x4 block
    blocks = digits.x_train[..., 0].reshape(-1, 8, 4, 8, 4)
    np.testing.assert_array_equal(blocks, np.broadcast_to(img8[:, :, None, :, None], blocks.shape))  # 4x4 blocks
    # standardising is affine: the 17 grey levels 0..16 map to 17 equally spaced values
    levels = np.unique(img8)
    assert len(levels) == 17
    step = np.diff(levels)
    np.testing.assert_allclose(step, step[0], rtol=1e-4)
    grey = np.rint((img8 - levels[0]) / step[0]).astype(int)                  # back to 0..16
    index = {a.astype(int).tobytes(): t for a, t in zip(sk.images, sk.target)}
    for g, label in zip(grey[:50], digits.y_train[:50]):
        assert index[g.tobytes()] == label                                    # sklearn's image, its label


def test_resize_nearest_repeats_pixels():
    a = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    np.testing.assert_array_equal(data.resize_nearest(a, 4)[0],
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    with pytest.raises(ValueError, match="divides 32, found 5"):
        data.resize_nearest(np.zeros((1, 5, 5)), 32)


def test_random_shifts_move_pixels_without_changing_them():
    x = np.arange(2 * 32 * 32, dtype=np.float32).reshape(2, 32, 32, 1)
    shifted = data.random_shifts(x, 2, np.random.default_rng(0))
    again = data.random_shifts(x, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(shifted, again)                           # same rng, same images
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for n in range(2):
        windows = [padded[n, dy:dy + 32, dx:dx + 32] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(shifted[n], w) for w in windows)
    assert not np.array_equal(shifted, x) or not np.array_equal(again, x)
    assert data.random_shifts(x, 0, np.random.default_rng(0)) is x


def test_shifts_made_per_batch_are_the_whole_set_shifted_once():
    """Gathering and shifting batch by batch gives the pixels a shifted copy of the set gave."""
    x = np.random.default_rng(1).normal(size=(64, 32, 32, 1)).astype(np.float32)
    whole = data.random_shifts(x, 2, np.random.default_rng(5))
    shifts = data.Shifts(x, 2, np.random.default_rng(5))
    order = np.random.default_rng(6).permutation(64).reshape(4, 16)
    for idx in order:
        np.testing.assert_array_equal(shifts[idx], whole[idx])
    # the broken twin: shifts drawn per batch (a fresh draw for each) are other pixels
    redrawn = data.Shifts(x[order[1]], 2, np.random.default_rng(5))[np.arange(16)]
    assert not np.array_equal(redrawn, whole[order[1]])


def test_uint8_images_become_the_float_images_of_the_float_path(tmp_path):
    """MNIST kept as grey levels: ``images`` equals scaling and standardising a float copy."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 50), ("t10k", 10)):
        data.write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    ds = data.load_mnist(tmp_path)
    x = ds.x_train.astype(np.float32) / np.float32(255.0)
    mean, std = float(x.astype(np.float64).mean()), float(x.astype(np.float64).std())
    np.testing.assert_array_equal(ds.images("train"), ((x - mean) / std).astype(np.float32))
    np.testing.assert_array_equal(ds.images("train", [3, 1]), ds.images("train")[[3, 1]])
