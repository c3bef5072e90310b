"""What "bad input" means in this project: ``BadInput`` and its kinds.

Every error that means *what you passed was wrong* (a shape, a value, a file, a setting) is a
``BadInput``, and its one-line message says what was expected and what was found. The
``flax-lenet`` command prints exactly these as one line and exits 2; any other exception is a
bug (in this project or a library under it) and keeps its traceback, exit 1.

``BadInput`` is a ``ValueError``, so ``except ValueError`` keeps working for callers. One kind is
not bad input: ``ModelRaised``, a user's model that failed inside the porting harness (exit 3).
"""


class BadInput(ValueError):
    """The input was wrong; the message says what was expected and what was found."""


class BadImages(BadInput):
    """An image batch of the wrong shape, layout or dtype, or with NaN/Inf values."""


class BadLabels(BadInput):
    """Class labels of the wrong shape, dtype or range, or not one per image."""


class BadWeights(BadInput):
    """A parameter tree or state_dict with missing or extra keys, wrong shapes or dtypes."""


class BadConfig(BadInput):
    """A setting out of range or of the wrong type (a learning rate, an epoch count, ...)."""


class BadFile(BadInput):
    """A file or folder that is missing, in the way, unreadable, unwritable or damaged."""


class ModelRaised(Exception):
    """A user's model raised (or returned what cannot be compared) while the harness ran it:
    not bad input to ``flax-lenet`` and not a bug of its own. ``flax-lenet compare`` and
    ``convert --torch/--flax`` print the message (which side, which model, the input shape and
    the exception) and exit 3."""
