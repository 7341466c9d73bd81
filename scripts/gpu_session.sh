#!/usr/bin/env bash
# What a GPU session runs, one step per call so that each fits a 10-minute command limit:
#   scripts/gpu_session.sh tests       # compiled Triton kernels against float64 (pytest -m gpu)
#   scripts/gpu_session.sh damsm       # benchmarks: DAMSM word scores, all providers
#   scripts/gpu_session.sh attention   # benchmarks: F_attn, all providers
#   scripts/gpu_session.sh train       # benchmarks: one bird-preset training step, five variants
#   scripts/gpu_session.sh loop        # the real bird-preset loop, a few hundred steps, bf16+compile vs off
#                                      # (needs nltk: wheels in .whl/ are installed first, see below)
#   scripts/gpu_session.sh all         # everything, in one call where there is no such limit
# Several steps may be named in one call; LOOP_ARGS adds arguments to the loop step (e.g.
# "--steps 200"). Each step has its own time box (STEP_TIMEOUT seconds, default 540), so one that
# overruns cannot take the others' output with it. Logs go to $OUT; the benchmark parts add up in
# benchmarks/results/<device>-<date>.{json,md}, packed into $OUT/results.tgz after every step (a call
# brings back at most 8 files). A results file already there for the same day and device is added
# to, so unpack what an earlier call brought back before the next call.
# Run from the repository root; the machine's own torch/triton are used. All steps but `loop` need
# only what the CUDA image has (torch, triton, pytest, pytest-benchmark, numpy, pillow, pyyaml, tqdm).
# `loop` tokenizes captions, so it needs nltk: download its wheel beforehand into .whl/ (ignored by
# git; `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl nltk`) and carry
# .whl with the call. Afterwards commit the results files and the pytest summary into
# tests/GPU_RESULTS.md. A lent-device session (15 minutes in all) runs scripts/gpu_quick.sh instead:
# one call of at most 8 minutes (tests/GPU_RESULTS.md); this script is for machines without that limit.
set -uo pipefail
OUT=${OUT:-gpu-session-out}
STEP_TIMEOUT=${STEP_TIMEOUT:-540}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOOP_WORK=${LOOP_WORK:-${TMPDIR:-/tmp}/attngan-fast-train-loop}  # the loop step's data and runs

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
[ "${steps[*]}" = "all" ] && steps=(tests damsm attention train loop)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

status=0
for step in "${steps[@]}"; do
  echo "=== $step (time box ${STEP_TIMEOUT}s) ==="
  case "$step" in
    tests) timeout "$STEP_TIMEOUT" python3 -m pytest -m gpu -p no:cacheprovider -q -rA tests/test_gpu.py tests/test_gpu_training.py \
             2>&1 | tee "$OUT/gpu_tests.log" ;;
    damsm|attention|train) timeout "$STEP_TIMEOUT" python3 -m benchmarks.gpu --only "$step" --out benchmarks/results \
             2>&1 | tee "$OUT/bench_$step.log" ;;
    loop) timeout "$STEP_TIMEOUT" python3 -m benchmarks.train_loop --timeout $((STEP_TIMEOUT - 30)) \
             --work "$LOOP_WORK" --out benchmarks/results ${LOOP_ARGS:-} 2>&1 | tee "$OUT/bench_loop.log"
          (cd "$LOOP_WORK" && tar czf "$OUT/loop_logs.tgz" ./*.log) 2>/dev/null || true ;;
    *) echo "unknown step '$step' (tests, damsm, attention, train, loop, all)"; exit 2 ;;
  esac
  rc=${PIPESTATUS[0]}
  echo "=== $step: exit $rc ==="
  [ "$rc" -ne 0 ] && status=$rc
  tar czf "$OUT/results.tgz" benchmarks/results  # one file: a call returns at most 8
done
exit $status
