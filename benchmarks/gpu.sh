#!/usr/bin/env bash
# The GPU measurement, as one script (minutes on an H100/H200; torch.compile dominates):
#   bash benchmarks/gpu.sh [OUTDIR]
# Writes OUTDIR/gpu.json, OUTDIR/gpu.png, OUTDIR/gpu.txt and OUTDIR/startup.txt.
set -euo pipefail
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and JAX share the GPU in one process
out=${1:-benchmarks/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -m flax_lenet compare --tf32 | tail -1 | tee -a "$out/gpu.txt"
python -m flax_lenet compare | tail -1 | tee -a "$out/gpu.txt"
python -m flax_lenet bench --device gpu --precision both --rounds 5 --min-time 0.3 \
    --json "$out/gpu.json" --png "$out/gpu.png" | tee -a "$out/gpu.txt"
python benchmarks/startup.py --runs 1 | tee "$out/startup.txt"
