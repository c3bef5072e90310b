"""``flax-lenet train``: the Flax Net and the torch reference learn handwritten digits side by side.

Writes to ``--out``: ``metrics.json``, ``curves.png``, the Flax-trained weights as an Orbax
checkpoint (``flax.orbax``, Flax layout) and the torch-trained weights as ``torch.safetensors``
(torch layout). Library: ``flax_lenet.app.training``; this file only parses, calls and prints.
"""


import os

from flax_lenet.app.cli import positive_int
from flax_lenet.app.commands import print_notes
from flax_lenet.errors import BadConfig, BadFile, BadInput


# A batch of 32 through this Net is too little work to share between threads, and torch's
# OpenMP threads spin while waiting for it: on 2 shared cores one thread is torch's fastest
# setting here. The Flax side keeps XLA's own thread pool.
TORCH_THREADS = 1
# torch.set_num_threads overflows above 2**31 and crashes the process (a segmentation fault)
# when asked for 100,000 threads; no machine this runs on has more cores than this.
MAX_TORCH_THREADS = max(256, os.cpu_count() or 1)


def add_arguments(p):
    from flax_lenet.app.config import TrainConfig
    d = TrainConfig()
    p.add_argument("--data", choices=("digits", "mnist"), default="digits",
                   help="digits: scikit-learn's 1,797 handwritten digits (no download); "
                        "mnist: the IDX files in --data-dir (default: digits)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with train-images-idx3-ubyte[.gz] etc. (for --data mnist)")
    p.add_argument("--loss", choices=("ce", "mse"), default=d.loss,
                   help="ce: cross-entropy; mse: the tutorial's MSELoss on one-hot targets (default: ce)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"default: {d.epochs}")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default: {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default: {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"default: {d.momentum}")
    p.add_argument("--lr-decay-at", type=float, default=d.lr_decay_at,
                   help=f"fraction of the epochs after which lr drops 10x (default: {d.lr_decay_at})")
    p.add_argument("--shift", type=int, default=d.shift,
                   help=f"random shifts of up to this many pixels, 0 for none (default: {d.shift})")
    p.add_argument("--seed", type=int, default=d.seed, help="initial weights and batch order (default: 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype, help="default: float32")
    p.add_argument("--kernel-size", type=int, choices=(3, 5), default=d.kernel_size, help="default: 3")
    p.add_argument("--max-steps", type=positive_int, help="at most this many batches per epoch (smoke runs)")
    p.add_argument("--torch-threads", type=positive_int, default=TORCH_THREADS,
                   help=f"threads for the torch side, torch.set_num_threads (default: {TORCH_THREADS}, "
                        "the fastest for a Net this small)")
    p.add_argument("--out", metavar="DIR", help="directory for metrics.json, curves.png and the checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def prepare_out(out, overwrite: bool):
    """``runs.prepare_run_dir`` with its errors worded for this command's ``--out`` and ``--overwrite``."""
    from flax_lenet.app import runs
    from flax_lenet.app.files import check_name
    check_name(out, "--out")
    earlier = runs.earlier_run(out)
    if earlier and not overwrite:
        raise BadFile(f"--out: expected a new or empty run directory, found an earlier run in {out} "
                      f"({', '.join(earlier)}); pass --overwrite to replace it")
    try:
        return runs.prepare_run_dir(out, overwrite=overwrite)
    except BadFile as e:
        raise BadFile(f"--out: {e}") from None


def check_arguments(args) -> None:
    """Refuse, naming the option, what argparse's types let through."""
    if not 0 <= args.seed < 2 ** 64:
        raise BadConfig(f"--seed: expected an integer in 0..2**64-1 (torch.manual_seed takes 64 bits), "
                        f"found {args.seed}")
    if args.torch_threads > MAX_TORCH_THREADS:
        raise BadConfig(f"--torch-threads: expected 1..{MAX_TORCH_THREADS} threads, found {args.torch_threads}")
    for name in ("lr", "momentum", "lr_decay_at"):
        value = getattr(args, name)
        if value != value or value in (float("inf"), float("-inf")):
            raise BadConfig(f"--{name.replace('_', '-')}: expected a finite number, found {value}")


def main(args) -> int:
    import time
    start = time.perf_counter()
    check_arguments(args)
    if args.data == "mnist" and not args.data_dir:
        raise BadConfig("--data mnist: expected --data-dir DIR with the IDX files, found none")
    if args.data_dir and args.data != "mnist":
        raise BadConfig("--data-dir: expected --data mnist with it, found --data digits")
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        return _train(args, start)
    finally:
        torch.set_num_threads(threads)      # in-process callers (tests) keep their setting
        if args.out:
            from flax_lenet.app import runs
            runs.release_run_dir(args.out)  # the lock prepare_out took (a no-op if it took none)


def _train(args, start) -> int:
    import time

    import jax

    from flax_lenet.app import data, runs, training

    cfg = training.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               momentum=args.momentum, lr_decay_at=args.lr_decay_at, shift=args.shift,
                               loss=args.loss, seed=args.seed, dtype=args.dtype,
                               kernel_size=args.kernel_size,
                               max_steps_per_epoch=args.max_steps)
    dataset = data.load(args.data, args.data_dir)       # bad data: fail before --out is created
    out = prepare_out(args.out, args.overwrite) if args.out is not None else None
    notes = []
    progress, say, close_bar = runs.progress_bars(cfg, args.quiet)
    if not args.quiet:
        say(f"flax-lenet train: {dataset.name} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
            f"images), {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.loss} loss, {cfg.dtype}, "
            f"jax on {jax.default_backend()}")
    on_epoch = None if args.quiet else (lambda epoch, result: say(runs.epoch_line(epoch, result)))
    try:
        result = training.train(dataset, cfg, on_epoch=on_epoch, progress=progress)
    except training.TrainingDiverged as e:
        close_bar()
        done = len(e.last_good.flax.train_loss)
        kept = f"the weights after epoch {done}" if done else "the initial weights"
        if out is None:
            raise BadInput(f"{e}; nothing saved (no --out)") from None
        if "metrics.json" in runs.earlier_run(out):     # a run that failed never replaces a finished one
            raise BadInput(f"{e}; nothing saved: the finished run already in {out} is kept as it was") from None
        runs.write_run(out, e.last_good, None, dataset.name, notes)   # weights only: not a finished run
        raise BadInput(f"{e}; kept {kept} (the last with a finite loss) in {out}/flax.orbax and "
                       f"{out}/torch.safetensors" + "".join(f"; note: {note}" for note in notes)) from None
    close_bar()
    metrics = result.metrics(dataset.describe())
    metrics["seconds_total"] = time.perf_counter() - start
    f_acc, t_acc = metrics["flax"]["test_accuracy"], metrics["torch"]["test_accuracy"]
    print(f"test accuracy: flax {100 * f_acc:.2f}%  torch {100 * t_acc:.2f}%  "
          f"(difference {metrics['difference']['test_accuracy_points']:.2f} points); "
          f"step losses differ by at most {metrics['difference']['step_loss_max_rel']:.1e} relative; "
          f"train time flax {result.flax.seconds:.1f} s, torch {result.torch.seconds:.1f} s "
          f"(start-up apart: flax compiles {result.flax.compile_seconds:.1f} s, "
          f"torch {result.torch.compile_seconds:.1f} s)")
    if out is not None:
        metrics["seconds_total"] = time.perf_counter() - start
        runs.write_run(out, result, metrics, dataset.name, notes)
        print(f"wrote {out}/metrics.json, curves.png, flax.orbax (Flax layout), torch.safetensors (torch layout) "
              f"in {metrics['seconds_total']:.1f} s")
        print_notes("train", notes)
    return 0
