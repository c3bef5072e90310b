"""``flax-lenet compare --steps N --optimizer NAME``: worst difference per quantity and its step."""

import json

import pytest

from flax_lenet.app import cli
from flax_lenet.convert import torch_shapes

STEPS = 3


def run(capsys, *argv):
    code = cli.main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_steps_prints_each_quantity_with_its_worst_step(capsys):
    code, out, err = run(capsys, "--steps", str(STEPS), "--optimizer", "adamw", "--lr", "1e-3", "--batch", "4")
    assert code == 0, out + err
    assert f"steps={STEPS}" in out and "at step" in out
    for name in ["loss"] + [f"params {k}" for k in torch_shapes(3)]:
        assert any(line.startswith(name + " ") for line in out.splitlines()), f"no row for {name}"
    assert f"all {1 + len(torch_shapes(3))} quantities agree" in out


def test_steps_json_and_a_broken_conversion_exits_1(capsys):
    code, out, _ = run(capsys, "--steps", "2", "--optimizer", "adamw", "--lr", "1e-3", "--batch", "4",
                       "--break", "flatten", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    rows = {r["quantity"]: r for r in report["rows"]}
    assert not rows["params fc1.weight"]["ok"] and rows["params fc1.weight"]["step"] in (1, 2)
    assert report["config"]["optimizer"] == "adamw(lr=0.001)"


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "adam"], "--optimizer adam: expected --steps N as well"),
    (["--steps", "2", "--flavour", "nnx"], "--steps: trains the functional flavour only"),
    (["--steps", "2", "--optimizer", "adam", "--lr", "-1"], "Invalid learning rate: -1.0"),
])
def test_bad_usage_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_steps_zero_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--steps", "0"])
    assert exit_.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
