"""What the side-by-side tutorial shows, in the seed's order: prose here, code pulled from the modules.

A section names Python objects, never code text; ``render`` reads their source at generation time.
"""

from dataclasses import dataclass

from docs.build import examples, porting
from flax_lenet import functional, linen, model, train
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

    def row(id, title, prose, name, exact, tests, notes=(), torch_name=None, linen_name=..., keras_name=...):
        """``porting.<prefix>_<name>`` per column; ``linen_name`` / ``keras_name``: another suffix, or None
        for a row without that tab (the idiom is NNX's, e.g. optax alone)."""
        get = lambda prefix, n: getattr(porting, f"{prefix}_{n}")  # noqa: E731
        flax = {"NNX": (get("nnx", name),)}
        for flavour, prefix, n in (("Linen", "linen", linen_name), ("Keras", "keras", keras_name)):
            if n is not None:
                flax[flavour] = (get(prefix, name if n is ... else n),)
        return Section(id, title, "", _text(prose), torch=(get("torch", torch_name or name),), flax=flax,
                       notes=notes, tests=tuple(P + t if "::" not in t else t for t in tests), exact=exact)

    return (
        row("train-eval", "model.train() / model.eval(), nnx.view", """
            torch's mode is a flag on every submodule. NNX has the same methods (they set
            deterministic and use_running_average, in place, on every layer that has them), and
            nnx.view(model, deterministic=True) returns a new model in that mode sharing the same
            Variables, the original untouched (unlike .eval(), it raises ValueError for a flag no
            layer has); Linen has no mode: deterministic= is an argument of the call, and dropout
            takes an rng; Keras passes training= through Model.__call__.""",
            "train_eval", "eval and nnx.view: same bits as the layer alone; train: the kept values doubled "
            "exactly (1/(1-p) = 2), which ones are dropped differs (the random streams differ)",
            ("test_train_and_eval_switch_dropout_in_every_framework",
             "test_check_dropout_fails_when_eval_still_drops",
             "test_nnx_view_is_an_eval_model_sharing_the_variables_while_the_model_still_drops")),
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
        row("meta-split", "torch.device('meta'), functional_call: nnx.eval_shape, nnx.split / nnx.merge", """
            Under with torch.device('meta') a module gets shapes and dtypes without memory, and
            torch.func.functional_call runs a module on a dict of tensors. nnx.eval_shape builds a
            model of jax.ShapeDtypeStruct leaves, with no memory and no init; nnx.split separates
            its static GraphDef from its State, and nnx.merge(graphdef, state) builds a model from
            any state of that structure (nnx.replace_by_pure_dict fills one from a nested dict). A
            Linen module is split already (module and variables; jax.eval_shape(net.init, ...) for
            the shapes); Keras' model.stateless_call is functional_call.""",
            "eval_shape_split_merge", f"shapes: the same tensors, each framework's layout; outputs: {BITS} "
            f"as the model's own call, against torch {F32}",
            ("test_meta_and_eval_shape_build_shapes_without_memory_and_merge_runs_any_state",),
            torch_name="meta_functional_call"),
        row("buffers", "register_buffer: state that is not a parameter", """
            A torch buffer is in state_dict() but not in parameters(), so no optimizer gets it. In
            NNX it is a Variable other than nnx.Param (nnx.BatchStat, as nnx.BatchNorm's running
            statistics, or a subclass of nnx.Variable): nnx.state(model) has it,
            nnx.state(model, nnx.Param) does not, and neither nnx.grad nor
            nnx.Optimizer(wrt=nnx.Param) sees it; the torch.no_grad() around its update becomes
            jax.lax.stop_gradient. Linen keeps it in another collection (self.variable('batch_stats',
            ...), apply(..., mutable=['batch_stats'])); Keras has add_weight(trainable=False).""",
            "buffer", f"names: structural, the same split into parameters and state; values after one "
            f"step: {F32}",
            ("test_a_buffer_is_state_but_not_a_parameter_and_the_optimizer_skips_it",)),
        row("containers", "nn.Sequential / nn.ModuleList: nnx.Sequential / nnx.List", """
            nn.Sequential calls its children in order under the names 0, 1, 2 (0.weight);
            nnx.Sequential keeps them in an nnx.List attribute (layers.0.kernel). nn.ModuleList is
            nnx.List: a plain Python list of modules hides their parameters from torch's
            parameters() and, as an NNX attribute, is a ValueError in Flax 0.12. Linen's
            nn.Sequential names them layers_0, layers_2, and a list assigned in setup registers
            blocks_0, blocks_1; a subclassed keras.Model tracks a plain list.""",
            "sequential", f"names: structural, index for index; outputs: {F32}",
            ("test_sequential_and_lists_of_layers_register_them_and_a_plain_list_does_not",)),
        row("lr-schedule", "lr_scheduler.MultiStepLR: optax.piecewise_constant_schedule", """
            torch's scheduler.step() is called once per epoch, and MultiStepLR multiplies the rate by
            gamma at each milestone epoch. An optax schedule is a function of the update count, from
            0, passed to the optimizer in place of the rate (optax.sgd(schedule)): milestone m is
            the boundary m * steps_per_epoch, and one more or one less moves the decay by an update.
            Keras' PiecewiseConstantDecay switches after its boundary (step > b): m * steps_per_epoch
            - 1. Linen uses optax as NNX does.""",
            "multistep_lr", f"the rate at every update: {F32} (optax computes it in float32)",
            ("test_multistep_lr_per_epoch_is_a_piecewise_constant_schedule_over_updates",),
            linen_name=None),
        row("clip", "clip_grad_norm_: optax.clip_by_global_norm", """
            Both scale all gradients together by max_norm over their global L2 norm. torch
            multiplies by min(1, max_norm / (norm + 1e-6)) whatever the norm; optax leaves the
            gradients unchanged below max_norm and otherwise computes g / norm * max_norm, without
            the 1e-6. Clipped, torch's result is optax's times norm / (norm + 1e-6): a relative
            1e-6 / norm, inside FLOAT32_CPU for a norm above 0.1, visible in float64. Keras clips
            inside the optimizer (global_clipnorm=); Linen chains optax as NNX does.""",
            "clip_grad_norm", f"below max_norm: {BITS}; clipped: {F32}, and {F64} once optax's result "
            "is multiplied by norm / (norm + 1e-6)",
            ("test_clip_grad_norm_is_clip_by_global_norm_but_for_torch_s_1e_6_in_the_divisor",
             "test_clip_grad_norm_in_float32_and_keras_global_clipnorm"),
            linen_name=None),
        row("cross-entropy", "nn.CrossEntropyLoss: optax.softmax_cross_entropy_with_integer_labels", """
            nn.CrossEntropyLoss takes logits (the log-softmax is inside) and class indices, and
            averages over the batch. optax.softmax_cross_entropy_with_integer_labels takes the same
            logits and integer labels and returns one loss per example: .mean() is torch's
            reduction='mean'; probabilities in place of logits give another number. Keras'
            SparseCategoricalCrossentropy takes (labels, logits) and needs from_logits=True.""",
            "cross_entropy", f"{F64}; Keras: {F32}",
            ("test_cross_entropy_loss_is_optax_integer_labels_cross_entropy_then_mean",
             "test_keras_sparse_categorical_crossentropy_needs_from_logits"),
            linen_name=None),
        row("item", "loss.item(): float(loss), asynchronous dispatch, block_until_ready", """
            .item() copies a one-element tensor to a Python float, waiting for it. JAX dispatches
            asynchronously: a jitted call returns an Array whose value may still be computing;
            float(loss) or loss.item() waits and converts, and loss.block_until_ready()
            (jax.block_until_ready(tree) for a tree) waits and returns the same array: call it
            before reading a timer. In both, only a one-element array converts.""",
            "item", f"the value: {F32}; the objects: structural (the same array back, a Python float)",
            ("test_item_and_float_give_a_python_float_and_block_until_ready_returns_the_same_array",),
            linen_name=None, keras_name=None),
        row("checkpoint", "torch.save / torch.load: Orbax", """
            torch.save pickles a state_dict and torch.load(weights_only=True) reads tensors back.
            Orbax's ocp.StandardCheckpointer saves nnx.state(model) into a folder (asynchronously:
            wait_until_finished) and restores into the structure it is given, the state of an
            nnx.eval_shape model, which nnx.update loads; restored without it, the tree is a plain
            dict with one more level ('value'). Linen saves its variables dict the same way; Keras
            has save_weights / load_weights.""",
            "checkpoint", f"{BITS}: a save and a restore give back the same arrays",
            ("test_torch_save_load_and_orbax_round_trips_are_bit_identical",)),
        row("donation", "In-place weight updates: donate_argnames", """
            torch's optimizer writes the new weights into the old tensors. A JAX step returns new
            arrays; jax.jit(..., donate_argnames=...) and nnx.jit(donate_argnames=...) let XLA write
            them into the donated inputs' buffers, which the caller then finds deleted (a
            RuntimeError on use). The values are the same with and without donation; a donated
            buffer that no output can take brings a warning, not an error.""",
            "donated_step", f"with and without donation: {BITS}; against torch's in-place step: {F32}",
            ("test_donation_deletes_the_old_arrays_and_computes_the_same_step",),
            keras_name=None),
        row("in-place", "t[0] = 1, t.add_(1): x.at[0].set(1)", """
            Tensors are mutable: an index assignment or a method ending in _ changes the tensor and
            every alias of it. JAX arrays are immutable: x[0] = 1 is a TypeError, and
            x.at[0].set(1) (.add, .multiply, ...) returns a new array, x unchanged; inside jax.jit
            such an update is made in place (the jax.numpy.ndarray.at documentation). An
            nnx.Variable is the mutable box: v[0] = 1 and v[...] += 1 put a new array in it.""",
            "in_place", f"{BITS}",
            ("test_in_place_ops_change_the_tensor_and_at_set_returns_a_new_array",),
            linen_name=None, keras_name=None),
        row("int-default", "torch.long labels: int64 against int32", """
            torch.tensor([3, 1]) is int64 (torch.long), the dtype nn.CrossEntropyLoss wants for
            class indices (int32 is a RuntimeError). jnp.array([3, 1]) is int32 unless x64 is on
            (with jax.enable_x64(True): int64); an int64 numpy array becomes int32 without a
            warning, and 2**31 is an OverflowError. optax's integer-label losses take int32 labels;
            Keras on the JAX backend follows JAX.""",
            "int_default", f"dtypes: int64 in torch, int32 in JAX and Keras (int64 with x64); the loss: {F32}",
            ("test_python_ints_are_int64_in_torch_and_int32_in_jax_unless_x64",),
            linen_name=None),
        row("summary", "print(net) and the parameter count", """
            print(net) lists the submodules; sum(p.numel() for p in net.parameters()) counts the
            parameters, buffers left out. print(model) shows an NNX model's Variables with their
            counts (nnx.display(model) renders it in a notebook), and the count is the sizes of
            jax.tree.leaves(nnx.state(model, nnx.Param)): nnx.state(model) would add batch
            statistics. nnx.tabulate(model, x) makes a table of shapes, but in flax 0.12.8 it leaves
            every tabulated class with copies of its inherited methods (sow, train, eval...), which
            nnx.capture then records as methods of their own: call it in a process of its own.
            Linen has net.tabulate(key, x); Keras model.summary() and model.count_params()
            (non-trainable weights included).""",
            "summary", "structural: the same count in every framework",
            ("test_the_parameter_count_is_the_same_everywhere_and_leaves_buffers_out",
             "test_nnx_tabulate_leaves_the_classes_it_tabulates_changed")),
        row("dropout-rng", "Dropout's random stream: nnx.Rngs", """
            torch's Dropout draws from the global generator: each call draws anew, and
            torch.manual_seed repeats the sequence. nnx.Dropout(rate, rngs=nnx.Rngs(dropout=seed))
            keeps its own 'dropout' stream: each call advances it, and a new stream from the same
            seed repeats the masks. Linen's Dropout takes the key at each apply
            (rngs={'dropout': key}): the same key gives the same mask, so split a new one per step;
            Keras' Dropout(seed=) keeps a SeedGenerator. The masks differ across frameworks.""",
            "dropout_stream", f"{BITS} for the same seed within a framework; across frameworks the masks differ",
            ("test_each_dropout_call_advances_its_stream_and_the_same_seed_repeats",)),
        row("vjp", "out.backward(v): jax.vjp", """
            out.backward(v) for a non-scalar out accumulates the vector-Jacobian product vᵀJ into
            x.grad and every p.grad. jax.vjp(f, x) returns f(x) and a function mapping v to that
            product; for an NNX model's parameters, nnx.grad of jnp.vdot(model(x), v) is the same
            product; Linen differentiates net.apply in both arguments at once. The input's product
            comes back NHWC and the weights' in Flax's layout (flax_lenet.convert.flax_to_torch).""",
            "vjp", F64,
            ("test_backward_with_a_vector_is_jax_vjp_in_float64",),
            keras_name=None),
    )


#: The tutorial's steps in all flavours, then the hooks (the hardest part, so last but the rows).
_STEPS = (
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
        torch=(hooks.torch_hooks, hooks.torch_output_grads, porting.torch_call_vs_forward),
        flax={"NNX": (hooks.nnx_hooks, hooks.nnx_output_grads, porting.nnx_call_vs_base_call),
              "Linen": (hooks.linen_hooks, hooks.perturb_output, hooks.linen_output_grads,
                        porting.linen_jit_traced_inside_interceptor),
              "Keras": (porting.keras_call_vs_call,)},
        exact=f"{F64} against torch; a hook's effect within one framework: {BITS}",
        notes=("net.forward(x) skips the Net's own hooks but not its layers' (forward calls self.conv1(x)); "
               "net.conv1.forward(x) runs none.",
               "Linen interceptors act while a function is traced, and jax.jit keeps its traces per wrapped "
               "function (net.apply: bound methods of one module compare equal), not per jax.jit wrapper. While "
               "a jax.jit(net.apply) traced outside a `with nn.intercept_methods(...)` block is alive, calls "
               "inside the block replay that trace and skip the interceptor; one first traced inside the block "
               "keeps the interceptor's effect after it exits, even through a new jax.jit(net.apply).",
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
               PT + "test_the_direct_call_skips_what_the_module_call_adds",
               PT + "test_a_linen_function_first_traced_inside_intercept_methods_keeps_the_interceptor",
               "tests/test_hooks.py::test_a_new_jit_wrapper_of_apply_replays_the_trace_made_inside_the_block",
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
        "The seed says torch.nn takes only mini-batches; in PyTorch 2, nn.Conv2d and F.max_pool2d take "
        "one unbatched (C, H, W) image too, and Flax's layers take one (H, W, C) image. But the Net's "
        "flatten keeps the first dimension as the batch: in torch the 16 channels of the last feature "
        "map, in Flax its height (6). fc1 then fails in torch. Add the batch dimension: "
        "input.unsqueeze(0) in torch, x[None] in JAX. The project's Flax Nets check the batch's shape "
        "and dtype first (flax_lenet.checks.check_images, at trace time under jit) and say what is "
        "wrong in one line, as the flax-lenet commands do.",
        torch=(examples.torch_single_image,),
        flax={"NNX": (examples.flax_single_image,), "Linen": (examples.linen_single_image,),
              "Keras": (examples.keras_single_image,)},
        exact=F64,
        notes=("torch's Net on a single (1, 32, 32) image fails at fc1: 'mat1 and mat2 shapes cannot be "
               "multiplied (16x36 and 576x120)'; the NNX and Linen Nets refuse it: 'add a batch dimension "
               "with x[None]'. Without that check the NNX Net fails at fc1 too, (96,) against (576,).",
               "Without the check, linen.Net().init on one image raises nothing and builds fc1 as "
               "(96, 120): Dense infers its input size. On an NCHW batch it raises ZeroDivisionError.",
               "jax.vmap of a function that calls the Net on img[None] gives the batch's logits."),
        numbers="inputs",
        tests=("tests/test_minibatch.py::test_unsqueeze0_equals_x_none_in_every_flavour",
               "tests/test_minibatch.py::test_each_flavour_refuses_a_single_image",
               "tests/test_minibatch.py::test_without_the_nets_check_a_single_image_fails_at_fc1_as_in_torch",
               "tests/test_minibatch.py::test_torch_net_fails_on_a_single_image_at_fc1",
               "tests/test_minibatch.py::test_linen_init_refuses_a_single_image_that_would_silently_build_a_wrong_fc1",
               "tests/test_minibatch.py::test_without_the_nets_check_complex_images_give_complex_logits_and_nchw_fails_inside_jax",
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
        flax={"NNX": (train.loss_fn, functional.mse_loss), "Linen": (examples.linen_loss,),
              "functional": (functional.loss_fn,),
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
        "pass. JAX records nothing on the arrays: jax.make_jaxpr traces a function of the weights "
        "(nnx.split gives one) into primitives (relu is a custom_jvp_call, each bias an add). "
        "flax_lenet.porting.graph groups those primitives into layers; the table shows both frameworks "
        "reduce to the same layers, in the same order.",
        torch=(graph.torch_graph,),
        flax={"NNX": (examples.nnx_graph,), "Linen": (examples.linen_graph,), "functional": (graph.jax_graph,),
              "Keras": (examples.keras_graph,)},
        exact="the same layers in the same order (a structural comparison, no numbers)",
        notes=("torch's parameter branches (AccumulateGrad, TBackward0 for W.T) hang off the main chain; "
               "in the jaxpr the bias's broadcast_in_dim is off the input's path.",),
        tests=("tests/test_graph.py::test_grad_fn_chain_and_jaxpr_correspond_layer_by_layer",
               "tests/test_graph.py::test_graph_comparison_fails_for_a_different_network",
               FT + "test_linen_and_keras_jaxprs_have_the_nets_layers",
               FT + "test_nnx_jaxpr_has_the_nets_layers"),
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
        flax={"NNX": (train.sgd_update, train.train_step), "Linen": (examples.linen_sgd_step,),
              "Keras": (keras_train.sgd_step,)},
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
)

#: The reference's order: the tutorial's steps, the rows a porter still misses, then the hooks and
#: the calls that skip them (net.forward(x), model.call(x)).
SECTIONS = (tuple(s for s in _STEPS if s.id != "call")
            + porting_sections()
            + tuple(s for s in _STEPS if s.id == "call"))

#: Which 'flax-lenet compare' rows each section's figures come from (prefix match on 'quantity').
NUMBERS = {
    "network": ("params round trip",),
    "inputs": ("logits",),
    "loss": ("loss",),
    "backprop": ("grad ",),
    "update": ("params after w - lr*g", "params after SGD step"),
}
