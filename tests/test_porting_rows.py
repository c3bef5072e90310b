"""The rows a porter still misses, each run in torch, NNX, and Linen and Keras (JAX backend) where shown.

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
from flax_lenet.porting.tolerances import FLOAT32_CPU, FLOAT64  # noqa: E402
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
    trained, evaluated, viewed = porting.nnx_train_eval(lin, x)
    check_dropout(trained, evaluated, flax_expected)
    np.testing.assert_array_equal(np.asarray(viewed), flax_expected)  # nnx.view(deterministic=True): eval
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
    trained, _, _ = porting.nnx_train_eval(lin, x)
    with pytest.raises(AssertionError):
        check_dropout(trained, trained, np.asarray(lin(x)))          # the broken twin: never eval()


def test_nnx_view_is_an_eval_model_sharing_the_variables_while_the_model_still_drops():
    w, b, x = layer_weights()
    lin = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    lin.kernel[...], lin.bias[...] = jnp.asarray(w), jnp.asarray(b)
    model = nnx.Sequential(lin, nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0)))
    view = nnx.view(model, deterministic=True)
    assert view.layers[1].deterministic is True and model.layers[1].deterministic is False
    assert view.layers[0].kernel is model.layers[0].kernel             # the same Variable, not a copy
    np.testing.assert_array_equal(np.asarray(view(x)), np.asarray(lin(x)))
    assert (np.asarray(model(x)) == 0).any()                           # the twin: the model was not switched
    with pytest.raises(ValueError, match="use_running_average"):
        nnx.view(model, use_running_average=True)                      # no BatchNorm: view says so
    model.eval()                                                       # .eval() skips what no layer has
    assert model.layers[1].deterministic is True


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


# --- shared small layers for the rows below ---------------------------------------------------

def torch_linear(w, b, dtype=torch.float32):
    linear = torch.nn.Linear(*w.shape, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.T.copy())), linear.bias.copy_(torch.from_numpy(b.copy()))
    return linear


def nnx_linear(w, b):
    linear = nnx.Linear(*w.shape, rngs=nnx.Rngs(0))
    linear.kernel[...], linear.bias[...] = jnp.asarray(w), jnp.asarray(b)
    return linear


def keras_dense(w, b):
    dense = keras.layers.Dense(w.shape[1])
    dense.build((None, w.shape[0]))
    dense.set_weights([w, b])
    return dense


def flat_shapes(tree) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# --- meta device / functional_call vs nnx.eval_shape / split / merge --------------------------

def test_meta_and_eval_shape_build_shapes_without_memory_and_merge_runs_any_state(shared):
    state, params, x, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    expected = net(torch.from_numpy(x)).detach().numpy()
    shapes, out = porting.torch_meta_functional_call(
        TorchNet, {k: torch.from_numpy(v.copy()) for k, v in state.items()}, torch.from_numpy(x))
    assert shapes == convert.torch_shapes(3)
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    abstract, merged = porting.nnx_eval_shape_split_merge(flax_lenet.Net, jax.tree.map(jnp.asarray, params), x_nhwc)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(abstract))   # no memory
    assert flat_shapes(abstract) == convert.flax_shapes(3)
    np.testing.assert_array_equal(np.asarray(merged), np.asarray(model(x_nhwc)))
    assert_close(np.asarray(merged), expected, FLOAT32_CPU, "nnx.merge vs torch")
    labstract, lout = porting.linen_eval_shape_split_merge(lnet, variables["params"], x_nhwc)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(labstract))
    assert flat_shapes(labstract) == convert.flax_shapes(3)
    np.testing.assert_array_equal(np.asarray(lout), np.asarray(merged))
    kout = porting.keras_eval_shape_split_merge(kmodel, [v.value for v in kmodel.trainable_variables], x_nhwc)
    np.testing.assert_array_equal(np.asarray(kout), np.asarray(kmodel(x_nhwc)))
    # the twins: shapes alone hold no values, in either framework
    with torch.device("meta"):
        meta = TorchNet(3)
    with pytest.raises(TypeError, match="meta"):
        meta(torch.zeros(1, 1, 32, 32, device="meta")).numpy()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: flax_lenet.Net(3, rngs=nnx.Rngs(0))))
    with pytest.raises(TypeError, match="ShapeDtypeStruct"):
        nnx.merge(graphdef, abstract_state)(x_nhwc)


# --- register_buffer vs a Variable that is not a Param ----------------------------------------

def test_a_buffer_is_state_but_not_a_parameter_and_the_optimizer_skips_it():
    w, b, x = layer_weights()
    names, state_names, net = porting.torch_buffer(torch_linear(w, b), torch.from_numpy(x))
    assert names == ["linear.weight", "linear.bias"] and state_names == ["mean", "linear.weight", "linear.bias"]
    params, state, model = porting.nnx_buffer(nnx_linear(w, b), x)
    assert params == ["linear.bias", "linear.kernel"] and state == ["linear.bias", "linear.kernel", "mean"]
    assert_close(np.asarray(model.mean[...]), net.mean.numpy(), FLOAT32_CPU, "nnx running mean")
    kernel = net.linear.weight.detach().numpy().T
    assert not np.allclose(kernel, w)                                    # the step moved the weights
    assert_close(np.asarray(model.linear.kernel[...]), kernel, FLOAT32_CPU, "nnx kernel after a step")
    variables = {"params": {"Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}},
                 "batch_stats": {"mean": jnp.zeros(8)}}
    after = porting.linen_buffer(variables, x)
    assert_close(np.asarray(after["batch_stats"]["mean"]), net.mean.numpy(), FLOAT32_CPU, "linen running mean")
    assert_close(np.asarray(after["params"]["Dense_0"]["kernel"]), kernel, FLOAT32_CPU, "linen kernel")
    layer = porting.keras_buffer(keras_dense(w, b), x)
    assert len(layer.trainable_weights) == 2 and [v.path for v in layer.non_trainable_weights] == [layer.mean.path]
    assert_close(np.asarray(layer.mean.value), net.mean.numpy(), FLOAT32_CPU, "keras running mean")

    class AsParam(nnx.Module):                       # the twin: a Param is trained, unlike torch's buffer
        def __init__(self):
            self.linear, self.mean = nnx_linear(w, b), nnx.Param(jnp.zeros(8))

    assert "mean" in nnx.to_pure_dict(nnx.state(AsParam(), nnx.Param))


# --- nn.Sequential / nn.ModuleList vs nnx.Sequential / nnx.List ------------------------------

def test_sequential_and_lists_of_layers_register_them_and_a_plain_list_does_not():
    w, b, x = layer_weights()
    w2, b2 = w[::-1].copy(), b[::-1].copy()
    names, out, stack = porting.torch_sequential(torch_linear(w, b), torch_linear(w2, b2), torch.from_numpy(x))
    expected = out.detach().numpy()
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert stack == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"]
    names, nout, stack = porting.nnx_sequential(nnx_linear(w, b), nnx_linear(w2, b2), x)
    assert names == ["layers.0.bias", "layers.0.kernel", "layers.2.bias", "layers.2.kernel"]
    assert stack == ["blocks.0.bias", "blocks.0.kernel", "blocks.1.bias", "blocks.1.kernel"]
    assert_close(np.asarray(nout), expected, FLOAT32_CPU, "nnx.Sequential")
    variables = {"params": {"layers_0": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)},
                            "layers_2": {"kernel": jnp.asarray(w2), "bias": jnp.asarray(b2)}}}
    names, lout, stack = porting.linen_sequential(variables, x)
    assert names == ["layers_0", "layers_2"] and stack == ["blocks_0", "blocks_1"]
    assert_close(np.asarray(lout), expected, FLOAT32_CPU, "nn.Sequential")
    kout, count = porting.keras_sequential(keras_dense(w, b), keras_dense(w2, b2), x)
    assert count == 4
    assert_close(np.asarray(kout), expected, FLOAT32_CPU, "keras.Sequential")

    class TorchPlain(torch.nn.Module):               # the twins: a plain list registers nothing in torch
        def __init__(self):
            super().__init__()
            self.blocks = [torch_linear(w, b)]

    class NnxPlain(nnx.Module):                      # and is an error in NNX
        def __init__(self):
            self.blocks = [nnx_linear(w, b)]

    assert list(TorchPlain().parameters()) == []
    with pytest.raises(ValueError, match="nnx.List"):
        NnxPlain()


# --- MultiStepLR vs optax.piecewise_constant_schedule ------------------------------------------

def test_multistep_lr_per_epoch_is_a_piecewise_constant_schedule_over_updates():
    import optax
    args = dict(lr=0.1, milestones=[2, 4], gamma=0.1, epochs=5, steps_per_epoch=3)
    expected = np.array(porting.torch_multistep_lr(**args))
    assert len(set(expected.tolist())) == 3 and expected[5] != expected[6]     # the first decay: update 6
    assert_close(np.array(porting.nnx_multistep_lr(**args)), expected, FLOAT32_CPU, "optax")
    assert_close(np.array(porting.keras_multistep_lr(**args)), expected, FLOAT32_CPU, "keras")
    # the twins: milestones taken as update counts; boundaries one update off (optax), Keras' boundary m * S
    for boundaries in ({2: 0.1, 4: 0.1}, {5: 0.1, 11: 0.1}, {7: 0.1, 13: 0.1}):
        schedule = optax.piecewise_constant_schedule(0.1, boundaries)
        with pytest.raises(AssertionError):
            assert_close(np.array([schedule(k) for k in range(15)]), expected, FLOAT32_CPU, f"optax {boundaries}")
    keras_schedule = keras.optimizers.schedules.PiecewiseConstantDecay([6, 12], [0.1, 0.01, 0.001])
    with pytest.raises(AssertionError):
        assert_close(np.array([float(keras_schedule(k)) for k in range(15)]), expected, FLOAT32_CPU, "keras m*S")


# --- clip_grad_norm_ vs optax.clip_by_global_norm ----------------------------------------------

def clip_inputs(dtype, scale=1.0):
    rng = np.random.default_rng(2)
    grads = [scale * rng.standard_normal((8, 8)).astype(dtype), scale * rng.standard_normal(8).astype(dtype)]
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=getattr(torch, dtype))) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    return grads, params


@pytest.mark.x64
def test_clip_grad_norm_is_clip_by_global_norm_but_for_torch_s_1e_6_in_the_divisor():
    grads, params = clip_inputs("float64")
    norm, clipped = porting.torch_clip_grad_norm(params, 1.0)
    jnorm, jclipped = porting.nnx_clip_grad_norm([jnp.asarray(g) for g in grads], 1.0)
    n = float(norm)
    assert n > 1.0
    assert_close(np.asarray(jnorm), norm.numpy(), FLOAT64, "the global norm")
    for t, j in zip(clipped, jclipped):
        t, j = t.numpy(), np.asarray(j)
        assert j.dtype == np.float64
        assert_close(j * (n / (n + 1e-6)), t, FLOAT64, "optax's g * max / n, times n / (n + 1e-6)")
        with pytest.raises(AssertionError):
            assert_close(j, t, FLOAT64, "the twin: without the 1e-6 factor, float64 sees it")
        assert_close(j, t, FLOAT32_CPU, "1e-6 / (n + 1e-6) of the value: inside the float32 tier")
    grads, params = clip_inputs("float64")                            # below max_norm: both leave the bits
    _, clipped = porting.torch_clip_grad_norm(params, 1e3)
    _, jclipped = porting.nnx_clip_grad_norm([jnp.asarray(g) for g in grads], 1e3)
    for g, t, j in zip(grads, clipped, jclipped):
        np.testing.assert_array_equal(t.numpy(), g)
        np.testing.assert_array_equal(np.asarray(j), g)


def test_clip_grad_norm_in_float32_and_keras_global_clipnorm():
    grads, params = clip_inputs("float32")
    norm, clipped = porting.torch_clip_grad_norm(params, 1.0)
    jnorm, jclipped = porting.nnx_clip_grad_norm([jnp.asarray(g) for g in grads], 1.0)
    kclipped = porting.keras_clip_grad_norm(grads, 1.0)
    assert_close(np.asarray(jnorm), norm.numpy(), FLOAT32_CPU, "norm")
    assert float(norm) > 1.0                                           # so all three clip
    for t, j, k in zip(clipped, jclipped, kclipped):
        assert_close(np.asarray(j), t.numpy(), FLOAT32_CPU, "optax")
        assert_close(np.asarray(k), t.numpy(), FLOAT32_CPU, "keras global_clipnorm")


# --- CrossEntropyLoss vs optax.softmax_cross_entropy_with_integer_labels ---------------------

def cross_entropy_inputs():
    rng = np.random.default_rng(3)
    return 3 * rng.standard_normal((16, 10)), rng.integers(0, 10, 16)


@pytest.mark.x64
def test_cross_entropy_loss_is_optax_integer_labels_cross_entropy_then_mean():
    import optax
    logits, labels = cross_entropy_inputs()
    expected = porting.torch_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    got = porting.nnx_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert got.dtype == jnp.float64 and got.shape == ()
    assert_close(np.asarray(got), expected, FLOAT64, "optax, then mean")
    per_example = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))
    assert per_example.shape == (16,)                                  # the twins: no mean ...
    with pytest.raises(AssertionError):
        assert_close(np.asarray(per_example.sum()), expected, FLOAT64, "a sum")
    probabilities = jax.nn.softmax(jnp.asarray(logits))                # ... or probabilities for logits
    with pytest.raises(AssertionError):
        assert_close(np.asarray(porting.nnx_cross_entropy(probabilities, labels)), expected, FLOAT64, "probs")


def test_keras_sparse_categorical_crossentropy_needs_from_logits():
    logits, labels = cross_entropy_inputs()
    logits = logits.astype(np.float32)
    expected = porting.torch_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    assert_close(np.asarray(porting.keras_cross_entropy(logits, labels)), expected, FLOAT32_CPU, "keras")
    with pytest.raises(AssertionError):                                # the twin: from_logits defaults to False
        assert_close(np.asarray(keras.losses.SparseCategoricalCrossentropy()(labels, logits)), expected,
                     FLOAT32_CPU, "keras from_logits=False")


# --- loss.item(), asynchronous dispatch, block_until_ready -------------------------------------

def test_item_and_float_give_a_python_float_and_block_until_ready_returns_the_same_array():
    w, b, x = layer_weights()
    _, value = porting.torch_item(torch_linear(w, b), torch.from_numpy(x))
    loss, ready, jvalue = porting.nnx_item(nnx_linear(w, b), x)
    assert type(value) is float and type(jvalue) is float
    assert isinstance(loss, jax.Array) and ready is loss
    tree = {"loss": loss}
    assert jax.block_until_ready(tree)["loss"] is loss
    assert jvalue == loss.item()
    assert_close(np.asarray(jvalue), np.asarray(value), FLOAT32_CPU, "the loss as a Python float")
    with pytest.raises(RuntimeError):                                  # the twins: one element only
        torch.ones(2).item()
    with pytest.raises(TypeError):
        float(jnp.ones(2))


# --- torch.save / torch.load vs Orbax ----------------------------------------------------------

def test_torch_save_load_and_orbax_round_trips_are_bit_identical(shared, tmp_path):
    state, params, x, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    backs = {
        "torch": state_numpy(porting.torch_checkpoint(net, TorchNet(3), tmp_path / "net.pt")),
        "nnx": convert.flax_to_torch(nnx.to_pure_dict(nnx.state(
            porting.nnx_checkpoint(model, flax_lenet.Net, tmp_path / "nnx")))),
        "linen": convert.flax_to_torch(porting.linen_checkpoint(lnet, variables, x_nhwc, tmp_path / "linen")["params"]),
        "keras": convert.flax_to_torch(keras_train.as_tree(porting.keras_checkpoint(
            kmodel, keras_reference.from_flax_params(keras_reference.Net(3), jax.tree.map(np.zeros_like, params)),
            tmp_path / "model.weights.h5").get_weights())),
    }
    for name, back in backs.items():
        assert sorted(back) == sorted(state), name
        for key in state:
            np.testing.assert_array_equal(back[key], state[key], err_msg=f"{name} {key}")
    import orbax.checkpoint as ocp                                     # the twin: a restore without the target
    with ocp.StandardCheckpointer() as checkpointer:
        plain = checkpointer.restore(tmp_path / "nnx")
    assert type(plain) is dict and set(plain["conv1"]["kernel"]) == {"value"}   # not a State: one level more
    np.testing.assert_array_equal(plain["conv1"]["kernel"]["value"], params["conv1"]["kernel"])


# --- donate_argnames: the functional in-place update -------------------------------------------

def test_donation_deletes_the_old_arrays_and_computes_the_same_step():
    from flax import linen as nn
    w, b, x = layer_weights()
    target = np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)
    linear = torch_linear(w, b)
    porting.torch_donated_step(linear, torch.from_numpy(x), torch.from_numpy(target))
    expected = linear.weight.detach().numpy().T
    donated, kept = nnx_linear(w, b), nnx_linear(w, b)
    old_donated, old_kept = donated.kernel[...], kept.kernel[...]
    porting.nnx_donated_step(donated, x, target)
    porting.nnx_donated_step(kept, x, target, donate=())
    assert old_donated.is_deleted() and not old_kept.is_deleted()
    with pytest.raises(RuntimeError, match="deleted"):                  # the twin: using a donated array
        np.asarray(old_donated)
    np.testing.assert_array_equal(np.asarray(old_kept), w)
    np.testing.assert_array_equal(np.asarray(donated.kernel[...]), np.asarray(kept.kernel[...]))
    assert_close(np.asarray(donated.kernel[...]), expected, FLOAT32_CPU, "nnx step vs torch's in place")
    fresh = lambda: {"params": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}  # noqa: E731
    variables = fresh()
    after = porting.linen_donated_step(nn.Dense(8), variables, x, target)
    assert variables["params"]["kernel"].is_deleted()
    kept_after = porting.linen_donated_step(nn.Dense(8), fresh(), x, target, donate=())
    np.testing.assert_array_equal(np.asarray(after["params"]["kernel"]), np.asarray(kept_after["params"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(after["params"]["kernel"]), np.asarray(donated.kernel[...]))
    with pytest.warns(UserWarning, match="donated buffers were not usable"):   # no output of its shape
        jax.jit(lambda x: x.sum(), donate_argnums=0)(jnp.ones(3))


# --- in-place ops vs .at[].set -----------------------------------------------------------------

def test_in_place_ops_change_the_tensor_and_at_set_returns_a_new_array():
    x = np.arange(4, dtype=np.float32)
    t = torch.from_numpy(x.copy())
    alias = porting.torch_in_place(t)
    assert alias is t
    expected = t.numpy()
    assert not np.array_equal(expected, x)
    xj = jnp.asarray(x)
    old, new, boxed = porting.nnx_in_place(xj)
    assert old is xj
    np.testing.assert_array_equal(np.asarray(xj), x)                    # unchanged
    np.testing.assert_array_equal(np.asarray(new), expected)
    np.testing.assert_array_equal(np.asarray(boxed), expected)
    with pytest.raises(TypeError, match="immutable"):                   # the twin: torch's spelling on JAX
        xj[0] = 1


# --- int64 vs int32 ----------------------------------------------------------------------------

def test_python_ints_are_int64_in_torch_and_int32_in_jax_unless_x64():
    logits = np.random.default_rng(6).standard_normal((2, 10)).astype(np.float32)
    dtype, loss = porting.torch_int_default(torch.from_numpy(logits))
    jdtype, jloss = porting.nnx_int_default(jnp.asarray(logits))
    kdtype, kloss = porting.keras_int_default(logits)
    assert dtype == torch.int64 and jdtype == jnp.int32 and kdtype == np.int32
    assert_close(np.asarray(jloss), loss.numpy(), FLOAT32_CPU, "optax with int32 labels")
    assert_close(np.asarray(kloss), loss.numpy(), FLOAT32_CPU, "keras with int32 labels")
    with jax.enable_x64(True):
        assert porting.nnx_int_default(jnp.asarray(logits))[0] == jnp.int64
    assert np.array([3, 1]).dtype == np.int64 and jnp.asarray(np.array([3, 1])).dtype == jnp.int32   # no warning
    with pytest.raises(RuntimeError, match="Long"):                     # the twins: int32 labels in torch ...
        torch.nn.CrossEntropyLoss()(torch.from_numpy(logits), torch.tensor([3, 1], dtype=torch.int32))
    with pytest.raises(OverflowError):                                  # ... and 2**31 in JAX's default
        jnp.array([2 ** 31])


# --- print(net) and the parameter count --------------------------------------------------------

def test_the_parameter_count_is_the_same_everywhere_and_leaves_buffers_out(shared):
    _, _, _, x_nhwc, _ = shared
    net, model, (lnet, variables), kmodel = nets(shared)
    text, count = porting.torch_summary(net)
    assert "Conv2d(1, 6, kernel_size=(3, 3)" in text
    assert count == sum(int(np.prod(s)) for s in convert.torch_shapes(3).values())
    ntext, ncount = porting.nnx_summary(model)
    assert ncount == count and f"Param: {count:,}" in ntext
    ltable, lcount = porting.linen_summary(lnet, variables, x_nhwc[:1])
    assert lcount == count and f"{count:,}" in ltable
    ktext, kcount = porting.keras_summary(kmodel)
    assert kcount == count and f"Total params: {count:,}" in ktext
    w, b, x = layer_weights()
    assert porting.keras_buffer(keras_dense(w, b), x).count_params() == w.size + b.size + 8   # non-trainable too
    bn, nbn = torch.nn.BatchNorm1d(8), nnx.BatchNorm(8, rngs=nnx.Rngs(0))    # the twin: counting all state
    size = lambda state: sum(leaf.size for leaf in jax.tree.leaves(state))  # noqa: E731
    assert sum(p.numel() for p in bn.parameters()) == size(nnx.state(nbn, nnx.Param))
    assert sum(t.numel() for t in bn.state_dict().values()) != sum(p.numel() for p in bn.parameters())
    assert size(nnx.state(nbn)) != size(nnx.state(nbn, nnx.Param))



def test_nnx_tabulate_leaves_the_classes_it_tabulates_changed():
    """flax 0.12.8's nnx.tabulate writes each class's inherited methods into the class and leaves
    them there (a local class here, so no other test sees it); should a release stop doing so,
    this fails and the row's advice can go."""
    class Scale(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))

        def __call__(self, x):
            return x * self.w

    assert "sow" not in vars(Scale)
    table = nnx.tabulate(Scale(), jnp.ones(3))
    assert "Total Parameters: 3" in table
    assert "sow" in vars(Scale) and "train" in vars(Scale)

# --- the dropout random stream -----------------------------------------------------------------

def test_each_dropout_call_advances_its_stream_and_the_same_seed_repeats():
    x = np.ones((64, 8), np.float32)
    for name, outs in [("torch", [t.numpy() for t in porting.torch_dropout_stream(torch.from_numpy(x), 0)]),
                       ("nnx", porting.nnx_dropout_stream(x, 0)), ("keras", porting.keras_dropout_stream(x, 0))]:
        first, second, repeat = map(np.asarray, outs)
        assert set(np.unique(first).tolist()) == {0.0, 2.0}, name
        assert not np.array_equal(first, second), name
        np.testing.assert_array_equal(first, repeat, err_msg=name)
    first, again, stepped = map(np.asarray, porting.linen_dropout_stream(x, 0))
    np.testing.assert_array_equal(first, again)                         # the twin: a reused key, the same mask
    assert not np.array_equal(first, stepped)


# --- out.backward(v) vs jax.vjp ----------------------------------------------------------------

@pytest.mark.x64
def test_backward_with_a_vector_is_jax_vjp_in_float64(shared, one_torch_thread):
    state, *_ = shared
    state = {k: v.astype(np.float64) for k, v in state.items()}
    rng = np.random.default_rng(4)
    x, v = rng.standard_normal((10, 1, 32, 32)), rng.standard_normal((10, 10))
    net = TorchNet(3).double()
    net.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in state.items()})
    x_grad, grads = porting.torch_vjp(net, torch.from_numpy(x), torch.from_numpy(v))
    x_grad, expected = x_grad.numpy(), {k: g.numpy() for k, g in grads.items()}
    params = jax.tree.map(jnp.asarray, convert.torch_to_flax(state))
    model = nnx.eval_shape(lambda: flax_lenet.Net(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    nnx.update(model, params)
    x_nhwc = jnp.asarray(convert.nchw_to_nhwc(x))
    x_bar, param_bar = porting.nnx_vjp(model, x_nhwc, jnp.asarray(v))
    assert x_bar.dtype == jnp.float64
    assert_close(convert.nhwc_to_nchw(np.asarray(x_bar)), x_grad, FLOAT64, "nnx input vjp")
    param_bar = nnx.to_pure_dict(param_bar)
    assert_tree_close(convert.flax_to_torch(param_bar), expected, FLOAT64, "nnx.grad of vdot")
    lx_bar, lvariables_bar = porting.linen_vjp(linen.Net(3), {"params": params}, x_nhwc, jnp.asarray(v))
    assert_close(convert.nhwc_to_nchw(np.asarray(lx_bar)), x_grad, FLOAT64, "linen input vjp")
    assert_tree_close(convert.flax_to_torch(lvariables_bar["params"]), expected, FLOAT64, "linen variables vjp")
    # the twins: a transposed v; fc1's gradient transposed without the flatten-order permutation
    (wrong,) = jax.vjp(lambda x: model(x), x_nhwc)[1](jnp.asarray(v.T))
    with pytest.raises(AssertionError):
        assert_close(convert.nhwc_to_nchw(np.asarray(wrong)), x_grad, FLOAT64, "v transposed")
    with pytest.raises(AssertionError):
        assert_close(np.asarray(param_bar["fc1"]["kernel"]).T, expected["fc1.weight"], FLOAT64, "fc1 as is")
