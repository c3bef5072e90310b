"""``flax-lenet``: a thin layer that parses, calls the library, and prints.

Each subcommand lives in ``flax_lenet/commands/<name>.py`` with ``add_arguments(parser)`` and
``main(args) -> int``; heavy imports (torch, jax) happen inside ``main``. Bad usage or bad
input exits 2 with one line on stderr and no traceback (``FLAX_LENET_DEBUG=1`` shows it).
"""

import argparse
import importlib
import os
import sys

COMMANDS = {
    "compare": "run the tutorial in torch and every Flax flavour from one set of weights and diff them",
    "train": "train the Flax Net and the torch reference side by side on handwritten digits",
    "eval": "report the test accuracy of a checkpoint",
    "convert": "convert weights between .pt/.pth, .safetensors and Orbax checkpoints",
    "docs": "generate (or --check) the side-by-side tutorial in docs/",
    "bench": "benchmark train-step throughput of Flax and torch side by side",
}


class UsageError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flax-lenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"flax_lenet.app.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"flax_lenet.app.commands.{name}":
                raise
            continue  # not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except (UsageError, ValueError, KeyError, OSError) as e:
        if os.environ.get("FLAX_LENET_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"flax-lenet {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flax-lenet {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console entry point: ``main`` with JAX's persistent compilation cache switched on.

    A second ``flax-lenet`` process loads its compiled steps instead of compiling them again
    (``docs/benchmarks.md``, start-up). ``FLAX_LENET_CACHE=0`` switches it off; a cache
    directory that cannot be used only costs the speed-up.
    """
    if os.environ.get("FLAX_LENET_CACHE", "1") != "0":
        from flax_lenet import cache
        try:
            cache.enable()
        except OSError:
            pass
    sys.exit(main())


if __name__ == "__main__":
    run()
