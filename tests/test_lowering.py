"""The fast lowerings in ``flax_lenet.layers`` compute what the library ops they replace compute.

Each claim is checked once against a deliberately wrong variant, to show the check can fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from jax import export, lax

from flax_lenet import layers
from flax_lenet.tolerances import FLOAT32_CPU, FLOAT64
from helpers import assert_close

DN = ("NHWC", "HWIO", "NHWC")
TOL = {"float32": FLOAT32_CPU, "float64": FLOAT64}
BATCH = 3
#: where the Net's two pools run: conv1's 30x30 (k=3) and conv2's 13x13 (odd: torch floors to 6)
POOL_SIDES = (30, 13)
CONV_OP = " convolution("   # the HLO instruction (names in metadata may contain the word too)


def _rand(shape, dtype, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _library_conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=DN)


def _fast_conv(x, k):
    return layers.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=DN)


def _value_and_grads(conv, x, k, ct):
    """Output and the gradients w.r.t. input and kernel of ``sum(conv(x, k) * ct)``."""
    y = conv(x, k)
    gx, gk = jax.grad(lambda x, k: jnp.sum(conv(x, k) * ct), argnums=(0, 1))(x, k)
    return y, gx, gk


@pytest.mark.parametrize("kernel_size,dtype", [(3, "float32"), (5, "float64")])
@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_cpu_conv_and_its_gradients_match_lax_conv(layer, kernel_size, dtype):
    # conv1: shifted multiply-adds; conv2: library forward, matmul gradients (on conv2's input,
    # pool1's output, with the gradient that arrives at its output)
    side, channels = (32, 1) if layer == "conv1" else ((32 - kernel_size + 1) // 2, 6)
    out_channels, out_side = (6, 16)[layer == "conv2"], side - kernel_size + 1
    x = _rand((BATCH, side, side, channels), dtype, 0)
    k = _rand((kernel_size, kernel_size, channels, out_channels), dtype, 1)
    ct = _rand((BATCH, out_side, out_side, out_channels), dtype, 2)
    got = jax.jit(lambda x, k: _value_and_grads(_fast_conv, x, k, ct))(x, k)
    want = _value_and_grads(_library_conv, x, k, ct)
    for name, g, w in zip(("output", "grad input", "grad kernel"), got, want):
        assert_close(g, w, TOL[dtype], f"{layer} {name}")


@pytest.mark.x64
def test_conv_check_catches_a_flipped_kernel():
    # true convolution (kernel flipped) instead of torch's cross-correlation
    x, k = _rand((BATCH, 32, 32, 1), "float64", 0), _rand((3, 3, 1, 6), "float64", 1)
    with pytest.raises(AssertionError):
        assert_close(layers.shifted_conv(x, k[::-1, ::-1]), _library_conv(x, k), FLOAT64, "flipped")


def test_cpu_lowering_has_no_convolution_for_one_input_channel():
    x, k = jnp.ones((2, 32, 32, 1), jnp.float32), jnp.ones((3, 3, 1, 6), jnp.float32)
    hlo = jax.jit(_fast_conv).lower(x, k).compile().as_text()
    assert CONV_OP not in hlo
    assert CONV_OP in jax.jit(_library_conv).lower(x, k).compile().as_text()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_keep_the_library_convolution(platform):
    x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 1, 6), jnp.float32)
    mlir = export.export(jax.jit(_fast_conv), platforms=[platform])(x, k).mlir_module()
    assert "stablehlo.convolution" in mlir


def test_multichannel_conv_forward_is_the_library_op():
    x, k = _rand((BATCH, 15, 15, 6), "float32", 0), _rand((3, 3, 6, 16), "float32", 1)
    np.testing.assert_array_equal(_fast_conv(x, k), _library_conv(x, k))
    assert CONV_OP in jax.jit(_fast_conv).lower(x, k).compile().as_text()


@pytest.mark.x64
def test_conv2_gradient_checks_catch_misplaced_taps():
    # right numbers in the wrong places: kernel-gradient offsets (a, b) read as (b, a), and
    # the input gradient spread one pixel off
    x, k = _rand((BATCH, 15, 15, 6), "float64", 0), _rand((3, 3, 6, 16), "float64", 1)
    ct = _rand((BATCH, 13, 13, 16), "float64", 2)
    gx, gk = jax.vjp(layers.conv_with_matmul_grads, x, k)[1](ct)
    want_x, want_k = jax.vjp(_library_conv, x, k)[1](ct)
    assert_close(gk, want_k, FLOAT64, "kernel gradient")
    assert_close(gx, want_x, FLOAT64, "input gradient")
    with pytest.raises(AssertionError):
        assert_close(gk.transpose(1, 0, 2, 3), want_k, FLOAT64, "swapped offsets")
    with pytest.raises(AssertionError):
        assert_close(jnp.roll(gx, 1, axis=2), want_x, FLOAT64, "shifted input gradient")


def test_cpu_gradient_of_conv2_has_no_convolution_but_the_forward():
    # XLA's own gradients are two more convolutions; the matmul gradients replace both
    x, k = jnp.ones((2, 15, 15, 6), jnp.float32), jnp.ones((3, 3, 6, 16), jnp.float32)

    def grads(conv):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
    assert grads(_fast_conv).lower(x, k).compile().as_text().count(CONV_OP) == 1
    assert grads(_library_conv).lower(x, k).compile().as_text().count(CONV_OP) == 3


@pytest.mark.x64
@pytest.mark.parametrize("side", POOL_SIDES)
def test_max_pool_matches_flax_max_pool(side):
    x = _rand((BATCH, side, side, 4), "float64", 0)
    got = layers.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(got, nn.max_pool(x, (2, 2), strides=(2, 2)))
    assert got.shape == (BATCH, side // 2, side // 2, 4)


def _tied_images(side):
    """NHWC images whose top-left corner is constant: every 2x2 window there is a four-way tie."""
    x = np.random.default_rng(0).standard_normal((BATCH, side, side, 4))
    x[:, :6, :6, :] = 0.5   # as relu(bias) over the zero border of padded MNIST digits
    return x


def _grad_of_pool(pool, x):
    side = x.shape[1] // 2
    weights = jnp.arange(1.0, side * side + 1).reshape(side, side, 1)
    return jax.grad(lambda x: jnp.sum(pool(x) * weights))(jnp.asarray(x))


def _torch_pool_grad(x):
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    side = x.shape[1] // 2
    (torch.nn.functional.max_pool2d(xt, 2) * torch.arange(1.0, side * side + 1, dtype=xt.dtype).reshape(side, side)).sum().backward()
    return xt.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("side", POOL_SIDES)
def test_max_pool_gradient_goes_to_first_max_as_torch(side):
    x = _tied_images(side)
    got = _grad_of_pool(lambda v: layers.max_pool(v, (2, 2), strides=(2, 2)), x)
    np.testing.assert_array_equal(got, _torch_pool_grad(x))


def test_pool_gradient_check_catches_split_ties():
    # reshape + jnp.max, the obvious fast pool, splits a tie's gradient between the tied inputs
    x = _tied_images(30)
    def plain(v):
        n, h, w, c = v.shape
        return v.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(_grad_of_pool(plain, x), _torch_pool_grad(x))


@pytest.mark.x64
def test_overlapping_pool_falls_through_to_flax():
    x = _rand((BATCH, 13, 13, 4), "float64", 0)
    np.testing.assert_array_equal(layers.max_pool(x, (3, 3), strides=(1, 1)),
                                  nn.max_pool(x, (3, 3), strides=(1, 1)))
    np.testing.assert_array_equal(layers.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"),
                                  nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))
