"""Shared test helpers: one way to draw weights and data, one way to compare."""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from flax_lenet import convert
from flax_lenet.porting import parity
from flax_lenet.porting.tolerances import Tolerance


def torch_net(kernel_size: int, dtype: str, seed: int = 0):
    """``torch_reference.Net`` with torch's own init under ``seed``, cast to ``dtype``."""
    from torch_reference import Net
    torch.manual_seed(seed)
    return Net(kernel_size).to(getattr(torch, dtype))


def state_numpy(net) -> dict:
    return convert.state_to_numpy(net.state_dict())


def assert_close(actual, expected, tol: Tolerance, what: str = "") -> None:
    """``max|a - e| <= tol.rtol * max|e|`` over the whole array (see flax_lenet.porting.tolerances)."""
    max_abs, max_rel = parity.diff(actual, expected)
    assert max_rel <= tol.rtol, f"{what}: max rel diff {max_rel:.3e} > {tol.rtol:.0e} (max abs {max_abs:.3e})"


def assert_tree_close(actual: dict, expected: dict, tol: Tolerance, what: str = "") -> None:
    """Same keys first, then every leaf within ``tol``."""
    assert sorted(actual) == sorted(expected), f"{what}: keys differ: {sorted(actual)} vs {sorted(expected)}"
    for key in expected:
        assert_close(actual[key], expected[key], tol, f"{what} {key}")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``flax-lenet *argv`` in this process: ``(exit code, stdout, stderr)``. A test starts a
    process of its own only for what a process shows (signals, imports, warnings' formatting,
    resource limits): each one costs seconds of importing jax and torch."""
    from flax_lenet.app import cli
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_exit_2(capsys, *argv) -> str:
    """Run ``flax-lenet *argv`` in this process; it must exit 2 with one line on stderr, no traceback."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@contextlib.contextmanager
def unremovable(path: Path, top: Path):
    """A file ``path`` that cannot be removed until the block ends, wherever it is moved under
    ``top``: ``chattr +i`` for root, whom file modes do not stop; otherwise its folder read-only."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
            pytest.skip("root, and this file system takes no chattr +i: nothing here resists removal")
        undo = ["chattr", "-R", "-i", top]
    else:
        path.parent.chmod(0o555)
        undo = ["chmod", "-R", "u+w", top]
    try:
        yield
    finally:
        subprocess.run(undo, capture_output=True)
