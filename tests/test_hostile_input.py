"""Hostile or careless input to the commands: one line, exit 2, and outputs with ordinary modes."""

import os
import stat

import pytest

from flax_lenet.app import cli
from helpers import one_line_exit_2


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "-1"])
def test_bench_refuses_a_min_time_it_could_not_honour(capsys, value):
    err = one_line_exit_2(capsys, "bench", "--batch", "1", "--impl", "flax:train_step", "--min-time", value)
    assert "--min-time in (0, 60] seconds" in err and value.replace("1e300", "1e+300") in err


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_compare_refuses_a_learning_rate_that_is_not_finite_and_non_negative(capsys, value):
    err = one_line_exit_2(capsys, "compare", "--lr", value)
    assert "--lr: expected a finite learning rate >= 0" in err


def test_every_file_of_a_run_gets_the_mode_the_umask_gives(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--max-steps", "1", "--quiet", "--out", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.json", "curves.png", "torch.safetensors"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o666 & ~mask, f"{name}: {oct(mode)}"               # safetensors writes 0600
