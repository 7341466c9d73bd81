#!/usr/bin/env bash
# Everything a GPU session should run, in one call (about 15 minutes on an H200):
#   1. the compiled Triton kernels against float64 (pytest -m gpu) -> $OUT/gpu_tests.log
#   2. the GPU benchmark set -> benchmarks/results/<device>-<date>.{json,md}, copied to $OUT
# Run from the repository root with the project on PYTHONPATH; the machine's own torch/triton are used.
# Needs only what the CUDA image has (torch, triton, pytest, pytest-benchmark, numpy, pillow, pyyaml,
# tqdm); nltk and torch-fidelity are not needed for these two steps. Then commit the results files and
# the pytest summary into tests/GPU_RESULTS.md.
set -uo pipefail
OUT=${OUT:-gpu-session-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
python3 -m pytest -m gpu -p no:cacheprovider -q -rA tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m benchmarks.gpu --out benchmarks/results 2>&1 | tee "$OUT/benchmarks.log"
cp benchmarks/results/*.json benchmarks/results/*.md "$OUT/" 2>/dev/null || true
