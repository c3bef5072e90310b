"""``flax_lenet.fast``, the block-wise forward ``train_step`` runs on CPU, is the plain Net's forward.

It is checked against ``functional.forward`` and the NNX ``model(x)`` (the plain layer-by-layer
Net, itself pinned to torch by the parity suite) for values and gradients, with ties in the
pools, and once each against a deliberately wrong variant; ``train_step`` is shown to take it
only for an unmodified Net, and to differentiate the exported ``loss_fn`` (or the one passed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flax_lenet
from flax_lenet import convert, fast, functional, train
from flax_lenet.porting import hooks, parity
from flax_lenet.porting.tolerances import FLOAT32_CPU, FLOAT64
from helpers import assert_close, assert_tree_close, state_numpy, torch_net

TOL = {"float32": FLOAT32_CPU, "float64": FLOAT64}
CONV_OP = " convolution("


def _params(kernel_size, dtype, seed=0):
    """torch's init, rounded to multiples of 1/64: sums over a flat image region are then exact
    in float32 too, so a tie there is a tie in every summation order."""
    tree = convert.torch_to_flax(state_numpy(torch_net(kernel_size, "float64", seed)))
    return jax.tree.map(lambda a: jnp.asarray(np.round(a * 64) / 64, dtype), tree)


def _images(n, dtype, seed=1, ties=False):
    x = np.random.default_rng(seed).standard_normal((n, 32, 32, 1))
    if ties:
        x[:, :12, :12] = 0.5      # a flat border, as padded MNIST digits: every pool window ties
    return jnp.asarray(x, dtype)


def _loss_and_grads(forward, params, x, ct):
    """``sum(forward(params, x) * ct)`` and its gradients w.r.t. the weights and the images."""
    loss, (gp, gx) = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(forward(p, x) * ct), argnums=(0, 1)))(params, x)
    return loss, {**convert.flax_to_torch(gp), "images": gx}


@pytest.mark.parametrize("kernel_size,dtype", [(3, "float64"), pytest.param(5, "float64", marks=pytest.mark.slow),
                                               (3, "float32"), pytest.param(5, "float32", marks=pytest.mark.slow)])
def test_fast_forward_and_gradients_equal_the_layered_net(kernel_size, dtype):
    p, x = _params(kernel_size, dtype), _images(5, dtype, ties=True)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal((5, 10)), dtype)
    assert_close(fast.forward(p, x), functional.forward(p, x), TOL[dtype], "logits")
    assert_close(fast.forward(p, x), convert.to_nnx(p)(x), TOL[dtype], "logits of the NNX model(x)")
    got = _loss_and_grads(fast.forward, p, x, ct)
    want = _loss_and_grads(functional.forward, p, x, ct)
    assert_close(got[0], want[0], TOL[dtype], "loss")
    assert_tree_close(got[1], want[1], TOL[dtype], "grads")


@pytest.mark.x64
def test_fast_check_catches_misplaced_kernel_taps(monkeypatch):
    # the block kernel built with each patch column's row and column swapped (a transposed kernel)
    p, x = _params(3, "float64"), _images(3, "float64")
    want = functional.forward(p, x)
    offsets = fast._patch_offsets
    monkeypatch.setattr(fast, "_patch_offsets", lambda d, r, c: offsets(d, r, c)[:, [1, 0, 2]])
    with pytest.raises(AssertionError):
        assert_close(fast.forward(p, x), want, FLOAT64, "transposed taps")


@pytest.mark.x64
def test_fast_pool_check_catches_split_ties(monkeypatch):
    # a plain jnp.max pool splits a tie's gradient among the tied inputs; torch gives it to the first
    p, x = _params(3, "float64"), _images(3, "float64", ties=True)
    ct = jnp.ones((3, 10), jnp.float64)
    want = _loss_and_grads(functional.forward, p, x, ct)[1]
    monkeypatch.setattr(fast, "window_max", lambda y, axis: jnp.max(y, axis=axis))
    with pytest.raises(AssertionError):
        assert_tree_close(_loss_and_grads(fast.forward, p, x, ct)[1], want, FLOAT64, "split ties")


def test_block_kernel_holds_each_weight_where_its_output_needs_it():
    # conv1 (r=4, k=3): 16 outputs per block, each a 3x3 window of the 6x6 patch, zeros elsewhere
    k = jnp.arange(1.0, 10.0).reshape(3, 3, 1, 1)
    w = np.asarray(fast.block_kernel(k, 4))
    assert w.shape == (36, 16)
    assert (np.count_nonzero(w, axis=0) == 9).all()
    assert sorted(w[:, 0][w[:, 0] != 0]) == list(range(1, 10))


def _model(kernel_size=3, dtype="float32"):
    return convert.to_nnx(_params(kernel_size, dtype))


def test_train_step_uses_the_fast_forward_only_for_a_plain_net():
    x = _images(4, "float32")
    model = _model()
    assert fast.applies_to(model, x)

    class Wider(flax_lenet.Net):
        pass
    sub = nnx.eval_shape(lambda: Wider(rngs=nnx.Rngs(0)))
    assert not fast.applies_to(sub, x)
    with hooks.nnx_hooks(model.conv2, post=lambda m, a, out: out):
        assert not fast.applies_to(model, x)
    assert fast.applies_to(model, x)
    model.conv1.padding = "SAME"
    assert not fast.applies_to(model, x)


@pytest.mark.x64
def test_train_step_uses_the_fast_forward_only_when_the_dtypes_are_the_nets():
    x = _images(4, "float32")
    assert not fast.applies_to(_model(), x.astype(jnp.float64))          # dtypes differ: model(x) decides
    assert not fast.applies_to(_model(3, "float64"), x)
    assert fast.applies_to(_model(3, "float64"), x.astype(jnp.float64))


def _compiled_step(model, x, y):
    optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    return train.train_step.lower(model, optimizer, x, y).compile().as_text()


def test_train_step_on_cpu_has_no_convolution_unless_a_layer_is_hooked():
    x, y = _images(4, "float32"), jnp.zeros((4, 10), jnp.float32)
    model = _model()
    assert CONV_OP not in _compiled_step(model, x, y)
    with hooks.nnx_hooks(model.conv2, post=lambda m, a, out: out):
        assert CONV_OP in _compiled_step(model, x, y)


@pytest.mark.x64
def test_train_step_runs_hooks_of_a_hooked_layer():
    x, y = _images(4, "float64"), jnp.zeros((4, 10), jnp.float64)
    hooked, plain = _model(3, "float64"), _model(3, "float64")
    warm = _model(3, "float64")                   # the same step compiled unhooked first: the hook
    train.train_step(warm, nnx.Optimizer(warm, optax.sgd(0.01), wrt=nnx.Param), x, y)   # must retrace it
    with hooks.nnx_hooks(hooked.conv1, post=lambda m, a, out: 2 * out):
        want = train.loss_fn(hooked, x, y)
        got = train.train_step(hooked, nnx.Optimizer(hooked, optax.sgd(0.01), wrt=nnx.Param), x, y)
    assert_close(got, want, FLOAT64, "hooked loss")
    assert abs(float(got) - float(train.loss_fn(plain, x, y))) > 1e-6   # the hook changed it


@pytest.mark.x64
@pytest.mark.parametrize("kernel_size", [3, pytest.param(5, marks=pytest.mark.slow)])
def test_fast_train_step_equals_the_layered_step(kernel_size):
    # the same SGD step through model(x) (a hook that changes nothing turns the fast path off)
    x = _images(6, "float64", ties=True)
    y = jnp.asarray(np.random.default_rng(3).standard_normal((6, 10)), jnp.float64)
    quick, plain = _model(kernel_size, "float64"), _model(kernel_size, "float64")
    loss_quick = train.train_step(quick, nnx.Optimizer(quick, optax.sgd(0.1), wrt=nnx.Param), x, y)
    with hooks.nnx_hooks(plain.fc3, post=lambda m, a, out: out):
        loss_plain = train.train_step(plain, nnx.Optimizer(plain, optax.sgd(0.1), wrt=nnx.Param), x, y)
    assert_close(loss_quick, loss_plain, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.state(quick, nnx.Param)),
                      convert.flax_to_torch(nnx.state(plain, nnx.Param)), FLOAT64, "params after the step")


@pytest.mark.x64
def test_train_step_differentiates_the_loss_it_is_given():
    # a loss that only looks at one logit: its gradient reaches fc3's row for that class only
    x, y = _images(4, "float64"), jnp.zeros((4, 10), jnp.float64)
    model = _model(3, "float64")
    before = np.asarray(model.fc3.kernel[...]).copy()

    def first_logit(model, x, target):
        return jnp.sum(model(x)[:, 0])

    loss = train.train_step(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), x, y, loss_fn=first_logit)
    assert_close(loss, first_logit(_model(3, "float64"), x, y), FLOAT64, "loss")
    changed = np.abs(np.asarray(model.fc3.kernel[...]) - before).max(axis=0) > 0
    assert changed.tolist() == [True] + [False] * 9


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_run_the_layered_net_in_train_step(platform):
    from jax import export
    model = _model()
    x = jax.ShapeDtypeStruct((4, 32, 32, 1), jnp.float32)
    mlir = export.export(jax.jit(lambda x: fast.view(model, x)(x)), platforms=[platform])(x).mlir_module()
    assert "stablehlo.convolution" in mlir
    cpu = export.export(jax.jit(lambda x: fast.view(model, x)(x)), platforms=["cpu"])(x).mlir_module()
    assert "stablehlo.convolution" not in cpu


def _layered_value_and_grad(loss_fn, model, x, y):
    """The reference: the whole batch through ``model(x)`` as written (no block-wise forward)."""
    with hooks.nnx_hooks(model.fc3, post=lambda m, a, out: out):      # a hook turns ``fast`` off
        loss, grads = jax.jit(nnx.value_and_grad(loss_fn))(model, x, y)
    return loss, convert.flax_to_torch(nnx.to_pure_dict(grads))


@pytest.mark.x64
@pytest.mark.parametrize("n", [fast.CHUNK + 1, 3 * fast.CHUNK, pytest.param(2 * fast.CHUNK + 37, marks=pytest.mark.slow)])
def test_large_batch_gradient_in_chunks_equals_the_whole_batchs(n):
    """Past ``CHUNK`` samples the CPU step adds the gradient up chunk by chunk (strided chunks and
    a remainder): the loss and every gradient equal those of the whole batch through model(x)."""
    x = _images(n, "float64", ties=True)
    y = jnp.asarray(np.random.default_rng(3).standard_normal((n, 10)), jnp.float64)
    model = _model(3, "float64")
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(train.loss_fn, m, x, y))(model, x, y)
    want_loss, want = _layered_value_and_grad(train.loss_fn, model, x, y)
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")
    text = jax.jit(lambda m, x, y: fast.value_and_grad(train.loss_fn, m, x, y)).lower(model, x, y).as_text()
    assert "stablehlo.while" in text                                  # it did take the chunked path


@pytest.mark.x64
def test_chunks_are_only_for_losses_declared_a_batch_mean(monkeypatch):
    """Broken twin: the worst sample's loss is not a mean over the batch; declared one anyway, the
    chunked sum is not its gradient and the comparison above reports it."""
    n = fast.CHUNK + 5
    x = _images(n, "float64")
    y = jnp.asarray(np.random.default_rng(3).standard_normal((n, 10)), jnp.float64)
    model = _model(3, "float64")

    def worst(model, x, target):
        return jnp.max(jnp.mean((model(x) - target) ** 2, axis=1))

    monkeypatch.setattr(fast, "_BATCH_MEANS", {worst})
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(worst, m, x, y))(model, x, y)
    want_loss, want = _layered_value_and_grad(worst, model, x, y)
    assert parity.diff(loss, want_loss)[1] > FLOAT64.rtol
    monkeypatch.setattr(fast, "_BATCH_MEANS", set())            # undeclared: the whole batch, exact
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(worst, m, x, y))(model, x, y)
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")


def _opt_state(model, optimizer):
    return [np.asarray(a) for a in jax.tree.leaves((model, optimizer))]


def _run(step, tx, x, y, steps=3, replace_bias=False):
    model = _model()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    losses = []
    for i in range(steps):
        if replace_bias and i == 1:      # a new Variable object, same structure: it must be trained
            model.fc3.bias = nnx.Param(model.fc3.bias[...] + 1.0)
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        losses.append(np.asarray(step(model, optimizer, x, y)))
    return losses, _opt_state(model, optimizer)


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.adam(1e-2)], ids=["sgd", "adam"])
@pytest.mark.parametrize("replace_bias", [False, True], ids=["same", "replaced-variable"])
def test_train_step_is_nnx_jit_of_the_same_step_bit_for_bit(tx, replace_bias):
    """``fast.jit_step`` (what ``train_step`` is) against ``nnx.jit`` of the same function: the
    same losses, parameters and optimizer state, to the bit, also after a Variable is replaced."""
    x, y = _images(3, "float32"), jnp.asarray(np.random.default_rng(3).standard_normal((3, 10)), jnp.float32)
    got = _run(train.train_step, tx, x, y, replace_bias=replace_bias)
    want = _run(train.train_step.plain, tx, x, y, replace_bias=replace_bias)
    assert len(got[1]) == len(want[1])
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert np.array_equal(a, b)


def test_a_step_that_kept_the_variables_of_its_first_call_would_be_caught():
    """Broken twin: a dispatcher that reuses the Variables it found on its first call (the obvious
    shortcut) trains the replaced Variable's predecessor, and the comparison above sees it."""

    class KeepsVariables(fast.jit_step):
        def __call__(self, model, optimizer, x, target, loss_fn=None):
            arrays, treedef = jax.tree.flatten((model, optimizer))
            if not hasattr(self, "kept"):
                self.kept = jax.tree.leaves((model, optimizer), is_leaf=fast._is_variable)
            loss, new = self._on_arrays(treedef, self._default_loss, arrays, x, target)
            for variable, value in zip(self.kept, new):
                variable.set_raw_value(value)
            return loss

    x, y = _images(3, "float32"), jnp.zeros((3, 10), jnp.float32)
    got = _run(KeepsVariables(train.train_step.__wrapped__), optax.sgd(0.1), x, y, replace_bias=True)
    want = _run(train.train_step.plain, optax.sgd(0.1), x, y, replace_bias=True)
    assert not all(np.array_equal(a, b) for a, b in zip(got[0] + got[1], want[0] + want[1]))


def test_train_step_inside_a_transform_and_on_numpy_inputs():
    x, y = _images(2, "float32"), jnp.zeros((2, 10), jnp.float32)
    outer, inner, plain = _model(), _model(), _model()
    for m, call in ((outer, nnx.jit(lambda m, o: train.train_step(m, o, x, y))),
                    (inner, lambda m, o: train.train_step(m, o, np.asarray(x), np.asarray(y))),
                    (plain, lambda m, o: train.train_step.plain(m, o, x, y))):
        call(m, nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param))
    for m in (outer, inner):
        assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(nnx.state(m, nnx.Param))),
                          convert.flax_to_torch(nnx.to_pure_dict(nnx.state(plain, nnx.Param))), FLOAT32_CPU, "params")


@pytest.mark.x64
def test_train_steps_is_the_loop_of_train_step():
    """K steps in one compiled call equal K calls of ``train_step``, losses and parameters; the
    same batches in another order (the broken twin) do not."""
    xs = jnp.asarray(np.random.default_rng(5).standard_normal((4, 3, 32, 32, 1)), jnp.float64)
    ys = jnp.asarray(np.random.default_rng(6).standard_normal((4, 3, 10)), jnp.float64)

    def run(steps):
        model = _model(3, "float64")
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        losses = steps(model, optimizer)
        return np.asarray(losses), convert.flax_to_torch(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    got = run(lambda m, o: train.train_steps(m, o, xs, ys))
    want = run(lambda m, o: [train.train_step(m, o, x, y) for x, y in zip(xs, ys)])
    assert_close(got[0], want[0], FLOAT64, "losses")
    assert_tree_close(got[1], want[1], FLOAT64, "params after 4 steps")
    shuffled = run(lambda m, o: train.train_steps(m, o, xs[::-1], ys[::-1]))
    assert parity.diff(shuffled[1]["fc1.weight"], want[1]["fc1.weight"])[1] > FLOAT64.rtol


@pytest.mark.x64
@pytest.mark.parametrize("name", ["ce", "mse"])
def test_the_apps_losses_in_chunks_equal_the_whole_batchs(name):
    """``flax-lenet train``'s two losses (on class labels) are declared batch means: chunked,
    they equal the whole batch through model(x)."""
    from flax_lenet.app import training
    loss_fn = training.FLAX_LOSSES[name]
    n = fast.CHUNK + 3
    x = _images(n, "float64")
    labels = jnp.asarray(np.random.default_rng(4).integers(0, 10, n))
    model = _model(3, "float64")
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(loss_fn, m, x, y))(model, x, labels)
    want_loss, want = _layered_value_and_grad(loss_fn, model, x, labels)
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")
