"""``flax-lenet docs``: write (or ``--check``) the side-by-side tutorial generated from the source."""

import difflib
import importlib.util
from pathlib import Path

from flax_lenet.app.files import write_text
from flax_lenet.errors import BadConfig, BadFile


def default_out() -> Path:
    """The repository's ``docs/`` folder, found next to the ``flax_lenet`` package."""
    from flax_lenet.app.sidebyside.render import ROOT
    if not (ROOT / "pyproject.toml").is_file():
        raise BadConfig(f"expected a source checkout with pyproject.toml at {ROOT}, found none: pass --out DIR")
    return ROOT / "docs"


def add_arguments(p):
    p.add_argument("--out", type=Path, default=None, help="folder to write into (default: the repo's docs/)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the files in --out differ from what the code generates now")


def first_difference(old: str, new: str) -> str:
    """``'line N: -old / +new'`` for the first differing line."""
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("@@"):
            number = line.split()[1].lstrip("-").split(",")[0]
            return f"line {number}"
    return "line endings or a trailing newline"


def main(args) -> int:
    out = args.out if args.out is not None else default_out()
    if out.exists() and not out.is_dir():
        raise BadFile(f"--out: expected a folder, found a file {out}")
    if importlib.util.find_spec("keras") is None:     # the Keras tabs run keras_reference: the [test] extra
        raise BadConfig("expected keras installed (the Keras tabs are generated from keras_reference), found "
                        "none: pip install -e '.[test]'")
    from flax_lenet.app.sidebyside import render
    files = render.build()
    if args.check:
        stale = []
        for name, text in files.items():
            path = out / name
            if not path.is_file():
                stale.append(f"{path} is missing")
            elif (old := path.read_text(encoding="utf-8")) != text:
                stale.append(f"{path} differs at {first_difference(old, text)} from what the code generates now")
        for line in stale:
            print(f"flax-lenet docs: {line}; run `{render.GENERATOR}`")
        if not stale:
            print(f"flax-lenet docs: {', '.join(str(out / n) for n in files)} up to date")
        return 1 if stale else 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_text(out / name, text)
            print(f"wrote {out / name}")
    except OSError as e:
        raise BadFile(f"--out: expected a writable folder with room for the docs, found {out} refusing "
                      f"({type(e).__name__}: {e.strerror or e})") from None
    return 0
