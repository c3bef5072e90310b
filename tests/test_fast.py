"""``flax_lenet.fast`` is pinned to the plain code: its forward to the Net's, its step to ``train.train_step``.

The block-wise forward is checked against ``functional.forward`` and the NNX ``model(x)`` (the
plain layer-by-layer Net, itself pinned to torch by the parity suite) for values and gradients,
with ties in the pools; ``fast.train_step`` against ``train.train_step`` over three steps; each
claim once against a deliberately wrong variant. The fast forward is shown to apply only to an
unmodified Net, and the step to differentiate the loss it is given.
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
    offsets = fast.patch_offsets
    monkeypatch.setattr(fast, "patch_offsets", lambda d, r, c: offsets(d, r, c)[:, [1, 0, 2]])
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
    with hooks.nnx_hooks(model, "conv2", post=lambda m, a, out: out):
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


def _compiled_value_and_grad(model, x, y):
    return jax.jit(lambda m, x, y: fast.value_and_grad(train.loss_fn, m, x, y)).lower(model, x, y).compile().as_text()


def test_fast_step_on_cpu_has_no_convolution_unless_a_layer_is_hooked():
    x, y = _images(4, "float32"), jnp.zeros((4, 10), jnp.float32)
    model = _model()
    assert CONV_OP not in _compiled_value_and_grad(model, x, y)
    with hooks.nnx_hooks(model, "conv2", post=lambda m, a, out: out):
        assert CONV_OP in _compiled_value_and_grad(model, x, y)


@pytest.mark.x64
def test_fast_step_runs_hooks_of_a_hooked_layer():
    x, y = _images(4, "float64"), jnp.zeros((4, 10), jnp.float64)
    hooked, plain = _model(3, "float64"), _model(3, "float64")
    warm = _model(3, "float64")                   # the same step compiled unhooked first: the hook
    fast.train_step(warm, nnx.Optimizer(warm, optax.sgd(0.01), wrt=nnx.Param), x, y)   # must retrace it
    with hooks.nnx_hooks(hooked, "conv1", post=lambda m, a, out: 2 * out):
        want = train.loss_fn(hooked, x, y)
        got = fast.train_step(hooked, nnx.Optimizer(hooked, optax.sgd(0.01), wrt=nnx.Param), x, y)
    assert_close(got, want, FLOAT64, "hooked loss")
    assert abs(float(got) - float(train.loss_fn(plain, x, y))) > 1e-6   # the hook changed it


def _both_steps(kernel_size, dtype, tx, n=6, steps=3):
    """Losses and parameters after ``steps`` of ``train.train_step`` and of ``fast.train_step``."""
    x = _images(n, dtype, ties=True)
    y = jnp.asarray(np.random.default_rng(3).standard_normal((n, 10)), dtype)
    out = []
    for step in (train.train_step, fast.train_step):
        model = _model(kernel_size, dtype)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        losses = [step(model, optimizer, x, y) for _ in range(steps)]
        out.append((np.asarray(losses), convert.flax_to_torch(nnx.state(model, nnx.Param))))
    return out


@pytest.mark.parametrize("kernel_size,dtype,tx", [
    (3, "float64", "sgd"), (3, "float64", "adam"), pytest.param(5, "float64", "sgd", marks=pytest.mark.slow),
    # float32 with SGD only: Adam divides by sqrt(v), so a gradient element that is rounding noise
    # around zero becomes a full step of either sign (the float32 grid measures that separately)
    (3, "float32", "sgd")])
def test_fast_train_step_equals_the_plain_train_step(kernel_size, dtype, tx):
    """The pin: ``fast.train_step`` gives ``train.train_step``'s losses and parameters, three steps
    (float64 to 1e-12, float32 to its CPU tier), pool ties included."""
    tx = optax.sgd(0.1) if tx == "sgd" else optax.adam(1e-3)
    (want_losses, want), (losses, got) = _both_steps(kernel_size, dtype, tx)
    assert_close(losses, want_losses, TOL[dtype], "losses")
    assert_tree_close(got, want, TOL[dtype], "params after 3 steps")


@pytest.mark.x64
def test_the_pin_catches_a_fast_step_with_misplaced_kernel_taps(monkeypatch):
    """Broken twin of the pin: the block-wise forward with transposed taps fails it."""
    offsets = fast.patch_offsets
    monkeypatch.setattr(fast, "patch_offsets", lambda d, r, c: offsets(d, r, c)[:, [1, 0, 2]])
    (want_losses, want), (losses, got) = _both_steps(3, "float64", optax.sgd(0.1), n=7)   # a new shape: traced anew
    with pytest.raises(AssertionError):
        assert_tree_close(got, want, FLOAT64, "params after 3 steps")


@pytest.mark.x64
def test_fast_step_differentiates_the_loss_it_is_given():
    # a loss that only looks at one logit: its gradient reaches fc3's row for that class only
    x, y = _images(4, "float64"), jnp.zeros((4, 10), jnp.float64)
    model = _model(3, "float64")
    before = np.asarray(model.fc3.kernel[...]).copy()

    def first_logit(model, x, target):
        return jnp.sum(model(x)[:, 0])

    loss = fast.train_step(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), x, y, loss_fn=first_logit)
    assert_close(loss, first_logit(_model(3, "float64"), x, y), FLOAT64, "loss")
    changed = np.abs(np.asarray(model.fc3.kernel[...]) - before).max(axis=0) > 0
    assert changed.tolist() == [True] + [False] * 9


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_run_the_layered_net_in_the_fast_step(platform):
    from jax import export
    model = _model()
    x = jax.ShapeDtypeStruct((4, 32, 32, 1), jnp.float32)
    mlir = export.export(jax.jit(lambda x: fast.view(model, x)(x)), platforms=[platform])(x).mlir_module()
    assert "stablehlo.convolution" in mlir
    cpu = export.export(jax.jit(lambda x: fast.view(model, x)(x)), platforms=["cpu"])(x).mlir_module()
    assert "stablehlo.convolution" not in cpu


def _layered_value_and_grad(loss_fn, model, x, y):
    """The reference: the whole batch through ``model(x)`` as written (no block-wise forward)."""
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

    def chunked(m, x, y):
        return fast.value_and_grad(train.loss_fn, m, x, y, batch_mean=True)
    loss, grads = jax.jit(chunked)(model, x, y)
    want_loss, want = _layered_value_and_grad(train.loss_fn, model, x, y)
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")
    assert "stablehlo.while" in jax.jit(chunked).lower(model, x, y).as_text()   # it did take the chunked path


@pytest.mark.x64
def test_chunks_are_only_for_losses_declared_a_batch_mean():
    """Broken twin: the worst sample's loss is not a mean over the batch; declared one anyway, the
    chunked sum is not its gradient and the comparison above reports it."""
    n = fast.CHUNK + 5
    x = _images(n, "float64")
    y = jnp.asarray(np.random.default_rng(3).standard_normal((n, 10)), jnp.float64)
    model = _model(3, "float64")

    def worst(model, x, target):
        return jnp.max(jnp.mean((model(x) - target) ** 2, axis=1))

    want_loss, want = _layered_value_and_grad(worst, model, x, y)
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(worst, m, x, y, batch_mean=True))(model, x, y)
    assert parity.diff(loss, want_loss)[1] > FLOAT64.rtol
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(worst, m, x, y))(model, x, y)   # undeclared: exact
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")


def _run(step_of, tx, x, y, steps=3):
    model = _model()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step = step_of(model, optimizer)
    losses = [np.asarray(step(x, y)) for _ in range(steps)]
    return losses + [np.asarray(a) for a in jax.tree.leaves((model, optimizer))]


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.adam(1e-2)], ids=["sgd", "adam"])
def test_bound_step_is_the_fast_step_bit_for_bit(tx):
    """``fast.bound_step`` (what ``flax-lenet train`` runs) against ``fast.train_step``: the same
    losses, parameters and optimizer state, to the bit, over three steps."""
    x, y = _images(3, "float32"), jnp.asarray(np.random.default_rng(3).standard_normal((3, 10)), jnp.float32)
    got = _run(fast.bound_step, tx, x, y)
    want = _run(lambda m, o: lambda x, y: fast.train_step(m, o, x, y), tx, x, y)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def test_a_bound_step_does_not_see_a_variable_replaced_after_binding():
    """What ``bound_step``'s docstring says: it keeps the Variables it was bound to. A Variable
    replaced afterwards is trained by ``fast.train_step`` and not by the bound step."""
    x, y = _images(3, "float32"), jnp.zeros((3, 10), jnp.float32)
    model = _model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    step = fast.bound_step(model, optimizer)
    model.fc3.bias = nnx.Param(model.fc3.bias[...] + 1.0)
    before = np.asarray(model.fc3.bias[...]).copy()
    step(x, y)
    assert np.array_equal(np.asarray(model.fc3.bias[...]), before)
    fast.train_step(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), x, y)
    assert not np.array_equal(np.asarray(model.fc3.bias[...]), before)


def test_fast_step_inside_a_transform_and_on_numpy_inputs():
    x, y = _images(2, "float32"), jnp.zeros((2, 10), jnp.float32)
    outer, inner, plain = _model(), _model(), _model()
    for m, call in ((outer, nnx.jit(lambda m, o: fast.train_step(m, o, x, y))),
                    (inner, lambda m, o: fast.train_step(m, o, np.asarray(x), np.asarray(y))),
                    (plain, lambda m, o: train.train_step(m, o, x, y))):
        call(m, nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param))
    for m in (outer, inner):
        assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(nnx.state(m, nnx.Param))),
                          convert.flax_to_torch(nnx.to_pure_dict(nnx.state(plain, nnx.Param))), FLOAT32_CPU, "params")


@pytest.mark.x64
@pytest.mark.parametrize("name", ["ce", "mse"])
def test_the_apps_losses_in_chunks_equal_the_whole_batchs(name):
    """``flax-lenet train``'s two losses (on class labels) are batch means: chunked, they equal
    the whole batch through model(x)."""
    from flax_lenet.app import training
    loss_fn = training.FLAX_LOSSES[name]
    n = fast.CHUNK + 3
    x = _images(n, "float64")
    labels = jnp.asarray(np.random.default_rng(4).integers(0, 10, n))
    model = _model(3, "float64")
    loss, grads = jax.jit(lambda m, x, y: fast.value_and_grad(loss_fn, m, x, y, batch_mean=True))(model, x, labels)
    want_loss, want = _layered_value_and_grad(loss_fn, model, x, labels)
    assert_close(loss, want_loss, FLOAT64, "loss")
    assert_tree_close(convert.flax_to_torch(nnx.to_pure_dict(grads)), want, FLOAT64, "grads")
