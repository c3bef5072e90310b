"""Mutation testing for the modules that carry correctness: does a deliberate bug fail a test?

    PYTHONPATH=$PWD python tests/mutation/run.py              # every mutant (~10 min on 2 cores)
    PYTHONPATH=$PWD python tests/mutation/run.py --hand       # the hand-written ones only
    PYTHONPATH=$PWD python tests/mutation/run.py --module parity --list

The tree (git's tracked and untracked, not ignored, files) is copied once to a temporary folder.
Each mutant changes one spot of one module there, the module's fast test files run with
``pytest -x -q`` (a timeout counts as killed), and the file is put back. A mutant is:

- hand-written (``HAND``): the bugs a reviewer named, each a text replacement;
- generated: inside the functions listed in ``TARGETS``, one token at a time: a comparison or
  arithmetic operator swapped, ``and``/``or`` swapped, ``True``/``False`` swapped, ``not``
  dropped, ``max`` -> ``min``, a copy dropped (``np.array``/``np.ascontiguousarray`` ->
  ``np.asarray``), an integer + 1, a float x 10; for ``tolerances.py``, every tier's bound
  loosened 1000x and tightened 10x. Docstrings, comments and strings are never changed; a mutant
  that does not compile is skipped.

Surviving mutants that are equivalent (the program computes the same thing) are listed in
``EQUIVALENT`` with the reason and reported as such; any other survivor is a missing test. Prints
one line per mutant and the score, ``killed / (killed + survived)``; exits 1 if a mutant that is
not known to be equivalent survives. Not part of CI: it runs the test files once per mutant.
"""

import argparse
import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300

#: module -> (file, functions whose bodies are mutated, test files run against its mutants)
TARGETS = {
    "common": ("flax_lenet/porting/common.py", ["diff", "_count", "nonfinite"],
               ["tests/test_metric.py", "tests/test_tolerance_guards.py"]),
    "parity": ("flax_lenet/porting/parity.py", ["row", "Row.ok", "diff_steps"],
               ["tests/test_metric.py", "tests/test_tolerance_guards.py"]),
    "port": ("flax_lenet/porting/port.py",
             ["_flatten_to_flax", "_flatten_to_torch", "_linear_to_flax", "_linear_to_torch", "_conv_to_flax",
              "_conv_to_torch", "tensor_to_numpy"],
             ["tests/test_convert.py", "tests/test_port_convert.py", "tests/test_claims_parity_cannot_check.py"]),
    "tolerances": ("flax_lenet/porting/tolerances.py", ["tolerance", "trajectory_tolerance"],
                   ["tests/test_tolerance_guards.py"]),
    "convert": ("flax_lenet/convert.py",
                ["_rule", "flax_shapes", "torch_to_flax", "flax_to_torch", "state_to_numpy", "nchw_to_nhwc",
                 "nhwc_to_nchw"],
                ["tests/test_claims_parity_cannot_check.py", "tests/test_convert.py"]),
    "optim": ("flax_lenet/optim.py",
              ["_prefix", "_dampened_trace", "sgd", "_one_minus_power", "_torch_adam"],
              ["tests/test_optim.py"]),
    "checkpoint": ("flax_lenet/app/checkpoint.py", ["_load_torch_pickle", "load_state"],
                   ["tests/test_claims_parity_cannot_check.py", "tests/test_checkpoint.py"]),
    "schedule": ("flax_lenet/app/training.py", ["decay_step", "build_optimizers"], ["tests/test_claims_parity_cannot_check.py"]),
    # the layer rules and the localiser: hand-written mutants only (their tests run whole models)
    "recurrent": ("flax_lenet/porting/recurrent.py", [], ["tests/test_port_recurrent.py"]),
    "attention": ("flax_lenet/porting/attention.py", [], ["tests/test_port_attention.py"]),
    "localise": ("flax_lenet/porting/localise.py", [], ["tests/test_localise.py"]),
}

#: (name, module, text in the file, replacement): the survivors a reviewer found, and two tiers loosened.
HAND = [
    ("diff-mean-not-max", "common", "max_abs = float(np.max(np.abs(a - e)))", "max_abs = float(np.mean(np.abs(a - e)))"),
    ("diff-nonfinite-is-zero", "common", 'return float("inf"), float("inf")', "return 0.0, 0.0"),
    ("diff-scale-by-flax", "common", "scale = float(np.max(np.abs(e)))", "scale = float(np.max(np.abs(a)))"),
    ("load-without-weights-only", "checkpoint", 'map_location="cpu", weights_only=True)', 'map_location="cpu")'),
    ("decay-step-in-epochs", "schedule", "return round(cfg.lr_decay_at * cfg.epochs) * steps_per_epoch",
     "return round(cfg.lr_decay_at * cfg.epochs)"),
    ("torch-to-flax-aliases-bias", "convert", '"bias": np.array(arrays[f"{layer}.bias"])',
     '"bias": arrays[f"{layer}.bias"]'),
    ("lstm-gates-i-g-f-o", "recurrent", 'LSTM_INPUT = ("ii", "if_", "ig", "io")',
     'LSTM_INPUT = ("ii", "ig", "if_", "io")'),
    ("lstm-hidden-bias-dropped", "recurrent", "= b_ih[rows] + b_hh[rows]", "= b_ih[rows]"),
    ("gru-nonzero-b-hn-accepted", "recurrent", "if np.any(b_hn != 0):", "if False:"),
    ("attention-key-value-swapped", "attention", '_PROJECTIONS = ("query", "key", "value")',
     '_PROJECTIONS = ("query", "value", "key")'),
    ("attention-heads-split-column-major", "attention", "w.T.reshape(-1, h, d)",
     "w.T.reshape(-1, d, h).swapaxes(1, 2)"),
    ("localise-never-blames-the-input", "localise", "        if not agrees(up):\n", "        if False:\n"),
    ("localise-worst-layout", "localise", "return min(common.diff(v, e)[1] for v in fits)",
     "return max(common.diff(v, e)[1] for v in fits)"),
    ("float64-tier-1e-9", "tolerances", "FLOAT64 = Tolerance(1e-12,", "FLOAT64 = Tolerance(1e-9,"),
    ("float32-cpu-tier-1e-2", "tolerances", "FLOAT32_CPU = Tolerance(1e-5,", "FLOAT32_CPU = Tolerance(1e-2,"),
]

#: generated mutant id -> why its survival is acceptable (it computes the same thing, or cannot matter)
EQUIVALENT = {
    "common:diff:0.0->1.0#2": "the scale of an empty reference: max|a - e| is 0 there, and 0 / any "
                              "positive scale is 0, so 1.0 and 0.0 give the same (0.0, 0.0)",
    "convert:flax_to_torch:0->1#1": "reads the kernel size off kW instead of kH; the Net's kernels are "
                                    "square and every shape is checked right after, so only the kernel "
                                    "size named in the error for a non-square kernel differs",
    # torch_to_flax's and flax_to_torch's own copies are second copies: their arrays come from
    # port.tensor_to_numpy (through clean_state / flatten_flax), which copies every tensor and array
    # (np.array), so without them the result still shares no memory with the input, and
    # test_torch_to_flax_copies / test_flax_to_torch_copies (in convert's test list) pass; with
    # port's copy dropped as well they fail: every bias, and fc2/fc3's kernels from Fortran order.
    "hand:torch-to-flax-aliases-bias": "the bias is already a fresh copy, made by port.tensor_to_numpy "
                                       "in clean_state and held by nothing else",
    "convert:torch_to_flax:array->asarray#1": "the kernel is C-ordered either way, and a copy or a view "
                                              "of port.tensor_to_numpy's fresh copy (in clean_state)",
    "convert:torch_to_flax:array->asarray#2": "as hand:torch-to-flax-aliases-bias (np.asarray of the "
                                              "fresh copy is that copy)",
    "convert:flax_to_torch:array->asarray#1": "the weight is C-ordered either way, and a copy or a view "
                                              "of port.tensor_to_numpy's fresh copy (in flatten_flax)",
    "convert:flax_to_torch:array->asarray#2": "the bias is already a fresh copy, made by "
                                              "port.tensor_to_numpy in flatten_flax and held by nothing else",
}

EQUIVALENT.update({
    f"port:{fn}:1->2#{n}": "numpy's reshape takes any negative size as the one dimension it infers, "
                           "so reshape(out, -2) is reshape(out, -1)"
    for fn, n in (("_flatten_to_flax", 3), ("_flatten_to_torch", 4))})

SWAPS = {"<=": "<", "<": "<=", ">=": ">", ">": ">=", "==": "!=", "!=": "==", "+": "-", "-": "+",
         "*": "/", "/": "*", "and": "or", "or": "and", "True": "False", "False": "True", "max": "min",
         "array": "asarray", "ascontiguousarray": "asarray"}


@dataclass
class Mutant:
    id: str          # stable across edits elsewhere in the file: module:function:old->new#nth
    module: str
    path: str
    source: str      # the whole mutated file


def _function_spans(tree: ast.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{qualname: (first line, last line)}`` of the named functions (``Class.method`` allowed)."""
    spans = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if qual in names and isinstance(child, ast.FunctionDef):
                    body = child.body[1:] if ast.get_docstring(child) else child.body
                    spans[qual] = (body[0].lineno, child.end_lineno)
                visit(child, f"{qual}.")

    visit(tree, "")
    missing = set(names) - set(spans)
    if missing:
        raise SystemExit(f"mutation targets not found: {sorted(missing)}")
    return spans


def _replace(text: str, start: tuple[int, int], end: tuple[int, int], new: str) -> str:
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    a = offsets[start[0] - 1] + start[1]
    b = offsets[end[0] - 1] + end[1]
    return text[:a] + new + text[b:]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<mutant>", "exec")
        return True
    except SyntaxError:
        return False


def generated(module: str) -> list[Mutant]:
    path, functions, _ = TARGETS[module]
    text = (ROOT / path).read_text()
    spans = _function_spans(ast.parse(text), functions)
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    out, seen = [], {}

    def add(where, tok, new):
        key = f"{module}:{where}:{tok.string}->{new or '(dropped)'}"
        seen[key] = seen.get(key, 0) + 1
        source = _replace(text, tok.start, tok.end, new)
        if _compiles(source):
            out.append(Mutant(f"{key}#{seen[key]}", module, path, source))

    for tok in tokens:
        where = next((q for q, (a, b) in spans.items() if a <= tok.start[0] <= b), None)
        if module == "tolerances" and where is None and tok.type == tokenize.NUMBER:
            line = tok.line.lstrip()
            if re.match(r"[A-Z0-9_]+ = Tolerance\(", line) or line.startswith("ACCURACY_POINTS"):
                tier = line.split()[0]
                value = float(tok.string)
                add(tier, tok, repr(value * 1000) if value else "1e-15")      # loosened
                if value:
                    add(tier, tok, repr(value / 10))                           # tightened
            continue
        if where is None or tok.type in (tokenize.STRING, tokenize.COMMENT):
            continue
        if tok.string in SWAPS and tok.type in (tokenize.OP, tokenize.NAME):
            add(where, tok, SWAPS[tok.string])
        elif tok.string == "not":
            add(where, tok, "")
        elif tok.type == tokenize.NUMBER:
            value = ast.literal_eval(tok.string)
            add(where, tok, str(value + 1) if isinstance(value, int) else repr(value * 10 if value else 1.0))
    return out


def hand_written(only_module: str | None) -> list[Mutant]:
    out = []
    for name, module, old, new in HAND:
        if only_module and module != only_module:
            continue
        path = TARGETS[module][0]
        text = (ROOT / path).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"hand-written mutant {name}: expected one {old!r} in {path}, found {text.count(old)}")
        out.append(Mutant(f"hand:{name}", module, path, text.replace(old, new)))
    return out


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(tree: Path, tests: list[str]) -> tuple[bool, str, float]:
    """``(passed, first failing test or reason, seconds)``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timeout after {TIMEOUT_S} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return True, "", seconds
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    return False, failed.group(1) if failed else f"pytest exit {proc.returncode}", seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", choices=sorted(TARGETS), help="only this module's mutants")
    p.add_argument("--hand", action="store_true", help="only the hand-written mutants")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--match", help="only mutants whose id contains this text")
    args = p.parse_args(argv)

    mutants = hand_written(args.module)
    if not args.hand:
        for module in ([args.module] if args.module else TARGETS):
            mutants += generated(module)
    if args.match:
        mutants = [m for m in mutants if args.match in m.id]
    if args.list:
        print("\n".join(m.id for m in mutants))
        return 0

    modules = sorted({m.module for m in mutants})
    killed, survived, equivalent = [], [], []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for module in modules:                          # the unmutated tree must pass first
            ok, why, secs = run_tests(tree, TARGETS[module][2])
            if not ok:
                print(f"baseline {module}: tests fail without a mutant ({why})")
                return 2
            print(f"baseline {module}: {' '.join(TARGETS[module][2])} pass ({secs:.0f} s)", flush=True)
        for i, m in enumerate(mutants, 1):
            original = (tree / m.path).read_text()
            (tree / m.path).write_text(m.source)
            try:
                ok, why, secs = run_tests(tree, TARGETS[m.module][2])
            finally:
                (tree / m.path).write_text(original)
            if not ok:
                killed.append(m)
                verdict = f"killed    by {why}"
            elif m.id in EQUIVALENT:
                equivalent.append(m)
                verdict = f"survived  equivalent: {EQUIVALENT[m.id]}"
            else:
                survived.append(m)
                verdict = "SURVIVED"
            print(f"[{i}/{len(mutants)}] {m.id}  {verdict}  ({secs:.0f} s)", flush=True)

    total = len(killed) + len(survived) + len(equivalent)
    print(f"\n{len(killed)} of {total} mutants killed ({100 * len(killed) / max(total, 1):.1f}%); "
          f"{len(equivalent)} survived as equivalent, {len(survived)} survived unexplained")
    for m in survived:
        print(f"  unexplained survivor: {m.id}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
