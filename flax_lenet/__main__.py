from flax_lenet.cli import run

run()
