"""``python -m docs.build [--check] [--out DIR]``, from the repository root (see ``docs/build/__init__.py``)."""

from docs.build import main

raise SystemExit(main())
