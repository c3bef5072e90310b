"""The application on top of the ``flax_lenet`` library: the ``flax-lenet`` command and what it needs.

  cli, commands/     argument parsing, one module per subcommand; errors -> exit codes
  training           the Flax Net and the torch reference trained side by side (``flax-lenet train``)
  runs               run directories: metrics, curves and weights, written as one unit
  data, checkpoint   digits/MNIST; .pt/.safetensors/Orbax weights
  files              the one atomic writer: a lock file per target, one rename per write
  bench              the benchmark harness (the docs generator lives outside the package, docs/build/)

The library below never imports from here.
"""
