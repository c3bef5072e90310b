"""Outlier runs of Adam in float32: how often a single run leaves the float64 path, Flax beside torch.

    python benchmarks/adam_outliers.py [--steps 50] [--batch 8] [--seeds 12] [--lr 1e-3]
                                       [--json benchmarks/results/adam-outliers-50.json]

The method is the float32 grid's (``benchmarks/accuracy.py``, whose docstring explains it): torch
trains ``torch_reference.Net`` in float64 as the truth, and a float32 run's distance from it is
``accuracy.distance``, the worst over steps and parameter tensors of ``max|run - truth| / max|truth|``.
That docstring also says why single runs are no measure: a relu or max-pool input within rounding
of a tie can switch in one run and not another, and from then on that run follows another path.
This script counts such runs, one configuration at a time, over many seeds.

Configurations: every Adam setting of the grid (``accuracy.SETTINGS`` entries whose function is
``adam`` or ``adamw``) at ``--lr`` times the setting's learning-rate scale, and AdamW with lr 3e-3 and
weight_decay 0.05 (where, on another machine, each framework had one far run in 12 seeds).
Kernel size 3.

For each configuration and seed 0 .. ``--seeds``-1:
  * the truth: ``torch.manual_seed(seed); TorchNet(3).double()`` trained in float64 on
    ``parity.tutorial_data(batch, seed, "float64", steps=steps)``, as ``accuracy.point`` does;
  * three single float32 runs, each from the nearest float32 copy of that start and on the same
    batches rounded to float32: torch with its oneDNN convolutions (torch's default on this CPU),
    torch with oneDNN off (``torch.backends.mkldnn.enabled = False``, the documented switch; its
    reference kernels sum in another order), and Flax (``trajectory.flax_steps``);
  * each run's distance from the truth.

An *outlier* is a run whose distance is more than 10x the median of its own framework's distances
over the seeds of that configuration (a NaN distance counts as one). For every outlier the
*witness* is printed: whether torch, at the same seed, left the path too with its other kernel
setting (for a torch outlier: the other oneDNN setting; for a Flax outlier: either), judged by
the same rule. A witnessed outlier is a tie that the float32 rounding decides, not a wrong step.
"""

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FACTOR = 10            # an outlier is more than FACTOR x its framework's median distance
KERNEL_SIZE = 3
#: the configuration seen far on another machine: (function, keyword arguments, learning rate), lr not scaled by --lr
REVIEWER = ("adamw-lr3e-3-wd0.05", ("adamw", {"weight_decay": 0.05}, 3e-3))
#: the three float32 runs at each seed, in the order they are printed
RUNS = ("flax", "torch-onednn", "torch-no-onednn")
LABELS = {"flax": "Flax", "torch-onednn": "torch oneDNN on", "torch-no-onednn": "torch oneDNN off"}
DEFINITION = (f"outlier: a run whose distance from the float64 truth is more than {FACTOR}x the median of "
              f"its own framework's distances over the seeds of that configuration (NaN counts as one)")


def configurations(lr: float) -> dict:
    """name -> (function in flax_lenet.optim, keyword arguments in torch's names, learning rate)."""
    from benchmarks import accuracy
    configs = {name: (fn, kwargs, lr * scale) for name, (fn, kwargs, scale) in accuracy.SETTINGS.items()
               if fn in ("adam", "adamw")}
    configs[REVIEWER[0]] = REVIEWER[1]
    return configs


@contextmanager
def onednn(enabled: bool):
    """torch's oneDNN (mkldnn) kernels on or off inside the block, restored after it."""
    import torch
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def seed_distances(opt, seed: int, *, steps: int, batch: int) -> dict:
    """The three float32 runs at one seed, each as its distance from the float64 truth."""
    import torch

    from benchmarks import accuracy
    from flax_lenet import convert
    from flax_lenet.porting import parity, trajectory
    from torch_reference import Net as TorchNet
    torch.manual_seed(seed)
    state64 = convert.state_to_numpy(TorchNet(KERNEL_SIZE).double().state_dict())
    xs, ys = parity.tutorial_data(batch, seed, "float64", steps=steps)
    truth = list(trajectory.torch_steps(state64, opt, xs, ys))
    start = accuracy.float32_copies(state64, 1)[0]             # the nearest float32 copy
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    with onednn(True):
        on = accuracy.distance(trajectory.torch_steps(start, opt, xs32, ys32), truth)
    with onednn(False):
        off = accuracy.distance(trajectory.torch_steps(start, opt, xs32, ys32), truth)
    flax = accuracy.distance(trajectory.flax_steps(convert.torch_to_flax(start), opt, convert.nchw_to_nhwc(xs32),
                                                   ys32), truth)
    return {"flax": flax, "torch-onednn": on, "torch-no-onednn": off}


def outliers(distances) -> list[int]:
    """Indices (seeds) of the runs more than FACTOR x the median of ``distances`` (NaN: always)."""
    d = np.asarray(distances, np.float64)
    median = np.nanmedian(d)
    return [i for i, x in enumerate(d) if not x <= FACTOR * median]


def witness(run: str, seed: int, flagged: dict) -> list[str]:
    """The torch runs at ``seed``, other than ``run``, that are outliers too."""
    others = [r for r in RUNS if r.startswith("torch") and r != run]
    return [r for r in others if seed in flagged[r]]


def environment() -> dict:
    """bench's record of the machine (CPU, versions, threads, load), and whether oneDNN is there."""
    import torch

    from flax_lenet.app.bench import BenchConfig, environment as bench_environment
    return {**bench_environment(BenchConfig()), "torch_onednn_available": torch.backends.mkldnn.is_available()}


def _row(distances) -> str:
    return " ".join(f"{d:.1e}" for d in distances)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps per run (default 50)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--seeds", type=int, default=12, help="seeds 0 .. N-1 per configuration (default 12)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate of the grid's settings, times each one's scale (default 1e-3); "
                             f"{REVIEWER[0]} keeps its own")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads (default 1, as benchmarks/float32_grid.py; the order of "
                             "torch's sums may depend on it)")
    parser.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every distance here")
    args = parser.parse_args(argv)

    import torch

    from flax_lenet import optim
    torch.set_num_threads(args.torch_threads)
    configs = configurations(args.lr)
    if args.only:
        configs = {name: configs[name] for name in args.only.split(",")}
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    results = {}
    for name, (fn, kwargs, lr) in configs.items():
        opt = optim.Optimizer.of(fn, lr=lr, **kwargs)
        per_seed = [seed_distances(opt, s, steps=args.steps, batch=args.batch) for s in seeds]
        distances = {r: [d[r] for d in per_seed] for r in RUNS}
        results[name] = {"function": fn, "kwargs": kwargs, "lr": lr, "distances": distances,
                         "medians": {r: float(np.nanmedian(distances[r])) for r in RUNS},
                         "outliers": {r: outliers(distances[r]) for r in RUNS}}
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start

    print(f"{len(configs)} configurations x {len(seeds)} seeds, kernel {KERNEL_SIZE}, batch {args.batch}, "
          f"{args.steps} steps, torch threads {args.torch_threads}; each run's distance from the float64 truth "
          f"(accuracy.distance), seeds {seeds[0]}..{seeds[-1]}")
    print(DEFINITION)
    for name, r in results.items():
        kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        print(f"{name} ({r['function']} lr={r['lr']:g}{', ' + kw if kw else ''})")
        for run in RUNS:
            flagged = r["outliers"][run]
            print(f"  {LABELS[run]:17s} {_row(r['distances'][run])}   median {r['medians'][run]:.1e}; "
                  f"outlier seeds: {', '.join(map(str, flagged)) or '-'}")

    print(f"outliers per configuration (of {len(seeds)} seeds each):")
    print(f"  {'configuration':26s} " + " ".join(f"{LABELS[run]:>17s}" for run in RUNS))
    for name, r in results.items():
        print(f"  {name:26s} " + " ".join(f"{len(r['outliers'][run]):17d}" for run in RUNS))
    total = len(configs) * len(seeds)
    counts = {run: sum(len(r["outliers"][run]) for r in results.values()) for run in RUNS}
    print("outliers in all: " + ", ".join(f"{LABELS[run]} {counts[run]} of {total}" for run in RUNS))

    print("every outlier run, with the distances of all three runs at its seed and its witness (torch, with "
          "the other kernel setting, also an outlier there):")
    listed = []
    for name, r in results.items():
        for run in RUNS:
            for seed in r["outliers"][run]:
                w = witness(run, seed, r["outliers"])
                at = ", ".join(f"{LABELS[q]} {r['distances'][q][seed]:.1e}" for q in RUNS)
                ratio = r["distances"][run][seed] / r["medians"][run]
                print(f"  {name} seed {seed}: {LABELS[run]} ({ratio:.0f}x its median); {at}; witness: "
                      + (", ".join(LABELS[q] for q in w) if w else "none"))
                listed.append({"configuration": name, "seed": seed, "run": run, "distance": r["distances"][run][seed],
                               "times_median": ratio, "witness": w})
    if not listed:
        print("  none")
    print(f"{elapsed:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {"environment": environment(),
                "options": {"steps": args.steps, "batch": args.batch, "seeds": seeds, "lr": args.lr,
                            "kernel_size": KERNEL_SIZE, "torch_threads": args.torch_threads},
                "definition": DEFINITION, "factor": FACTOR, "seconds": round(elapsed, 1),
                "configurations": results, "counts": {"runs": total, **counts}, "outliers": listed}
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
