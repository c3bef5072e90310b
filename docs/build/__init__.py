"""The side-by-side tutorial (``docs/side_by_side.{md,html}``), generated from the project's code.

``flax-lenet docs`` writes it; ``flax-lenet docs --check`` exits 1 when the committed files
differ from what the code generates now. Code blocks are pulled with ``inspect.getsource``
from the modules at generation time, never pasted.
"""
