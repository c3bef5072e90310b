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


    class FlaxHead(FlaxNet):                       # fc named head: needs --name-map fc=head
        def __init__(self, *, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
            self.head = nnx.Linear(4 * 6 * 6, 5, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv(x))
            return self.head(x.reshape(x.shape[0], -1))


    class TorchDrop(TorchNet):                     # Dropout(0.5) before fc
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(self.drop(F.relu(self.conv(x)).flatten(1)))


    class FlaxDrop(FlaxNet):
        rate = 0.5

        def __init__(self, *, rngs):
            super().__init__(rngs=rngs)
            self.drop = nnx.Dropout(self.rate, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv(x))
            return self.fc(self.drop(x.reshape(x.shape[0], -1)))


    class FlaxDrop3(FlaxDrop):                     # a wrong port: rate 0.3 for torch's p=0.5
        rate = 0.3


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


# --- parity.check's options on the command line ------------------------------------------------

def test_name_map_pairs_a_renamed_layer(compare):
    """Broken twin: without ``--name-map`` the converted ``fc`` has nowhere to go, and the one-line
    error says which option maps it."""
    args = ("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxHead", "--input-shape", "2,3,8,8")
    proc = compare(*args, "--name-map", "fc=head", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    proc = compare(*args)
    assert proc.returncode == 2 and "'fc/kernel'" in proc.stderr and "--name-map TORCH_PATH=FLAX_PATH" in proc.stderr


@pytest.mark.parametrize("flax,flatten,rc", [
    ("FlattenedAsTorch", ["none"], 0),         # the port flattens as torch does: nothing to permute
    ("FlaxNet", ["none"], 1),                  # ... and one that flattens in Flax's order fails without it
    ("FlaxNet", ["fc=4,6,6"], 0),              # declared as torch's (C, H, W)
    ("FlaxNet", ["fc=6,6,4"], 1),              # declared in another order: the right size, the wrong map
])
def test_flatten_none_or_declared_is_what_the_comparison_uses(compare, flax, flatten, rc):
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", f"my_models.py:{flax}", "--input-shape", "2,3,8,8",
                   *[a for f in flatten for a in ("--flatten", f)], "--json")
    assert proc.returncode == rc, proc.stderr
    declared = flatten[0] if "=" in flatten[0] else None
    expected = None if declared is None else {"fc": [int(n) for n in declared.split("=")[1].split(",")]}
    assert json.loads(proc.stdout)["config"]["flatten"] == expected


def test_rtol_sets_the_tolerance_of_the_quantities_it_names(compare):
    """The wrong port (``test_wrong_port_exits_1_naming_the_tensor``) is within 10 of torch everywhere:
    with ``--rtol`` of 10 for every quantity it passes; the quantities not named keep their own."""
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlattenedAsTorch", "--input-shape",
                   "2,3,8,8", "--rtol", "output=10,loss=10,grad=10", "--rtol", "steps=10", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["quantity"]: r for r in json.loads(proc.stdout)["rows"]}
    assert rows["output"]["rtol"] == rows["grad fc.weight"]["rtol"] == 10 and rows["grad fc.weight"]["max_rel"] > 1e-3
    assert rows["params round trip"]["rtol"] == 0                         # not named: exact, as before
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet", "--input-shape", "2,3,8,8",
                   "--rtol", "round-trip=0.5", "--json")
    assert json.loads(proc.stdout)["rows"][0]["rtol"] == 0.5              # round-trip: the dash spelling


def test_batch_that_is_the_input_shapes_first_number_is_taken(compare):
    proc = compare("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet", "--input-shape", "3,3,8,8",
                   "--batch", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["input_shape"] == [3, 3, 8, 8]


PORT = ("--torch", "my_models.py:TorchNet", "--flax", "my_models.py:FlaxNet", "--input-shape", "2,3,8,8")


@pytest.mark.parametrize("args,says", [
    (("--batch", "4"), "--batch 4: expected the batch of --input-shape 2,3,8,8 (its first number, 2)"),
    (("--name-map", "fc"), "--name-map: expected TORCH_PATH=FLAX_PATH, found 'fc'"),
    (("--name-map", "=head"), "--name-map: expected TORCH_PATH=FLAX_PATH, found '=head'"),
    (("--name-map", "fc=a,fc=b"), "--name-map: expected each TORCH_PATH once, found 'fc' twice"),
    (("--name-map", "fcc=head"), "--name-map fcc=head: expected a module path of --torch my_models.py:TorchNet, "
                                 "found no module 'fcc' (nearest: 'fc')"),
    (("--flatten", "fc=4,6"), "--flatten fc=4,6: expected a map of 144 values (fc.in_features), found 24"),
    (("--flatten", "conv=4,6,6"), "--flatten conv=4,6,6: expected the path of a torch Linear in --torch "
                                  "my_models.py:TorchNet, found a Conv2d"),
    (("--flatten", "fcc=4,6,6"), "found no module 'fcc' (nearest: 'fc')"),
    (("--flatten", "fc=4,x,6"), "--flatten: expected LINEAR_PATH=C,H,W with two or more positive integers"),
    (("--flatten", "fc=144"), "--flatten: expected LINEAR_PATH=C,H,W with two or more positive integers"),
    (("--flatten", "sideways"), "--flatten: expected auto, none or LINEAR_PATH=C,H,W, found 'sideways'"),
    (("--flatten", "auto", "--flatten", "fc=4,6,6"), "--flatten auto: expected it alone, found 2 --flatten values"),
    (("--flatten", "fc=4,6,6", "--flatten", "fc=6,6,4"), "--flatten: expected each LINEAR_PATH once, found 'fc' twice"),
    (("--rtol", "outputs=1e-3"), "--rtol: expected a QUANTITY among round-trip, output, loss, grad, manual, steps, "
                                 "found 'outputs'"),
    (("--rtol", "output"), "--rtol: expected QUANTITY=VALUE, found 'output'"),
    (("--rtol", "output=0"), "--rtol output: expected a positive finite number, found '0'"),
    (("--rtol", "grad=-1e-3"), "--rtol grad: expected a positive finite number, found '-1e-3'"),
    (("--rtol", "loss=nan"), "--rtol loss: expected a positive finite number, found 'nan'"),
    (("--rtol", "loss=inf"), "--rtol loss: expected a positive finite number, found 'inf'"),
    (("--rtol", "steps=tiny"), "--rtol steps: expected a positive finite number, found 'tiny'"),
    (("--rtol", "loss=1,loss=2"), "--rtol: expected each QUANTITY once, found 'loss' twice"),
])
def test_each_bad_option_value_is_one_line_and_exit_2(compare, args, says):
    proc = compare(*PORT, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr, proc.stderr


@pytest.mark.parametrize("option,value", [("--name-map", "fc=head"), ("--flatten", "none"), ("--rtol", "loss=1"),
                                          ("--input-shape", "2,3,8,8"), ("--input-high", "10")])
def test_port_options_without_a_port_are_refused(capsys, option, value):
    """Not silently ignored by the tutorial's comparison."""
    rc, _, err = run_cli(capsys, "compare", option, value)
    assert rc == 2 and err.count("\n") == 1
    assert f"{option}: expected --torch and --flax as well" in err


# --- a Dropout rate the comparison cannot see ---------------------------------------------------

def test_dropout_notes_name_a_rate_that_differs_and_only_that(model_dir):
    from flax import nnx

    from flax_lenet.app.commands.compare import load_object
    from flax_lenet.porting.dropout import dropout_notes

    def user(name):
        return load_object(f"{model_dir / 'my_models.py'}:{name}", "--torch")
    torch_model = user("TorchDrop")()
    assert dropout_notes(torch_model, user("FlaxDrop3")(rngs=nnx.Rngs(0))) == [
        "dropout rates differ at drop: torch p=0.5, flax rate=0.3 (the comparison runs with dropout off, so it "
        "cannot see this)"]
    assert dropout_notes(torch_model, user("FlaxDrop")(rngs=nnx.Rngs(0))) == []     # the same rate: nothing


def test_dropout_notes_follow_the_name_map():
    import torch.nn as nn
    from flax import nnx

    from flax_lenet.porting.dropout import dropout_notes

    class Flax(nnx.Module):
        def __init__(self):
            self.blocks = nnx.List([nnx.Dropout(0.1, rngs=nnx.Rngs(0))])

    torch_model = nn.Sequential(nn.Dropout2d(0.2))
    assert dropout_notes(torch_model, Flax()) == []                       # no pair without the map
    assert dropout_notes(torch_model, Flax(), {"0": "blocks.0"}) == [
        "dropout rates differ at 0 (flax: blocks.0): torch p=0.2, flax rate=0.1 (the comparison runs with "
        "dropout off, so it cannot see this)"]


@pytest.mark.parametrize("json_out", [True, False], ids=["json", "table"])
def test_compare_prints_a_dropout_rate_that_differs(compare, json_out):
    """It passes (dropout is off in the comparison), and says what it could not check."""
    proc = compare("--torch", "my_models.py:TorchDrop", "--flax", "my_models.py:FlaxDrop3", "--input-shape",
                   "2,3,8,8", *(["--json"] if json_out else []))
    assert proc.returncode == 0, proc.stderr
    note = "dropout rates differ at drop: torch p=0.5, flax rate=0.3"
    if json_out:
        assert any(n.startswith(note) for n in json.loads(proc.stdout)["notices"])
    else:
        assert f"notice: {note}" in proc.stdout


# --- exit codes, documented --------------------------------------------------------------------

def test_compare_help_and_docstring_document_every_exit_code(capsys):
    from flax_lenet.app import cli
    from flax_lenet.app.commands import compare
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    epilog = text[text.index("exit codes:"):]
    for says in ("0 every quantity agrees", "1 one differs", "2 bad input or usage",
                 "3 with --torch/--flax: your model raised"):
        assert says in epilog, says
    doc = " ".join(compare.__doc__.split())
    for says in ("0 every quantity agrees", "1 one differs", "2 bad input or usage", "3 your model raised"):
        assert says in doc, says
    assert "the batch is the first number of --input-shape" in text          # --batch's help


# --- the layers people port, from the command line ----------------------------------------------

PORT_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "port_models.py")
TOKENS = ("--input-dtype", "int64", "--loss", "cross_entropy", "--steps", "10", "--optimizer", "adam", "--lr", "0.001")


@pytest.mark.slow
@pytest.mark.parametrize("torch_cls,flax_cls,shape,high", [
    ("TorchTransformer", "FlaxTransformer", "4,6", "32"),          # nn.MultiheadAttention -> nnx.MultiHeadAttention
    ("TorchLSTMClassifier", "FlaxLSTMClassifier", "4,7", "16"),    # nn.LSTM -> nnx.RNN(nnx.LSTMCell)
])
def test_attention_and_lstm_ports_pass_ten_float32_adam_steps(compare, torch_cls, flax_cls, shape, high):
    proc = compare("--torch", f"{PORT_MODELS}:{torch_cls}", "--flax", f"{PORT_MODELS}:{flax_cls}",
                   "--input-shape", shape, "--input-high", high, *TOKENS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quantities agree" in proc.stdout


@pytest.mark.slow
def test_a_broken_lstm_port_fails_and_the_cli_names_the_layer(compare):
    proc = compare("--torch", f"{PORT_MODELS}:TorchLSTMClassifier", "--flax", f"{PORT_MODELS}:flax_lstm_scanning_the_batch",
                   "--input-shape", "4,7", "--input-high", "16", *TOKENS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first difference: lstm (torch LSTM ↔ flax RNN): output max rel" in proc.stdout
