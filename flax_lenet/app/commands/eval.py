"""``flax-lenet eval CKPT``: the test accuracy of a checkpoint, in Flax and in torch.

CKPT is a ``.pt``/``.pth`` or ``.safetensors`` file (torch layout) or an Orbax checkpoint
directory (Flax layout); the format is read from the name (``flax_lenet.app.checkpoint``).
Its weights are verified against the SHA-256 they were written with (a mismatch: one line, exit
2); a checkpoint from another tool carries none, and gets a note on stderr instead.
"""

import json
import os

from flax_lenet.app.commands import print_notes, state_dict_notices
from flax_lenet.errors import BadConfig, BadWeights


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CKPT", help=".pt/.pth, .safetensors, or an Orbax checkpoint directory")
    p.add_argument("--data", choices=("digits", "mnist"), default="digits", help="default: digits")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST IDX files (for --data mnist)")
    p.add_argument("--framework", choices=("both", "flax", "torch"), default="both",
                   help="which framework runs the Net (default: both)")
    p.add_argument("--kernel-size", type=int, choices=(3, 5),
                   help="refuse a checkpoint for another kernel size (default: read from the weights)")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args) -> int:
    if args.data == "mnist" and not args.data_dir:
        raise BadConfig("--data mnist: expected --data-dir DIR with the IDX files, found none")
    if args.data_dir and args.data != "mnist":
        raise BadConfig("--data-dir: expected --data mnist with it, found --data digits")
    from flax_lenet.app import files
    files.put_back(args.checkpoint)               # a folder swap killed between its renames: undone first
    if not os.path.isdir(args.checkpoint):        # an Orbax folder, or a file: only a regular one is opened
        from flax_lenet.app.paths import require_regular_file
        require_regular_file(args.checkpoint, "a checkpoint: a .pt/.pth or .safetensors file, or an Orbax folder")
    import jax
    import numpy as np

    from flax_lenet import convert
    from flax_lenet.app import checkpoint, data, training
    notes = []
    with state_dict_notices() as notices:
        state = checkpoint.load_state(args.checkpoint, kernel_size=args.kernel_size, notes=notes)
    for name, value in state.items():         # integer, boolean or complex weights are not the Net's
        if np.asarray(value).dtype.kind in "biuc":
            raise BadWeights(f"{args.checkpoint}: expected floating-point weights (float32 or float64), "
                             f"found {np.asarray(value).dtype} in {name}")
    dtype, upcast = next(iter(state.values())).dtype, None
    if dtype.itemsize == 2:                   # bfloat16 (ml_dtypes) or float16: every value is exact in float32
        upcast = f"{args.checkpoint} holds {dtype} weights: evaluated in float32, to which they convert exactly"
        state, dtype = {k: np.asarray(v).astype(np.float32) for k, v in state.items()}, np.dtype(np.float32)
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    dataset = data.load(args.data, args.data_dir)
    x = dataset.images("test").astype(dtype)
    report = {"checkpoint": str(args.checkpoint), "format": checkpoint.checkpoint_format(args.checkpoint),
              "kernel_size": convert.kernel_size_of(convert.torch_to_flax(state)), "data": dataset.describe(),
              "verified": not notes}
    if args.framework in ("both", "flax"):
        report["flax"] = training.flax_accuracy(convert.torch_to_flax(state), x, dataset.y_test)
    if args.framework in ("both", "torch"):
        report["torch"] = training.torch_accuracy(state, x, dataset.y_test)
    print_notes("eval", notices + notes + ([upcast] if upcast else []))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        accs = "  ".join(f"{name} {100 * report[name]:.2f}%" for name in ("flax", "torch") if name in report)
        print(f"{args.checkpoint} ({report['format']}, kernel size {report['kernel_size']}): test accuracy "
              f"on {dataset.name} ({len(dataset.y_test)} images): {accs}")
    return 0
