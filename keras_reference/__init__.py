"""The tutorial's Net as a Keras 3 model, on the JAX backend: the third column of the mapping.

Keras reads ``KERAS_BACKEND`` once, at its first import; this package sets it to ``jax`` unless
it is set already, and refuses to run on another backend (the weights are shared with the Flax
side as JAX arrays). Nothing in ``flax_lenet`` imports this package: keras is a test dependency.
See https://keras.io/getting_started/#configuring-your-backend.
"""

import os
import sys

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

if keras.backend.backend() != "jax":
    raise ImportError(f"keras_reference needs the JAX backend (KERAS_BACKEND=jax), found {keras.backend.backend()!r}")

from keras_reference.model import Net, from_flax_params  # noqa: E402

__all__ = ["Net", "from_flax_params"]
