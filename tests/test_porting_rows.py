"""The rows a porter still misses, each run in torch, NNX, Linen and Keras (JAX backend).

Every function here is one shown on the side-by-side page (``docs/build/porting.py``);
weights and data go through numpy, so each row's frameworks see the same numbers.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import keras_reference  # noqa: I001  (first: it sets KERAS_BACKEND=jax before keras is imported)
import keras  # noqa: E402

import flax_lenet  # noqa: E402
from flax_lenet import convert, linen  # noqa: E402
from docs.build import porting  # noqa: E402
from flax_lenet.porting.tolerances import FLOAT32_CPU  # noqa: E402
from keras_reference import train as keras_train  # noqa: E402
from tests.helpers import assert_close, assert_tree_close, state_numpy, torch_net  # noqa: E402
from torch_reference import Net as TorchNet  # noqa: E402

#: Keras 3.15's ``get_weights`` calls numpy's ``__array__`` on a JAX variable without the ``copy``
#: keyword; numpy 2 warns, the values are right (the tests below compare them bit for bit).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def shared():
    """The same Net weights (torch's init, seed 0) and data, as numpy: NCHW for torch, NHWC for the rest."""
    state = state_numpy(torch_net(3, "float32", 0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    target = rng.standard_normal((4, 10)).astype(np.float32)
    return state, convert.torch_to_flax(state), x, convert.nchw_to_nhwc(x), target


def nets(shared):
    """``(torch net, NNX model, (linen net, variables), keras model)`` with the shared weights."""
    state, params, *_ = shared
    net = TorchNet(3)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    model = nnx.eval_shape(lambda: flax_lenet.Net(3, rngs=nnx.Rngs(0)))
    nnx.update(model, jax.tree.map(jnp.asarray, params))
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    kmodel = keras_reference.from_flax_params(keras_reference.Net(3), params)
    return net, model, (linen.Net(3), variables), kmodel


def layer_weights():
    """One Dense/Linear 8 -> 8 layer's weights and a batch, shared by every framework."""
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    return w, b, rng.standard_normal((64, 8)).astype(np.float32)


# --- train / eval: same bits in eval; in train, the kept values doubled exactly ----------------

def check_dropout(trained, evaluated, expected):
    trained, evaluated = np.asarray(trained), np.asarray(evaluated)
    np.testing.assert_array_equal(evaluated, expected)                 # eval: the layer's output, same bits
    kept = trained != 0
    assert 0.3 < kept.mean() < 0.7, kept.mean()                        # about half dropped (which: RNG)
    np.testing.assert_array_equal(trained[kept], 2 * expected[kept])   # 1/(1-p) = 2: exact in float32


def test_train_and_eval_switch_dropout_in_every_framework():
    w, b, x = layer_weights()
    linear = torch.nn.Linear(8, 8)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.T.copy())), linear.bias.copy_(torch.from_numpy(b))
    expected = linear(torch.from_numpy(x)).detach().numpy()
    check_dropout(*[t.detach().numpy() for t in porting.torch_train_eval(linear, torch.from_numpy(x))], expected)

    lin = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    lin.kernel[...], lin.bias[...] = jnp.asarray(w), jnp.asarray(b)
    flax_expected = np.asarray(lin(x))
    assert_close(flax_expected, expected, FLOAT32_CPU, "nnx linear vs torch")
    check_dropout(*porting.nnx_train_eval(lin, x), flax_expected)
    variables = {"params": {"Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}}
    check_dropout(*porting.linen_train_eval(variables, x), flax_expected)
    dense = keras.layers.Dense(8)
    dense.build((None, 8))
    dense.set_weights([w, b])
    check_dropout(*porting.keras_train_eval(dense, x), np.asarray(dense(x)))


def test_check_dropout_fails_when_eval_still_drops():
    w, b, x = layer_weights()
    lin = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    lin.kernel[...], lin.bias[...] = jnp.asarray(w), jnp.asarray(b)
    trained, _ = porting.nnx_train_eval(lin, x)
    with pytest.raises(AssertionError):
        check_dropout(trained, trained, np.asarray(lin(x)))          # the broken twin: never eval()


# --- detach / stop_gradient: gradients within the float32 tier -------------------------------

def test_detach_and_stop_gradient_give_the_same_gradients(shared):
    _, _, x, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    expected, requires_grad = porting.torch_detach(net, torch.from_numpy(x))
    expected = {k: v.numpy() for k, v in expected.items()}
    assert requires_grad is False
    got = {
        "nnx": nnx.to_pure_dict(porting.nnx_stop_gradient(model, x_nhwc)),
        "linen": porting.linen_stop_gradient(lnet, variables, x_nhwc)["params"],
        "keras": keras_train.as_tree(porting.keras_stop_gradient(kmodel, x_nhwc)),
    }
    for name, grads in got.items():
        assert_tree_close(convert.flax_to_torch(grads), expected, FLOAT32_CPU, name)
    # the broken twin: without stop_gradient the gradient doubles
    full = jax.grad(lambda v: (lnet.apply(v, x_nhwc) ** 2).sum())(variables)["params"]
    with pytest.raises(AssertionError):
        assert_tree_close(convert.flax_to_torch(full), expected, FLOAT32_CPU, "no stop_gradient")


# --- freezing: the frozen layer keeps its bits, the rest moves as torch's --------------------

def test_a_frozen_layer_keeps_its_bits_and_the_rest_steps_as_torch(shared):
    state, params, x, x_nhwc, target = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    porting.torch_freeze(net, torch.from_numpy(x), torch.from_numpy(target))
    expected = state_numpy(net)
    np.testing.assert_array_equal(expected["conv1.weight"], state["conv1.weight"])
    assert not np.array_equal(expected["fc1.weight"], state["fc1.weight"])
    porting.nnx_freeze(model, x_nhwc, target)
    porting.keras_freeze(kmodel, x_nhwc, target)
    got = {
        "nnx": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "linen": porting.linen_freeze(lnet, variables, x_nhwc, target)["params"],
        "keras": keras_train.as_tree([np.asarray(w) for w in kmodel.get_weights()]),
    }
    for name, tree in got.items():
        after = convert.flax_to_torch(tree)
        for key in ("conv1.weight", "conv1.bias"):
            np.testing.assert_array_equal(after[key], state[key], err_msg=f"{name} {key}")
        assert_tree_close(after, expected, FLOAT32_CPU, name)
    assert [v.path for v in kmodel.non_trainable_variables] == [v.path for v in kmodel.conv1.weights]


def test_optax_masked_alone_does_not_freeze_it_passes_the_raw_gradient_through(shared):
    import optax
    _, _, _, x_nhwc, target = shared
    _, _, (lnet, variables), _ = nets(shared)
    params = variables["params"]
    mask = {name: jax.tree.map(lambda _: name != "conv1", p) for name, p in params.items()}
    tx = optax.masked(optax.sgd(0.01), mask)
    grads = jax.grad(lambda p: ((lnet.apply({"params": p}, x_nhwc) - target) ** 2).mean())(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["conv1"]["kernel"], grads["conv1"]["kernel"])   # not zero


# --- state_dict / load_state_dict: same bits -------------------------------------------------

def test_state_dict_round_trips_are_bit_identical_in_every_framework(shared):
    state, params, *_ = shared
    net, model, (_, variables), kmodel = nets(shared)
    torch_back = porting.torch_state_dict(TorchNet(3), state)
    nnx_back = porting.nnx_state_dict(nnx.eval_shape(lambda: flax_lenet.Net(3, rngs=nnx.Rngs(1))), params)
    linen_back = porting.linen_state_dict(linen.Net(3).init(jax.random.key(1), np.zeros((1, 32, 32, 1))), params)
    keras_back = keras_train.as_tree(porting.keras_state_dict(keras_reference.from_flax_params(
        keras_reference.Net(3), jax.tree.map(np.zeros_like, params)), params))
    for name, back in [("torch", torch_back), ("nnx", convert.flax_to_torch(nnx_back)),
                       ("linen", convert.flax_to_torch(linen_back)), ("keras", convert.flax_to_torch(keras_back))]:
        assert sorted(back) == sorted(state), name
        for key in state:
            np.testing.assert_array_equal(back[key], state[key], err_msg=f"{name} {key}")


# --- named parameters: the same ten tensors, the same sizes ----------------------------------

def test_named_parameters_are_the_same_ten_tensors_in_every_framework(shared):
    net, model, (_, variables), kmodel = nets(shared)
    expected = porting.torch_named_parameters(net)
    flax_expected = {k.replace("/", "."): v for k, v in convert.flax_shapes(3).items()}
    assert {n: tuple(s) for n, s in expected} == convert.torch_shapes(3)
    for name, got in [("nnx", porting.nnx_named_parameters(model)),
                      ("linen", porting.linen_named_parameters(variables))]:
        assert {n: tuple(s) for n, s in got} == flax_expected, name
    keras_got = porting.keras_named_parameters(kmodel)
    assert [tuple(s) for _, s in keras_got] == list(flax_expected.values())     # creation order = torch's
    assert [p.split("/")[-1] for p, _ in keras_got] == [k.split(".")[1] for k in flax_expected]


# --- .to(device): a copy, same bits ----------------------------------------------------------

def test_moving_to_a_device_keeps_the_bits(shared):
    _, _, x, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    device = jax.devices("cpu")[0]
    expected = porting.torch_to_device(net, torch.from_numpy(x)).detach().numpy()
    plain = np.asarray(lnet.apply(variables, x_nhwc))
    out = porting.nnx_to_device(model, x_nhwc, device)
    assert out.devices() == {device}
    assert {leaf.devices().pop() for leaf in jax.tree.leaves(nnx.state(model))} == {device}
    np.testing.assert_array_equal(np.asarray(out), plain)
    np.testing.assert_array_equal(np.asarray(porting.linen_to_device(lnet, variables, x_nhwc, device)), plain)
    np.testing.assert_array_equal(np.asarray(porting.keras_to_device(kmodel, x_nhwc)), np.asarray(kmodel(x_nhwc)))
    assert_close(plain, expected, FLOAT32_CPU, "logits after the move")


# --- seeds: same bits within a framework, never across ---------------------------------------

def test_a_seed_repeats_the_weights_within_a_framework_but_not_across(shared):
    x = np.zeros((1, 32, 32, 1), np.float32)
    first, again, other = (state_numpy(porting.torch_seeded_net(s, TorchNet)) for s in (0, 0, 1))
    nnx_params = [convert.flax_to_torch(nnx.to_pure_dict(nnx.state(porting.nnx_seeded_net(s, flax_lenet.Net),
                                                                    nnx.Param))) for s in (0, 0, 1)]
    linen_params = [convert.flax_to_torch(porting.linen_seeded_variables(s, linen.Net(3), x)["params"])
                    for s in (0, 0, 1)]
    keras_params = [convert.flax_to_torch(keras_train.as_tree(porting.keras_seeded_net(
        s, keras_reference.Net, x).get_weights())) for s in (0, 0, 1)]
    for name, (a, b, c) in [("torch", (first, again, other)), ("nnx", nnx_params), ("linen", linen_params),
                            ("keras", keras_params)]:
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
        assert not np.array_equal(a["fc1.weight"], c["fc1.weight"]), name
        if name != "torch":
            assert not np.allclose(a["fc1.weight"], first["fc1.weight"]), f"{name} seed 0 is torch's seed 0"


# --- .double(): float64 only with x64; without it, float32 -----------------------------------

def test_a_float64_request_without_x64_silently_gives_float32():
    assert not jax.config.jax_enable_x64
    x = np.zeros((1, 32, 32, 1), np.float32)
    assert porting.torch_double(TorchNet(3)) == {torch.float64}
    with pytest.warns(UserWarning, match="float64 .* truncated to dtype float32"):
        assert porting.nnx_double(flax_lenet.Net) == {np.dtype('float32')}      # a warning, no error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert porting.linen_double(linen.Net, x) == {np.dtype('float32')}
        assert porting.keras_double(keras_reference.Net, x) == ({"float64"}, {np.dtype("float32")})   # says 64


@pytest.mark.x64
def test_a_float64_request_with_x64_gives_float64():
    x = np.zeros((1, 32, 32, 1), np.float64)
    assert porting.nnx_double(flax_lenet.Net) == {np.dtype('float64')}
    assert porting.linen_double(linen.Net, x) == {np.dtype('float64')}
    assert porting.keras_double(keras_reference.Net, x) == ({"float64"}, {np.dtype("float64")})


# --- compile / jit: one trace per new shape, values within the float32 tier -------------------

def test_compile_and_jit_retrace_on_a_new_shape_only(shared):
    _, _, x, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    xs = [x[:2], x[2:], x[:3]]                    # shapes 2, 2, 3: the third is new
    xs_nhwc = [x_nhwc[:2], x_nhwc[2:], x_nhwc[:3]]
    outs, graphs = porting.torch_compiled(net, [torch.from_numpy(a) for a in xs])
    assert len(graphs) == 2, graphs
    eager = [net(torch.from_numpy(a)).detach().numpy() for a in xs]
    for out, ref in zip(outs, eager):
        np.testing.assert_array_equal(out.detach().numpy(), ref)
    for name, (outs, traces) in [("nnx", porting.nnx_jitted(model, xs_nhwc)),
                                 ("linen", porting.linen_jitted(lnet, variables, xs_nhwc)),
                                 ("keras", porting.keras_jitted(kmodel, xs_nhwc))]:
        assert [t[0] for t in traces] == [2, 3], name
        for out, ref in zip(outs, eager):
            assert_close(np.asarray(out), ref, FLOAT32_CPU, name)
    kmodel.compile(loss="mse")                    # fit / predict: jit_compile='auto' is True on JAX
    assert kmodel.jit_compile is True


def test_nnx_jit_retraces_for_a_new_module_class(shared):
    _, _, _, x_nhwc, _ = shared
    _, model, _, _ = nets(shared)

    class Other(flax_lenet.Net):
        pass

    other = nnx.eval_shape(lambda: Other(3, rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(type(model).__name__)
        return model(x)

    forward(model, x_nhwc), forward(model, x_nhwc), forward(other, x_nhwc)
    assert traces == ["Net", "Other"]


# --- the unhooked call: forward / base-class __call__ / call ---------------------------------

def double(module, args, output):
    return output * 2


def test_the_direct_call_skips_what_the_module_call_adds(shared):
    _, _, x, x_nhwc, _ = shared
    net, model, (lnet, variables), _ = nets(shared)
    hooked, direct = porting.torch_call_vs_forward(net, torch.from_numpy(x), double)
    np.testing.assert_array_equal(hooked.detach().numpy(), 2 * direct.detach().numpy())
    hooked, direct = porting.nnx_call_vs_base_call(model, x_nhwc, double)
    np.testing.assert_array_equal(np.asarray(hooked), 2 * np.asarray(direct))

    class Drop(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense, self.dropout = keras.layers.Dense(64), keras.layers.Dropout(0.5, seed=0)

        def call(self, x, training=None):
            return self.dropout(self.dense(x))

    through, direct, built_before = porting.keras_call_vs_call(Drop(), np.ones((2, 8), np.float32))
    assert not built_before
    assert np.asarray(through == 0).any() and not np.asarray(direct == 0).any()


def test_a_linen_function_first_traced_inside_intercept_methods_keeps_the_interceptor(shared):
    from flax_lenet.porting.hooks import linen_hooks
    _, _, _, x_nhwc, _ = shared
    _, _, (lnet, variables), _ = nets(shared)
    inside, after, plain = porting.linen_jit_traced_inside_interceptor(
        lnet, variables, x_nhwc, linen_hooks("fc3", post=double))
    np.testing.assert_array_equal(np.asarray(inside), 2 * np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(after), np.asarray(inside))        # the block has exited
    assert not np.array_equal(np.asarray(after), np.asarray(plain))


# --- optim.SGD vs optax.sgd: the same rule, rounded differently in float32 --------------------

def test_optax_sgd_is_torch_sgd_up_to_float32_rounding_not_bit_for_bit():
    import optax
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(100_000).astype(np.float32), rng.standard_normal(100_000).astype(np.float32)
    lr = 0.01
    param = torch.nn.Parameter(torch.from_numpy(p.copy()))
    param.grad = torch.from_numpy(g.copy())
    torch.optim.SGD([param], lr=lr).step()                       # param.add_(grad, alpha=-lr): one rounding
    expected = param.detach().numpy()
    tx = optax.sgd(lr)
    updates, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(p)))
    got = np.asarray(optax.apply_updates(jnp.asarray(p), updates))      # -lr*g rounded, then p + u rounded
    np.testing.assert_array_equal(got, p + (np.float32(-lr) * g))
    differ = got != expected
    assert 0 < differ.sum() < 0.05 * p.size, differ.sum()            # not bit-identical, but rarely off
    larger = np.maximum(np.abs(p), np.abs(np.float32(lr) * g))       # float32 steps of the larger operand
    assert np.max(np.abs(got - expected) / np.spacing(larger)) <= 2      # two roundings: two steps at most
