from flax_lenet.app.cli import run

run()
