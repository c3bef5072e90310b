"""``initializers.torch_init`` draws like torch: each kernel and bias from U(+-1/sqrt(fan_in)).

RNG streams differ between the frameworks, so the check is statistical, per layer and kernel
size, on DRAWS independent initialisations pooled: the bound, the variance b^2/3, and a
two-sample Kolmogorov-Smirnov test against torch's own samples of the same layer. Seeds are
fixed, so the tests are deterministic. The Nets as built keep Flax's own defaults (lecun-normal
kernels, zero biases), and the same checker rejects those.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy import stats

from flax_lenet import Net, linen
from flax_lenet.convert import LAYERS
from flax_lenet.initializers import torch_init
from flax_lenet.model import flat_side

DRAWS = 16                 # initialisations pooled per layer: conv1's bias gives 6 * 16 samples
MAX_SAMPLES = 20_000       # per layer and kind; fc1 alone has 69k weights per draw
KS_ALPHA = 1e-3            # reject "same distribution as torch" below this p-value
SIGMAS = 5.0               # allowed deviation of the sample variance, in standard errors
BOUND_SLACK = 1e-6         # float32 rounding of the bound 1/sqrt(fan_in)
LECUN_TRUNCATION = 0.87962566103423978   # stddev of a unit normal truncated to [-2, 2]


def fan_ins(kernel_size: int) -> dict[str, int]:
    """in_channels * kH * kW for a conv, in_features for a linear layer."""
    k, side = kernel_size, flat_side(kernel_size)
    return {"conv1": 1 * k * k, "conv2": 6 * k * k, "fc1": 16 * side * side, "fc2": 120, "fc3": 84}


def nnx_draws(kernel_size, init="torch"):
    """DRAWS NNX Nets as built (``init="flax"``) or redrawn with ``torch_init``, as parameter trees."""
    models = [Net(kernel_size, rngs=nnx.Rngs(seed)) for seed in range(DRAWS)]
    if init == "torch":
        models = [torch_init(m, nnx.Rngs(1000 + seed)) for seed, m in enumerate(models)]
    return [nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in models]


def linen_draws(kernel_size, init="torch"):
    """DRAWS Linen ``init`` results, as built or redrawn with ``torch_init``."""
    x = jnp.zeros((1, 32, 32, 1))
    draws = [linen.Net(kernel_size).init(jax.random.key(seed), x)["params"] for seed in range(DRAWS)]
    if init == "torch":
        draws = [torch_init(d, jax.random.key(1000 + seed)) for seed, d in enumerate(draws)]
    return draws


FLAVOURS = {"nnx": nnx_draws, "linen": linen_draws}


def pooled(draws, layer, kind) -> np.ndarray:
    """Up to MAX_SAMPLES values of ``layer``'s ``kind`` ('kernel' | 'bias') over all draws, float64."""
    return np.concatenate([np.asarray(d[layer][kind], np.float64).ravel() for d in draws])[:MAX_SAMPLES]


@pytest.fixture(scope="module")
def torch_samples():
    """{kernel_size: {(layer, 'kernel'|'bias'): samples}} from torch's own Conv2d/Linear init."""
    from torch_reference import Net as TorchNet
    out = {}
    for k in (3, 5):
        draws = []
        for seed in range(DRAWS):
            torch.manual_seed(seed)
            net = TorchNet(k)
            draws.append({name: {"kernel": getattr(net, name).weight.detach().numpy(),
                                 "bias": getattr(net, name).bias.detach().numpy()} for name in LAYERS})
        out[k] = {(layer, kind): pooled(draws, layer, kind) for layer in LAYERS for kind in ("kernel", "bias")}
    return out


def check_torch_uniform(samples: np.ndarray, fan_in: int, reference: np.ndarray, what: str) -> None:
    """Bound, variance and distribution of U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch draws it."""
    b = 1.0 / math.sqrt(fan_in)
    n = samples.size
    assert np.abs(samples).max() <= b * (1 + BOUND_SLACK), f"{what}: |w| up to {np.abs(samples).max():.4g} > {b:.4g}"
    var, expected = np.mean(samples ** 2), b * b / 3                # the mean is 0 by construction
    stderr = math.sqrt(4.0 / 45.0) * b * b / math.sqrt(n)           # Var(w^2) = 4 b^4 / 45 for U(-b, b)
    assert abs(var - expected) <= SIGMAS * stderr, f"{what}: variance {var:.4g}, uniform's {expected:.4g} (n={n})"
    p = stats.ks_2samp(samples, reference).pvalue
    assert p >= KS_ALPHA, f"{what}: KS test against torch's samples, p = {p:.2g}"


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_torch_init_draws_every_layer_like_torch(flavour, kernel_size, torch_samples):
    draws = FLAVOURS[flavour](kernel_size)
    for layer, fan_in in fan_ins(kernel_size).items():
        for kind in ("kernel", "bias"):
            check_torch_uniform(pooled(draws, layer, kind), fan_in, torch_samples[kernel_size][(layer, kind)],
                                f"{flavour} k={kernel_size} {layer}/{kind}")


def test_the_uniform_check_fails_for_a_wrong_scale_a_wrong_fan_in_and_a_wrong_shape(torch_samples):
    rng = np.random.default_rng(0)
    fan_in = fan_ins(3)["fc1"]
    b = 1.0 / math.sqrt(fan_in)
    reference = torch_samples[3][("fc1", "kernel")]
    check_torch_uniform(rng.uniform(-b, b, 20_000), fan_in, reference, "numpy's U(-b, b) passes")
    kaiming_a0 = rng.uniform(-math.sqrt(6) * b, math.sqrt(6) * b, 20_000)    # kaiming_uniform_(a=0)
    with pytest.raises(AssertionError, match="> "):
        check_torch_uniform(kaiming_a0, fan_in, reference, "kaiming a=0")
    bias_fan_out = rng.uniform(-1 / math.sqrt(120), 1 / math.sqrt(120), 20_000)  # a bias init told fan_out
    with pytest.raises(AssertionError, match="> "):
        check_torch_uniform(bias_fan_out, fan_in, reference, "bias given fan_out")
    half = 10_000       # right bound, right variance, wrong shape: half at +-b/sqrt(3), half uniform
    shaped = np.concatenate([rng.choice([-b, b], half) / math.sqrt(3), rng.uniform(-b, b, half)])
    with pytest.raises(AssertionError, match="KS test"):
        check_torch_uniform(shaped, fan_in, reference, "two-point mixture")


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_nets_as_built_keep_flax_lecun_normal_kernels_and_zero_biases(flavour, torch_samples):
    draws = FLAVOURS[flavour](3, init="flax")
    for layer, fan_in in fan_ins(3).items():
        assert all(not np.any(np.asarray(d[layer]["bias"])) for d in draws), f"{layer}: bias not all zero"
        kernel = pooled(draws, layer, "kernel")
        std = math.sqrt(1.0 / fan_in) / LECUN_TRUNCATION          # variance_scaling(1, fan_in, truncated_normal)
        p = stats.kstest(kernel, stats.truncnorm(-2, 2, scale=std).cdf).pvalue
        assert p >= KS_ALPHA, f"{flavour} {layer}: KS test against lecun_normal, p = {p:.2g}"
        var, expected = np.mean(kernel ** 2), 1.0 / fan_in
        assert abs(var - expected) <= SIGMAS * math.sqrt(2.0) * expected / math.sqrt(kernel.size), \
            f"{flavour} {layer}: variance {var:.4g}, lecun_normal's {expected:.4g}"
        with pytest.raises(AssertionError):
            check_torch_uniform(kernel, fan_in, torch_samples[3][(layer, "kernel")], f"flax {layer}")


def test_torch_init_leaves_no_layer_out_and_keeps_shapes_and_dtypes():
    model = Net(5, param_dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32, rngs=nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    after = nnx.to_pure_dict(nnx.state(torch_init(model, nnx.Rngs(1)), nnx.Param))
    for layer in LAYERS:
        for kind in ("kernel", "bias"):
            a, b = np.asarray(after[layer][kind]), np.asarray(before[layer][kind])
            assert a.shape == b.shape and a.dtype == b.dtype, f"{layer}/{kind}"
            assert not np.array_equal(a, b), f"{layer}/{kind} was not redrawn"
