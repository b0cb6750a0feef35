#!/usr/bin/env bash
# One GPU session: the rubiks-shift test suite on real CUDA, then the benchmark table and
# the host profile. Run from the repository root on the GPU machine (device tool); results
# land in $OUT. Needs the reference fixtures in .shared/fixtures/reference (carried).
#   STEPS        which steps, in order (default "tests bench host"; "sweep" runs
#                sweep_kernels.py with SWEEP_ARGS, default "--quick --gather-only")
#   TESTS_S      time limit of the test step in seconds (default 420); the log names every
#                test as it finishes (pytest -v), so a cut-short run still says what passed
#   PYTEST_ARGS  worker count etc. (default "-n 8": each worker compiles the kernels of
#                each dtype it meets once, ~20 s, so the suite runs in parallel processes;
#                pytest-xdist is on the GPU image)
#   PYTEST_K     test selection (default: everything but the simulator and PTX tests,
#                which CI runs)
#   BENCH_ARGS   passed to bench_shift.py (e.g. --quick)
#   STEP_S       time limit of each other step in seconds (default 300)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/packages/rubiks-shift/src${PYTHONPATH:+:$PYTHONPATH}"
export RUBIKS_SHARED_DIR="$PWD/.shared"
export PYTHONUNBUFFERED=1
B=packages/rubiks-shift/benchmarks
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, numba, numpy; from numba import cuda; print('torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
for step in ${STEPS:-tests bench host}; do
  start=$(date +%s)
  case $step in
    tests)
      timeout "${TESTS_S:-420}" python3 -m pytest -v -p no:cacheprovider ${PYTEST_ARGS:--n 8} \
        packages/rubiks-shift/tests -k "${PYTEST_K:-not simulator and not compile_ptx}" \
        > "$OUT/tests.txt" 2>&1
      echo "tests: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt"
      grep -cE "PASSED" "$OUT/tests.txt" | sed 's/^/passed: /' | tee -a "$OUT/steps.txt"
      grep -E "FAILED|ERROR" "$OUT/tests.txt" | tee -a "$OUT/steps.txt" | head -20
      tail -3 "$OUT/tests.txt" ;;
    bench)
      timeout "${STEP_S:-300}" python3 $B/bench_shift.py --json "$OUT/bench.json" ${BENCH_ARGS:-} \
        2>&1 | tee "$OUT/bench.txt"
      echo "bench: after $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt" ;;
    sweep)
      timeout "${STEP_S:-300}" python3 $B/sweep_kernels.py --json "$OUT/sweep.json" \
        ${SWEEP_ARGS:---quick --gather-only} 2>&1 | tee "$OUT/sweep.txt"
      echo "sweep: after $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt" ;;
    host)
      python3 $B/host_profile.py 2>&1 | tee "$OUT/host.txt" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
