"""One module per ``flax-lenet`` subcommand: ``add_arguments(parser)`` and ``main(args)``."""
