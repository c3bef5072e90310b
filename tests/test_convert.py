"""``flax_lenet.convert``: exact, shape-checked, and matched by name to ``net.parameters()``."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import flax_lenet
from flax_lenet import convert, linen
from flax_lenet.errors import BadWeights
from tests.helpers import state_numpy, torch_net

SEED_NET_PARAMS = 81_194       # the seed's revision, 3x3 kernels
TUTORIAL_NET_PARAMS = 61_706   # today's official tutorial, 5x5 kernels
PARAMS = {3: SEED_NET_PARAMS, 5: TUTORIAL_NET_PARAMS}


def _shapes(kernel_size, **kwargs):
    """The NNX Net with shapes only (``nnx.eval_shape``): no initialiser runs (these tests load or count)."""
    return nnx.eval_shape(lambda: flax_lenet.Net(kernel_size, **kwargs, rngs=nnx.Rngs(0)))


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("kernel_size", (3, 5))
def test_parameter_counts_match_the_tutorial(kernel_size):
    import jax.numpy as jnp
    torch_count = sum(p.numel() for p in torch_net(kernel_size, "float32").parameters())
    nnx_count = _count(nnx.to_pure_dict(nnx.state(_shapes(kernel_size), nnx.Param)))
    linen_count = _count(jax.eval_shape(linen.Net(kernel_size).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
    assert torch_count == nnx_count == linen_count == PARAMS[kernel_size]


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("kernel_size", (3, 5))
def test_round_trip_is_bit_identical(kernel_size, dtype):
    state = state_numpy(torch_net(kernel_size, dtype, seed=3))
    back = convert.flax_to_torch(convert.torch_to_flax(state))
    assert list(back) == list(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key], err_msg=key, strict=True)   # dtype too
    params = convert.torch_to_flax(state)
    again = convert.torch_to_flax(convert.flax_to_torch(params))
    for layer in params:
        for leaf in params[layer]:
            np.testing.assert_array_equal(again[layer][leaf], params[layer][leaf], err_msg=f"{layer} {leaf}", strict=True)


def test_torch_tensors_and_numpy_arrays_convert_alike():
    net = torch_net(5, "float32", seed=1)
    from_tensors = convert.torch_to_flax(net.state_dict())
    from_numpy = convert.torch_to_flax(state_numpy(net))
    for layer in from_numpy:
        for leaf in from_numpy[layer]:
            np.testing.assert_array_equal(from_tensors[layer][leaf], from_numpy[layer][leaf], err_msg=f"{layer} {leaf}")


@pytest.mark.parametrize("kernel_size", (3, 5))
def test_converted_weights_load_into_torch_and_nnx(kernel_size):
    net = torch_net(kernel_size, "float32", seed=2)
    params = convert.torch_to_flax(state_numpy(net))
    model = _shapes(kernel_size)
    nnx.update(model, params)                                     # torch_to_flax's output loads as is
    sd = convert.flax_to_torch(nnx.state(model, nnx.Param))
    fresh = torch_net(kernel_size, "float32", seed=99)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert all(torch.equal(fresh.state_dict()[k], net.state_dict()[k]) for k in sd)


@pytest.mark.parametrize("kernel_size", (3, 5))
def test_parameters_order_matches_the_flax_tree(kernel_size):
    """``net.parameters()`` order is conv1.weight, conv1.bias, ..., fc3.bias; the Flax tree has the same layers."""
    net = torch_net(kernel_size, "float32")
    names = [n for n, _ in net.named_parameters()]
    assert names == list(convert.torch_shapes(kernel_size))
    assert [tuple(p.shape) for p in net.parameters()] == list(convert.torch_shapes(kernel_size).values())
    flax_tree = nnx.to_pure_dict(nnx.state(flax_lenet.Net(kernel_size, rngs=nnx.Rngs(0)), nnx.Param))
    flat = {k: v.shape for k, v in convert.flatten_flax(flax_tree).items()}
    assert flat == convert.flax_shapes(kernel_size)
    assert [n.split(".")[0] for n in names[::2]] == list(convert.LAYERS) == sorted(flax_tree)


def test_missing_key_names_the_key_and_shape():
    state = state_numpy(torch_net(3, "float32"))
    del state["fc2.bias"]
    with pytest.raises(BadWeights, match=r"fc2\.bias.*\(84,\)"):
        convert.torch_to_flax(state)


def test_extra_key_is_named():
    state = state_numpy(torch_net(3, "float32"))
    state["fc4.weight"] = np.zeros((3, 10), np.float32)
    with pytest.raises(BadWeights, match=r"fc4\.weight.*\(3, 10\)"):
        convert.torch_to_flax(state)


def test_misshaped_key_names_expected_and_actual_shapes():
    state = state_numpy(torch_net(3, "float32"))
    state["fc1.weight"] = np.zeros((120, 400), np.float32)       # the 5x5 tutorial's fc1 in a 3x3 net
    with pytest.raises(BadWeights, match=r"fc1\.weight has shape \(120, 400\), expected \(120, 576\)"):
        convert.torch_to_flax(state)


def test_flax_params_with_wrong_shape_are_refused():
    params = convert.torch_to_flax(state_numpy(torch_net(5, "float32")))
    params["fc3"]["kernel"] = params["fc3"]["kernel"].T
    with pytest.raises(BadWeights, match=r"fc3/kernel has shape \(10, 84\), expected \(84, 10\)"):
        convert.flax_to_torch(params)


def test_layers_of_different_kernel_sizes_are_refused():
    state = state_numpy(torch_net(3, "float32"))
    state["conv1.weight"] = np.zeros((6, 1, 4, 4), np.float32)
    match = r"kernel size 4\): conv2\.weight has shape \(16, 6, 3, 3\), expected \(16, 6, 4, 4\)"
    with pytest.raises(BadWeights, match=match):
        convert.torch_to_flax(state)


@pytest.mark.parametrize("to_flax", [True, False], ids=["torch_to_flax", "flax_to_torch"])
def test_something_that_is_not_a_mapping_is_refused(to_flax):
    weights = [np.zeros((6, 1, 3, 3), np.float32)]
    with pytest.raises(BadWeights, match="found list"):
        convert.torch_to_flax(weights) if to_flax else convert.flax_to_torch(weights)


@pytest.mark.x64
@pytest.mark.parametrize("kernel_size", [1, 4, 10])
def test_any_kernel_size_the_net_builds_with_converts_and_matches_torch(kernel_size):
    """torch_reference.Net(k) builds for k = 1..10 (the map before fc1 keeps a pixel), and so does
    flax_lenet.Net(k): the conversion takes any of them, the round trip is exact, and the logits
    agree in float64; the wrong-flatten twin fails at the same k."""
    import jax.numpy as jnp

    from flax_lenet import functional
    from flax_lenet.porting import parity
    from flax_lenet.porting.tolerances import FLOAT64
    from tests.helpers import assert_close
    state = state_numpy(torch_net(kernel_size, "float64"))
    params = convert.torch_to_flax(state)
    back = convert.flax_to_torch(params)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32))
    want = torch_net(kernel_size, "float64")(torch.from_numpy(x)).detach().numpy()
    got = functional.forward(params, jnp.asarray(convert.nchw_to_nhwc(x)))
    assert_close(got, want, FLOAT64, f"logits, k={kernel_size}")
    model = _shapes(kernel_size, param_dtype=jnp.float64)
    shape = lambda a: tuple(a.shape)  # noqa: E731
    assert jax.tree.map(shape, nnx.to_pure_dict(nnx.state(model, nnx.Param))) == jax.tree.map(shape, params)
    nnx.update(model, params)
    assert sorted(convert.flax_to_torch(nnx.state(model, nnx.Param))) == sorted(state)
    parity.FAULTS["flatten"](state, params)
    if kernel_size < 10:                       # at k=10 the map is 1x1: every flatten order is the same
        bad = functional.forward(params, jnp.asarray(convert.nchw_to_nhwc(x)))
        assert parity.diff(bad, want)[1] > FLOAT64.rtol


def test_a_kernel_size_the_net_cannot_have_is_one_line():
    state = {k: np.zeros(s, np.float32) for k, s in convert.torch_shapes(3).items()}
    state["conv1.weight"] = np.zeros((6, 1, 11, 11), np.float32)
    with pytest.raises(BadWeights, match=r"kernel size in 1\.\.10 .*found shape \(6, 1, 11, 11\)"):
        convert.torch_to_flax(state)


@pytest.mark.parametrize("cast", [None, "float32"])
def test_tensor_to_numpy_copies_even_when_the_cast_changes_nothing(cast):
    """The array is the caller's own: changing the tensor afterwards (an optimizer step in place)
    leaves it as it was, with a cast to the tensor's own dtype too."""
    from flax_lenet.porting import port
    t = torch.arange(6, dtype=torch.float32)
    a = port.tensor_to_numpy(t, cast=cast)
    t.add_(1.0)
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32))


def test_tensor_to_numpy_casts_and_densifies():
    from flax_lenet.porting import port
    assert port.tensor_to_numpy(torch.ones(2, dtype=torch.float64), cast="float32").dtype == np.float32
    sparse = torch.eye(3).to_sparse()
    np.testing.assert_array_equal(port.tensor_to_numpy(sparse), np.eye(3, dtype=np.float32))
