"""``flax-lenet compare``: 0 when everything agrees, 1 when a parity breaks, 2 on bad usage."""

import json

import pytest

from flax_lenet.app import cli


def test_compare_agrees_in_float64(capsys):
    assert cli.main(["compare", "--dtype", "float64", "--kernel-size", "5", "--flavour", "linen"]) == 0
    out = capsys.readouterr().out
    assert "quantities agree" in out and "FAIL" not in out


def test_compare_json_lists_every_quantity(capsys):
    assert cli.main(["compare", "--flavour", "functional", "--batch", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    quantities = [r["quantity"] for r in report["rows"]]
    assert quantities[:3] == ["params round trip", "logits", "loss"]
    assert sum(q.startswith("grad ") for q in quantities) == 10
    assert report["ok"] and all(r["ok"] for r in report["rows"])
    assert report["tolerance"]["rtol"] == 1e-5


@pytest.mark.parametrize("fault", ("flatten", "transpose"))
def test_compare_exits_1_when_parity_breaks(capsys, fault):
    assert cli.main(["compare", "--flavour", "nnx", "--break", fault]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("args", [("compare", "--kernel-size", "4"), ("compare", "--batch", "0"),
                                  ("compare", "--seed", "-1"), ("compare", "--dtype", "float16"),
                                  ("compare", "--lr", "-1"), ("compare", "--lr", "nan"),
                                  ("nonsense",)])
def test_bad_usage_exits_2_with_one_line(capsys, args):
    """argparse's usage errors exit through SystemExit(2); the others return 2 from ``cli.main``."""
    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "error:" in err
