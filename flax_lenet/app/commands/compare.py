"""``flax-lenet compare``: the tutorial end to end in torch and Flax, one table of differences.

With ``--steps N [--optimizer sgd|momentum|nesterov|adam|adamw]`` it trains N steps in both
frameworks instead (``flax_lenet.trajectory``) and reports, per quantity, the largest difference
over the run and the step where it happened.
"""

import json

from flax_lenet import parity
from flax_lenet.app.cli import positive_int
from flax_lenet.errors import BadConfig
from flax_lenet.table import format_table



def add_arguments(p):
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64 is the truth tier (default: float32)")
    p.add_argument("--kernel-size", type=int, choices=(3, 5), default=3,
                   help="3: the seed's revision; 5: today's tutorial (default: 3)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size N (default: 1, as the tutorial)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and data (default: 0)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate of the update (default: 0.01)")
    p.add_argument("--flavour", choices=parity.FLAVOURS + ("all",), default="all", help="default: all")
    p.add_argument("--tf32", action="store_true",
                   help="on a GPU, leave TF32 on in both frameworks (their defaults) and use the TF32 tier")
    p.add_argument("--break", dest="fault", choices=tuple(parity.FAULTS),
                   help="deliberately break the conversion (fc1 flatten order, a conv kernel reshaped "
                        "instead of transposed, or one conv1 element off by a tenth of the kernel's "
                        "largest) to see the comparison fail")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="train N steps in both frameworks (functional flavour) and report, per quantity, the "
                        "largest difference over the run and the step where it happened")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "nesterov", "adam", "adamw"), default=None,
                   help="with --steps: torch.optim.SGD / SGD(momentum=0.9) / SGD(momentum=0.9, nesterov=True) / "
                        "Adam / AdamW (torch's defaults, --lr) against flax_lenet.optim (default: sgd)")


def main(args) -> int:
    if args.seed < 0:
        raise BadConfig(f"--seed: expected a non-negative integer, found {args.seed}")
    if not 0 <= args.lr < float("inf"):     # torch.optim refuses NaN and < 0; inf makes NaN weights
        torch_says = "" if args.lr == float("inf") else f" (torch.optim: Invalid learning rate: {args.lr})"
        raise BadConfig(f"--lr: expected a finite learning rate >= 0, found {args.lr}{torch_says}")
    if args.optimizer is not None and args.steps is None:
        raise BadConfig(f"--optimizer {args.optimizer}: expected --steps N as well (a training run), found none")
    if args.steps is not None and args.flavour not in ("all", "functional"):
        raise BadConfig(f"--steps: trains the functional flavour only, found --flavour {args.flavour}")
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.steps is not None:
        return _main_steps(args, jax.default_backend())
    flavours = parity.FLAVOURS if args.flavour == "all" else (args.flavour,)
    rows, tol = parity.compare(flavours=flavours, dtype=args.dtype, kernel_size=args.kernel_size,
                               batch=args.batch, seed=args.seed, lr=args.lr, tf32=args.tf32,
                               fault=args.fault)
    ok = all(r.ok for r in rows)
    config = {k: getattr(args, k) for k in ("dtype", "kernel_size", "batch", "seed", "lr", "tf32", "fault")}
    config["device"] = jax.default_backend()
    if args.json:
        print(json.dumps({"config": config, "tolerance": {"rtol": tol.rtol, "reason": tol.reason},
                          "rows": [r.as_dict() for r in rows], "ok": ok}, indent=2))
    else:
        print("flax-lenet compare: " + ", ".join(f"{k}={v}" for k, v in config.items() if v is not None))
        body = [[r.quantity, r.flavour, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}", f"{r.rtol:.0e}",
                 "ok" if r.ok else "FAIL"] for r in rows]
        print(format_table(["quantity", "flavour", "max abs diff", "max rel diff", "tolerance", "ok"], body))
        _print_notes(rows)
        print(f"relative = max|flax - torch| / max|torch|; tolerance: {tol.reason}")
        bad = sum(not r.ok for r in rows)
        print(f"{'all ' + str(len(rows)) + ' quantities agree' if ok else str(bad) + ' of ' + str(len(rows)) + ' quantities differ'}")
    return 0 if ok else 1


def _print_notes(rows) -> None:
    """One line per row that held NaN or Inf, naming the tensor and the side."""
    for r in rows:
        if r.note:
            print(f"not finite: {r.note}")


def _main_steps(args, device) -> int:
    """``--steps N``: one row per quantity, its worst difference over the run and the step."""
    from flax_lenet import trajectory
    opt = trajectory.preset(args.optimizer or "sgd", args.lr)
    rows, tol = trajectory.compare(opt, steps=args.steps, dtype=args.dtype, kernel_size=args.kernel_size,
                                   batch=args.batch, seed=args.seed, tf32=args.tf32, fault=args.fault)
    ok = all(r.ok for r in rows)
    config = {"optimizer": str(opt), "steps": args.steps, "flavour": "functional", "device": device,
              **{k: getattr(args, k) for k in ("dtype", "kernel_size", "batch", "seed", "tf32", "fault")}}
    if args.json:
        print(json.dumps({"config": config, "tolerance": {"rtol": tol.rtol, "reason": tol.reason},
                          "rows": [r.as_dict() for r in rows], "ok": ok}, indent=2))
        return 0 if ok else 1
    print("flax-lenet compare: " + ", ".join(f"{k}={v}" for k, v in config.items() if v is not None))
    body = [[r.quantity, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}", str(r.step), f"{r.rtol:.0e}",
             "ok" if r.ok else "FAIL"] for r in rows]
    print(format_table(["quantity", "max abs diff", "max rel diff", "at step", "tolerance", "ok"], body))
    _print_notes(rows)
    print(f"largest difference over {args.steps} steps, compared after every step; relative = "
          f"max|flax - torch| / max|torch|; tolerance: {tol.reason}")
    bad = sum(not r.ok for r in rows)
    print(f"all {len(rows)} quantities agree" if ok else f"{bad} of {len(rows)} quantities differ")
    return 0 if ok else 1
