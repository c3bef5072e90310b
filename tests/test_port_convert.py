"""``flax_lenet.porting.port``: conversion by module path and layer type, exact, with state-dict hygiene.

Also the tutorial's ``convert.torch_to_flax`` and ``flax-lenet convert`` on checkpoints saved from
``nn.DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``), and in bfloat16/float16.
"""

import os
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn as nn

import port_models
from flax_lenet import convert
from flax_lenet.porting import port
from flax_lenet.errors import BadWeights
from helpers import run_cli, state_numpy, torch_net


@pytest.mark.parametrize("name", sorted(port_models.ARCHITECTURES))
def test_round_trip_through_flax_is_bit_identical(name):
    torch_model, flax_model, x, options = port_models.ARCHITECTURES[name]()
    example = torch.from_numpy(x.astype(np.float32) if x.dtype.kind == "f" else x)
    flatten = options.get("flatten") or port.record_flattens(torch_model, example)
    variables = port.torch_to_flax(torch_model, flatten=flatten)
    port.load(flax_model, variables)                              # shapes fit the Flax model
    back = port.flax_to_torch(torch_model, port.flax_variables(flax_model), flatten=flatten)
    for key, value in torch_model.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key, strict=True)


def test_every_layer_type_in_the_table_has_a_rule():
    layers = [nn.Linear(2, 3), nn.Conv1d(2, 3, 3), nn.Conv2d(2, 3, 3), nn.Conv3d(2, 3, 3),
              nn.ConvTranspose2d(2, 3, 3), nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.LayerNorm(3),
              nn.GroupNorm(1, 3), nn.Embedding(4, 3)]
    assert all(port.rule_for(m) is not None for m in layers)
    assert port.rule_for(nn.ReLU()) is None


def test_batchnorm_running_stats_go_to_batch_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model[1].running_mean.uniform_()
    variables = port.torch_to_flax(model)
    assert sorted(variables["batch_stats"]) == ["1/mean", "1/var"]
    np.testing.assert_array_equal(variables["batch_stats"]["1/mean"], model[1].running_mean.numpy())
    assert sorted(variables["params"]) == ["0/bias", "0/kernel", "1/bias", "1/scale"]


def test_flatten_is_found_by_a_hook_not_by_name():
    """The first Linear after a conv stack gets the (C, H, W) -> (H, W, C) permutation, whatever its name."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 4), nn.Linear(4, 3))
    assert port.record_flattens(model, torch.zeros(1, 1, 8, 8)) == {"3": (2, 6, 6)}


def test_registered_rule_is_used_for_a_new_layer_type():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.arange(3.0))

    model = nn.Sequential(Scale())
    assert list(port.torch_to_flax(model)["params"]) == ["0/gain"]      # a bare parameter: kept by name
    port.register(Scale, port.Rule({"gain": ("params", "g")}, lambda n, a, info: a * 1))
    try:
        assert list(port.torch_to_flax(model)["params"]) == ["0/g"]
    finally:
        del port.RULES["Scale"]


def test_a_bare_parameter_converts_by_path_and_back():
    """A module with no rule keeps its own parameters by name (a learned positional embedding)."""
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(5, 4))
            self.proj = nn.Linear(4, 4)

    model = nn.Sequential(Encoder())
    variables = port.torch_to_flax(model)
    assert sorted(variables["params"]) == ["0.proj/bias", "0.proj/kernel", "0/pos"]
    np.testing.assert_array_equal(variables["params"]["0/pos"], model[0].pos.detach().numpy())
    back = port.flax_to_torch(model, variables)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy())


def test_a_buffer_of_a_layer_without_a_rule_is_refused_by_name():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(3))

    with pytest.raises(BadWeights, match="0.seen: no conversion rule for Counter"):
        port.torch_to_flax(nn.Sequential(Counter()))


def test_name_map_renames_module_paths():
    model = nn.Sequential(nn.Linear(2, 3))
    variables = port.torch_to_flax(model, name_map={"0": "layers.0"})
    assert sorted(variables["params"]) == ["layers.0/bias", "layers.0/kernel"]


# --- hygiene -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped_with_a_notice(prefix):
    net = torch_net(3, "float32")
    wrapped = {prefix + k: v for k, v in net.state_dict().items()}
    with pytest.warns(port.StateDictNotice, match="stripped"):
        params = convert.torch_to_flax(wrapped)
    np.testing.assert_array_equal(params["fc1"]["bias"], net.fc1.bias.detach().numpy())
    with pytest.warns(port.StateDictNotice):
        port.torch_to_flax(net, wrapped)


def test_without_a_prefix_there_is_no_notice():
    with warnings.catch_warnings():
        warnings.simplefilter("error", port.StateDictNotice)
        convert.torch_to_flax(torch_net(3, "float32").state_dict())


@pytest.mark.parametrize("dtype,expected", [(torch.bfloat16, ml_dtypes.bfloat16), (torch.float16, np.float16)])
def test_half_precision_state_dicts_convert_keeping_their_dtype(dtype, expected):
    net = torch_net(3, "float32")
    half = {k: v.to(dtype) for k, v in net.state_dict().items()}
    params = convert.torch_to_flax(half)
    assert params["conv1"]["kernel"].dtype == np.dtype(expected)
    bits = half["conv1.weight"].view(torch.int16).numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(params["conv1"]["kernel"].view(np.int16), bits)      # bit for bit
    back = convert.flax_to_torch(params)
    assert back["fc1.weight"].dtype == np.dtype(expected)


def test_cast_on_request():
    net = torch_net(3, "float32")
    half = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}
    state, notices = port.clean_state_dict(half, cast="float32")
    assert state["fc1.weight"].dtype == np.float32 and notices == ["cast bfloat16 to float32"]


def test_mismatch_names_key_expected_found_and_nearest():
    net = torch_net(3, "float32")
    sd = dict(net.state_dict())
    sd["fc1.weigth"] = sd.pop("fc1.weight")
    with pytest.raises(BadWeights, match=r"missing key 'fc1\.weight' \(expected shape \(120, 576\)\) "
                                         r"\(nearest: 'fc1\.weigth'\)"):
        port.torch_to_flax(net, sd)
    sd = dict(net.state_dict(), **{"fc2.weight": torch.zeros(84, 121)})
    with pytest.raises(BadWeights, match=r"fc2\.weight: expected shape \(84, 120\), found \(84, 121\)"):
        port.torch_to_flax(net, sd)


def test_flax_model_with_other_names_is_told_about_name_map():
    torch_model, flax_model, _, _ = port_models.make_conv1d()
    variables = port.torch_to_flax(torch_model, name_map={"fc": "head"}, flatten={"fc": (6, 10)})
    with pytest.raises(BadWeights, match=r"'head/(bias|kernel)'.*nearest: 'fc/.*name_map"):
        port.load(flax_model, variables)


@pytest.mark.parametrize("bad,found", [(None, "found None"), ([], "found list"), ({}, "empty mapping"),
                                       ({0: torch.zeros(1)}, "string keys, found key 0"),
                                       ({"w": None}, "w: expected a tensor or array, found None")])
def test_bad_state_dicts_give_one_line_bad_weights(bad, found):
    with pytest.raises(BadWeights, match=found) as e:
        port.clean_state_dict(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(BadWeights):
        convert.torch_to_flax(bad)


# --- flax-lenet convert ------------------------------------------------------------------------

@pytest.mark.parametrize("prefix,dst", [("module.", "out.safetensors"), ("_orig_mod.", "out.pt")])
def test_convert_command_strips_wrapper_prefixes(tmp_path, capsys, prefix, dst):
    net = torch_net(3, "float32")
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, tmp_path / "wrapped.pt")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "wrapped.pt", tmp_path / dst)
    assert rc == 0, err
    assert f"notice: stripped the {prefix!r} prefix" in err
    from flax_lenet.app import checkpoint
    state = checkpoint.load_state(tmp_path / dst)
    assert sorted(state) == sorted(net.state_dict())


@pytest.mark.slow
def test_eval_prints_a_stripped_prefix_as_one_note_line_not_a_python_warning(tmp_path):
    """Before: Python's two-line ``StateDictNotice`` warning (file, line and source) on stderr.
    A process of its own: pytest's warning capture would hide a warning printed in this one."""
    net = torch_net(3, "float32")
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "wrapped.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", "eval", str(tmp_path / "wrapped.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "prefix" in line]
    assert len(notes) == 1 and notes[0].startswith("flax-lenet eval: note: stripped the 'module.' prefix"), proc.stderr
    assert "Warning" not in proc.stderr and "warnings.warn" not in proc.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_convert_command_takes_half_precision_checkpoints(tmp_path, capsys, dtype):
    net = torch_net(3, "float32")
    torch.save({k: v.to(getattr(torch, dtype)) for k, v in net.state_dict().items()}, tmp_path / "half.pt")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "half.pt", tmp_path / "out.ckpt")
    assert rc == 0, err
    from flax_lenet.app import checkpoint
    state = checkpoint.load_state(tmp_path / "out.ckpt")
    assert str(state["fc1.weight"].dtype) == dtype
    expected = net.state_dict()["fc1.weight"].to(getattr(torch, dtype)).view(torch.int16).numpy()
    np.testing.assert_array_equal(state["fc1.weight"].view(np.int16), expected)


def test_tutorial_conversion_still_refuses_a_list():
    with pytest.raises(BadWeights, match="found list"):
        convert.torch_to_flax([state_numpy(torch_net(3, "float32"))])


@pytest.mark.parametrize("half,dst", [
    # each format and each half type once in the fast tier; the other three pairs in the slow one
    ("bfloat16", "out.orbax"), ("float16", "out.safetensors"), ("bfloat16", "out.pt"),
    *(pytest.param(h, d, marks=pytest.mark.slow) for h, d in
      (("float16", "out.orbax"), ("bfloat16", "out.safetensors"), ("float16", "out.pt")))])
def test_convert_writes_half_precision_weights_bit_for_bit_and_eval_reads_them(tmp_path, capsys, dst, half):
    """bfloat16 and float16 weights go through ``flax-lenet convert`` into every format unchanged
    (bfloat16 as ml_dtypes in numpy, torch.bfloat16 in a .pt), and ``eval`` evaluates them."""
    from flax_lenet.app import checkpoint
    net = torch_net(3, "float32")
    weights = {k: v.to(getattr(torch, half)) for k, v in net.state_dict().items()}
    torch.save(weights, tmp_path / "half.pt")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "half.pt", tmp_path / dst)
    assert rc == 0, err
    back = checkpoint.load_state(tmp_path / dst)
    for name, value in weights.items():
        assert str(back[name].dtype) == half
        assert np.array_equal(np.asarray(back[name]).view(np.int16), value.view(torch.int16).numpy()), name
    rc, _, err = run_cli(capsys, "eval", tmp_path / dst, "--json")
    assert rc == 0, err
    assert f"holds {half} weights: evaluated in float32" in err


def _layer_pairs():
    from flax import nnx
    r = nnx.Rngs(0)
    return {
        "conv3d": (nn.Conv3d(2, 3, 2), nnx.Conv(2, 3, (2, 2, 2), padding="VALID", rngs=r), (2, 2, 4, 4, 4)),
        "conv_transpose1d": (nn.ConvTranspose1d(2, 3, 3), nnx.ConvTranspose(2, 3, (3,), padding=((2, 2),), rngs=r),
                             (2, 2, 5)),
        "batchnorm1d": (nn.BatchNorm1d(3).eval(), nnx.BatchNorm(3, use_running_average=True, epsilon=1e-5, rngs=r),
                        (4, 3)),
        "groupnorm": (nn.GroupNorm(2, 4), nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=r), (2, 4, 3, 3)),
    }


@pytest.mark.x64
@pytest.mark.parametrize("name", ["conv3d", "conv_transpose1d", "batchnorm1d", "groupnorm"])
def test_single_layer_rules_compute_what_torch_computes(name):
    import jax.numpy as jnp
    from flax_lenet.porting.tolerances import FLOAT64
    torch.manual_seed(0)
    layer, flax_layer, shape = _layer_pairs()[name]
    layer = layer.double()
    if name == "batchnorm1d":
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(0).standard_normal(shape)
    expected = layer(torch.from_numpy(x)).detach().numpy()
    port.load(flax_layer, port.torch_to_flax(layer), dtype=jnp.float64)
    got = np.moveaxis(np.asarray(flax_layer(jnp.asarray(np.moveaxis(x, 1, -1)))), -1, 1)
    assert parity_rel(got, expected) <= FLOAT64.rtol


def parity_rel(a, e):
    from flax_lenet.porting import parity
    return parity.diff(a, e)[1]
