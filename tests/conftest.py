"""Test set-up: float64 on (the truth tier needs it from the start), GPU marker handling."""

import jax

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402


def _cuda_in_both() -> bool:
    try:
        import torch
        return torch.cuda.is_available() and jax.default_backend() == "gpu"
    except Exception:  # pragma: no cover - torch missing or broken
        return False


HAS_GPU = _cuda_in_both()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device visible to both torch and jax")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
