"""One torch layer against its Flax counterpart after ``port.load``, float64, for each layer type below.

Each layer's output agrees within FLOAT64 and its weights round-trip bit-identically; its broken
twin (the port as it is easy to get wrong: a kernel not flipped, padding left to 'SAME', kernel
axes in the wrong order, Flax's default epsilon or dtype, a slope not converted) does not agree.
PReLU and InstanceNorm use the rules in ``flax_lenet.porting.port``.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

from flax_lenet.errors import BadWeights
from flax_lenet.porting import parity, port
from flax_lenet.porting.tolerances import FLOAT64

def rel(actual, expected) -> float:
    return parity.diff(np.asarray(actual), np.asarray(expected))[1]


def rngs():
    return nnx.Rngs(0)


def normal(*shape):
    return np.random.default_rng(1).standard_normal(shape)


# Each case: broken -> (torch layer, Flax layer, input in torch's layout, tamper(params, torch state) or None,
# channels first in torch). ``broken`` builds the port as it is easy to get wrong.

def conv_transpose2d(broken):
    def unflipped(params, state):                 # transposed like a plain conv, not flipped in space
        params["kernel"] = np.ascontiguousarray(state["weight"].transpose(2, 3, 0, 1))
    return (nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1),
            nnx.ConvTranspose(2, 3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), rngs=rngs()),  # k - 1 - p
            normal(2, 2, 5, 5), unflipped if broken else None, True)


def conv1d(broken):
    padding = "SAME" if broken else ((1, 1),)     # SAME pads (0, 1) here: stride 2, kernel 3, even length
    return (nn.Conv1d(2, 3, 3, stride=2, padding=1), nnx.Conv(2, 3, (3,), strides=(2,), padding=padding, rngs=rngs()),
            normal(2, 2, 8), None, True)


def conv3d(broken):
    def reversed_axes(params, state):             # [kW, kH, kD, I, O]: the spatial axes in reverse order
        params["kernel"] = np.ascontiguousarray(state["weight"].transpose(4, 3, 2, 1, 0))
    return (nn.Conv3d(2, 3, 3, padding=1), nnx.Conv(2, 3, (3, 3, 3), padding=((1, 1),) * 3, rngs=rngs()),
            normal(2, 2, 4, 4, 4), reversed_axes if broken else None, True)


def embedding(broken):
    dtype = jnp.float32 if broken else jnp.float64      # nnx.Embed computes in the dtype it was built with
    return (nn.Embedding(10, 4), nnx.Embed(10, 4, param_dtype=dtype, rngs=rngs()),
            np.array([[1, 2, 9], [0, 5, 5]]), None, False)


def layernorm(broken):
    eps = 1e-6 if broken else 1e-5
    return nn.LayerNorm(8), nnx.LayerNorm(8, epsilon=eps, rngs=rngs()), normal(2, 3, 8) * 0.1, None, False


def groupnorm(broken):
    eps = 1e-6 if broken else 1e-5
    return (nn.GroupNorm(2, 4), nnx.GroupNorm(4, num_groups=2, epsilon=eps, rngs=rngs()),
            normal(2, 4, 3, 3) * 0.1, None, True)


def instancenorm2d(broken):
    eps = 1e-6 if broken else 1e-5
    return (nn.InstanceNorm2d(3, affine=True), nnx.InstanceNorm(3, epsilon=eps, rngs=rngs()),
            normal(2, 3, 4, 4) * 0.1, None, True)


def prelu(broken):
    def default_slope(params, state):             # the slope not converted: nnx.PReLU's 0.01
        params["negative_slope"] = np.asarray(0.01)
    return nn.PReLU(), nnx.PReLU(), normal(2, 3, 4, 4), default_slope if broken else None, True


CASES = {f.__name__: f for f in (conv_transpose2d, conv1d, conv3d, embedding, layernorm, groupnorm,
                                  instancenorm2d, prelu)}


def ported(name, broken=False):
    """(torch layer, its Flax port loaded in float64, torch's output, Flax's output in torch's layout)."""
    torch.manual_seed(0)
    layer, flax_layer, x, tamper, channels_first = CASES[name](broken)
    layer = layer.double()
    with torch.no_grad():                # init's ones and zeros would hide a scale/bias mix-up
        for p in layer.parameters():
            p.uniform_(-1, 1)
    variables = port.torch_to_flax(layer)
    if tamper is not None:
        tamper(variables["params"], {k: v.numpy() for k, v in layer.state_dict().items()})
    port.load(flax_layer, variables, dtype=jnp.float64)
    expected = layer(torch.from_numpy(x)).detach().numpy()
    if not channels_first:
        return layer, flax_layer, expected, np.asarray(flax_layer(jnp.asarray(x)))
    got = flax_layer(jnp.asarray(np.moveaxis(x, 1, -1)))
    return layer, flax_layer, expected, np.moveaxis(np.asarray(got), -1, 1)


@pytest.mark.x64
@pytest.mark.parametrize("name", CASES)
def test_ported_layer_computes_what_torch_computes_and_round_trips(name):
    layer, flax_layer, expected, got = ported(name)
    assert rel(got, expected) <= FLOAT64.rtol
    back = port.flax_to_torch(layer, port.flax_variables(flax_layer))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key, strict=True)


@pytest.mark.x64
@pytest.mark.parametrize("name", CASES)
def test_broken_port_of_the_layer_differs(name):
    _, _, expected, got = ported(name, broken=True)
    assert got.shape == expected.shape and rel(got, expected) > FLOAT64.rtol


@pytest.mark.x64
def test_groupnorm_with_one_group_per_channel_is_instancenorm():
    layer, _, expected, _ = ported("instancenorm2d")
    as_groups = port.load(nnx.GroupNorm(3, num_groups=3, epsilon=1e-5, rngs=rngs()), port.torch_to_flax(layer),
                          dtype=jnp.float64)
    x = normal(2, 3, 4, 4) * 0.1
    assert rel(np.moveaxis(np.asarray(as_groups(jnp.asarray(np.moveaxis(x, 1, -1)))), -1, 1), expected) <= FLOAT64.rtol


@pytest.mark.parametrize("layer,found", [(nn.PReLU(3), r"expected num_parameters=1 .* found weight of shape \(3,\)"),
                                         (nn.InstanceNorm2d(3, track_running_stats=True),
                                          "expected track_running_stats=False .* found running_mean")])
def test_layers_without_a_flax_counterpart_are_refused(layer, found):
    with pytest.raises(BadWeights, match=found) as e:
        port.torch_to_flax(layer)
    assert "\n" not in str(e.value)
