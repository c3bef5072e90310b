"""``flax-lenet convert IN OUT``: move weights between torch and Flax formats, by the file names.

    IN / OUT name      format
    *.pt, *.pth        torch state_dict (read with torch.load(weights_only=True) only)
    *.safetensors      safetensors, torch layout
    anything else      Orbax checkpoint directory, Flax layout

``--overwrite`` replaces only a checkpoint of OUT's format (``checkpoint.replaceable``): never a
folder of other files, nor a folder named like a file. The weights of IN are verified against the
SHA-256 they were written with; a checkpoint from another tool gets a note on stderr instead.

Without more, IN holds the tutorial's Net. Any other model's torch checkpoint converts to its Flax
port with ``--torch FILE.py:TorchCls --flax FILE.py:FlaxCls`` (as ``compare`` takes them): IN
(``.pt``/``.pth``/``.safetensors``, read as ``checkpoint.read_torch_state`` reads it) goes through
``port.torch_to_flax`` by module path and layer type (``--name-map``, ``--flatten``, as ``compare``),
is checked against the Flax model's variables and shapes (``port.check_shapes``), and OUT gets the
Flax variables (``checkpoint.save_flax_tree``): an Orbax directory holding the model's
``nnx.to_pure_dict`` tree of params and batch stats, or a ``.safetensors`` of the same leaves named
by their paths joined with ``.``. ``--flatten auto`` (the default) runs the torch model once on an
input of ``--input-shape`` (standard-normal numbers, or tokens with ``--input-dtype int64
--input-high K``, as ``compare``) to find each Linear after a flatten; without ``--input-shape`` it
is refused unless the model has no Linear (declare the flattens, or ``--flatten none``, instead).

Exit codes: 0 written, 2 bad input or usage (one line on stderr), 3 with ``--torch``/``--flax``:
the model raised while built or run once for ``--flatten auto`` (one line), 130 interrupted.
"""

import argparse
import sys
from pathlib import Path

from flax_lenet.app.commands import print_notes, state_dict_notices
from flax_lenet.app.commands.compare import FLAX_HELP, TORCH_HELP, add_input_arguments, add_mapping_arguments
from flax_lenet.errors import BadConfig, BadFile, BadWeights

EXIT_CODES = """\
exit codes: 0 written; 2 bad input or usage (one line on stderr); 3 with --torch/--flax: the model
raised while it was built or run once for --flatten auto (one line; FLAX_LENET_DEBUG=1 shows the
traceback); 130 interrupted."""


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter     # the epilog's lines as written
    p.epilog = EXIT_CODES
    p.add_argument("src", metavar="IN", help=".pt/.pth, .safetensors, or an Orbax checkpoint directory")
    p.add_argument("dst", metavar="OUT", help="the same choices; the format follows the name")
    p.add_argument("--kernel-size", type=int, choices=(3, 5),
                   help="refuse a checkpoint for another kernel size (default: read from the weights)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists and is a checkpoint of OUT's format (nothing else is replaced)")
    own = p.add_argument_group("another model (IN .pt/.pth/.safetensors; OUT its Flax port's variables, "
                               "Orbax or .safetensors)")
    own.add_argument("--torch", metavar="MODULE:NAME", help=TORCH_HELP + " (for its layer types and shapes)")
    own.add_argument("--flax", metavar="MODULE:NAME", help=FLAX_HELP.replace("seed", "0") + ", checked to fit")
    own.add_argument("--input-shape", metavar="N,C,H,W",
                     help="the shape of a torch input, for --flatten auto to run the model once on random "
                          "numbers; needed when the torch model has a Linear (or pass --flatten)")
    add_input_arguments(own, default=None, floats="standard-normal float32 inputs")
    add_mapping_arguments(own)


PORT_OPTIONS = ("torch", "flax", "input_shape", "input_dtype", "input_high", "name_map", "flatten")


def refuse_existing(dst, overwrite: bool) -> None:
    """Refuse an existing OUT unless ``--overwrite`` may replace it, in the command's words, before reading IN."""
    from flax_lenet.app import checkpoint
    from flax_lenet.app.files import check_name
    check_name(dst, "OUT")
    dst = Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise BadFile(f"{dst}: expected a new OUT, found an existing "
                      f"{'directory' if dst.is_dir() else 'file'}; pass --overwrite to replace it")
    reason = checkpoint.replaceable(dst)
    if reason:
        raise BadFile(f"--overwrite: {reason}; nothing was changed")


def main(args) -> int:
    from flax_lenet import convert
    from flax_lenet.app import checkpoint
    if any(getattr(args, option) is not None for option in PORT_OPTIONS):
        return _main_port(args)
    refuse_existing(args.dst, args.overwrite)
    notes = []
    with state_dict_notices() as notices:
        try:
            state = checkpoint.convert_checkpoint(args.src, args.dst, overwrite=args.overwrite,
                                                  kernel_size=args.kernel_size, notes=notes)
        except checkpoint.NotTheNet as e:
            raise BadWeights(f"{e}; for another model pass --torch FILE.py:TorchCls --flax FILE.py:FlaxCls "
                             "(see --help)") from None
    _print_notes(notices, notes)
    k = convert.kernel_size_of(convert.torch_to_flax(state))
    print(f"{args.src} ({checkpoint.checkpoint_format(args.src)}) -> {args.dst} "
          f"({checkpoint.checkpoint_format(args.dst)}): Net(kernel_size={k}), "
          f"{sum(v.size for v in state.values()):,} parameters")
    return 0


def _print_notes(notices, notes) -> None:
    for line in notices:
        print(f"notice: {line}", file=sys.stderr)
    print_notes("convert", notes)


def find_flattens(torch_model, shape, args):
    """``--flatten auto``: ``port.record_flattens`` on one input of ``shape`` (standard-normal, or
    tokens with ``--input-dtype int64``); ``None``: the model has no Linear, so nothing to permute."""
    import numpy as np
    import torch

    from flax_lenet.app.commands.compare import probe, random_input
    from flax_lenet.porting import port
    if not any(isinstance(m, torch.nn.Linear) for m in torch_model.modules()):
        return None
    if shape is None:
        raise BadConfig("--flatten auto: expected --input-shape N,... to run the torch model once and find "
                        "each Linear after a flatten, found none; or pass --flatten none (no permutation) "
                        "or --flatten LINEAR_PATH=C,H,W")
    x = torch.from_numpy(random_input(args, shape, np.random.default_rng(0), "float32"))
    return probe("--torch", args.torch, lambda: port.record_flattens(torch_model.eval(), x), shape)


def nested(variables: dict) -> dict:
    """``{'params': {'a.b/kernel': x}, 'batch_stats': {'a.c/mean': y}}`` -> ``{'a': {'b': {'kernel': x},
    'c': {'mean': y}}}``: the tree ``nnx.to_pure_dict(nnx.state(model))`` has for those variables."""
    from flax import traverse_util
    flat = {}
    for collection in variables.values():
        for key, array in collection.items():
            module, _, leaf = key.rpartition("/")
            flat[(*(module.split(".") if module else ()), leaf)] = array
    return traverse_util.unflatten_dict(flat)


def _main_port(args) -> int:
    """``convert IN OUT --torch A --flax B``: any torch checkpoint to its Flax port's variables."""
    from flax_lenet.app import checkpoint
    from flax_lenet.app.commands import compare
    from flax_lenet.porting import port
    if args.torch is None or args.flax is None:
        given = ", ".join(f"--{k.replace('_', '-')}" for k in PORT_OPTIONS if getattr(args, k) is not None)
        raise BadConfig(f"--torch and --flax: expected both (another model's conversion), found {given}")
    if args.kernel_size is not None:
        raise BadConfig(f"--kernel-size {args.kernel_size}: expected it for the tutorial's Net only, found "
                        "--torch/--flax as well")
    refuse_existing(args.dst, args.overwrite)
    fmt = checkpoint.check_flax_tree_name(args.dst)
    compare.check_input_arguments(args)
    shape = compare.parse_shape(args.input_shape) if args.input_shape is not None else None
    name_map, flatten = compare.parse_name_map(args.name_map), compare.parse_flatten(args.flatten)
    *_, torch_model, flax_model = compare.build_models(args.torch, args.flax, 0)
    compare.check_mapping(name_map, flatten, torch_model, args.torch)
    if flatten == "auto":
        flatten = find_flattens(torch_model, shape, args)
    notes = []
    with state_dict_notices() as notices:
        state = checkpoint.read_torch_state(args.src, notes=notes)
        try:
            variables = port.torch_to_flax(torch_model, state, flatten=flatten, name_map=name_map)
            port.check_shapes(variables, flax_model)
        except BadWeights as e:
            raise BadWeights(f"{args.src}: {compare.in_cli_words(e)}") from None
    checkpoint.save_flax_tree(args.dst, nested(variables), overwrite=args.overwrite, notes=notes)
    _print_notes(notices, notes)
    leaves = [a for collection in variables.values() for a in collection.values()]
    permuted = "; flatten permuted for " + ", ".join(f"{k} {v}" for k, v in flatten.items()) if flatten else ""
    print(f"{args.src} ({checkpoint.checkpoint_format(args.src)}) -> {args.dst} ({fmt}, Flax layout): "
          f"{args.torch} -> {args.flax}, {len(leaves)} tensors, {sum(a.size for a in leaves):,} values{permuted}")
    return 0
