"""``flax-lenet compare --torch FILE.py:Cls --flax FILE.py:Cls``: the harness on a model outside the package.

Each run starts in a temporary directory holding the user's file, as a user would run it: in this
process, and once in a process of its own with the user's folder on ``PYTHONPATH``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import run_cli

MODEL_FILE = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F
    from flax import nnx


    class TorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):                      # (N, 3, 8, 8)
            return self.fc(F.relu(self.conv(x)).flatten(1))


    class FlaxNet(nnx.Module):
        def __init__(self, *, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
            self.fc = nnx.Linear(4 * 6 * 6, 5, rngs=rngs)

        def __call__(self, x):                     # (N, 8, 8, 3)
            x = nnx.relu(self.conv(x))
            return self.fc(x.reshape(x.shape[0], -1))


    class FlattenedAsTorch(FlaxNet):               # a wrong port: flattens in torch's (C, H, W) order
        def __call__(self, x):
            x = nnx.relu(self.conv(x)).transpose(0, 3, 1, 2)
            return self.fc(x.reshape(x.shape[0], -1))


    class TorchTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, tokens):
            return self.head(self.embed(tokens).mean(1))


    def flax_tokens():                             # a zero-argument factory
        class FlaxTokens(nnx.Module):
            def __init__(self, rngs):
                self.embed = nnx.Embed(10, 4, rngs=rngs)
                self.head = nnx.Linear(4, 3, rngs=rngs)

            def __call__(self, tokens):
                return self.head(self.embed(tokens).mean(1))
        return FlaxTokens(nnx.Rngs(0))
''')


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "my_models.py").write_text(MODEL_FILE)
    return folder


@pytest.fixture
def compare(model_dir, capsys, monkeypatch):
    """``flax-lenet compare ARGS`` run from the user's folder, in this process."""
    monkeypatch.chdir(model_dir)

    def run(*args):
        rc, out, err = run_cli(capsys, "compare", *args)
        return subprocess.CompletedProcess(["flax-lenet", "compare", *args], rc, out, err)
    return run


def test_port_in_a_user_file_agrees_and_exits_0(compare):
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet",
                "--input-shape", "2,3,8,8", "--steps", "3", "--optimizer", "momentum", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["config"]["steps"] == 3 and report["config"]["input_shape"] == [2, 3, 8, 8]
    quantities = [r["quantity"] for r in report["rows"]]
    assert {"params round trip", "output", "loss", "grad fc.weight", "params after SGD steps (3)"} <= set(quantities)
    assert report["config"]["flatten"] == {"fc": [4, 6, 6]}       # found by the hook, not declared


@pytest.mark.slow
def test_module_path_with_sys_path_and_integer_inputs(model_dir):
    env_path = f"{model_dir}"
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", "compare", "--torch", "my_models:TorchTokens",
                           "--flax", "my_models:flax_tokens", "--input-shape", "4,5", "--input-dtype", "int64",
                           "--input-high", "10", "--loss", "cross_entropy"],
                          capture_output=True, text=True, timeout=300, cwd=model_dir,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), env_path])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quantities agree" in proc.stdout and "grad embed.weight" in proc.stdout


def test_float64_check_of_a_float32_built_embed_says_why_it_differs(compare):
    proc = compare("--torch", "my_models.py:TorchTokens", "--flax", "my_models.py:flax_tokens",
                "--input-shape", "4,5", "--input-dtype", "int64", "--input-high", "10", "--dtype", "float64")
    assert proc.returncode == 1
    assert "notice: Embed at embed computes in float32" in proc.stdout


def test_wrong_port_exits_1_naming_the_tensor(compare):
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlattenedAsTorch",
                "--input-shape", "2,3,8,8")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.rstrip().endswith("FAIL")]
    assert any(line.startswith("grad fc.weight") for line in fails) and "quantities differ" in proc.stdout


@pytest.mark.parametrize("args,says", [
    (("--torch", "no_such_module:Net", "--flax", "my_models.py:FlaxNet", "--input-shape", "2,3,8,8"),
     "--torch: cannot import 'no_such_module'"),
    (("--torch", "my_models.py:Missing", "--flax", "my_models.py:FlaxNet", "--input-shape", "2,3,8,8"),
     "--torch: expected 'Missing' in my_models.py"),
    (("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet", "--input-shape", "2,x,8"),
     "--input-shape: expected comma-separated positive integers"),
    (("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet", "--input-shape", "0,3,8,8"),
     "--input-shape"),
    (("--torch", "my_models.py:TorchNet", "--input-shape", "2,3,8,8"), "go together"),
])
def test_bad_usage_gives_one_line_and_exit_2(compare, args, says):
    proc = compare(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert says in proc.stderr
