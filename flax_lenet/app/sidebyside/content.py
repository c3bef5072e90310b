"""What the side-by-side tutorial shows, in the seed's order: prose here, code pulled from the modules.

A section names Python objects, never code text; ``render`` reads their source at generation time.
"""

from dataclasses import dataclass

from flax_lenet import checks, functional, graph, hooks, linen, model, train
from flax_lenet.app.sidebyside import examples
from torch_reference import model as torch_model
from torch_reference import train as torch_train


def _text(paragraph: str) -> str:
    """A triple-quoted paragraph as one line of prose."""
    return " ".join(paragraph.split())


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    seed: str                          # the seed's heading for this step
    prose: str
    torch: tuple                       # objects whose source is the PyTorch column
    flax: dict                         # flavour -> objects: 'NNX' first, then 'Linen', 'functional'
    notes: tuple = ()
    numbers: str = ""                  # which 'flax-lenet compare' quantities belong here
    tests: tuple = ()                  # 'tests/<file>.py::<name>' that prove the section's claims
    extra: str = ""                    # a generated exhibit: 'ops' table or 'graph'


SECTIONS = (
    Section(
        "define", "Define the network", "定义网络",
        "Layers are made in the constructor and used in the call. torch's Net and the NNX Net read "
        "line for line; Linen declares the layers inline in @nn.compact; the functional flavour is "
        "torch.nn.functional's analogue: the weights are an argument.",
        torch=(torch_model.Net,),
        flax={"NNX": (model.Net,), "Linen": (linen.Net,),
              "functional": (functional.conv2d, functional.max_pool2d, functional.linear, functional.forward)},
        notes=("Input is NHWC (N, 32, 32, 1) in Flax, NCHW (N, 1, 32, 32) in torch.",
               "Flax pads convolutions 'SAME' by default, torch not at all: padding='VALID'.",
               "Flax's max_pool steps by 1 unless told; torch's stride is the window: strides=(2, 2).",
               "The flatten before fc1 is H*W*C in Flax, C*H*W in torch: flax_lenet.convert permutes "
               "fc1's weight once, so the same weights give the same outputs.",
               "torch's kernel [O, I, kH, kW] is Flax's [kH, kW, I, O]; a linear weight [out, in] is [in, out].",
               "Flax's default initialisers (lecun-normal kernels, zero biases) are not torch's "
               "(U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases): "
               "flax_lenet.initializers.torch_init(model, rngs) redraws a built model as torch would."),
        numbers="network",
        tests=("tests/test_hooks.py::test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture",
               "tests/test_init.py::test_torch_init_draws_every_layer_like_torch",
               "tests/test_graph.py::test_jaxpr_of_the_loss_has_the_nets_layers"),
    ),
    Section(
        "call", "Module.__call__: forward, apply, call, and hooks", "nn.Module 的 __call__",
        _text("""
            net(x) runs torch's Module.__call__: forward-pre-hooks, forward, forward hooks, and
            backward hooks wired onto grad_fn (Keras: Model.__call__ runs call). An NNX module's
            __call__ is the forward itself; Linen's apply binds the variables and calls __call__.
            Flax has no hook registry: Linen intercepts method calls with nn.intercept_methods,
            and an NNX layer's class can be swapped for a hooked subclass. The hooks below take
            torch's signatures, so one function runs in both frameworks."""),
        torch=(hooks.torch_hooks, hooks.torch_output_grads),
        flax={"NNX": (hooks.nnx_hooks, hooks.nnx_output_grads),
              "Linen": (hooks.linen_hooks, hooks.perturb_output, hooks.linen_output_grads),
              "functional": (hooks._run_hooked,)},
        notes=("net.forward(x) skips the Net's own hooks but not its layers' (forward calls self.conv1(x)); "
               "net.conv1.forward(x) runs none.",
               "Linen interceptors run while a function is traced: a jax.jit function traced before the "
               "`with nn.intercept_methods(...)` block replays its cached trace and skips them.",
               "NNX hooks run under model(x) and nnx.jit (the hooked class is part of the graph); "
               "nnx.Conv.__call__(layer, x) is the unhooked call, as torch's layer.forward(x).",
               "The gradient w.r.t. a layer's output (torch's grad_output) is the gradient w.r.t. a "
               "zero perturbation added to it: Module.perturb."),
        tests=("tests/test_hooks.py::test_forward_pre_hook_replacing_input_equals_interceptor_changing_args",
               "tests/test_hooks.py::test_forward_hook_replacing_output_equals_interceptor_post_call",
               "tests/test_hooks.py::test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_linen_perturbation",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_nnx_perturbation",
               "tests/test_hooks.py::test_torch_forward_called_directly_skips_that_modules_hooks",
               "tests/test_hooks.py::test_linen_apply_runs_interceptors_but_a_cached_jit_trace_does_not",
               "tests/test_hooks.py::test_nnx_hooks_run_under_call_and_nnx_jit_but_not_the_base_class_call"),
    ),
    Section(
        "layers", "nn.Xxx and nn.functional.xxx", "nn.Xxx 与 nn.functional.xxx",
        "nn.Conv2d is a Module that holds its weight and bias and calls F.conv2d with them in forward. "
        "Flax has the same split: nnx.Conv / linen.Conv hold a kernel, jax.lax.conv_general_dilated "
        "takes it as an argument.",
        torch=(examples.torch_layer_two_ways,),
        flax={"NNX": (examples.flax_layer_two_ways,),
              "Linen": (linen.Net,),
              "functional": (functional.conv2d, functional.max_pool2d, functional.linear)},
        notes=("Every row of the table is checked on the same inputs, with the tempting wrong variant "
               "(Flax's default padding, default pool stride, W instead of W.T, optax.l2_loss) shown to fail.",),
        tests=("tests/test_functional_mapping.py::test_conv_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_max_pool_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_relu_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_linear_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_mse_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_flax_layer_two_ways_agree"),
        extra="ops",
    ),
    Section(
        "inputs", "Process inputs: mini-batches", "通过网络处理输入",
        "torch's layers take one unbatched (C, H, W) image as well as a mini-batch, and Flax's take "
        "(H, W, C); but the Net's flatten then reads the image's height as the batch, and fc1 fails, "
        "in both frameworks. Add the batch dimension: input.unsqueeze(0) in torch, x[None] in JAX. "
        "The model files stay plain; the project's entry points (train_step, the parity harness, the "
        "flax-lenet commands) check the batch first and say what is wrong in one line.",
        torch=(examples.torch_single_image,),
        flax={"NNX": (examples.flax_single_image,), "Linen": (checks.check_images,),
              "functional": (checks.check_images,)},
        notes=("torch's Net on a single (1, 32, 32) image fails at fc1: 'mat1 and mat2 shapes cannot be "
               "multiplied (16x36 and 576x120)'; the NNX Net fails at fc1 too: (96,) against (576,).",
               "linen.Net().init on one image raises nothing and builds fc1 as (96, 120): Dense infers "
               "its input size.",
               "jax.vmap of a function that calls the Net on img[None] gives the batch's logits."),
        numbers="inputs",
        tests=("tests/test_minibatch.py::test_unsqueeze0_equals_x_none_in_every_flavour",
               "tests/test_minibatch.py::test_each_flavour_fails_on_a_single_image_as_torch_does",
               "tests/test_minibatch.py::test_torch_net_fails_on_a_single_image_at_fc1",
               "tests/test_minibatch.py::test_linen_init_on_a_single_image_silently_builds_a_wrong_fc1",
               "tests/test_minibatch.py::test_every_entry_point_refuses_a_wrong_batch_with_one_line",
               "tests/test_minibatch.py::test_vmap_over_single_images_equals_the_batch"),
    ),
    Section(
        "loss", "Compute the loss", "计算损失",
        "nn.MSELoss() averages the squared error over all N*10 elements; so does jnp.mean. "
        "In JAX the loss is a function of the model (or of the parameters), because the gradient is "
        "taken of a function, not read off a tensor.",
        torch=(examples.torch_loss,),
        flax={"NNX": (train.loss_fn, functional.mse_loss), "Linen": (functional.mse_loss,),
              "functional": (functional.loss_fn, functional.mse_loss)},
        notes=("optax.l2_loss is half the squared error: its gradients are half torch's.",),
        numbers="loss",
        tests=("tests/test_functional_mapping.py::test_mse_row_all_calls_agree",),
    ),
    Section(
        "graph", "Follow loss.grad_fn: the graph", "计算图",
        "Following loss.grad_fn backwards through next_functions gives torch's graph of the forward "
        "pass. JAX records nothing on the arrays: jax.make_jaxpr(loss_fn) traces the function into "
        "primitives. Both reduce to the same layers, in the same order.",
        torch=(graph.torch_graph,),
        flax={"NNX": (graph.jax_graph,), "Linen": (graph.jax_graph,), "functional": (graph.jax_graph,)},
        notes=("torch's parameter branches (AccumulateGrad, TBackward0 for W.T) hang off the main chain; "
               "in the jaxpr the bias's broadcast_in_dim is off the input's path.",),
        tests=("tests/test_graph.py::test_grad_fn_chain_and_jaxpr_correspond_layer_by_layer",
               "tests/test_graph.py::test_graph_comparison_fails_for_a_different_network"),
        extra="graph",
    ),
    Section(
        "backprop", "Backprop", "将梯度传播回网络参数",
        "loss.backward() accumulates into each parameter's .grad, so the tutorial zeroes the buffers "
        "first. jax.grad / nnx.grad return fresh gradients as a tree shaped like the parameters; "
        "there is nothing to zero. A skipped zero_grad() is a running sum, which in JAX is an explicit "
        "sum. 'PyTorch averages the gradient over the batch' comes from MSELoss's mean, not from backward.",
        torch=(examples.torch_backprop, examples.torch_accumulate),
        flax={"NNX": (examples.flax_backprop, examples.flax_accumulate),
              "Linen": (examples.functional_backprop,),
              "functional": (examples.functional_backprop,)},
        notes=("Gradients are compared in torch's layout, after flax_lenet.convert.flax_to_torch.",),
        numbers="backprop",
        tests=("tests/test_functional_mapping.py::test_torch_backprop_equals_nnx_grad_and_jax_grad",
               "tests/test_functional_mapping.py::test_skipped_zero_grad_accumulates_the_sum_of_fresh_gradients",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_nnx_perturbation"),
    ),
    Section(
        "update", "Update the weights", "使用简单的更新规则来更新网络的权重",
        "The tutorial's rule weights = weights - learning_rate * gradient runs in place on .data in "
        "torch and as jax.tree.map over the parameter tree in JAX. With torch.optim: "
        "optimizer.zero_grad(); loss.backward(); optimizer.step() is one nnx.value_and_grad and "
        "optimizer.update(model, grads).",
        torch=(torch_train.manual_sgd_update, torch_train.sgd_step),
        flax={"NNX": (train.sgd_update, train.train_step), "Linen": (train.sgd_update,),
              "functional": (train.sgd_update,)},
        notes=("optax.sgd(lr) is the update rule of optim.SGD(lr) (no momentum, no dampening); in "
               "float32 the two round differently (torch adds -lr*g in one step, optax rounds lr*g "
               "first), within the float32 tier.",
               "On CPU, train_step computes the Net's forward block-wise, one matrix product per "
               "conv -> relu -> max-pool block (flax_lenet.fast): the same function, about twice "
               "as fast there. A hooked, subclassed or otherwise changed model runs model(x).",),
        numbers="update",
        tests=("tests/test_functional_mapping.py::test_data_sub_equals_tree_map_update",
               "tests/test_functional_mapping.py::test_optimizer_step_equals_nnx_optimizer_update",
               "tests/test_fast.py::test_fast_train_step_equals_the_layered_step"),
    ),
)

#: Which 'flax-lenet compare' rows each section's figures come from (prefix match on 'quantity').
NUMBERS = {
    "network": ("params round trip",),
    "inputs": ("logits",),
    "loss": ("loss",),
    "backprop": ("grad ",),
    "update": ("params after w - lr*g", "params after SGD step"),
}
