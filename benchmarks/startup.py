"""Start-up, each in fresh processes: ``import flax_lenet``, a first ``Net()``, and a command.

    python benchmarks/startup.py [--runs 3] [-- compare --batch 1]

``import flax_lenet`` (with the first use of its names, which imports jax, flax and optax),
``flax_lenet.Net(rngs=nnx.Rngs(0))`` and the Linen ``Net().init(key, x)`` are timed inside a
fresh interpreter, one after the other: without JAX's persistent compilation cache, and with it
(``flax_lenet.cache.enable(dir)``) warm. The command (default ``flax-lenet compare``) runs in
fresh processes without the persistent compilation cache (``FLAX_LENET_CACHE=0``), then with an
empty cache directory (``FLAX_LENET_CACHE_DIR``; the cold run fills it), then again with the
filled one (warm). Prints wall-clock seconds, medians of ``--runs``, and the load average.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LIBRARY = """
import json, os, time
t0 = time.perf_counter()
import flax_lenet
if os.environ.get("STARTUP_CACHE_DIR"):
    from flax_lenet import cache
    cache.enable(os.environ["STARTUP_CACHE_DIR"])   # JAX's persistent compilation cache, as a user turns it on
from flax import nnx
flax_lenet.Net, flax_lenet.linen        # the package loads its names on first use: jax, flax, optax
t1 = time.perf_counter()
flax_lenet.Net(rngs=nnx.Rngs(0))
t2 = time.perf_counter()
import jax
flax_lenet.linen.Net().init(jax.random.key(0), jax.numpy.ones((1, 32, 32, 1)))
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "net": t2 - t1, "linen": t3 - t2}))
"""


def timed(argv, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"startup: {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def library(env) -> dict:
    proc = subprocess.run([sys.executable, "-c", LIBRARY], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"startup: import flax_lenet / Net() failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="rounds of (no cache, warm cache); median reported")
    p.add_argument("command", nargs="*", default=["compare"], help="flax-lenet command (default: compare)")
    args = p.parse_args()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("JAX_COMPILATION_CACHE", "FLAX_LENET_CACHE"))}
    with tempfile.TemporaryDirectory() as lib_cache:
        library(dict(base, STARTUP_CACHE_DIR=lib_cache))          # fills the cache
        for label, env in (("no cache", dict(base)), ("warm persistent cache", dict(base, STARTUP_CACHE_DIR=lib_cache))):
            lib = [library(env) for _ in range(args.runs)]
            print(f"fresh process, {label}: import flax_lenet (and jax, flax) "
                  f"{statistics.median(r['import'] for r in lib):.2f} s, "
                  f"then Net(rngs=nnx.Rngs(0)) {statistics.median(r['net'] for r in lib):.2f} s, "
                  f"then linen.Net().init(key, x) {statistics.median(r['linen'] for r in lib):.2f} s "
                  f"(medians of {args.runs}); load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = dict(base, FLAX_LENET_CACHE_DIR=cache_dir)
        cold = timed(args.command, cached)
        none, warm = [], []
        for _ in range(args.runs):                 # interleaved, so load drift hits both
            none.append(timed(args.command, dict(base, FLAX_LENET_CACHE="0")))
            warm.append(timed(args.command, cached))
        files = sum(len(f) for _, _, f in os.walk(cache_dir))
    cmd = "flax-lenet " + " ".join(args.command)
    print(f"{cmd}: no cache {statistics.median(none):.1f} s (median of {args.runs}); "
          f"empty cache (cold) {cold:.1f} s; filled cache (warm) {statistics.median(warm):.1f} s "
          f"(median of {args.runs}); {files} cache entries; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
