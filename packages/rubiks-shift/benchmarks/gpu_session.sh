#!/usr/bin/env bash
# One GPU session: the rubiks-shift test suite on real CUDA, then the benchmark table.
# Run from the repository root on the GPU machine (device tool); results land in $OUT.
# Needs the reference fixtures in .shared/fixtures/reference (carried; see BENCHMARKS.md).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/packages/rubiks-shift/src${PYTHONPATH:+:$PYTHONPATH}"
export RUBIKS_SHARED_DIR="$PWD/.shared"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, numba, numpy; from numba import cuda; print('torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
[ -n "${BENCH_ONLY:-}" ] || python3 -m pytest -q -p no:cacheprovider packages/rubiks-shift/tests -k "${PYTEST_K:-not nothing}" 2>&1 | tee "$OUT/tests.txt" | tail -40
python3 packages/rubiks-shift/benchmarks/bench_shift.py --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
