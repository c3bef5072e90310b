"""What the side-by-side tutorial shows, in the seed's order: prose here, code pulled from the modules.

A section names Python objects, never code text; ``render`` reads their source at generation time.
"""

from dataclasses import dataclass

from docs.build import examples, porting
from flax_lenet import functional, linen, model, train
from flax_lenet.app import checks
from flax_lenet.porting import graph, hooks
from keras_reference import model as keras_model
from keras_reference import train as keras_train
from torch_reference import model as torch_model
from torch_reference import train as torch_train

KT = "tests/test_keras_reference.py::"
PT = "tests/test_porting_rows.py::"
FT = "tests/test_functional_mapping.py::"

#: How exact a row is, in the words the page uses (the tolerances are flax_lenet.porting.tolerances').
BITS = "same bits"
F64 = "same values within FLOAT64 (rtol 1e-12), float64"
F32 = "same values within FLOAT32_CPU (rtol 1e-5), float32"


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
    flax: dict                         # flavour -> objects: 'NNX' first, then 'Linen', 'functional', 'Keras'
    notes: tuple = ()
    numbers: str = ""                  # which 'flax-lenet compare' quantities belong here
    tests: tuple = ()                  # 'tests/<file>.py::<name>' that prove the section's claims
    extra: str = ""                    # a generated exhibit: 'ops' table or 'graph'
    exact: str = ""                    # how exact the mapping is: same bits, a named tolerance, values only


def porting_sections() -> tuple:
    """The rows a porter still misses, after the tutorial's steps: PyTorch, then NNX, Linen, Keras."""
    P = "tests/test_porting_rows.py::"

    def row(id, title, prose, name, exact, tests, notes=(), torch_name=None, linen_name=None, keras_name=None):
        get = lambda prefix, n: getattr(porting, f"{prefix}_{n}")  # noqa: E731
        return Section(id, title, "", _text(prose), torch=(get("torch", torch_name or name),),
                       flax={"NNX": (get("nnx", name),), "Linen": (get("linen", linen_name or name),),
                             "Keras": (get("keras", keras_name or name),)},
                       notes=notes, tests=tuple(P + t if "::" not in t else t for t in tests), exact=exact)

    return (
        row("train-eval", "model.train() / model.eval()", """
            torch's mode is a flag on every submodule. NNX has the same methods (they set
            deterministic and use_running_average on every layer that has them); Linen has no
            mode: deterministic= is an argument of the call, and dropout takes an rng; Keras passes
            training= through Model.__call__.""",
            "train_eval", "eval: same bits as the layer alone; train: the kept values doubled exactly "
            "(1/(1-p) = 2), which ones are dropped differs (the random streams differ)",
            ("test_train_and_eval_switch_dropout_in_every_framework",
             "test_check_dropout_fails_when_eval_still_drops")),
        row("no-grad", "torch.no_grad() / .detach()", """
            torch records a graph on every tensor unless told not to. JAX records nothing: a gradient
            exists only where jax.grad (nnx.grad) is asked for it, so there is no no_grad;
            jax.lax.stop_gradient (keras.ops.stop_gradient) is .detach(): a constant for the
            derivative, the same value.""",
            "stop_gradient", F32, ("test_detach_and_stop_gradient_give_the_same_gradients",),
            torch_name="detach"),
        row("freeze", "requires_grad=False: freezing a layer", """
            torch skips parameters without requires_grad. NNX picks what is differentiated and
            updated with a filter (nnx.DiffState for nnx.grad, wrt= for nnx.Optimizer); Linen's
            tree is labelled in optax (optax.multi_transform with optax.set_to_zero for the frozen
            part; optax.masked alone would pass the frozen part's raw gradients through as
            updates); Keras moves a layer with trainable = False into non_trainable_variables.""",
            "freeze", f"the frozen layer: {BITS} (unchanged); the rest: {F32}",
            ("test_a_frozen_layer_keeps_its_bits_and_the_rest_steps_as_torch",
             "test_optax_masked_alone_does_not_freeze_it_passes_the_raw_gradient_through")),
        row("state-dict", "state_dict() / load_state_dict()", """
            A torch state_dict is a flat name -> tensor dict. NNX reads a nested dict with
            nnx.to_pure_dict(nnx.state(model, nnx.Param)) and loads one with nnx.update; a Linen
            module holds no weights: its variables dict is the state; Keras has get_weights /
            set_weights (lists) and save_weights / load_weights (files). Layouts differ:
            flax_lenet.convert permutes, Keras takes Flax's layout unchanged.""",
            "state_dict", f"{BITS}: a load and a read give back the same arrays",
            ("test_state_dict_round_trips_are_bit_identical_in_every_framework",)),
        row("parameters", "parameters() / named_parameters()", """
            named_parameters() walks the module's attributes. In JAX the parameters are a tree:
            jax.tree_util.tree_leaves_with_path gives (path, array) pairs of
            nnx.state(model, nnx.Param) or of Linen's variables['params']; Keras lists
            trainable_variables, each with a path.""",
            "named_parameters", "the same ten tensors, the same names (conv1.weight is conv1.kernel), "
            "shapes in each framework's layout",
            ("test_named_parameters_are_the_same_ten_tensors_in_every_framework",)),
        row("device", ".to(device) / .cuda()", """
            torch moves modules and tensors explicitly. JAX puts every new array on the default
            device (the first GPU when there is one); jax.device_put moves a tree, or shards it
            over devices (flax_lenet.parallel); the computation runs where its inputs are. Keras
            scopes placement with keras.device.""",
            "to_device", f"{BITS}: a move is a copy",
            ("test_moving_to_a_device_keeps_the_bits",)),
        row("seeds", "torch.manual_seed", """
            torch draws from one global generator, in call order. NNX draws from nnx.Rngs(seed)
            passed to the constructor; Linen's init takes an explicit jax.random.key; Keras seeds
            its global generator with keras.utils.set_random_seed. The same seed gives the same
            weights within a framework, never across: share weights through numpy.""",
            "seeded_net", f"{BITS} within a framework; across frameworks the weights differ",
            ("test_a_seed_repeats_the_weights_within_a_framework_but_not_across",),
            linen_name="seeded_variables"),
        row("double", ".double(): float64", """
            net.double() casts every parameter. JAX makes float64 only after
            jax.config.update('jax_enable_x64', True); without it a float64 request silently gives
            float32 (a UserWarning, no error), in NNX, Linen and Keras alike, and a Keras
            variable's dtype still says float64.""",
            "double", "dtypes: float64 in torch; float32 in JAX without x64, float64 with it",
            ("test_a_float64_request_without_x64_silently_gives_float32",
             "test_a_float64_request_with_x64_gives_float64")),
        row("jit", "Eager, torch.compile and jax.jit / nnx.jit", """
            torch runs eagerly; torch.compile captures a graph per input shape (dynamic=False) and
            recompiles for a new one. jax.jit and nnx.jit trace the Python function once per
            shape, dtype and (nnx.jit) graph structure, a new module class included: a side effect
            in the body runs at trace time only. Keras runs model(x) eagerly and jits inside fit
            and predict; by hand, jax.jit of stateless_call.""",
            "jitted", f"traces: one per new shape; values: {F32} (torch.compile with a Python backend: "
            f"{BITS} as eager)",
            ("test_compile_and_jit_retrace_on_a_new_shape_only",
             "test_nnx_jit_retraces_for_a_new_module_class"),
            torch_name="compiled"),
        row("direct-call", "net.forward(x), model.call(x): the call that skips __call__", """
            net.forward(x) skips the Net's own hooks. In NNX the hooked layer itself
            (hooked.layer(x)) skips the hooks; in Linen, a jax.jit function first traced inside
            nn.intercept_methods keeps the interceptor after the block (and one traced before it
            never sees it); Keras' model.call(x) skips Model.__call__: no build, and no training
            handed to the layers.""",
            "call_vs_base_call", f"{BITS}: a doubling hook doubles exactly",
            ("test_the_direct_call_skips_what_the_module_call_adds",
             "test_a_linen_function_first_traced_inside_intercept_methods_keeps_the_interceptor",
             "tests/test_hooks.py::test_linen_apply_runs_interceptors_but_a_cached_jit_trace_does_not",
             KT + "test_keras_direct_call_skips_build_and_the_training_handling"),
            torch_name="call_vs_forward", linen_name="jit_traced_inside_interceptor",
            keras_name="call_vs_call"),
    )


SECTIONS = (
    Section(
        "define", "Define the network", "定义网络",
        "Layers are made in the constructor and used in the call. torch's Net and the NNX Net read "
        "line for line; Linen declares the layers inline in @nn.compact; the functional flavour is "
        "torch.nn.functional's analogue: the weights are an argument.",
        torch=(torch_model.Net,),
        flax={"NNX": (model.Net,), "Linen": (linen.Net,),
              "functional": (functional.conv2d, functional.max_pool2d, functional.linear, functional.forward),
              "Keras": (keras_model.Net,)},
        exact=f"weights: {BITS} after flax_lenet.convert (a permutation); outputs: {F64}; {F32}",
        notes=("Input is NHWC (N, 32, 32, 1) in Flax, NCHW (N, 1, 32, 32) in torch.",
               "Flax pads convolutions 'SAME' by default, torch not at all: padding='VALID'.",
               "Flax's max_pool steps by 1 unless told; torch's stride is the window: strides=(2, 2).",
               "The flatten before fc1 is H*W*C in Flax, C*H*W in torch: flax_lenet.convert permutes "
               "fc1's weight once, so the same weights give the same outputs.",
               "torch's kernel [O, I, kH, kW] is Flax's [kH, kW, I, O]; a linear weight [out, in] is [in, out].",
               "Keras (JAX backend) is NHWC like Flax, its Flatten is H*W*C and its MaxPool2D's stride is "
               "the window: a Flax parameter tree loads unchanged (keras_reference.from_flax_params).",
               "Flax's default initialisers (lecun-normal kernels, zero biases) are not torch's "
               "(U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases): "
               "flax_lenet.initializers.torch_init(model, rngs) redraws a built model as torch would."),
        numbers="network",
        tests=("tests/test_hooks.py::test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture",
               "tests/test_init.py::test_torch_init_draws_every_layer_like_torch",
               "tests/test_graph.py::test_jaxpr_of_the_loss_has_the_nets_layers",
               KT + "test_keras_net_matches_torch_after_a_weight_transfer",
               KT + "test_keras_parity_fails_with_a_wrong_flatten_order_or_a_reshaped_kernel"),
    ),
    Section(
        "call", "Module.__call__: forward, apply, call, and hooks", "nn.Module 的 __call__",
        _text("""
            net(x) runs torch's Module.__call__: forward-pre-hooks, forward, forward hooks, and
            backward hooks wired onto grad_fn (Keras: Model.__call__ runs call). An NNX module's
            __call__ is the forward itself; Linen's apply binds the variables and calls __call__.
            Flax has no hook registry: Linen intercepts method calls with nn.intercept_methods,
            and an NNX layer can be replaced by a module that calls it between hooks (model
            surgery: assigning a submodule). The hooks below take
            torch's signatures, so one function runs in both frameworks."""),
        torch=(hooks.torch_hooks, hooks.torch_output_grads),
        flax={"NNX": (hooks.nnx_hooks, hooks.nnx_output_grads),
              "Linen": (hooks.linen_hooks, hooks.perturb_output, hooks.linen_output_grads),
              "functional": (hooks._run_hooked,),
              "Keras": (porting.keras_call_vs_call,)},
        exact=f"{F64} against torch; a hook's effect within one framework: {BITS}",
        notes=("net.forward(x) skips the Net's own hooks but not its layers' (forward calls self.conv1(x)); "
               "net.conv1.forward(x) runs none.",
               "Linen interceptors run while a function is traced: a jax.jit function traced before the "
               "`with nn.intercept_methods(...)` block replays its cached trace and skips them; conversely, a "
               "function first traced inside the block keeps the interceptor's effect after the block exits.",
               "Keras layers have no hook API; model.call(x) skips Model.__call__: no build, no training "
               "handed to the layers (Keras' twin of net.forward(x)).",
               "NNX hooks run under model(x) and nnx.jit (the hooked module is part of the graph); "
               "hooked.layer(x) is the unhooked call, as torch's layer.forward(x).",
               "The gradient w.r.t. a layer's output (torch's grad_output) is the gradient w.r.t. a "
               "zero perturbation added to it: Module.perturb."),
        tests=("tests/test_hooks.py::test_forward_pre_hook_replacing_input_equals_interceptor_changing_args",
               "tests/test_hooks.py::test_forward_hook_replacing_output_equals_interceptor_post_call",
               "tests/test_hooks.py::test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_linen_perturbation",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_nnx_perturbation",
               "tests/test_hooks.py::test_torch_forward_called_directly_skips_that_modules_hooks",
               "tests/test_hooks.py::test_linen_apply_runs_interceptors_but_a_cached_jit_trace_does_not",
               "tests/test_hooks.py::test_nnx_hooks_run_under_call_and_nnx_jit_but_not_the_base_class_call",
               PT + "test_a_linen_function_first_traced_inside_intercept_methods_keeps_the_interceptor",
               KT + "test_keras_model_call_builds_on_first_call_and_passes_training_to_call_and_its_layers",
               KT + "test_keras_direct_call_skips_build_and_the_training_handling"),
    ),
    Section(
        "layers", "nn.Xxx and nn.functional.xxx", "nn.Xxx 与 nn.functional.xxx",
        "nn.Conv2d is a Module that holds its weight and bias and calls F.conv2d with them in forward. "
        "Flax has the same split: nnx.Conv / linen.Conv hold a kernel, jax.lax.conv_general_dilated "
        "takes it as an argument.",
        torch=(examples.torch_layer_two_ways,),
        flax={"NNX": (examples.flax_layer_two_ways,),
              "Linen": (examples.linen_layer_two_ways,),
              "functional": (functional.conv2d, functional.max_pool2d, functional.linear),
              "Keras": (examples.keras_layer_two_ways,)},
        exact=f"{F64}; each row of the table says its own",
        notes=("Every row of the table is checked on the same inputs, with the tempting wrong variant "
               "(Flax's default padding, default pool stride, W instead of W.T, optax.l2_loss) shown to fail.",),
        tests=("tests/test_functional_mapping.py::test_conv_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_max_pool_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_relu_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_linear_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_mse_row_all_calls_agree",
               "tests/test_functional_mapping.py::test_flax_layer_two_ways_agree",
               FT + "test_linen_and_keras_layers_two_ways_agree"),
        extra="ops",
    ),
    Section(
        "inputs", "Process inputs: mini-batches", "通过网络处理输入",
        "torch's layers take one unbatched (C, H, W) image as well as a mini-batch, and Flax's take "
        "(H, W, C); but the Net's flatten then reads the image's height as the batch, and fc1 fails, "
        "in both frameworks. Add the batch dimension: input.unsqueeze(0) in torch, x[None] in JAX. "
        "The model files and train_step stay plain, as Flax's own examples; the flax-lenet commands "
        "check the batch first (flax_lenet.app.checks.check_images) and say what is wrong in one line.",
        torch=(examples.torch_single_image,),
        flax={"NNX": (examples.flax_single_image,), "Linen": (examples.linen_single_image,),
              "functional": (checks.check_images,), "Keras": (examples.keras_single_image,)},
        exact=F64,
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
               "tests/test_minibatch.py::test_vmap_over_single_images_equals_the_batch",
               FT + "test_linen_and_keras_single_image_equal_torch_unsqueeze"),
    ),
    Section(
        "loss", "Compute the loss", "计算损失",
        "nn.MSELoss() averages the squared error over all N*10 elements; so does jnp.mean. "
        "In JAX the loss is a function of the model (or of the parameters), because the gradient is "
        "taken of a function, not read off a tensor.",
        torch=(examples.torch_loss,),
        flax={"NNX": (train.loss_fn, functional.mse_loss), "Linen": (examples.linen_loss, functional.mse_loss),
              "functional": (functional.loss_fn, functional.mse_loss),
              "Keras": (examples.keras_loss, keras_train.mse_loss)},
        exact=F64,
        notes=("optax.l2_loss is half the squared error: its gradients are half torch's.",
               "keras.ops.mean reduces a float64 array in float32 (Keras' type promotion): the Keras loss "
               "divides a sum by the count instead."),
        numbers="loss",
        tests=("tests/test_functional_mapping.py::test_mse_row_all_calls_agree",
               FT + "test_linen_and_keras_loss_equal_torch_mse",
               KT + "test_keras_ops_mean_of_float64_is_only_float32_accurate_so_the_loss_divides_a_sum"),
    ),
    Section(
        "graph", "Follow loss.grad_fn: the graph", "计算图",
        "Following loss.grad_fn backwards through next_functions gives torch's graph of the forward "
        "pass. JAX records nothing on the arrays: jax.make_jaxpr(loss_fn) traces the function into "
        "primitives, printed below as JAX prints them (relu is a custom_jvp_call, each bias enters "
        "through broadcast_in_dim). flax_lenet.porting.graph then groups those primitives into layers: the "
        "table after it, where both frameworks reduce to the same layers, in the same order.",
        torch=(graph.torch_graph,),
        flax={"NNX": (graph.jax_graph,), "Linen": (examples.linen_graph,), "functional": (graph.jax_graph,),
              "Keras": (examples.keras_graph,)},
        exact="the same layers in the same order (a structural comparison, no numbers)",
        notes=("torch's parameter branches (AccumulateGrad, TBackward0 for W.T) hang off the main chain; "
               "in the jaxpr the bias's broadcast_in_dim is off the input's path.",),
        tests=("tests/test_graph.py::test_grad_fn_chain_and_jaxpr_correspond_layer_by_layer",
               "tests/test_graph.py::test_graph_comparison_fails_for_a_different_network",
               FT + "test_linen_and_keras_jaxprs_have_the_nets_layers",
               "tests/test_docs.py::test_graph_section_shows_what_make_jaxpr_prints"),
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
              "Linen": (examples.linen_backprop, examples.linen_accumulate),
              "functional": (examples.functional_backprop,),
              "Keras": (keras_train.loss_and_grads, examples.keras_accumulate)},
        exact=f"{F64}; {F32}",
        notes=("Gradients are compared in torch's layout, after flax_lenet.convert.flax_to_torch.",),
        numbers="backprop",
        tests=("tests/test_functional_mapping.py::test_torch_backprop_equals_nnx_grad_and_jax_grad",
               "tests/test_functional_mapping.py::test_torch_zero_grad_sets_grad_to_none",
               "tests/test_functional_mapping.py::test_skipped_zero_grad_accumulates_the_sum_of_fresh_gradients",
               "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_nnx_perturbation",
               FT + "test_linen_and_keras_backprop_equal_torch_and_accumulate_as_a_sum",
               KT + "test_keras_net_matches_torch_after_a_weight_transfer"),
    ),
    Section(
        "update", "Update the weights", "使用简单的更新规则来更新网络的权重",
        "The tutorial's rule weights = weights - learning_rate * gradient runs in place on .data in "
        "torch and as jax.tree.map over the parameter tree in JAX. With torch.optim: "
        "optimizer.zero_grad(); loss.backward(); optimizer.step() is one nnx.value_and_grad and "
        "optimizer.update(model, grads).",
        torch=(torch_train.manual_sgd_update, torch_train.sgd_step),
        flax={"NNX": (train.sgd_update, train.train_step), "Linen": (examples.linen_sgd_step, train.sgd_update),
              "functional": (train.sgd_update,), "Keras": (keras_train.sgd_step,)},
        exact=f"{F64}; {F32}; optax.sgd vs optim.SGD in float32: not bit for bit (two roundings against one)",
        notes=("optax.sgd(lr) is the update rule of optim.SGD(lr) (no momentum, no dampening); in "
               "float32 the two round differently (torch adds -lr*g in one step, optax rounds lr*g "
               "first), within the float32 tier.",
               "train_step is plain Flax. flax-lenet train runs flax_lenet.fast.train_step instead, "
               "the same step (pinned to it by a test) with the Net's forward computed block-wise on CPU, "
               "one matrix product per conv -> relu -> max-pool block. A hooked, subclassed or otherwise "
               "changed model runs model(x).",),
        numbers="update",
        tests=("tests/test_functional_mapping.py::test_data_sub_equals_tree_map_update",
               "tests/test_functional_mapping.py::test_optimizer_step_equals_nnx_optimizer_update",
               "tests/test_fast.py::test_fast_train_step_equals_the_plain_train_step",
               FT + "test_linen_and_keras_sgd_steps_equal_torch_optim_sgd",
               PT + "test_optax_sgd_is_torch_sgd_up_to_float32_rounding_not_bit_for_bit",
               KT + "test_keras_sgd_step_equals_torch_optim_sgd"),
    ),
) + porting_sections()

#: Which 'flax-lenet compare' rows each section's figures come from (prefix match on 'quantity').
NUMBERS = {
    "network": ("params round trip",),
    "inputs": ("logits",),
    "loss": ("loss",),
    "backprop": ("grad ",),
    "update": ("params after w - lr*g", "params after SGD step"),
}
