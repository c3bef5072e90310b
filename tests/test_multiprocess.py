"""The data-parallel step across two processes equals the single-process run.

Two processes on this machine, each with 2 CPU devices (``--xla_force_host_platform_device_count``),
join through ``jax.distributed.initialize`` with a localhost coordinator and run
``tests/multiprocess_worker.py``: the unchanged ``flax_lenet.fast.train_step`` on a mesh over all 4
devices, each process loading only its half of every batch; XLA sums the gradients across the
processes (gloo). Process 0 compares the parameters after 3 SGD-momentum steps with the same
steps on one device. The broken twin gives each process a mesh over its own devices only (the
step without the cross-process reduction) and must fail the same check.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from flax_lenet.porting.tolerances import SHARDED_FLOAT32, SHARDED_FLOAT64

PROCESSES = 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(tmp_path, *flags) -> dict:
    """Start PROCESSES workers, wait for all of them, return process 0's report."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("JAX_ENABLE_X64", None)
    out, port = tmp_path / "report.json", free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(PROCESSES), str(out), *flags],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    try:
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:                       # a hung peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("multiprocess"))


@pytest.mark.slow
def test_two_processes_see_each_others_devices(two_processes):
    assert two_processes["processes"] == PROCESSES
    assert two_processes["devices"] == 4 and two_processes["local_devices"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [("float32", SHARDED_FLOAT32), ("float64", SHARDED_FLOAT64)])
def test_step_across_processes_matches_one_device(two_processes, dtype, tol):
    assert two_processes[dtype] <= tol.rtol, f"{dtype}: {two_processes[dtype]:.3e} > {tol.rtol:.0e}"


@pytest.mark.slow
def test_step_without_the_cross_process_reduction_is_caught(tmp_path):
    broken = launch(tmp_path, "--local-only")
    assert broken["float32"] > 100 * SHARDED_FLOAT32.rtol
    assert broken["float64"] > 100 * SHARDED_FLOAT64.rtol
