"""The rows a porter still misses: one small function per framework, run by tests/test_porting_rows.py.

Each row is PyTorch, then NNX, Linen and Keras (JAX backend, ``keras_reference``); the page shows
these functions' source. Weights and data are shared through numpy, never through seeds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    """``model.train()`` / ``model.eval()`` set ``deterministic`` on every ``nnx.Dropout``."""
    model = nnx.Sequential(linear, nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0)))
    model.train()
    trained = model(x)
    model.eval()
    return trained, model(x)


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
