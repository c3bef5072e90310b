"""The mapping tables at the top of the side-by-side tutorial; each row names the test that proves it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    torch: str
    flax: str
    note: str
    test: str     # tests/<file>.py::<test name>
    exact: str = "same values within FLOAT64 (rtol 1e-12), float64"    # how exact the row is
    also: str = ""                                                      # a second test, for the exactness
    keras: str = "—"                                                    # Keras 3 (JAX backend): keras_reference
    keras_test: str = ""


#: How a module is called, how gradients and updates are made: torch ↔ Flax.
CONCEPTS = (
    Row("nn.Module; net(x) → Module.__call__ → hooks + forward(x)",
        "nnx.Module: model(x) → __call__(x); Linen: net.apply(variables, x) → __call__(x)",
        "Keras: Model.__call__ → call(). Flax has no hook registry: Linen intercepts with "
        "nn.intercept_methods, NNX puts a hooked module in the layer's place (flax_lenet.porting.hooks)",
        "tests/test_hooks.py::test_torch_forward_called_directly_skips_that_modules_hooks",
        keras="model(x) → Model.__call__ (build, training) → call(x); no hook API",
        keras_test="tests/test_keras_reference.py::"
                   "test_keras_model_call_builds_on_first_call_and_passes_training_to_call_and_its_layers"),
    Row("register_forward_pre_hook / register_forward_hook",
        "nn.intercept_methods(interceptor); nnx_hooks(model, 'conv1', pre=, post=)",
        "the same hook function, torch's signature, runs in both",
        "tests/test_hooks.py::test_forward_pre_hook_replacing_input_equals_interceptor_changing_args"),
    Row("forward hook that records",
        "apply(.., capture_intermediates=True); sow; nnx.capture(.., method_outputs=nnx.Intermediate)",
        "activations come back NHWC: transpose (0, 3, 1, 2) to compare",
        "tests/test_hooks.py::test_forward_hook_recording_equals_capture_intermediates_sow_and_nnx_capture"),
    Row("register_full_backward_hook / Tensor.register_hook",
        "perturb + grad w.r.t. the 'perturbations'",
        "d loss / d (layer output), the same numbers",
        "tests/test_hooks.py::test_backward_hook_grad_output_equals_grad_wrt_linen_perturbation"),
    Row("loss.grad_fn → next_functions", "jax.make_jaxpr(loss_fn)",
        "torch records the graph on the tensors; JAX traces the function",
        "tests/test_graph.py::test_grad_fn_chain_and_jaxpr_correspond_layer_by_layer",
        "the same layers in the same order (structure, no numbers)",
        keras="jax.make_jaxpr of stateless_call + loss",
        keras_test="tests/test_functional_mapping.py::test_linen_and_keras_jaxprs_have_the_nets_layers"),
    Row("optimizer.zero_grad(); loss.backward()", "jax.grad / nnx.grad: fresh gradients",
        "a skipped zero_grad() makes .grad a running sum of gradients",
        "tests/test_functional_mapping.py::test_skipped_zero_grad_accumulates_the_sum_of_fresh_gradients",
        keras="jax.value_and_grad of model.stateless_call: fresh gradients",
        keras_test="tests/test_functional_mapping.py::"
                   "test_linen_and_keras_backprop_equal_torch_and_accumulate_as_a_sum"),
    Row("optimizer.step()", "optimizer.update(model, grads)",
        "optax.sgd(lr) is optim.SGD(lr)'s update rule (no momentum, no dampening); torch adds -lr*g in one "
        "rounding, optax rounds -lr*g and then p + u",
        "tests/test_functional_mapping.py::test_optimizer_step_equals_nnx_optimizer_update",
        "same values within FLOAT64, float64; float32: not bit for bit, within two float32 steps",
        "tests/test_porting_rows.py::test_optax_sgd_is_torch_sgd_up_to_float32_rounding_not_bit_for_bit",
        keras="variable.assign(variable.value - lr * grad) (keras_reference.train.sgd_step); fit",
        keras_test="tests/test_keras_reference.py::test_keras_sgd_step_equals_torch_optim_sgd"),
    Row("f.data.sub_(f.grad.data * lr)", "jax.tree.map(lambda p, g: p - lr * g, params, grads)",
        "in place vs a new tree", "tests/test_functional_mapping.py::test_data_sub_equals_tree_map_update",
        keras="variable.assign(variable.value - lr * grad)",
        keras_test="tests/test_functional_mapping.py::test_linen_and_keras_sgd_steps_equal_torch_optim_sgd"),
    Row("input.unsqueeze(0)", "x[None]", "add the batch dimension; the Net rejects a single image",
        "tests/test_minibatch.py::test_unsqueeze0_equals_x_none_in_every_flavour",
        keras="x[None] (NHWC)",
        keras_test="tests/test_functional_mapping.py::test_linen_and_keras_single_image_equal_torch_unsqueeze"),
)


@dataclass(frozen=True)
class OpRow:
    op: str
    torch_module: str
    torch_functional: str
    nnx: str
    linen: str
    jax: str
    test: str
    exact: str = "same values within FLOAT64 (rtol 1e-12), float64"
    also: str = ""


#: nn.Xxx vs nn.functional.xxx, and the four ways to write each in Flax / JAX.
OPS = (
    OpRow("conv", "nn.Conv2d(1, 6, 3)", "F.conv2d(x, w, b)", "nnx.Conv(1, 6, (3, 3), padding='VALID')",
          "nn.Conv(6, (3, 3), padding='VALID')",
          "lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b",
          "tests/test_functional_mapping.py::test_conv_row_all_calls_agree"),
    OpRow("max-pool", "nn.MaxPool2d(2)", "F.max_pool2d(x, 2)", "nnx.max_pool(x, (2, 2), strides=(2, 2))",
          "nn.max_pool(x, (2, 2), strides=(2, 2))",
          "lax.reduce_window(x, -inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')",
          "tests/test_functional_mapping.py::test_max_pool_row_all_calls_agree"),
    OpRow("relu", "nn.ReLU()", "F.relu(x)", "nnx.relu(x)", "nn.relu(x)",
          "jax.nn.relu(x): values as jnp.maximum(x, 0), gradient at 0 as torch (0, not 0.5)",
          "tests/test_functional_mapping.py::test_relu_row_all_calls_agree",
          "values and gradients within FLOAT64; jnp.maximum(x, 0): values only, not gradients (0.5 at 0)",
          "tests/test_functional_mapping.py::"
          "test_relu_gradient_at_zero_is_torchs_in_jax_nn_relu_but_not_in_jnp_maximum"),
    OpRow("linear", "nn.Linear(120, 84)", "F.linear(x, W, b) = x @ W.T + b", "nnx.Linear(120, 84)",
          "nn.Dense(84)", "x @ kernel + b, kernel = W.T",
          "tests/test_functional_mapping.py::test_linear_row_all_calls_agree"),
    OpRow("mse", "nn.MSELoss()", "F.mse_loss(y, t)", "—", "—",
          "jnp.mean((y - t) ** 2) = optax.squared_error(y, t).mean()",
          "tests/test_functional_mapping.py::test_mse_row_all_calls_agree"),
)
