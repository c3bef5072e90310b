"""How far float32 training runs drift from float64, Flax beside torch: the grid of ``benchmarks/accuracy.py``.

    python benchmarks/float32_grid.py [--steps 30] [--members 5] [--json benchmarks/results/float32-grid-30.json]

For each of the 96 grid points (12 optimizer settings x kernel 3/5 x batch 1/16 x lr 1e-2/1e-3)
it trains torch in float64 (the truth) and, from ``--members`` float32 copies of the start, torch
and Flax in float32, and prints:
  * per setting, the ratio Flax's error / torch's (geometric means over the copies): median and
    worst over the points, and the settings' errors;
  * the single-run comparisons the grid does not judge by, with how often each exceeds 10x:
    Flax's nearest copy against torch's, and torch's nearest copy against torch's own second
    copy (torch against itself);
  * the broken twin, optax's own Adam (bias correction in float32), on the "adam" setting;
  * the 3 worst points again with torch's oneDNN convolutions off: the paths Flax's copies take
    there, torch's own float32 takes too with its other convolution kernels.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _copies(distances) -> str:
    return " ".join(f"{d:.0e}" for d in distances)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: accuracy.STEPS)")
    parser.add_argument("--members", type=int, default=None, help="float32 copies per point (default: accuracy.MEMBERS)")
    parser.add_argument("--json", type=Path, default=None, help="write every point's distances here")
    args = parser.parse_args(argv)

    import optax
    import torch

    from benchmarks import accuracy
    from flax_lenet.porting.tolerances import TRAJECTORY_FLOAT32_RATIO as RATIO
    torch.set_num_threads(1)
    steps = args.steps or accuracy.STEPS
    members = args.members or accuracy.MEMBERS
    start = time.perf_counter()
    def progress(p):                     # on stderr, one line per point: the grid takes minutes
        print(f"  {p}: ratio {p.ratio:.3g}", file=sys.stderr, flush=True)
    points = list(accuracy.grid(steps=steps, members=members, progress=progress))
    twin = list(accuracy.grid(["adam"], steps=steps, members=members, flax_tx=lambda lr: optax.adam(lr, eps=1e-8)))

    print(f"{len(points)} points, {steps} steps, {members} float32 copies each; Flax's error / torch's "
          f"(geometric means over the copies), bound {RATIO:g}")
    print(f"{'setting':26s} {'median':>7s} {'worst':>7s}   {'torch error':>19s}   {'Flax error':>19s}")
    for setting in accuracy.SETTINGS:
        ps = [p for p in points if p.setting == setting]
        r = [p.ratio for p in ps]
        t, f = [p.torch_error for p in ps], [p.flax_error for p in ps]
        print(f"{setting:26s} {np.median(r):7.2f} {max(r):7.2f}   {min(t):8.1e} .. {max(t):8.1e}   "
              f"{min(f):8.1e} .. {max(f):8.1e}")
    worst = max(points, key=lambda p: p.ratio)
    print(f"worst point: {worst}, ratio {worst.ratio:.3g}; points over {RATIO:g}: "
          f"{sum(not p.ok for p in points)} of {len(points)}")

    def over(pairs):
        return sum(a > RATIO * b or b > RATIO * a for a, b in pairs)
    single = over((p.flax[0], p.torch[0]) for p in points)
    self_ = over((p.torch[0], p.torch[1]) for p in points) if members > 1 else None
    print(f"single runs, either side over {RATIO:g}x the other: Flax against torch (nearest copies) {single} of "
          f"{len(points)}" + (f"; torch against itself (nearest copy against a second copy) {self_} of "
                             f"{len(points)}" if self_ is not None else ""))
    r = [p.ratio for p in twin]
    print(f"twin, optax.adam for Flax on 'adam': median ratio {np.median(r):.3g}, worst {max(r):.3g}, "
          f"points over {RATIO:g}: {sum(not p.ok for p in twin)} of {len(twin)}")
    print("the 3 worst points again, torch with its oneDNN convolutions off (torch.backends.mkldnn; its "
          "reference kernels, another summation order), distances per float32 copy:")
    for p in sorted(points, key=lambda p: -p.ratio)[:3]:
        with warnings.catch_warnings():
            # torch 2.13 warns on entering and leaving mkldnn.flags() that oneDNN's TF32 needs an Intel GPU
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                q = accuracy.point(p.setting, p.kernel_size, p.batch, p.lr, p.seed, steps=steps, members=members)
        print(f"  {p}: Flax {_copies(p.flax)}; torch {_copies(p.torch)}; torch without oneDNN {_copies(q.torch)} "
              f"(ratio to it {p.flax_error / q.torch_error:.3g})")
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"point": str(p), "setting": p.setting, "kernel_size": p.kernel_size, "batch": p.batch, "lr": p.lr,
                 "seed": p.seed, "torch": p.torch, "flax": p.flax, "ratio": p.ratio} for p in points]
        args.json.write_text(json.dumps({"steps": steps, "members": members, "points": rows,
                                         "twin_optax_adam": [{"point": str(p), "ratio": p.ratio} for p in twin]},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
