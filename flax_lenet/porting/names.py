"""Names the command line offers as choices, in a module that imports nothing (so ``--help`` stays
quick); ``parity`` builds its tables on them, so the two cannot disagree."""

FLAVOURS = ("nnx", "linen", "functional")        # the tutorial's Net: NNX, Linen, pure functions
FAULTS = ("flatten", "transpose", "element")     # deliberate conversion faults (``parity.FAULTS``)
LOSSES = ("mse", "cross_entropy")                # ``parity.check(loss=...)``
