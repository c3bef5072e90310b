"""The same seed gives bit-identical Flax parameters and a bit-identical 100-step training run in
two separate processes. On a GPU, where torch's run is checked as well, both frameworks need
their determinism flags: ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` for XLA (see
https://github.com/jax-ml/jax/discussions/10674); ``torch.use_deterministic_algorithms(True)``,
``cudnn.benchmark=False``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for torch (see
https://pytorch.org/docs/stable/notes/randomness.html).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flax_lenet

STEPS = 100
ROOT = Path(flax_lenet.__file__).resolve().parents[1]


def record(steps: int, device: str) -> dict:
    """The seed-0 Flax init and per-step digests of a ``steps``-step AdamW run (and torch's, on GPU)."""
    import hashlib

    import jax
    from flax import nnx

    from flax_lenet import Net, convert, optim
    from flax_lenet.porting import parity, trajectory
    if device == "gpu":
        import torch
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    def digest(tree):
        return hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in jax.tree.leaves(tree))).hexdigest()

    params = nnx.to_pure_dict(nnx.state(Net(rngs=nnx.Rngs(0)), nnx.Param))
    saved = {f"init {k}": np.asarray(v) for k, v in convert.flatten_flax(params).items()}
    xs, ys = parity.tutorial_data(4, 0, "float32", steps=steps)
    xs_nhwc = np.ascontiguousarray(xs.transpose(0, 1, 3, 4, 2))   # (T, N, 1, 32, 32) -> (T, N, 32, 32, 1)
    opt = optim.Optimizer.of("adamw", lr=1e-3)          # as test_trajectory.py: one compile serves both
    run = list(trajectory.flax_steps(params, opt, xs_nhwc, ys))
    saved["flax losses"] = np.array([loss for loss, _ in run])
    saved["flax steps"] = np.array([digest(p) for _, p in run])
    saved.update({f"final {k}": np.asarray(v) for k, v in convert.flatten_flax(run[-1][1]).items()})
    if device == "gpu":                          # torch promises CPU determinism; the flags matter on GPU
        torch_run = list(trajectory.torch_steps(convert.flax_to_torch(params), opt, xs, ys))
        saved["torch losses"] = np.array([loss for loss, _ in torch_run])
        saved["torch steps"] = np.array([digest(s) for _, s in torch_run])
    # seeded from the process id: what a determinism check has to catch
    saved["pid_seeded"] = np.asarray(nnx.state(Net(rngs=nnx.Rngs(os.getpid())), nnx.Param)["conv1"]["kernel"][...])
    return saved


def start_processes(tmp_path, count: int, device: str, extra_env: dict):
    """Start ``record`` in ``count`` fresh processes (this file run as a script); return a collector."""
    import jax
    env = {**os.environ, **extra_env,
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "JAX_ENABLE_X64": "1" if jax.config.jax_enable_x64 else "0"}          # as in this process
    outs = [tmp_path / f"run{i}.npz" for i in range(count)]
    procs = [subprocess.Popen([sys.executable, __file__, str(out), str(STEPS), device], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]

    def collect() -> list[dict]:
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"run failed:\n{err[-3000:]}"
        return [dict(np.load(out)) for out in outs]

    return collect


def assert_bit_identical(a: dict, b: dict, keys, what: str) -> None:
    """Same dtype, shape and bytes for every key: not allclose, equal."""
    for k in keys:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k} dtype/shape differ"
        assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k} differs between the two processes"


def deterministic_keys(saved: dict) -> list[str]:
    return [k for k in saved if k != "pid_seeded"]


@pytest.mark.slow
def test_same_seed_is_bit_identical_in_two_processes_cpu(tmp_path):
    """This pytest process (with whatever ran before in it) and a fresh one."""
    import jax
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU claim needs JAX on CPU in this process; the GPU test covers GPUs")
    collect = start_processes(tmp_path, 1, "cpu", {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""})
    here = record(STEPS, "cpu")                                     # meanwhile, in this process
    [other] = collect()
    keys = deterministic_keys(here)
    assert len(here["flax steps"]) == STEPS
    assert len(set(here["flax steps"])) == STEPS, "the run did not move the weights every step"
    assert_bit_identical(here, other, keys, "CPU")
    # the same checker catches a process-dependent seed, and a single flipped bit
    with pytest.raises(AssertionError, match="pid_seeded differs"):
        assert_bit_identical(here, other, ["pid_seeded"], "seeded from the pid")
    nudged = dict(other, **{"final fc1/kernel": other["final fc1/kernel"].copy()})
    nudged["final fc1/kernel"].flat[0] = np.nextafter(nudged["final fc1/kernel"].flat[0], np.inf)
    with pytest.raises(AssertionError, match="final fc1/kernel differs"):
        assert_bit_identical(here, nudged, keys, "one ulp")


@pytest.mark.gpu
def test_same_seed_is_bit_identical_in_two_processes_gpu_with_determinism_flags(tmp_path):
    flags = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip(),
             "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    first, second = start_processes(tmp_path, 2, "gpu", flags)()
    assert_bit_identical(first, second, deterministic_keys(first), "GPU with determinism flags")


if __name__ == "__main__":
    np.savez(sys.argv[1], **record(int(sys.argv[2]), sys.argv[3]))
