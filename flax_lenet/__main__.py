import sys

from flax_lenet.cli import main

sys.exit(main())
