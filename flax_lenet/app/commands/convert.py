"""``flax-lenet convert IN OUT``: move weights between torch and Flax formats, by the file names.

    IN / OUT name      format
    *.pt, *.pth        torch state_dict (read with torch.load(weights_only=True) only)
    *.safetensors      safetensors, torch layout
    anything else      Orbax checkpoint directory, Flax layout

``--overwrite`` replaces only a checkpoint of OUT's format (``checkpoint.replaceable``): never a
folder of other files, nor a folder named like a file. The weights of IN are verified against the
SHA-256 they were written with; a checkpoint from another tool gets a note on stderr instead.
"""

import sys
from pathlib import Path

from flax_lenet.app.commands import state_dict_notices
from flax_lenet.errors import BadFile


def add_arguments(p):
    p.add_argument("src", metavar="IN", help=".pt/.pth, .safetensors, or an Orbax checkpoint directory")
    p.add_argument("dst", metavar="OUT", help="the same choices; the format follows the name")
    p.add_argument("--kernel-size", type=int, choices=(3, 5),
                   help="refuse a checkpoint for another kernel size (default: read from the weights)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists and is a checkpoint of OUT's format (nothing else is replaced)")


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
    refuse_existing(args.dst, args.overwrite)
    notes = []
    with state_dict_notices() as notices:
        state = checkpoint.convert_checkpoint(args.src, args.dst, overwrite=args.overwrite,
                                              kernel_size=args.kernel_size, notes=notes)
    for line in notices:
        print(f"notice: {line}", file=sys.stderr)
    for note in notes:
        print(f"flax-lenet convert: note: {note}", file=sys.stderr)
    k = convert.kernel_size_of(convert.torch_to_flax(state))
    print(f"{args.src} ({checkpoint.checkpoint_format(args.src)}) -> {args.dst} "
          f"({checkpoint.checkpoint_format(args.dst)}): Net(kernel_size={k}), "
          f"{sum(v.size for v in state.values()):,} parameters")
    return 0
