"""The rows a porter still misses: one small function per framework, run by tests/test_porting_rows.py.

Each row is PyTorch, then NNX, then Linen and Keras (JAX backend, ``keras_reference``) where their
idiom differs from NNX's; the page shows these functions' source. Weights and data are shared
through numpy, never through seeds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import torch
import torch.nn as tnn
from flax import linen as nn
from flax import nnx

from keras_reference import train as keras_train  # first: the package sets KERAS_BACKEND=jax
import keras  # noqa: E402,I001
from flax_lenet.train import mse_loss

# --- model.train() / model.eval() -----------------------------------------------------------


def torch_train_eval(linear: tnn.Linear, x):
    """``net.train()`` turns Dropout on, ``net.eval()`` off: a flag on every submodule."""
    net = tnn.Sequential(linear, tnn.Dropout(0.5))
    net.train()
    trained = net(x)                       # half the outputs zeroed, the rest doubled
    net.eval()
    return trained, net(x)                 # eval: the linear layer's output, untouched


def nnx_train_eval(linear: nnx.Linear, x):
    """``model.train()`` / ``model.eval()`` set ``deterministic`` on every ``nnx.Dropout``, in place;
    ``nnx.view(model, deterministic=True)`` is a new eval-mode model sharing the same Variables."""
    model = nnx.Sequential(linear, nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0)))
    model.train()
    trained = model(x)
    viewed = nnx.view(model, deterministic=True)(x)   # functional: model itself still trains
    model.eval()
    return trained, model(x), viewed


def linen_train_eval(variables, x):
    """Linen has no mode: ``deterministic=`` is an argument, and dropout needs an rng."""
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic):
            return nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(8)(x))
    net = Net()
    trained = net.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    return trained, net.apply(variables, x, deterministic=True)


def keras_train_eval(dense: keras.layers.Dense, x):
    """Keras passes ``training=`` down through ``Model.__call__`` (default: inference)."""
    model = keras.Sequential([dense, keras.layers.Dropout(0.5, seed=0)])
    return model(x, training=True), model(x, training=False)


# --- torch.no_grad() / .detach() ------------------------------------------------------------


def torch_detach(net, x):
    """``out.detach()`` is a constant for autograd: d/dW of ``(out.detach() * out).sum()``."""
    out = net(x)
    (out.detach() * out).sum().backward()
    with torch.no_grad():                  # no graph recorded at all
        again = net(x)
    return {name: p.grad for name, p in net.named_parameters()}, again.requires_grad


def nnx_stop_gradient(model, x):
    """JAX records nothing unless asked: no ``no_grad``; ``jax.lax.stop_gradient`` is ``.detach()``."""
    def loss(model):
        out = model(x)
        return (jax.lax.stop_gradient(out) * out).sum()
    return nnx.grad(loss)(model)


def linen_stop_gradient(net, variables, x):
    """The same with ``net.apply``: the gradient of a function of ``variables``."""
    def loss(variables):
        out = net.apply(variables, x)
        return (jax.lax.stop_gradient(out) * out).sum()
    return jax.grad(loss)(variables)


def keras_stop_gradient(model, x):
    """``keras.ops.stop_gradient`` inside a ``stateless_call`` differentiated by ``jax.grad``."""
    def loss(trainable):
        out, _ = model.stateless_call(trainable, [], x)
        return keras.ops.sum(keras.ops.stop_gradient(out) * out)
    return jax.grad(loss)([v.value for v in model.trainable_variables])


# --- requires_grad=False: freezing a layer --------------------------------------------------


def torch_freeze(net, x, target, lr=0.01):
    """``requires_grad_(False)``: no ``.grad``, so ``optimizer.step()`` leaves conv1 alone."""
    net.conv1.requires_grad_(False)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    optimizer.zero_grad()
    tnn.MSELoss()(net(x), target).backward()
    optimizer.step()


def nnx_freeze(model, x, target, lr=0.01):
    """A filter picks what is trained: ``nnx.Optimizer(wrt=...)`` and ``nnx.DiffState`` for the grad."""
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("conv1")))
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=trainable)

    def loss(model):
        return mse_loss(model(x), target)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, trainable))(model)
    optimizer.update(model, grads)


def linen_freeze(net, variables, x, target, lr=0.01):
    """``optax.multi_transform``: SGD for the trained labels, ``set_to_zero`` for the frozen ones."""
    params = variables["params"]
    labels = {name: jax.tree.map(lambda _: "frozen" if name == "conv1" else "trained", p)
              for name, p in params.items()}
    tx = optax.multi_transform({"trained": optax.sgd(lr), "frozen": optax.set_to_zero()}, labels)
    grads = jax.grad(lambda p: mse_loss(net.apply({"params": p}, x), target))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return {"params": optax.apply_updates(params, updates)}


def keras_freeze(model, x, target, lr=0.01):
    """``layer.trainable = False`` moves its weights to ``non_trainable_variables``."""
    model.conv1.trainable = False
    keras_train.sgd_step(model, x, target, lr)


# --- state_dict() / load_state_dict() -------------------------------------------------------


def torch_state_dict(net, state):
    """``load_state_dict`` copies into the existing tensors; ``state_dict()`` reads them back."""
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return {k: v.numpy() for k, v in net.state_dict().items()}


def nnx_state_dict(model, params):
    """``nnx.update`` loads a nested dict; ``nnx.to_pure_dict(nnx.state(...))`` reads one back."""
    nnx.update(model, params)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def linen_state_dict(variables, params):
    """A Linen module holds no weights: its state_dict is the ``variables`` dict itself."""
    variables = {**variables, "params": params}
    return variables["params"]


def keras_state_dict(model, params):
    """``set_weights`` / ``get_weights``: a flat list in creation order (or ``save_weights``)."""
    model.set_weights([a for name in keras_train.LAYERS for a in (params[name]["kernel"], params[name]["bias"])])
    return model.get_weights()


# --- parameters() / named_parameters() ------------------------------------------------------


def torch_named_parameters(net):
    """Names are attribute paths joined by dots."""
    return [(name, tuple(p.shape)) for name, p in net.named_parameters()]


def nnx_named_parameters(model):
    """``nnx.state(model, nnx.Param)`` is a tree; its leaves carry paths."""
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return [(jax.tree_util.keystr(path, simple=True, separator="."), leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)]


def linen_named_parameters(variables):
    """The same on Linen's ``variables['params']``."""
    return [(jax.tree_util.keystr(path, simple=True, separator="."), leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])]


def keras_named_parameters(model):
    """``model.trainable_variables``; each has a ``path`` such as ``'net/conv2d/kernel'``."""
    return [(v.path, tuple(v.shape)) for v in model.trainable_variables]


# --- .to(device) ----------------------------------------------------------------------------


def torch_to_device(net, x, device="cpu"):
    """Modules and tensors move explicitly; a mismatch is an error at the call."""
    net = net.to(device)
    return net(x.to(device))


def nnx_to_device(model, x, device):
    """Arrays are on the default device already; ``jax.device_put`` moves a tree (or shards it:
    ``flax_lenet.parallel``), and ``nnx.update`` puts the moved state back into the model."""
    nnx.update(model, jax.device_put(nnx.state(model), device))
    return model(jax.device_put(x, device))


def linen_to_device(net, variables, x, device):
    """``jax.device_put`` on the variables dict and on the data; the computation follows them."""
    return net.apply(jax.device_put(variables, device), jax.device_put(x, device))


def keras_to_device(model, x, device_name="cpu:0"):
    """``keras.device`` scopes where new arrays and variables are made."""
    with keras.device(device_name):
        return model(keras.ops.convert_to_tensor(x))


# --- torch.manual_seed ----------------------------------------------------------------------


def torch_seeded_net(seed, net_class):
    """One global generator: the seed, then the draws, in call order."""
    torch.manual_seed(seed)
    return net_class()


def nnx_seeded_net(seed, net_class):
    """``nnx.Rngs(seed)``: the key travels with the construction, no global state."""
    return net_class(rngs=nnx.Rngs(seed))


def linen_seeded_variables(seed, net, x):
    """``init`` takes an explicit ``jax.random.key``; the same key, the same variables."""
    return net.init(jax.random.key(seed), x)


def keras_seeded_net(seed, net_class, x):
    """``keras.utils.set_random_seed`` seeds Python, numpy and Keras' global generator."""
    keras.utils.set_random_seed(seed)
    model = net_class()
    model(x)                               # variables are drawn when the model is built
    return model


# --- .double() ------------------------------------------------------------------------------


def torch_double(net):
    """``net.double()`` casts every parameter to float64."""
    return {p.dtype for p in net.double().parameters()}


def nnx_double(net_class):
    """``param_dtype=jnp.float64`` is float64 only with ``jax_enable_x64``; else float32, with a warning."""
    model = net_class(param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    return {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))}


def linen_double(net_class, x):
    """The same for Linen's ``param_dtype``: ``jax.config.update('jax_enable_x64', True)`` first."""
    variables = net_class(param_dtype=jnp.float64).init(jax.random.key(0), x)
    return {p.dtype for p in jax.tree.leaves(variables)}


def keras_double(net_class, x):
    """Keras' ``dtype='float64'`` goes through JAX too: float32 unless x64 is on, while each
    variable's ``dtype`` still says ``'float64'``; its ``.value`` holds the truth."""
    model = net_class(dtype="float64")
    model(x)
    return {v.dtype for v in model.weights}, {np.dtype(v.value.dtype) for v in model.weights}


# --- eager, torch.compile, jax.jit ----------------------------------------------------------


def torch_compiled(net, xs):
    """``torch.compile`` captures a graph per input shape; a counting backend shows the recompiles."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(tuple(example_inputs[-1].shape))
        return graph_module.forward

    compiled = torch.compile(net, backend=backend, dynamic=False)
    return [compiled(x) for x in xs], graphs


def nnx_jitted(model, xs):
    """``nnx.jit`` traces once per shape, dtype and graph structure; the Python body runs only then."""
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(x.shape)             # a side effect: runs while tracing, not per call
        return model(x)

    return [forward(model, x) for x in xs], traces


def linen_jitted(net, variables, xs):
    """``jax.jit`` of ``net.apply``: the variables are an argument, the module a constant."""
    traces = []

    @jax.jit
    def forward(variables, x):
        traces.append(x.shape)
        return net.apply(variables, x)

    return [forward(variables, x) for x in xs], traces


def keras_jitted(model, xs):
    """``model(x)`` runs eagerly; ``fit`` and ``predict`` jit; by hand: ``jax.jit`` of ``stateless_call``."""
    traces = []

    @jax.jit
    def forward(trainable, x):
        traces.append(x.shape)
        return model.stateless_call(trainable, [], x)[0]

    trainable = [v.value for v in model.trainable_variables]
    return [forward(trainable, x) for x in xs], traces



# --- net(x) vs net.forward(x), model(x) vs model.call(x) -------------------------------------


def torch_call_vs_forward(net, x, hook):
    """``net(x)`` runs the hooks; ``net.forward(x)`` skips the Net's own (not its layers')."""
    handle = net.register_forward_hook(hook)
    try:
        return net(x), net.forward(x)
    finally:
        handle.remove()


def nnx_call_vs_base_call(model, x, hook):
    """A hooked layer runs its hook under ``model.conv1(x)``; the layer itself, ``hooked.layer(x)``, skips it."""
    from flax_lenet.porting.hooks import nnx_hooks
    with nnx_hooks(model, "conv1", post=hook) as hooked:
        return model.conv1(x), hooked.layer(x)


def linen_jit_traced_inside_interceptor(net, variables, x, interceptor):
    """A function first traced inside ``nn.intercept_methods`` keeps the interceptor after the block."""
    forward = jax.jit(net.apply)
    with nn.intercept_methods(interceptor):
        inside = forward(variables, x)     # traced here: the interceptor is in the trace
    return inside, forward(variables, x), net.apply(variables, x)   # cached trace; plain apply


def keras_call_vs_call(model, x):
    """``model(x)`` builds the model and hands ``training`` to its layers; ``model.call(x)`` does neither."""
    direct = model.call(x, training=True)  # no Model.__call__: unbuilt, layers see no training flag
    built_before = model.built
    return model(x, training=True), direct, built_before


# --- torch.device("meta") / functional_call vs nnx.eval_shape / nnx.split / nnx.merge ---------


def torch_meta_functional_call(net_class, state, x):
    """``torch.device('meta')`` builds shapes without memory; ``torch.func.functional_call`` runs
    the module on a dict of tensors in place of its own."""
    with torch.device("meta"):
        net = net_class()                  # meta tensors: shape and dtype, no data, no init
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    net = net.to_empty(device="cpu")       # real, uninitialised memory
    return shapes, torch.func.functional_call(net, state, (x,))


def nnx_eval_shape_split_merge(net_class, params, x):
    """``nnx.eval_shape``: a model of ``jax.ShapeDtypeStruct`` leaves (no memory, no init);
    ``nnx.split`` gives its static ``GraphDef`` and its ``State``; ``nnx.merge`` rebuilds a model
    from a graphdef and any state of that structure."""
    abstract = nnx.eval_shape(lambda: net_class(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shapes = nnx.to_pure_dict(state)       # ShapeDtypeStruct leaves
    nnx.replace_by_pure_dict(state, params)
    return shapes, nnx.merge(graphdef, state)(x)


def linen_eval_shape_split_merge(net, params, x):
    """A Linen module is split already: the module is the graph definition, ``variables`` the state;
    ``jax.eval_shape(net.init, ...)`` gives the variables' shapes without memory."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)["params"]
    variables = {"params": params}
    return shapes, net.apply(variables, x)


def keras_eval_shape_split_merge(model, weights, x):
    """``model.stateless_call`` is ``functional_call``; Keras has no meta device (a built model holds memory)."""
    outputs, _ = model.stateless_call(weights, [], x)
    return outputs


# --- register_buffer: state that is not a parameter ------------------------------------------


def torch_buffer(linear, x, lr=0.1):
    """``register_buffer``: in ``state_dict()``, not in ``parameters()``, so no optimizer sees it."""
    class Tracked(tnn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear
            self.register_buffer("mean", torch.zeros(linear.out_features))

        def forward(self, x):
            y = self.linear(x)
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * y.mean(0))     # a running mean of the outputs
            return y

    net = Tracked()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    (net(x) ** 2).mean().backward()
    optimizer.step()
    return [name for name, _ in net.named_parameters()], list(net.state_dict()), net


def nnx_buffer(linear, x, lr=0.1):
    """A Variable that is not an ``nnx.Param`` (``nnx.BatchStat``, as ``nnx.BatchNorm`` keeps its
    running mean): in ``nnx.state(model)``, not in ``nnx.state(model, nnx.Param)``, which is what
    ``nnx.grad`` differentiates and ``nnx.Optimizer(wrt=nnx.Param)`` updates."""
    class Tracked(nnx.Module):
        def __init__(self):
            self.linear = linear
            self.mean = nnx.BatchStat(jnp.zeros(linear.out_features))

        def __call__(self, x):
            y = self.linear(x)
            self.mean[...] = 0.9 * self.mean[...] + 0.1 * jax.lax.stop_gradient(y).mean(0)
            return y

    model = Tracked()
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    grads = nnx.grad(lambda model: (model(x) ** 2).mean())(model)   # the mean's update is kept
    optimizer.update(model, grads)
    names = lambda state: [".".join(map(str, path)) for path, _ in nnx.to_flat_state(state)]  # noqa: E731
    return names(nnx.state(model, nnx.Param)), names(nnx.state(model)), model


def linen_buffer(variables, x, lr=0.1):
    """``self.variable('batch_stats', ...)``: a collection beside ``params``; ``apply`` returns its
    update when it is ``mutable``, and the optimizer is given ``variables['params']`` only."""
    class Tracked(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.Dense(8)(x)
            mean = self.variable("batch_stats", "mean", jnp.zeros, (8,))
            mean.value = 0.9 * mean.value + 0.1 * jax.lax.stop_gradient(y).mean(0)
            return y

    def loss(params):
        y, updates = Tracked().apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return (y ** 2).mean(), updates

    grads, updates = jax.grad(loss, has_aux=True)(variables["params"])
    tx = optax.sgd(lr)
    steps, _ = tx.update(grads, tx.init(variables["params"]))
    return {"params": optax.apply_updates(variables["params"], steps), **updates}


def keras_buffer(dense, x):
    """``add_weight(trainable=False)``: in ``model.weights``, not in ``trainable_weights`` (what
    the optimizer gets); ``assign`` writes it."""
    class Tracked(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.dense = dense

        def build(self, input_shape):
            self.mean = self.add_weight(shape=(dense.units,), initializer="zeros", trainable=False)

        def call(self, x):
            y = self.dense(x)
            self.mean.assign(0.9 * self.mean + 0.1 * keras.ops.mean(keras.ops.stop_gradient(y), axis=0))
            return y

    layer = Tracked()
    layer(x)
    return layer


# --- nn.Sequential / nn.ModuleList ------------------------------------------------------------


def torch_sequential(first, second, x):
    """``nn.Sequential`` calls its children in order; ``nn.ModuleList`` registers a list of them
    (a plain Python list would hide their parameters)."""
    seq = tnn.Sequential(first, tnn.ReLU(), second)

    class Stack(tnn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = tnn.ModuleList([first, second])

    names = lambda net: [name for name, _ in net.named_parameters()]  # noqa: E731
    return names(seq), seq(x), names(Stack())


def nnx_sequential(first, second, x):
    """``nnx.Sequential`` (layers in its ``layers`` attribute); ``nnx.List`` for a list of
    submodules: in Flax 0.12 a plain list of modules as an attribute is an error."""
    seq = nnx.Sequential(first, nnx.relu, second)

    class Stack(nnx.Module):
        def __init__(self):
            self.blocks = nnx.List([first, second])

    def names(model):
        return [".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]

    return names(seq), seq(x), names(Stack())


def linen_sequential(variables, x):
    """``nn.Sequential([...])`` names its layers ``layers_0``, ``layers_2`` in ``variables``; a
    list of submodules assigned in ``setup`` is registered too (``blocks_0``, ``blocks_1``)."""
    seq = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(8)])

    class Stack(nn.Module):
        def setup(self):
            self.blocks = [nn.Dense(8), nn.Dense(8)]

        def __call__(self, x):
            return self.blocks[1](nn.relu(self.blocks[0](x)))

    names = lambda net: sorted(jax.eval_shape(net.init, jax.random.key(0), x)["params"])  # noqa: E731
    return names(seq), seq.apply(variables, x), names(Stack())


def keras_sequential(first, second, x):
    """``keras.Sequential([...])``; in a subclassed ``keras.Model`` a plain list of layers is tracked."""
    seq = keras.Sequential([first, keras.layers.ReLU(), second])

    class Stack(keras.Model):
        def __init__(self):
            super().__init__()
            self.blocks = [first, second]

    return seq(x), len(Stack().trainable_weights)


# --- lr_scheduler.MultiStepLR vs optax.piecewise_constant_schedule ---------------------------


def torch_multistep_lr(lr, milestones, gamma, epochs, steps_per_epoch):
    """``MultiStepLR`` counts epochs: ``scheduler.step()`` once per epoch, after ``optimizer.step()``."""
    param = tnn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)
    used = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            used.append(optimizer.param_groups[0]["lr"])
            param.grad = torch.ones(())
            optimizer.step()
        scheduler.step()
    return used


def nnx_multistep_lr(lr, milestones, gamma, epochs, steps_per_epoch):
    """optax counts updates, from 0: milestone epoch m is the boundary ``m * steps_per_epoch``;
    the schedule goes where the learning rate goes (``optax.sgd(schedule)``, ``nnx.Optimizer``)."""
    schedule = optax.piecewise_constant_schedule(lr, {m * steps_per_epoch: gamma for m in milestones})
    tx = optax.sgd(schedule)
    state, used = tx.init(jnp.zeros(())), []
    for _ in range(epochs * steps_per_epoch):
        updates, state = tx.update(jnp.ones(()), state)   # sgd's update is -lr * grad
        used.append(-float(updates))
    return used


def keras_multistep_lr(lr, milestones, gamma, epochs, steps_per_epoch):
    """``PiecewiseConstantDecay`` switches after a boundary (``step > b``): epoch m is ``m * S - 1``."""
    boundaries = [m * steps_per_epoch - 1 for m in milestones]
    values = [lr * gamma ** i for i in range(len(milestones) + 1)]
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values))
    param, used = keras.Variable(0.0), []
    for _ in range(epochs * steps_per_epoch):
        used.append(float(optimizer.learning_rate))
        optimizer.apply([keras.ops.ones(())], [param])
    return used


# --- clip_grad_norm_ vs optax.clip_by_global_norm --------------------------------------------


def torch_clip_grad_norm(params, max_norm):
    """``clip_grad_norm_`` multiplies every ``.grad`` in place by min(1, max_norm / (norm + 1e-6))."""
    norm = tnn.utils.clip_grad_norm_(params, max_norm)
    return norm, [p.grad for p in params]


def nnx_clip_grad_norm(grads, max_norm):
    """``optax.clip_by_global_norm``: unchanged below max_norm, else ``g / norm * max_norm`` (no 1e-6);
    in training it goes first in the chain: ``optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr))``."""
    tx = optax.clip_by_global_norm(max_norm)
    clipped, _ = tx.update(grads, tx.init(grads))
    return optax.tree.norm(grads), clipped


def keras_clip_grad_norm(grads, max_norm):
    """Keras clips inside the optimizer, ``global_clipnorm=``: scale ``max_norm * min(1/norm, 1/max_norm)``."""
    optimizer = keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=max_norm)
    variables = [keras.Variable(keras.ops.zeros(g.shape)) for g in grads]
    optimizer.apply(grads, variables)                  # 0 - 1.0 * clipped: the clipped gradients, negated
    return [-v.value for v in variables]


# --- nn.CrossEntropyLoss vs optax.softmax_cross_entropy_with_integer_labels -------------------


def torch_cross_entropy(logits, labels):
    """``nn.CrossEntropyLoss`` takes logits (log-softmax inside) and int64 labels; mean over the batch."""
    return tnn.CrossEntropyLoss()(logits, labels)


def nnx_cross_entropy(logits, labels):
    """optax's loss is per example: ``.mean()`` is torch's default ``reduction='mean'``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def keras_cross_entropy(logits, labels):
    """``SparseCategoricalCrossentropy``: ``(labels, logits)`` order, and ``from_logits`` defaults to False."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)


# --- loss.item(), async dispatch, block_until_ready ------------------------------------------


def torch_item(linear, x):
    """``loss.item()`` copies the value to a Python float, waiting for it (on a GPU: a sync)."""
    loss = (linear(x) ** 2).mean()
    return loss, loss.item()


def nnx_item(model, x):
    """A jitted call returns at once (asynchronous dispatch); ``float(loss)`` (``loss.item()``) waits
    and converts; ``loss.block_until_ready()`` (``jax.block_until_ready(tree)``) waits and returns
    the same array: put it before reading a timer."""
    loss = nnx.jit(lambda model, x: (model(x) ** 2).mean())(model, x)
    ready = loss.block_until_ready()
    return loss, ready, float(loss)


# --- torch.save / torch.load vs Orbax --------------------------------------------------------


def torch_checkpoint(net, new_net, path):
    """``torch.save`` pickles the state_dict; ``torch.load(weights_only=True)`` unpickles tensors only."""
    torch.save(net.state_dict(), path)
    new_net.load_state_dict(torch.load(path, weights_only=True))
    return new_net


def nnx_checkpoint(model, net_class, path):
    """Orbax saves ``nnx.state(model)``; a restore is given the target's structure (from
    ``nnx.eval_shape``: no memory) and ``nnx.update`` loads it into the new model."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, nnx.state(model))
        checkpointer.wait_until_finished()
        new_model = nnx.eval_shape(lambda: net_class(rngs=nnx.Rngs(0)))
        nnx.update(new_model, checkpointer.restore(path, nnx.state(new_model)))
    return new_model


def linen_checkpoint(net, variables, x, path):
    """The same for a ``variables`` dict; its structure comes from ``jax.eval_shape(net.init, ...)``."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, variables)
        checkpointer.wait_until_finished()
        return checkpointer.restore(path, jax.eval_shape(net.init, jax.random.key(0), x))


def keras_checkpoint(model, new_model, path):
    """``save_weights`` / ``load_weights`` (an ``.weights.h5`` file; ``model.save`` for a ``.keras`` archive)."""
    model.save_weights(path)
    new_model.load_weights(path)
    return new_model


# --- donation: jax.jit / nnx.jit donate_argnames ---------------------------------------------


def torch_donated_step(linear, x, target, lr=0.01):
    """torch updates in place: the new weights overwrite the old tensors' memory."""
    tnn.MSELoss()(linear(x), target).backward()
    with torch.no_grad():
        for p in linear.parameters():
            p.sub_(lr * p.grad)


def nnx_donated_step(model, x, target, lr=0.01, donate=("model", "optimizer")):
    """``donate_argnames``: XLA may write the result into the donated buffers, and the caller's
    old arrays are deleted; ``model`` and ``optimizer`` hold the new ones after the call."""
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)

    @nnx.jit(donate_argnames=donate)
    def step(model, optimizer, x, target):
        grads = nnx.grad(lambda model: mse_loss(model(x), target))(model)
        optimizer.update(model, grads)

    step(model, optimizer, x, target)


def linen_donated_step(net, variables, x, target, lr=0.01, donate="variables"):
    """``jax.jit(..., donate_argnames='variables')``: the donated dict's arrays are deleted; use the returned one."""
    @jax.jit(donate_argnames=donate)
    def step(variables, x, target):
        grads = jax.grad(lambda variables: mse_loss(net.apply(variables, x), target))(variables)
        return jax.tree.map(lambda p, g: p - lr * g, variables, grads)

    return step(variables, x, target)


# --- in-place ops vs .at[].set ---------------------------------------------------------------


def torch_in_place(t):
    """Tensors are mutable: ``t[0] = 1`` and ``t.add_(1)`` change ``t`` and every alias of it."""
    alias = t
    t[0] = 1
    t.add_(1)
    return alias


def nnx_in_place(x):
    """JAX arrays are immutable: ``x.at[0].set(1)`` returns a new array and ``x`` is unchanged; an
    ``nnx.Variable`` is the mutable box: ``v[0] = 1`` puts a new array in it."""
    y = x.at[0].set(1) + 1
    v = nnx.Variable(x)
    v[0] = 1
    v[...] += 1
    return x, y, v[...]


# --- int64 vs int32: the default integer --------------------------------------------------------


def torch_int_default(logits):
    """Python ints become int64 (``torch.long``), the dtype ``CrossEntropyLoss`` wants for labels."""
    labels = torch.tensor([3, 1])
    return labels.dtype, tnn.CrossEntropyLoss()(logits, labels)


def nnx_int_default(logits):
    """JAX's default integer is int32 unless x64 is on (``with jax.enable_x64(True):``); optax takes
    int32 labels; an int64 numpy array becomes int32 without a word."""
    labels = jnp.array([3, 1])
    return labels.dtype, optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def keras_int_default(logits):
    """Keras on JAX follows JAX: int32 without x64."""
    labels = keras.ops.convert_to_tensor([3, 1])
    return labels.dtype, keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)


# --- print(net) and the parameter count ------------------------------------------------------


def torch_summary(net):
    """``print(net)`` lists the submodules; the count sums ``numel()`` over ``parameters()`` (no buffers)."""
    return str(net), sum(p.numel() for p in net.parameters())


def nnx_summary(model):
    """``print(model)`` (``nnx.display(model)`` in a notebook) shows every Variable with counts;
    the count is over ``nnx.Param`` only."""
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return str(model), count


def linen_summary(net, variables, x):
    """``net.tabulate(key, x)`` makes the table; the count walks ``variables['params']``."""
    return net.tabulate(jax.random.key(0), x), sum(p.size for p in jax.tree.leaves(variables["params"]))


def keras_summary(model):
    """``model.summary()`` prints a table; ``count_params()`` counts every weight, trainable or not."""
    lines = []
    model.summary(print_fn=lambda line, line_break=True: lines.append(line))
    return "\n".join(lines), model.count_params()


# --- the dropout random stream ---------------------------------------------------------------


def torch_dropout_stream(x, seed):
    """Dropout draws from torch's global generator: each call draws anew; re-seeding repeats."""
    dropout = tnn.Dropout(0.5)
    torch.manual_seed(seed)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(seed)
    return first, second, dropout(x)


def nnx_dropout_stream(x, seed):
    """``nnx.Dropout(rngs=nnx.Rngs(dropout=seed))`` keeps its own ``dropout`` stream: each call
    advances it; a new stream from the same seed repeats."""
    dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=seed))
    first, second = dropout(x), dropout(x)
    return first, second, nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=seed))(x)


def linen_dropout_stream(x, seed):
    """Linen takes the key at every ``apply``: the same key, the same mask; split a new one per step."""
    dropout, variables = nn.Dropout(0.5, deterministic=False), {}
    key = jax.random.key(seed)
    first = dropout.apply(variables, x, rngs={"dropout": key})
    again = dropout.apply(variables, x, rngs={"dropout": key})          # the same mask
    _, step_key = jax.random.split(key)
    return first, again, dropout.apply(variables, x, rngs={"dropout": step_key})


def keras_dropout_stream(x, seed):
    """``Dropout(seed=)`` keeps a ``SeedGenerator``: each call advances it; a new layer repeats."""
    dropout = keras.layers.Dropout(0.5, seed=seed)
    first, second = dropout(x, training=True), dropout(x, training=True)
    return first, second, keras.layers.Dropout(0.5, seed=seed)(x, training=True)


# --- out.backward(v) vs jax.vjp ----------------------------------------------------------------


def torch_vjp(net, x, v):
    """``out.backward(v)``: the vector-Jacobian product vᵀJ, into ``x.grad`` and every ``p.grad``."""
    x = x.clone().requires_grad_(True)
    net(x).backward(v)
    return x.grad, {name: p.grad for name, p in net.named_parameters()}


def nnx_vjp(model, x, v):
    """``jax.vjp`` returns the output and a function of v; for the parameters, ``nnx.grad`` of
    ``jnp.vdot(model(x), v)`` is the same product."""
    _, vjp_fn = jax.vjp(lambda x: model(x), x)
    (x_bar,) = vjp_fn(v)
    return x_bar, nnx.grad(lambda model: jnp.vdot(model(x), v))(model)


def linen_vjp(net, variables, x, v):
    """One ``jax.vjp`` over both arguments of ``net.apply``: the variables' and the input's products."""
    _, vjp_fn = jax.vjp(net.apply, variables, x)
    variables_bar, x_bar = vjp_fn(v)
    return x_bar, variables_bar
