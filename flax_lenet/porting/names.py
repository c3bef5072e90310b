"""Names the command line offers as choices, in a module that imports nothing.

``flax-lenet --help`` and a mistyped flag answer before jax or torch is imported; ``parity`` builds
its tables (``FAULTS``, ``FLAX_LOSSES``) on these names, so the two cannot disagree.
"""

FLAVOURS = ("nnx", "linen", "functional")        # the tutorial's Net: NNX, Linen, pure functions
FAULTS = ("flatten", "transpose", "element")     # deliberate conversion faults (``parity.FAULTS``)
LOSSES = ("mse", "cross_entropy")                # ``parity.check(loss=...)``
