"""Each test runs in the JAX mode its dtype needs, and that mode does not leak (see conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_test_runs_in_its_dtypes_mode(dtype):
    on = dtype == "float64"
    assert jax.config.jax_enable_x64 is on
    assert jnp.asarray(1.0).dtype == np.dtype(dtype)
    assert jnp.asarray(np.ones(2)).dtype == np.dtype(dtype)        # numpy float64 in, the mode's float out


@pytest.mark.x64
def test_the_x64_marker_turns_x64_on():
    assert jax.config.jax_enable_x64
    assert jnp.zeros(1, jnp.float64).dtype == np.float64


def test_a_global_switch_inside_a_test_does_not_leak_into_the_next():
    # what the CLI's float64 paths do: jax.config.update for the whole process
    jax.config.update("jax_enable_x64", True)
    assert jnp.asarray(1.0).dtype == np.float64


def test_the_test_after_a_global_switch_runs_with_x64_off():
    assert not jax.config.jax_enable_x64
    assert jnp.asarray(1.0).dtype == np.float32
