"""The tutorial's ``Net`` in Keras 3: layers made in ``__init__``, used in ``call``.

``model(x)`` runs ``Model.__call__``: it builds the layers on the first call, passes
``training`` down to every layer, and then runs ``call`` (as torch's ``net(x)`` runs hooks and
then ``forward``). Images are NHWC, as in Flax, and ``Flatten`` flattens H*W*C, so a torch
state_dict loads through ``flax_lenet.convert.torch_to_flax`` (fc1's rows permuted once).
https://keras.io/api/models/model/ , https://keras.io/guides/making_new_layers_and_models_via_subclassing/
"""

import keras
from keras import layers


class Net(keras.Model):

    def __init__(self, kernel_size=3, dtype="float32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        k = kernel_size
        # 1 input image channel, 6 output channels, k x k convolution; no padding, as torch
        self.conv1 = layers.Conv2D(6, k, padding="valid", dtype=dtype)
        self.conv2 = layers.Conv2D(16, k, padding="valid", dtype=dtype)
        # Max pooling over a (2, 2) window; Keras' stride defaults to the window, as torch's
        self.pool = layers.MaxPool2D(2, dtype=dtype)
        self.flatten = layers.Flatten(dtype=dtype)            # H*W*C order (torch: C*H*W)
        # an affine operation: y = xW + b (torch: y = xW^T + b)
        self.fc1 = layers.Dense(120, dtype=dtype)
        self.fc2 = layers.Dense(84, dtype=dtype)
        self.fc3 = layers.Dense(10, dtype=dtype)

    def call(self, x, training=None):                        # (N, 32, 32, 1)   k=3
        x = self.pool(keras.ops.relu(self.conv1(x)))          # (N, 15, 15, 6)
        x = self.pool(keras.ops.relu(self.conv2(x)))          # (N, 6, 6, 16)
        x = self.flatten(x)                                   # (N, 576), H*W*C
        x = keras.ops.relu(self.fc1(x))                       # (N, 120)
        x = keras.ops.relu(self.fc2(x))                       # (N, 84)
        x = self.fc3(x)                                       # (N, 10)
        return x


def from_flax_params(model, params, image_shape=(1, 32, 32, 1)):
    """Load a Flax parameter tree (``flax_lenet.convert.torch_to_flax(state_dict)``) into ``model``.

    Keras' ``Conv2D`` kernel is ``[kH, kW, I, O]`` and ``Dense``'s ``[in, out]``, as Flax's, so the
    arrays go in unchanged; the model is built first by one call on zeros.
    """
    if not model.built:
        model(keras.ops.zeros(image_shape, dtype=model.dtype))
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        getattr(model, name).set_weights([params[name]["kernel"], params[name]["bias"]])
    return model
