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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: its small batches gain nothing from a second OpenMP
    thread, and spinning threads slow XLA's on 2 cores (``flax-lenet train`` does the same)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
