"""The tutorial's loss, gradients and SGD step for the Keras Net, on the JAX backend.

Keras 3 has no ``GradientTape`` (that is TensorFlow's): on the JAX backend a custom training
step is ``model.stateless_call`` inside ``jax.value_and_grad``, and the new values are assigned
back to the variables. https://keras.io/guides/writing_a_custom_training_loop_in_jax/
"""

import jax
import keras

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def mse_loss(output, target):
    """``nn.MSELoss()``: the mean over all N*10 elements.

    A sum divided by the count: ``keras.ops.mean`` reduces a float64 array in float32 (Keras'
    type promotion of float64 with float32 gives float32), a 1e-8 relative error in float64.
    """
    return keras.ops.sum(keras.ops.square(output - target)) / output.size


def loss_and_grads(model, x, target):
    """``loss.backward()``: ``jax.value_and_grad`` of ``stateless_call``, one gradient per trainable variable."""
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss_fn(trainable):
        output, _ = model.stateless_call(trainable, frozen, x)
        return mse_loss(output, target)

    return jax.value_and_grad(loss_fn)(trainable)


def sgd_step(model, x, target, learning_rate=0.01):
    """``optimizer.zero_grad(); loss.backward(); optimizer.step()`` with plain SGD; returns the loss."""
    loss, grads = loss_and_grads(model, x, target)
    for variable, grad in zip(model.trainable_variables, grads):
        variable.assign(variable.value - learning_rate * grad)
    return loss


def as_tree(values):
    """``{'conv1': {'kernel', 'bias'}, ...}`` of ``values`` (one per trainable variable), Flax's tree."""
    values = list(values)
    return {name: {"kernel": values[2 * i], "bias": values[2 * i + 1]} for i, name in enumerate(LAYERS)}
