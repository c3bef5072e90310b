"""``flax-lenet compare``: the tutorial end to end in torch and Flax, one table of differences.

With ``--steps N [--optimizer sgd|momentum|nesterov|adam|adamw]`` it trains N steps in both
frameworks instead (``flax_lenet.porting.trajectory``) and reports, per quantity, the largest difference
over the run and the step where it happened.

With ``--torch pkg.module:TorchNet --flax pkg.module:FlaxNet --input-shape 8,3,32,32`` it checks
your own port instead, through the same harness (``flax_lenet.porting.parity.check``); ``pkg.module``
may be a path to a ``.py`` file. ``check``'s options are options here: ``--name-map TORCH=FLAX``
(its ``name_map``), ``--flatten auto|none|LINEAR=C,H,W`` (its ``flatten``), ``--rtol QUANTITY=VALUE``
(its ``rtol``). The batch is the first number of ``--input-shape``; a ``--batch`` that differs is
refused. A Dropout whose rate differs between the two models is named in a notice
(``flax_lenet.porting.dropout``): the comparison runs with Dropout off and cannot see it.

Exit codes: 0 every quantity agrees, 1 one differs (or the outputs differ in shape), 2 bad input
or usage (one line on stderr, no traceback), 3 your model raised, or returned something other
than one array: one line naming the side, the model, the input shape and the exception
(``FLAX_LENET_DEBUG=1``: the traceback). An exception that did not pass through your file is the
harness's and keeps its traceback. 130 interrupted (Ctrl-C).
"""

import argparse
import json
import math
import sys

from flax_lenet.app.cli import positive_int
from flax_lenet.errors import BadConfig, BadInput, BadWeights, ModelRaised
from flax_lenet.porting.names import FAULTS, FLAVOURS, LOSSES



#: ``--optimizer NAME``: (``flax_lenet.optim`` function / torch.optim class, keyword arguments besides ``lr``)
PRESETS = {
    "sgd": ("sgd", {}),
    "momentum": ("sgd", {"momentum": 0.9}),
    "nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
}


def preset(name: str, lr: float):
    """The ``--optimizer`` preset ``name`` with learning rate ``lr``, as an ``optim.Optimizer``."""
    from flax_lenet import optim
    function, kwargs = PRESETS[name]
    return optim.Optimizer.of(function, lr=lr, **kwargs)


EXIT_CODES = """\
exit codes: 0 every quantity agrees; 1 one differs (or the outputs differ in shape); 2 bad input or
usage (one line on stderr: a bad option value, --input-shape, --name-map, --flatten, --rtol or
--batch, a module that cannot be imported); 3 with --torch/--flax: your model raised, or returned
something other than one array (one line; FLAX_LENET_DEBUG=1 shows the traceback); 130 interrupted."""

TORCH_HELP = ("a torch nn.Module class built with no arguments, or a zero-argument factory; MODULE is pkg.module "
              "or a path to a .py file")
FLAX_HELP = "an NNX module class built as Cls(rngs=nnx.Rngs(seed)), or a zero-argument factory"


def add_mapping_arguments(group) -> None:
    """``--name-map`` and ``--flatten``: how the torch model's weights map onto the Flax model's
    (``port.torch_to_flax``'s ``name_map`` and ``flatten``); ``compare`` and ``convert`` share them."""
    group.add_argument("--name-map", action="append", metavar="TORCH_PATH=FLAX_PATH",
                       help="the Flax module path for a torch module path prefix, e.g. features.0=conv1 "
                            "(repeat it, or separate pairs with commas); default: the same paths")
    group.add_argument("--flatten", action="append", metavar="auto|none|LINEAR_PATH=C,H,W",
                       help="auto (default): run the torch model once and permute the weight of each Linear "
                            "after a flatten of a 4-D/5-D map from torch's (C,H,W) order to Flax's (H,W,C); "
                            "none: your port flattens as torch does, permute nothing; LINEAR_PATH=C,H,W "
                            "(repeatable): declare the map before that Linear (e.g. fc=6,10 for a Conv1d's)")


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter     # the epilog's lines as written
    p.epilog = EXIT_CODES
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64 is the truth tier (default: float32)")
    p.add_argument("--kernel-size", type=int, choices=(3, 5), default=3,
                   help="3: the seed's revision; 5: today's tutorial (default: 3)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="batch size N (default: 1, as the tutorial); with --torch/--flax the batch is the first "
                        "number of --input-shape, and a --batch that differs from it is refused")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and data (default: 0)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate of the update (default: 0.01)")
    p.add_argument("--flavour", choices=FLAVOURS + ("all",), default="all", help="default: all")
    p.add_argument("--tf32", action="store_true",
                   help="on a GPU, leave TF32 on in both frameworks (their defaults) and use the TF32 tier")
    p.add_argument("--break", dest="fault", choices=FAULTS,
                   help="deliberately break the conversion (fc1 flatten order, a conv kernel reshaped "
                        "instead of transposed, or one conv1 element off by a tenth of the kernel's "
                        "largest) to see the comparison fail")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="train N steps in both frameworks (functional flavour) and report, per quantity, the "
                        "largest difference over the run and the step where it happened")
    p.add_argument("--optimizer", choices=tuple(PRESETS), default=None,
                   help="with --steps: torch.optim.SGD / SGD(momentum=0.9) / SGD(momentum=0.9, nesterov=True) / "
                        "Adam / AdamW (torch's defaults, --lr) against flax_lenet.optim (default: sgd)")
    own = p.add_argument_group("your own port (flax_lenet.porting.parity.check)")
    own.add_argument("--torch", metavar="MODULE:NAME", help=TORCH_HELP)
    own.add_argument("--flax", metavar="MODULE:NAME", help=FLAX_HELP)
    own.add_argument("--input-shape", metavar="N,C,H,W",
                     help="the torch input's shape, batch first; a 4-D one is NCHW and the Flax side gets it as "
                          "NHWC, other ranks are passed as they are")
    add_input_arguments(own, default="float", floats="standard-normal inputs in --dtype")
    own.add_argument("--loss", choices=LOSSES, default="mse",
                     help="nn.MSELoss against a standard-normal target, or nn.CrossEntropyLoss against random "
                          "classes (default: mse)")
    add_mapping_arguments(own)
    own.add_argument("--rtol", action="append", metavar="QUANTITY=VALUE",
                     help="the tolerance of one quantity instead of the tier's: QUANTITY one of round-trip, "
                          "output, loss, grad, manual, steps; VALUE a positive number (repeatable)")


def main(args) -> int:
    from flax_lenet.app.checks import check_batch_size
    if args.batch is not None:
        check_batch_size(args.batch, "--batch")     # before anything is allocated (1e8 images: 381 GiB)
    if not 0 <= args.seed < 2 ** 64:                # torch.manual_seed: "Overflow when unpacking long long"
        raise BadConfig(f"--seed: expected an integer in 0..2**64-1 (torch.manual_seed takes 64 bits), "
                        f"found {args.seed}")
    if not 0 <= args.lr < float("inf"):     # torch.optim refuses NaN and < 0; inf makes NaN weights
        torch_says = "" if args.lr == float("inf") else f" (torch.optim: Invalid learning rate: {args.lr})"
        raise BadConfig(f"--lr: expected a finite learning rate >= 0, found {args.lr}{torch_says}")
    if args.optimizer is not None and args.steps is None:
        raise BadConfig(f"--optimizer {args.optimizer}: expected --steps N as well (a training run), found none")
    if args.steps is not None and args.flavour not in ("all", "functional"):
        raise BadConfig(f"--steps: trains the functional flavour only, found --flavour {args.flavour}")
    if args.torch is not None or args.flax is not None:
        return _main_port(args)
    for option in ("input_shape", "input_high", "name_map", "flatten", "rtol"):       # not silently ignored
        if getattr(args, option) is not None:
            raise BadConfig(f"--{option.replace('_', '-')}: expected --torch and --flax as well (it is an option of "
                            "the comparison of your own port), found neither")
    args.batch = args.batch or 1
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.steps is not None:
        return _main_steps(args, jax.default_backend())
    from flax_lenet.porting import parity
    from flax_lenet.table import format_table
    flavours = FLAVOURS if args.flavour == "all" else (args.flavour,)
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
    from flax_lenet.porting import trajectory
    from flax_lenet.porting.tolerances import TRAJECTORY_FLOAT32_RATIO
    from flax_lenet.table import format_table
    opt = preset(args.optimizer or "sgd", args.lr)
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
             ("ok" if r.ok else "FAIL") + ("*" if r.float64 else "")] for r in rows]
    print(format_table(["quantity", "max abs diff", "max rel diff", "at step", "tolerance", "ok"], body))
    _print_notes(rows)
    for r in rows:
        if r.float64:
            torch_d, flax_d = r.float64
            print(f"* {r.quantity}: over the tolerance, so measured against a float64 run from the same start: "
                  f"torch's own float32 run is {torch_d:.1e} from it, Flax's {flax_d:.1e}: "
                  + (f"within {TRAJECTORY_FLOAT32_RATIO:g}x torch's (float32 runs part where a relu or max-pool "
                     "input is within rounding of a tie)" if r.ok else f"over {TRAJECTORY_FLOAT32_RATIO:g}x torch's"))
    print(f"largest difference over {args.steps} steps, compared after every step; relative = "
          f"max|flax - torch| / max|torch|; tolerance: {tol.reason}")
    bad = sum(not r.ok for r in rows)
    print(f"all {len(rows)} quantities agree" if ok else f"{bad} of {len(rows)} quantities differ")
    return 0 if ok else 1


# --- your own port -------------------------------------------------------------------------------

def load_object(spec: str, option: str):
    """``'pkg.module:Name'`` or ``'path/to/file.py:Name'`` -> the object; ``BadConfig`` in one line."""
    import importlib
    import importlib.util
    from pathlib import Path
    module_name, sep, name = spec.rpartition(":")
    expected = "MODULE:NAME with MODULE pkg.module or a path to a .py file"
    if not sep or not module_name or not name.isidentifier():
        raise BadConfig(f"{option}: expected {expected}, found {spec!r}")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise BadConfig(f"{option}: expected {expected}, found no file {path}")
            unique = f"_flax_lenet_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[unique] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except BadConfig:
        raise
    except Exception as e:          # the user's module failed to import: say why, in one line
        reason = (str(e).strip().splitlines() or [""])[0]
        raise BadConfig(f"{option}: cannot import {module_name!r} ({type(e).__name__}: {reason})") from None
    if not hasattr(module, name):
        raise BadConfig(f"{option}: expected {name!r} in {module_name}, found no such name")
    return getattr(module, name)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise BadConfig(f"--input-shape: expected comma-separated positive integers like 8,3,32,32, found {text!r}")
    from flax_lenet.app.checks import MAX_BATCH
    most = MAX_BATCH * 32 * 32                      # as many elements as --batch's largest batch
    if math.prod(shape) > most:                     # before anything is allocated
        raise BadConfig(f"--input-shape: expected at most {most:,} elements (as many as {MAX_BATCH:,} "
                        f"32x32 images), found {math.prod(shape):.3g} in {text!r}")
    return shape


def _pairs(values, option: str, key_name: str, expected: str, *, commas: bool = True) -> list[tuple[str, str, str]]:
    """``['a=b,c=d', 'e=f']`` -> ``[(item, 'a', 'b'), ...]``; an item without ``=``, an empty side or
    a key given twice is ``BadConfig``. ``commas``: commas separate pairs (not for ``--flatten``,
    whose values hold commas)."""
    items = [item.strip() for value in values for item in (value.split(",") if commas else [value])]
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadConfig(f"{option}: expected {expected}, found {item!r}")
        out.append((item, key.strip(), value.strip()))
    keys = [key for _, key, _ in out]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise BadConfig(f"{option}: expected each {key_name} once, found {twice!r} twice")
    return out


def parse_name_map(values) -> dict[str, str] | None:
    """``--name-map`` (repeated, or pairs separated by commas) as ``{torch path: flax path}``."""
    if not values:
        return None
    return {key: value for _, key, value in _pairs(values, "--name-map", "TORCH_PATH", "TORCH_PATH=FLAX_PATH")}


def parse_flatten(values):
    """``--flatten``: ``'auto'`` (also when not given), ``None`` for ``none``, or ``{linear path: (C, *S)}``."""
    if not values:
        return "auto"
    words = [v.strip() for v in values if v.strip() in ("auto", "none")]
    if words and len(values) > 1:
        raise BadConfig(f"--flatten {words[0]}: expected it alone, found {len(values)} --flatten values")
    if words:
        return None if words[0] == "none" else "auto"
    declared = {}
    for item, key, value in _pairs(values, "--flatten", "LINEAR_PATH", "auto, none or LINEAR_PATH=C,H,W", commas=False):
        try:
            shape = tuple(int(n) for n in value.split(","))
        except ValueError:
            shape = ()
        if len(shape) < 2 or any(n <= 0 for n in shape):
            raise BadConfig(f"--flatten: expected LINEAR_PATH=C,H,W with two or more positive integers "
                            f"(channels first), found {item!r}")
        declared[key] = shape
    return declared


def parse_rtol(values) -> dict[str, float] | None:
    """``--rtol QUANTITY=VALUE`` (repeated, or separated by commas) as ``parity.check``'s ``rtol``."""
    if not values:
        return None
    from flax_lenet.porting.parity import QUANTITIES
    names = ", ".join(q.replace(" ", "-") for q in QUANTITIES)
    rtol = {}
    for item, key, value in _pairs(values, "--rtol", "QUANTITY", "QUANTITY=VALUE"):
        quantity = key.replace("-", " ")
        if quantity not in QUANTITIES:
            raise BadConfig(f"--rtol: expected a QUANTITY among {names}, found {key!r} in {item!r}")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not 0 < number < float("inf"):
            raise BadConfig(f"--rtol {quantity.replace(' ', '-')}: expected a positive finite number, "
                            f"found {value!r}")
        rtol[quantity] = number
    return rtol


def check_mapping(name_map, flatten, torch_model, spec: str) -> None:
    """Each ``--name-map`` torch path is a module of the torch model, and each declared
    ``--flatten`` path a Linear whose ``in_features`` is the product of its ``C,H,W``."""
    import torch
    from flax_lenet.porting.port import nearest
    modules = dict(torch_model.named_modules())
    for path in name_map or {}:
        if path not in modules:
            raise BadConfig(f"--name-map {path}={name_map[path]}: expected a module path of --torch {spec}, "
                            f"found no module {path!r}{nearest(path, [m for m in modules if m])}")
    for path, shape in (flatten if isinstance(flatten, dict) else {}).items():
        declared = f"--flatten {path}={','.join(map(str, shape))}"
        module = modules.get(path)
        if not isinstance(module, torch.nn.Linear):
            found = f"a {type(module).__name__}" if module is not None else \
                f"no module {path!r}{nearest(path, [m for m in modules if m])}"
            raise BadConfig(f"{declared}: expected the path of a torch Linear in --torch {spec}, found {found}")
        if math.prod(shape) != module.in_features:
            raise BadConfig(f"{declared}: expected a map of {module.in_features} values ({path}.in_features), "
                            f"found {math.prod(shape)}")


def in_cli_words(e: BaseException) -> str:
    """A ``port`` message in the command line's words: ``--name-map`` for the API's ``name_map``."""
    return str(e).replace("pass name_map={torch path: flax path}", "pass --name-map TORCH_PATH=FLAX_PATH")


def build_models(torch_spec: str, flax_spec: str, seed: int):
    """``(torch_obj, flax_obj, torch_model, flax_model)`` for ``--torch``/``--flax``, each checked
    to be what the option says (``BadConfig``); what a constructor raises is ``ModelRaised``."""
    torch_obj, flax_obj = load_object(torch_spec, "--torch"), load_object(flax_spec, "--flax")
    import torch
    from flax import nnx
    torch.manual_seed(seed)
    torch_model = _build(torch_obj, "--torch", torch_spec, lambda o: o())
    if not isinstance(torch_model, torch.nn.Module):
        raise BadConfig(f"--torch: expected a torch.nn.Module, found {type(torch_model).__name__}")
    is_nnx_class = isinstance(flax_obj, type) and issubclass(flax_obj, nnx.Module)
    flax_model = _build(flax_obj, "--flax", flax_spec, lambda o: o(rngs=nnx.Rngs(seed)) if is_nnx_class else o())
    if not isinstance(flax_model, nnx.Module):
        raise BadConfig(f"--flax: expected an NNX module, found {type(flax_model).__name__}")
    return torch_obj, flax_obj, torch_model, flax_model


def _build(obj, option: str, spec: str, make):
    """The user's model, built; whatever its constructor raises (``sys.exit`` included) is
    reported as its own exception, never taken for a pass."""
    if not callable(obj):
        raise BadConfig(f"{option}: expected a class or factory callable as described in --help, "
                        f"found {type(obj).__name__} {spec}")
    try:
        return make(obj)
    except (Exception, SystemExit) as e:
        raise ModelRaised(f"{option} {spec}: building the model raised {_exception(e)}") from e


def _exception(e: BaseException) -> str:
    """``TypeName: first line of the message`` (``SystemExit(0)`` for an exit)."""
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r})"
    message = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _user_frame(e: BaseException, user_files: set) -> tuple | None:
    """``'--torch'``/``'--flax'`` and where, for the innermost frame of ``e``'s traceback in one of
    the user's files (``None``: the exception did not pass through the user's code)."""
    import torch.nn
    from flax import nnx
    found = None
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename in user_files:
            owner = tb.tb_frame.f_locals.get("self")
            side = "--torch" if isinstance(owner, torch.nn.Module) else "--flax" if isinstance(owner, nnx.Module) \
                else None
            found = (side, f"{type(owner).__name__}.{code.co_name}" if owner is not None else code.co_name)
        tb = tb.tb_next
    return found


def _module_file(obj) -> str | None:
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    return getattr(module, "__file__", None)


def add_input_arguments(group, *, default, floats: str) -> None:
    """``--input-dtype`` and ``--input-high``: what the user's torch model is run on (``compare``,
    and ``convert``'s ``--flatten auto``)."""
    group.add_argument("--input-dtype", choices=("float", "int64"), default=default,
                       help=f"float: {floats} (default); int64: integers in [0, --input-high), for a model that "
                            "takes tokens")
    group.add_argument("--input-high", type=positive_int, help="with --input-dtype int64: the exclusive upper bound")


def check_input_arguments(args) -> None:
    """``--input-dtype int64`` and ``--input-high`` go together, and the bound fits an int64."""
    tokens = args.input_dtype == "int64"
    if tokens and args.input_high is None:
        raise BadConfig("--input-dtype int64: expected --input-high K as well, found none")
    if args.input_high is not None and not tokens:
        raise BadConfig(f"--input-high {args.input_high}: expected it with --input-dtype int64, found float inputs")
    if args.input_high is not None and args.input_high > 2 ** 63 - 1:
        raise BadConfig(f"--input-high: expected at most 2**63 - 1 (int64 tokens), found {args.input_high}")


def random_input(args, shape, rng, dtype: str):
    """The input ``check_input_arguments`` allowed: integers in [0, --input-high), or standard-normal
    numbers in ``dtype``."""
    if args.input_dtype == "int64":
        return rng.integers(0, args.input_high, shape)
    return rng.standard_normal(shape).astype(dtype)


def probe(option: str, spec: str, call, shape) -> object:
    """Run the user's model once on the input, as the harness will: what it raises, or an output
    that is not one array, is reported before the comparison starts."""
    try:
        return call()
    except (Exception, SystemExit) as e:
        raise ModelRaised(f"{option} {spec} raised {_exception(e)} on an input of shape "
                          f"{tuple(shape)}") from e


def _eval_copy(flax_model):
    from flax import nnx
    model = nnx.clone(flax_model)
    model.eval()
    return model


def _main_port(args) -> int:
    """``--torch A --flax B --input-shape ...``: ``parity.check`` on the user's classes."""
    if args.torch is None or args.flax is None or args.input_shape is None:
        raise BadConfig("--torch, --flax and --input-shape go together, found "
                        + ", ".join(f"--{k.replace('_', '-')}" for k in ("torch", "flax", "input_shape")
                                    if getattr(args, k) is not None))
    if args.fault is not None:
        raise BadConfig(f"--break {args.fault}: breaks the tutorial's conversion, found --torch/--flax as well")
    shape = parse_shape(args.input_shape)
    if args.batch is not None and args.batch != shape[0]:
        raise BadConfig(f"--batch {args.batch}: expected the batch of --input-shape {args.input_shape} (its first "
                        f"number, {shape[0]}) or no --batch, found {args.batch}")
    name_map, flatten, rtol = parse_name_map(args.name_map), parse_flatten(args.flatten), parse_rtol(args.rtol)
    check_input_arguments(args)
    import jax
    import numpy as np
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import torch

    from flax_lenet.porting import parity
    from flax_lenet.porting.dropout import dropout_notes
    torch_obj, flax_obj, torch_model, flax_model = build_models(args.torch, args.flax, args.seed)
    check_mapping(name_map, flatten, torch_model, args.torch)
    x = random_input(args, shape, np.random.default_rng(args.seed), args.dtype)
    import copy
    with torch.no_grad():
        out_t = probe("--torch", args.torch, lambda: copy.deepcopy(torch_model).to(
            getattr(torch, args.dtype)).eval()(torch.from_numpy(x)), shape)
    out_f = probe("--flax", args.flax, lambda: _eval_copy(flax_model)(parity.default_flax_input(x)), shape)
    for option, spec, out, kind in (("--torch", args.torch, out_t, torch.Tensor), ("--flax", args.flax, out_f, jax.Array)):
        if not isinstance(out, kind):
            raise ModelRaised(f"{option} {spec} returned {type(out).__name__} on an input of shape {tuple(shape)}, "
                              "not one array: the harness compares one output; return it (or wrap the model so "
                              "that it does)")
    if tuple(out_t.shape) != tuple(out_f.shape):
        print(f"flax-lenet compare: the outputs differ in shape for an input of shape {tuple(shape)}: "
              f"torch {tuple(out_t.shape)}, flax {tuple(out_f.shape)}")
        return 1
    steps = args.steps or 1
    opt = preset(args.optimizer or "sgd", args.lr)
    user_files = {f for f in (_module_file(torch_obj), _module_file(flax_obj)) if f}
    try:
        report = parity.check(torch_model, flax_model, x, loss=args.loss, optimizer=opt, steps=steps,
                              dtype=args.dtype, seed=args.seed, tf32=args.tf32, rtol=rtol, flatten=flatten,
                              name_map=name_map)
    except BadWeights as e:             # converted weights that do not fit the Flax model: one line
        raise BadWeights(in_cli_words(e)) from None
    except (Exception, SystemExit) as e:
        where = _user_frame(e, user_files)
        if where is None or isinstance(e, BadInput):
            raise                       # the harness's own error (or a bug): not the user's model
        side, frame = where
        who = f"{side} {args.torch if side == '--torch' else args.flax}" if side else "the model"
        raise ModelRaised(f"{who} (in {frame}) raised {_exception(e)} during the comparison, "
                          f"on an input of shape {tuple(shape)}") from e
    report.notices.extend(dropout_notes(torch_model, flax_model, name_map))
    if args.json:
        print(report.to_json())
    else:
        given = {"name-map": args.name_map, "flatten": args.flatten, "rtol": args.rtol}
        print(f"flax-lenet compare: torch={args.torch}, flax={args.flax}, input-shape={args.input_shape}, "
              f"dtype={args.dtype}, optimizer={opt}, steps={steps}, device={jax.default_backend()}"
              + "".join(f", {k}={' '.join(v)}" for k, v in given.items() if v))
        print(report.table())
        print(f"relative = max|flax - torch| / max|torch|; tolerance: {report.tolerance.reason}")
        if report.steps_tolerance not in (None, report.tolerance):
            print(f"tolerance of the steps (a training run): {report.steps_tolerance.reason}")
    return 0 if report.ok else 1
