# %% [markdown]
# # The PyTorch neural-network tutorial, in JAX and Flax
#
# PyTorch's "Neural Networks" tutorial, step by step: each step in PyTorch, then in
# [Flax NNX](https://flax.readthedocs.io/en/latest/nnx_basics.html). The code is plain JAX,
# Flax and optax, ready to copy. The cells that compare the two frameworks check that they agree
# (`assert_close`, below), and the test suite runs this page top to bottom as a notebook
# (`tutorial.ipynb`). The weights and the data cross from torch to JAX through numpy: the two
# frameworks draw different numbers from the same seed. To run it in Colab, upload
# `tutorial.ipynb` (File → Upload notebook); its first code cell installs what is missing.
#
# **Which tutorial.** The notes this project grew from use 3×3 kernels, so `fc1` takes
# `16 * 6 * 6` inputs, flattened by `x.view(-1, self.num_flat_features(x))`. Today's tutorial
# uses 5×5 kernels (`16 * 5 * 5`) and `torch.flatten(x, 1)`. Both flatten every dimension but
# the batch. This page uses 3×3; `flax_lenet.Net(kernel_size=5, rngs=...)` is today's version.
#
# ## JAX in one screen, for a PyTorch user
#
# - **Pure functions, immutable arrays.** A JAX array is never changed in place: `x.at[0].set(1.0)`
#   returns a new array. A gradient is a function of a function (`jax.grad(f)`), not a `.grad`
#   buffer filled by `backward()`. An NNX module is an ordinary mutable Python object whose
#   `nnx.Param`s hold arrays. `nnx.grad` and `nnx.jit` turn it into pure functions and back.
# - **Tracing.** `jax.jit` / `nnx.jit` run your Python function once per new input shape and
#   dtype, with abstract values, and compile what it records. A `print` inside runs only during
#   that trace, and a new shape traces again.
# - **Explicit random keys.** No global generator: `jax.random.key(0)`, or `nnx.Rngs(0)` for a
#   module. The same key gives the same numbers, so split a key to get new ones.
# - **Asynchronous dispatch.** A JAX call returns before its result is computed. `float(x)`,
#   `np.asarray(x)` and `jax.block_until_ready(x)` wait for it. Time JAX code with the last one.
# - **Defaults.** New arrays live on the default device: the first GPU if there is one, else
#   the CPU (torch: the CPU). Floats are float32 in both. Integers are int32 in JAX (torch:
#   int64). float64 needs `jax.config.update("jax_enable_x64", True)`; without it JAX gives
#   float32.
# - **Layout.** Flax images are NHWC `(N, H, W, C)`; torch's are NCHW `(N, C, H, W)`.

# %% [install]
# %pip install -q flax optax torch

# %%
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import jax
import jax.numpy as jnp
import optax
from flax import nnx

torch.manual_seed(0)            # the same torch numbers on every run of this page

# %% [markdown]
# The cells that compare the frameworks use one rule: the largest difference is within 1e-5 of
# the largest value, float32's tier. Element by element, a small value can differ more than
# that relative to itself, because the two frameworks add in different orders.

# %%
def assert_close(flax_value, torch_value):
    flax_value, torch_value = np.asarray(flax_value), np.asarray(torch_value)
    np.testing.assert_allclose(flax_value, torch_value, rtol=0, atol=1e-5 * np.abs(torch_value).max())


# %% [markdown]
# ## 1. Define the network
#
# Both frameworks make the layers in the constructor and use them in the call: torch's
# `forward`, NNX's `__call__`. Three defaults differ and are set by hand in Flax:
# `nnx.Conv` pads `"SAME"` unless told `padding="VALID"` (torch pads nothing), `nnx.max_pool`
# steps by 1 unless given `strides` (torch steps by the window), and the input is NHWC.

# %% PyTorch
class Net(nn.Module):

    def __init__(self):
        super().__init__()
        # 1 input image channel, 6 output channels, 3x3 square convolution kernel
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        # an affine operation: y = Wx + b
        self.fc1 = nn.Linear(16 * 6 * 6, 120)  # 6*6 from image dimension
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        # Max pooling over a (2, 2) window
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        # If the size is a square you can only specify a single number
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]  # all dimensions except the batch dimension
        num_features = 1
        for s in size:
            num_features *= s
        return num_features


net = Net()
print(net)

# %% Flax NNX
class FlaxNet(nnx.Module):

    def __init__(self, *, rngs: nnx.Rngs):
        # 1 input image channel, 6 output channels, 3x3 convolution, no padding (as torch)
        self.conv1 = nnx.Conv(1, 6, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (3, 3), padding="VALID", rngs=rngs)
        # an affine operation: y = xW + b (the kernel is torch's weight transposed)
        self.fc1 = nnx.Linear(16 * 6 * 6, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x):                                   # x: (N, 32, 32, 1)
        # Max pooling over a (2, 2) window, stride 2 (Flax's default stride is 1)
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)                        # (N, 576), in H*W*C order
        x = nnx.relu(self.fc1(x))
        x = nnx.relu(self.fc2(x))
        x = self.fc3(x)
        return x


model = FlaxNet(rngs=nnx.Rngs(0))
print(model)                                                 # nnx.display(model) in a notebook

# %% [markdown]
# The initial weights differ: Flax draws kernels from a LeCun normal and sets biases to zero;
# torch draws both from U(−1/√fan_in, 1/√fan_in). They stop mattering below, where torch's
# weights are copied into the Flax model.
#
# ## 2. The learnable parameters
#
# `net.parameters()` walks the module. In Flax the parameters are a tree, `nnx.state(model,
# nnx.Param)`, and `jax.tree.leaves` lists its arrays. A kernel's layout differs: torch's conv
# weight is `[out, in, kH, kW]`, Flax's kernel `[kH, kW, in, out]`; a linear weight `[out, in]`
# is a kernel `[in, out]`.

# %% PyTorch
params = list(net.parameters())
print(len(params))
print(params[0].size())  # conv1's .weight

# %% Flax NNX
flax_params = nnx.state(model, nnx.Param)
print(len(jax.tree.leaves(flax_params)))
print(flax_params["conv1"]["kernel"].shape)                 # (3, 3, 1, 6)

n_torch = sum(p.numel() for p in net.parameters())
n_flax = sum(p.size for p in jax.tree.leaves(flax_params))
assert n_torch == n_flax, (n_torch, n_flax)

# %% [markdown]
# ## 3. A random input
#
# The seed notes say that `torch.nn` takes only mini-batches. In PyTorch 2, `nn.Conv2d` and
# `F.max_pool2d` also take one unbatched `(C, H, W)` image. But this `Net`'s flatten keeps the
# first dimension as the batch, so one image's 16 channels would become 16 rows. Add the batch
# dimension: `input.unsqueeze(0)` in torch, `x[None]` in JAX.

# %% PyTorch
input = torch.randn(1, 1, 32, 32)
out = net(input)
print(out)

assert net.conv1(torch.randn(1, 32, 32)).shape == (6, 30, 30)   # one unbatched image

# %% Flax NNX
x = jax.random.normal(jax.random.key(1), (1, 32, 32, 1))
print(model(x))

# %% [markdown]
# To compare the two, copy torch's weights into the Flax model, and torch's input too, through
# numpy. The kernels are transposed. `fc1`'s rows are also reordered, because torch flattens
# `(16, 6, 6)` feature maps channel first and Flax flattens `(6, 6, 16)` channel last.

# %% Flax NNX
def load_torch_weights(model, net):
    """Copy a torch Net's weights into a FlaxNet, in Flax's layouts."""
    w = {name: t.detach().numpy() for name, t in net.state_dict().items()}
    conv = lambda k: w[k].transpose(2, 3, 1, 0)              # [out, in, kH, kW] -> [kH, kW, in, out]
    fc1 = w["fc1.weight"].reshape(120, 16, 6, 6).transpose(2, 3, 1, 0).reshape(576, 120)
    nnx.update(model, jax.tree.map(jnp.asarray, {
        "conv1": {"kernel": conv("conv1.weight"), "bias": w["conv1.bias"]},
        "conv2": {"kernel": conv("conv2.weight"), "bias": w["conv2.bias"]},
        "fc1": {"kernel": fc1, "bias": w["fc1.bias"]},
        "fc2": {"kernel": w["fc2.weight"].T, "bias": w["fc2.bias"]},
        "fc3": {"kernel": w["fc3.weight"].T, "bias": w["fc3.bias"]},
    }))


load_torch_weights(model, net)
x = jnp.asarray(input.numpy().transpose(0, 2, 3, 1))        # NCHW -> NHWC
assert_close(model(x), out.detach().numpy())

# %% [markdown]
# ## 4. Zero the gradients, backprop random gradients
#
# `out.backward(v)` computes the vector–Jacobian product: the gradient of `sum(out * v)`. In JAX
# you take the gradient of that function. Nothing accumulates, so there is nothing to zero.

# %% PyTorch
v = torch.randn(1, 10)
net.zero_grad()
out.backward(v)

# %% Flax NNX
grads = nnx.grad(lambda model: jnp.vdot(model(x), jnp.asarray(v.numpy())))(model)

assert_close(grads["conv1"]["bias"], net.conv1.bias.grad.numpy())
assert_close(grads["fc3"]["kernel"], net.fc3.weight.grad.numpy().T)

# %% [markdown]
# ## 5. Loss function
#
# `nn.MSELoss()` averages the squared error over all N×10 elements, and so does `jnp.mean`
# (`optax.l2_loss` is half of it). In JAX the loss is a function of the model, because the
# gradient is taken of a function.

# %% PyTorch
output = net(input)
target = torch.randn(10)  # a dummy target, for example
target = target.view(1, -1)  # make it the same shape as output
criterion = nn.MSELoss()

loss = criterion(output, target)
print(loss)

# %% Flax NNX
def loss_fn(model, x, target):
    return jnp.mean((model(x) - target) ** 2)


y = jnp.asarray(target.numpy())
print(loss_fn(model, x, y))

assert_close(loss_fn(model, x, y), loss.item())

# %% [markdown]
# Follow `loss.grad_fn` backwards and you walk the graph torch recorded during the forward
# pass. A JAX array records nothing; `jax.make_jaxpr` traces the function into its primitives
# instead (`nnx.split` gives the pure function of the weights that JAX can trace).

# %% PyTorch
print(loss.grad_fn)  # MseLossBackward0
print(loss.grad_fn.next_functions[0][0])  # AddmmBackward0: fc3
print(loss.grad_fn.next_functions[0][0].next_functions[1][0])  # ReluBackward0: fc2's relu

# %% Flax NNX
graphdef, state = nnx.split(model)
jaxpr = jax.make_jaxpr(lambda state: loss_fn(nnx.merge(graphdef, state), x, y))(state)
print([eqn.primitive.name for eqn in jaxpr.jaxpr.eqns])     # conv_general_dilated, ..., reduce_sum

# %% [markdown]
# ## 6. Backprop
#
# `loss.backward()` adds each gradient into the parameter's `.grad`, so the tutorial zeroes
# those buffers first. `nnx.value_and_grad` returns the loss and fresh gradients, as a tree
# shaped like the parameters. A skipped `zero_grad()` gives the running sum of the gradients;
# in JAX you would add the trees yourself. The notes say PyTorch averages the gradient over the
# batch: that mean is `MSELoss`'s, not `backward`'s.

# %% PyTorch
net.zero_grad()     # zeroes the gradient buffers of all parameters

print('conv1.bias.grad before backward')
print(net.conv1.bias.grad)  # None: zero_grad() sets it to None

loss.backward()

print('conv1.bias.grad after backward')
print(net.conv1.bias.grad)

# %% Flax NNX
loss_value, grads = nnx.value_and_grad(loss_fn)(model, x, y)
print(grads["conv1"]["bias"])

assert_close(grads["conv1"]["bias"], net.conv1.bias.grad.numpy())

# %% [markdown]
# ## 7. Update the weights
#
# The rule `weights = weights - learning_rate * gradient` runs in place on `.data` in torch. In
# JAX it maps over the parameter tree, and `nnx.update` puts the new arrays into the model.

# %% PyTorch
learning_rate = 0.01
for f in net.parameters():
    f.data.sub_(f.grad.data * learning_rate)

# %% Flax NNX
learning_rate = 0.01
params = nnx.state(model, nnx.Param)
nnx.update(model, jax.tree.map(lambda p, g: p - learning_rate * g, params, grads))

assert_close(model(x), net(input).detach().numpy())

# %% [markdown]
# With an optimizer, `zero_grad`, `backward` and `step` become one function: the loss and its
# gradients from `nnx.value_and_grad`, then `optimizer.update`. `@nnx.jit` compiles it on the
# first call. `optax.sgd(lr)` is the update rule of `optim.SGD(lr)`.

# %% PyTorch
# create your optimizer
optimizer = optim.SGD(net.parameters(), lr=0.01)

# in your training loop:
for step in range(3):
    optimizer.zero_grad()   # zero the gradient buffers
    output = net(input)
    loss = criterion(output, target)
    loss.backward()
    optimizer.step()    # Does the update

# %% Flax NNX
optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, target):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, target)
    optimizer.update(model, grads)          # updates the model's parameters in place
    return loss


for step in range(3):
    loss_value = train_step(model, optimizer, x, y)

assert_close(loss_value, loss.item())
assert_close(model(x), net(input).detach().numpy())

# %% [markdown]
# ## Where next
#
# - [`porting.md`](porting.md): every other PyTorch idiom beside its JAX/Flax one (hooks,
#   `train()`/`eval()`, freezing, `state_dict`, schedulers, checkpoints…), in Flax NNX, Linen
#   and Keras. Each row says how exact the match is and names the test that proves it.
# - [`port_your_model.md`](port_your_model.md): check your own model's port layer by layer with
#   `flax-lenet compare --torch … --flax …`.
# - `flax_lenet.Net`, `loss_fn` and `train_step` are this page's network and step, with
#   `kernel_size` and `param_dtype`; `flax_lenet.torch_to_flax` is `load_torch_weights` for
#   any state dict.
