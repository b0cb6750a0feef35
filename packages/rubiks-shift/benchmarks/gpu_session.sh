#!/usr/bin/env bash
# One GPU session: the rubiks-shift test suite on real CUDA, then the benchmark table and
# the host profile. Run from the repository root on the GPU machine (device tool); results
# land in $OUT. Needs the reference fixtures in .shared/fixtures/reference (carried).
# The first use of each dtype compiles its kernels (~20 s per process), so the tests run in
# 4 xdist workers (pytest-xdist is on the GPU image); PYTEST_ARGS overrides that.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/packages/rubiks-shift/src${PYTHONPATH:+:$PYTHONPATH}"
export RUBIKS_SHARED_DIR="$PWD/.shared"
export PYTHONUNBUFFERED=1
B=packages/rubiks-shift/benchmarks
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, numba, numpy; from numba import cuda; print('torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
[ -n "${BENCH_ONLY:-}" ] || python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:--n 4} packages/rubiks-shift/tests -k "${PYTEST_K:-not simulator and not compile_ptx}" 2>&1 | tee "$OUT/tests.txt" | tail -40
python3 $B/bench_shift.py --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
python3 $B/host_profile.py 2>&1 | tee "$OUT/host.txt"
