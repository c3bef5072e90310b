"""``flax-lenet convert IN OUT --torch FILE.py:Cls --flax FILE.py:Cls``: any torch checkpoint to its Flax port.

The written Orbax directory or ``.safetensors`` is read back with Orbax's and safetensors' own
APIs (not the project's) and must hold exactly what ``port.torch_to_flax`` gives, and load into
the Flax model so that it computes what the torch model computes.
"""

import textwrap

import numpy as np
import pytest
import torch

from flax_lenet.porting import port
from tests.helpers import one_line_exit_2, run_cli

MODEL_FILE = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F
    from flax import nnx


    class TorchNet(nn.Module):                     # Conv2d -> BatchNorm2d -> ReLU -> flatten -> Linear
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):                      # (N, 3, 8, 8)
            return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


    class FlaxNet(nnx.Module):
        def __init__(self, *, rngs, head="fc"):
            self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
            self.bn = nnx.BatchNorm(4, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
            setattr(self, head, nnx.Linear(4 * 6 * 6, 5, rngs=rngs))
            self.head_name = head

        def __call__(self, x):                     # (N, 8, 8, 3)
            x = nnx.relu(self.bn(self.conv(x)))
            return getattr(self, self.head_name)(x.reshape(x.shape[0], -1))


    class FlaxHead(FlaxNet):                       # fc named head: needs --name-map fc=head
        def __init__(self, *, rngs):
            super().__init__(rngs=rngs, head="head")


    class TorchConvs(nn.Module):                   # no Linear: no flatten to find
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)


    class FlaxConvs(nnx.Module):
        def __init__(self, *, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)


    class TorchTokens(nn.Module):                  # Embedding -> flatten -> Linear: runs on tokens only
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.fc = nn.Linear(5 * 4, 3)

        def forward(self, tokens):                 # (N, 5) integers in [0, 10)
            return self.fc(self.embed(tokens).flatten(1))


    class FlaxTokens(nnx.Module):
        def __init__(self, *, rngs):
            self.embed = nnx.Embed(10, 4, rngs=rngs)
            self.fc = nnx.Linear(5 * 4, 3, rngs=rngs)

        def __call__(self, tokens):
            x = self.embed(tokens)
            return self.fc(x.reshape(x.shape[0], -1))
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The user's file, and a checkpoint of ``TorchNet`` with running statistics of its own."""
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "my_models.py").write_text(MODEL_FILE)
    import sys
    sys.path.insert(0, str(folder))
    try:
        import my_models
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_models", None)
    torch.manual_seed(0)
    net = my_models.TorchNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 2)
    torch.save(net.state_dict(), folder / "net.pt")
    torch.save(my_models.TorchConvs().state_dict(), folder / "convs.pt")
    torch.save(my_models.TorchTokens().state_dict(), folder / "tokens.pt")
    return folder, net.eval(), my_models


def spec(folder, name):
    return f"{folder / 'my_models.py'}:{name}"


def restore(path) -> dict:
    """OUT read back with the libraries' own documented APIs, as ``{'module.path/leaf': array}``."""
    from flax import traverse_util
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        tree = traverse_util.unflatten_dict(load_file(path), sep=".")
    else:
        import orbax.checkpoint as ocp
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path.absolute())
    return port.flat_keys(tree)


def convert(capsys, folder, out, *args, torch_cls="TorchNet", flax_cls="FlaxNet", src="net.pt"):
    return run_cli(capsys, "convert", folder / src, out, "--torch", spec(folder, torch_cls),
                   "--flax", spec(folder, flax_cls), *args)


@pytest.mark.parametrize("name", ["out.orbax", "out.safetensors"])
def test_any_model_converts_to_exactly_what_torch_to_flax_gives(models, tmp_path, capsys, name):
    from flax import nnx
    folder, net, my_models = models
    rc, out, err = convert(capsys, folder, tmp_path / name, "--input-shape", "1,3,8,8")
    assert rc == 0, err
    assert "Flax layout" in out and "flatten permuted for fc (4, 6, 6)" in out
    expected = port.torch_to_flax(net, flatten={"fc": (4, 6, 6)})
    got = restore(tmp_path / name)
    assert sorted(got) == sorted({**expected["params"], **expected["batch_stats"]})
    for collection in expected.values():
        for key, value in collection.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key, strict=True)
    # and the Flax model with them computes what the torch model computes
    flax_model = my_models.FlaxNet(rngs=nnx.Rngs(1))
    nnx.update(flax_model, _nested(got))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(flax_model(x.transpose(0, 2, 3, 1))), want, rtol=1e-5, atol=1e-5)


def _nested(flat: dict) -> dict:
    """``{'conv/kernel': a}`` -> ``{'conv': {'kernel': a}}``, for ``nnx.update``."""
    from flax import traverse_util
    return traverse_util.unflatten_dict({tuple(k.replace("/", ".").split(".")): v for k, v in flat.items()})


@pytest.mark.parametrize("args,permuted", [
    (("--flatten", "fc=4,6,6"), True),          # declared: no --input-shape needed, the same as auto
    (("--flatten", "none"), False),             # the port flattens as torch: the kernel is weight.T
])
def test_flatten_declared_or_none_without_an_input_shape(models, tmp_path, capsys, args, permuted):
    folder, net, _ = models
    rc, _, err = convert(capsys, folder, tmp_path / "out.safetensors", *args)
    assert rc == 0, err
    kernel = restore(tmp_path / "out.safetensors")["fc/kernel"]
    auto = port.torch_to_flax(net, flatten={"fc": (4, 6, 6)})["params"]["fc/kernel"]
    plain = net.fc.weight.detach().numpy().T
    assert not np.array_equal(auto, plain)                  # the permutation is visible in the kernel
    np.testing.assert_array_equal(kernel, auto if permuted else plain)


def test_name_map_renames_and_without_it_the_error_says_so(models, tmp_path, capsys):
    folder, net, _ = models
    err = one_line_exit_2(capsys, "convert", folder / "net.pt", tmp_path / "out.orbax", "--torch",
                          spec(folder, "TorchNet"), "--flax", spec(folder, "FlaxHead"), "--flatten", "none")
    assert "'fc/kernel'" in err and "pass --name-map TORCH_PATH=FLAX_PATH" in err
    assert not (tmp_path / "out.orbax").exists()
    rc, _, err = convert(capsys, folder, tmp_path / "out.orbax", "--flatten", "none", "--name-map", "fc=head",
                         flax_cls="FlaxHead")
    assert rc == 0, err
    got = restore(tmp_path / "out.orbax")
    np.testing.assert_array_equal(got["head/kernel"], net.fc.weight.detach().numpy().T)
    assert "fc/kernel" not in got


def test_a_model_without_a_linear_needs_no_input_shape(models, tmp_path, capsys):
    folder, _, _ = models
    rc, _, err = convert(capsys, folder, tmp_path / "out.orbax", src="convs.pt", torch_cls="TorchConvs",
                         flax_cls="FlaxConvs")
    assert rc == 0, err
    assert sorted(restore(tmp_path / "out.orbax")) == ["conv/bias", "conv/kernel"]


def test_a_model_that_takes_tokens_converts_with_token_inputs_for_flatten_auto(models, tmp_path, capsys):
    """Its flatten is of an (N, 5, 4) embedding, the same order in both frameworks: nothing to permute.
    Standard-normal inputs, the default, make its Embedding raise."""
    from flax import nnx
    folder, _, my_models = models
    tokens = dict(src="tokens.pt", torch_cls="TorchTokens", flax_cls="FlaxTokens")
    rc, _, err = convert(capsys, folder, tmp_path / "float.orbax", "--input-shape", "2,5", **tokens)
    assert rc == 3 and "raised RuntimeError" in err and "on an input of shape (2, 5)" in err, err
    rc, out, err = convert(capsys, folder, tmp_path / "out.orbax", "--input-shape", "2,5", "--input-dtype", "int64",
                           "--input-high", "10", **tokens)
    assert rc == 0, err
    assert "flatten permuted" not in out
    net = my_models.TorchTokens().eval()
    net.load_state_dict(torch.load(folder / "tokens.pt", weights_only=True))
    flax_model = my_models.FlaxTokens(rngs=nnx.Rngs(1))
    nnx.update(flax_model, _nested(restore(tmp_path / "out.orbax")))
    x = np.random.default_rng(1).integers(0, 10, (3, 5))
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(flax_model(x)), want, rtol=1e-5, atol=1e-6)


def test_overwrite_replaces_a_converted_checkpoint(models, tmp_path, capsys):
    folder, net, _ = models
    out = tmp_path / "out.orbax"
    assert convert(capsys, folder, out, "--flatten", "none")[0] == 0
    err = one_line_exit_2(capsys, "convert", folder / "net.pt", out, "--torch", spec(folder, "TorchNet"),
                          "--flax", spec(folder, "FlaxNet"), "--flatten", "fc=4,6,6")
    assert "pass --overwrite" in err
    assert convert(capsys, folder, out, "--flatten", "fc=4,6,6", "--overwrite")[0] == 0
    auto = port.torch_to_flax(net, flatten={"fc": (4, 6, 6)})["params"]["fc/kernel"]
    np.testing.assert_array_equal(restore(out)["fc/kernel"], auto)


def _nan_checkpoint(folder, tmp_path):
    state = torch.load(folder / "net.pt", weights_only=True)
    state["fc.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    return tmp_path / "nan.pt"


def _other_shapes(folder, tmp_path):
    state = torch.load(folder / "net.pt", weights_only=True)
    state["fc.weight"] = torch.zeros(5, 100)
    torch.save(state, tmp_path / "other.pt")
    return tmp_path / "other.pt"


@pytest.mark.parametrize("case,says", [
    ("auto without a shape", "--flatten auto: expected --input-shape N,... to run the torch model once"),
    ("torch without flax", "--torch and --flax: expected both (another model's conversion), found --torch"),
    ("input shape alone", "--torch and --flax: expected both (another model's conversion), found --input-shape"),
    ("kernel size", "--kernel-size 3: expected it for the tutorial's Net only"),
    ("pt out", "out.pt: expected an Orbax directory or a .safetensors name for Flax variables"),
    ("orbax in", "net.orbax: expected a torch state_dict (.pt/.pth or .safetensors)"),
    ("missing in", "gone.pt: expected a torch state_dict (.pt/.pth), found no such file"),
    ("other shapes", "other.pt: fc.weight: expected shape (5, 144), found (5, 100)"),
    ("nan", "expected finite weights to save, found NaN or Inf in fc.bias; nothing was written"),
    ("bad flatten", "--flatten fc=4,6: expected a map of 144 values (fc.in_features), found 24"),
    ("bad name map", "--name-map fcc=head: expected a module path of --torch"),
    ("bad shape", "--input-shape: expected comma-separated positive integers"),
    ("tokens without a bound", "--input-dtype int64: expected --input-high K as well, found none"),
    ("a bound without tokens", "--input-high 10: expected it with --input-dtype int64, found float inputs"),
])
def test_each_bad_input_is_one_line_and_exit_2(models, tmp_path, capsys, case, says):
    folder, _, _ = models
    net, flax = spec(folder, "TorchNet"), spec(folder, "FlaxNet")
    src, dst = folder / "net.pt", tmp_path / "out.orbax"
    args = {"auto without a shape": [src, dst, "--torch", net, "--flax", flax],
            "torch without flax": [src, dst, "--torch", net],
            "input shape alone": [src, dst, "--input-shape", "1,3,8,8"],
            "kernel size": [src, dst, "--torch", net, "--flax", flax, "--kernel-size", "3"],
            "pt out": [src, tmp_path / "out.pt", "--torch", net, "--flax", flax, "--flatten", "none"],
            "orbax in": [tmp_path / "net.orbax", dst, "--torch", net, "--flax", flax, "--flatten", "none"],
            "missing in": [tmp_path / "gone.pt", dst, "--torch", net, "--flax", flax, "--flatten", "none"],
            "other shapes": [_other_shapes(folder, tmp_path), dst, "--torch", net, "--flax", flax, "--flatten",
                             "none"],
            "nan": [_nan_checkpoint(folder, tmp_path), dst, "--torch", net, "--flax", flax, "--flatten", "none"],
            "bad flatten": [src, dst, "--torch", net, "--flax", flax, "--flatten", "fc=4,6"],
            "bad name map": [src, dst, "--torch", net, "--flax", flax, "--name-map", "fcc=head"],
            "bad shape": [src, dst, "--torch", net, "--flax", flax, "--input-shape", "1,3,x"],
            "tokens without a bound": [src, dst, "--torch", net, "--flax", flax, "--input-shape", "1,3,8,8",
                                       "--input-dtype", "int64"],
            "a bound without tokens": [src, dst, "--torch", net, "--flax", flax, "--input-shape", "1,3,8,8",
                                       "--input-high", "10"]}[case]
    err = one_line_exit_2(capsys, "convert", *args)
    assert says in err, err
    assert not dst.exists() and not (tmp_path / "out.pt").exists()


def test_a_model_that_raises_on_the_input_shape_exits_3(models, tmp_path, capsys):
    folder, _, _ = models
    rc, _, err = convert(capsys, folder, tmp_path / "out.orbax", "--input-shape", "1,5,8,8")   # 5 channels, not 3
    assert rc == 3 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "raised RuntimeError" in err and "on an input of shape (1, 5, 8, 8)" in err


def test_the_nets_conversion_refuses_another_models_checkpoint_in_one_short_line(tmp_path, capsys):
    """Before: the refusal listed every key of the checkpoint (39 for this one) on its line."""
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(20)])
    torch.save(model.state_dict(), tmp_path / "other.pt")
    err = one_line_exit_2(capsys, "convert", tmp_path / "other.pt", tmp_path / "out.orbax")
    assert "expected the tutorial Net's state_dict" in err and "found 40 tensors and no conv1.weight" in err
    assert "pass --torch FILE.py:TorchCls --flax FILE.py:FlaxCls" in err
    assert "19.weight" not in err and len(err) < 400, err


def test_convert_help_documents_the_exit_codes_and_the_options(capsys):
    from flax_lenet.app import cli
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for says in ("exit codes: 0 written; 2 bad input or usage", "3 with --torch/--flax: the model raised",
                 "--torch MODULE:NAME", "--flax MODULE:NAME", "--input-shape N,C,H,W", "--name-map TORCH_PATH=FLAX_PATH",
                 "--flatten auto|none|LINEAR_PATH=C,H,W", "--input-dtype {float,int64}", "--input-high INPUT_HIGH"):
        assert says in text, says
