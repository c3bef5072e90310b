"""Start-up of ``flax-lenet compare`` (or any command) without and with the persistent cache.

    python benchmarks/startup.py [--runs 3] [-- compare --batch 1]

Runs the command in fresh processes: once with no cache, then with an empty cache directory
(the cold run fills it), then again with the filled one (warm). Prints wall-clock seconds.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flax_lenet", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"startup: {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="rounds of (no cache, warm cache); median reported")
    p.add_argument("command", nargs="*", default=["compare"], help="flax-lenet command (default: compare)")
    args = p.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = dict(base, JAX_COMPILATION_CACHE_DIR=cache_dir,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        cold = timed(args.command, cached)
        none, warm = [], []
        for _ in range(args.runs):                 # interleaved, so load drift hits both
            none.append(timed(args.command, base))
            warm.append(timed(args.command, cached))
        files = sum(len(f) for _, _, f in os.walk(cache_dir))
    cmd = "flax-lenet " + " ".join(args.command)
    print(f"{cmd}: no cache {statistics.median(none):.1f} s (median of {args.runs}); "
          f"empty cache (cold) {cold:.1f} s; filled cache (warm) {statistics.median(warm):.1f} s "
          f"(median of {args.runs}); {files} cache entries; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
