"""The generated docs, from the project's code:

  docs/tutorial.md, docs/tutorial.ipynb   the tutorial's walk-through, from docs/tutorial.py
  docs/porting.md, docs/porting.html      the porting reference: every mapping row, its test, how exact
  docs/port_your_model.md                 the guide to the porting harness, for a model of your own

    python -m docs.build                 # write them into docs/
    python -m docs.build --check         # write nothing; exit 1 if the committed files are stale
    python -m docs.build --out DIR       # write (or --check) them in DIR instead

Run from the repository root: the generator is not part of the installed package. It imports
``flax_lenet``, ``torch_reference``, ``keras_reference`` and ``tests/port_models.py``, and needs
keras and pygments. Code blocks are pulled with ``inspect.getsource`` from the modules at
generation time, never pasted; figures and tables come from runs made while generating.

  notebook             docs/tutorial.py (a runnable script in cells) as Markdown and as a notebook
  content, mapping     what the reference shows: prose, the objects whose source it shows, the tables
  examples, porting    small paired torch / Flax / Keras functions the reference shows (and tests run)
  render               the reference as Markdown and as one self-contained HTML page
  portguide            the porting guide, from parity.check runs on tests/port_models.py
"""

import argparse
import difflib
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]           # the repository
PROG = "python -m docs.build"
FILES = ("tutorial.md", "tutorial.ipynb", "porting.md", "porting.html", "port_your_model.md")

#: What the generator imports beyond the package's dependencies, and why.
NEEDS = {"keras": "the Keras tabs are generated from keras_reference",
         "pygments": "the HTML page's code is highlighted by pygments"}
INSTALL = "pip install -e '.[docs]'"


def build() -> dict[str, str]:
    """``{file name: text}`` for ``FILES``, from the code and from runs made now (cached per process)."""
    from docs.build import notebook, portguide, render
    return {**notebook.build(), **render.build(), "port_your_model.md": portguide.build()}


def first_difference(old: str, new: str) -> str:
    """``'line N'`` for the first line where ``old`` and ``new`` differ."""
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("@@"):
            number = line.split()[1].lstrip("-").split(",")[0]
            return f"line {number}"
    return "line endings or a trailing newline"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="generate (or --check) the side-by-side tutorial "
                                "and the porting guide in docs/")
    p.add_argument("--out", type=Path, default=None, help="folder to write into (default: the repo's docs/)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the files in --out differ from what the code generates now")
    return p


#: a measured figure as the pages print it, with its limit: "< 1e-07 (limit ≤ 1e-05)" (``&lt;`` in HTML)
FIGURE = re.compile(r"(<|&lt;) 1e-(\d\d) \(limit ≤ 1e-(\d\d)\)")


def same_but_figures(old: str, new: str) -> bool:
    """``old`` and ``new`` are the same text but for measured figures, and each figure of ``new``
    is within its limit. A figure is the power of ten above a difference measured on the CPU that
    generated the page; another CPU's kernels can move it by a decade or two (one ulp), so
    ``--check`` checks it against its limit, never byte for byte. A figure over its limit (the page
    would say FAILS), or any other change, is a stale page."""
    mask = lambda text: FIGURE.sub(r"\1 1e-?? (limit ≤ 1e-\3)", text)     # noqa: E731
    return mask(old) == mask(new) and all(int(m.group(2)) >= int(m.group(3)) for m in FIGURE.finditer(new))


def run(args) -> int:
    from flax_lenet.errors import BadConfig, BadFile
    out = args.out if args.out is not None else ROOT / "docs"
    if out.exists() and not out.is_dir():
        raise BadFile(f"--out: expected a folder, found a file {out}")
    for name, why in NEEDS.items():
        if importlib.util.find_spec(name) is None:
            raise BadConfig(f"expected {name} installed ({why}), found none: {INSTALL}")
    files = build()
    if args.check:
        stale = []
        for name, text in files.items():
            path = out / name
            if not path.is_file():
                stale.append(f"{path} is missing")
            elif (old := path.read_text(encoding="utf-8")) != text and not same_but_figures(old, text):
                stale.append(f"{path} differs at {first_difference(old, text)} from what the code generates now")
        for line in stale:
            print(f"{PROG}: {line}; run `{PROG}`")
        if not stale:
            print(f"{PROG}: {', '.join(str(out / n) for n in files)} up to date")
        return 1 if stale else 0
    from flax_lenet.app.files import check_writable, write_text
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in files:                      # every file checked before the first is written
            check_writable(out / name)
        for name, text in files.items():
            write_text(out / name, text)
            print(f"wrote {out / name}")
    except OSError as e:
        raise BadFile(f"--out: expected a writable folder with room for the docs, found {out} refusing "
                      f"({type(e).__name__}: {e.strerror or e})") from None
    return 0


def main(argv=None) -> int:
    """Write (or ``--check``) the docs; bad input is one line on stderr and exit code 2."""
    from flax_lenet.errors import BadInput
    args = parser().parse_args(argv)
    try:
        return run(args)
    except BadInput as e:
        message = str(e).replace("\n", " ")
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
