"""``flax-lenet bench``: train-step throughput of Flax and torch, each at its best; table, JSON, PNG."""

import json
import os

from flax_lenet.app import files
from flax_lenet.errors import BadConfig, BadFile


MAX_MIN_TIME = 60.0     # seconds per implementation and round; more only makes a run take hours
MAX_ROUNDS = 1000       # rounds of every implementation; the median of more is no more stable


def _int_list(text):
    import argparse
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, found {text!r}")
    return values


def add_arguments(p):
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where both frameworks run (default: cpu)")
    p.add_argument("--batch", type=_int_list, default=None,
                   help="comma-separated batch sizes (default: 1,4,...,1024 on cpu; up to 65536 on gpu)")
    p.add_argument("--impl", default="all",
                   help="comma-separated implementations, e.g. torch:eager,flax:train_step (default: all)")
    p.add_argument("--precision", choices=("default", "highest", "both"), default=None,
                   help="default: each framework's own (TF32 on GPUs); highest: TF32 off in both "
                        "(default: both on gpu, default on cpu)")
    p.add_argument("--kernel-size", type=int, choices=(3, 5), default=3, help="default: 3")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported (default: 5)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per implementation per round (default: 0.2)")
    p.add_argument("--processes", choices=("separate", "one"), default="separate",
                   help="separate: each implementation measured in a fresh process of its own, so their "
                        "thread pools do not compete; one: everything interleaved in this process "
                        "(default: separate)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--png", metavar="PATH", help="also write a throughput-vs-batch plot to PATH")


def _config(args):
    from flax_lenet.app import bench
    if not 1 <= args.rounds <= MAX_ROUNDS or not 0 < args.min_time <= MAX_MIN_TIME:
        raise BadConfig(f"--rounds must be in [1, {MAX_ROUNDS}] and --min-time in (0, {MAX_MIN_TIME:g}] seconds, "
                        f"found {args.rounds} and {args.min_time}")
    impls = bench.IMPLS if args.impl == "all" else tuple(i.strip() for i in args.impl.split(","))
    unknown = [i for i in impls if i not in bench.IMPLS]
    if unknown:
        raise BadConfig(f"--impl: expected some of {', '.join(bench.IMPLS)}, found {', '.join(unknown)}")
    precision = args.precision or ("both" if args.device == "gpu" else "default")
    precisions = bench.PRECISIONS if precision == "both" else (precision,)
    batches = args.batch or (bench.GPU_BATCHES if args.device == "gpu" else bench.CPU_BATCHES)
    from flax_lenet.app.checks import check_batch_size
    for batch in batches:
        check_batch_size(batch, "--batch")
    return bench.BenchConfig(device=args.device, batches=batches, impls=impls, precisions=precisions,
                             kernel_size=args.kernel_size, rounds=args.rounds, min_time=args.min_time)


def main(args) -> int:
    cfg = _config(args)
    for option, path in (("--json", args.json), ("--png", args.png)):
        if path:
            try:
                files.check_writable(path)          # before the benchmark, not after it
            except BadFile as e:
                raise BadFile(f"{option}: {e}") from None
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BadConfig("--png: expected matplotlib to be installed, found none "
                             "(pip install matplotlib)") from None
    if cfg.device == "gpu":
        # JAX would otherwise take 75% of the GPU's memory at start-up and starve torch
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax
        import torch
        if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in jax.devices()):
            raise BadConfig("--device gpu: expected a CUDA device visible to both torch and jax, found none")
    from flax_lenet.app import bench
    env = bench.environment(cfg)
    print(f"flax-lenet bench: {env['device']} ({env.get('torch_device') or env['jax_device']}, {env['cpu']}, "
          f"{env['cpu_count']} cores, torch threads {env['torch_threads']}); jax {env['jax']}, "
          f"flax {env['flax']}, torch {env['torch']}; {env['date']}", flush=True)
    if cfg.device == "cpu" and any(p == "highest" for p in cfg.precisions):
        print("note: on a CPU 'highest' and 'default' are the same computation; measuring 'default' only")
    measure = bench.run_in_processes if args.processes == "separate" else bench.run
    print(f"processes: {'each implementation in a process of its own' if args.processes == 'separate' else 'one, interleaved rounds'}")
    results = measure(cfg, log=lambda s: print(s, flush=True))
    print(bench.table(results, cfg))
    for line in bench.summary(results, cfg):
        print(line)
    if args.json:
        files.write_text(args.json, json.dumps(bench.to_json(results, cfg, env), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        bench.plot(results, env, args.png)
        print(f"wrote {args.png}")
    return 0
