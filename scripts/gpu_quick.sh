#!/usr/bin/env bash
# The one call of a lent GPU session (15 minutes of device time in all, 10 per command): at most
# 8 minutes, most important evidence first, every result in $OUT the moment it exists.
#   device tool: run(command="scripts/gpu_quick.sh", timeout_s=540)            (carry [".whl"] for the loop)
#   afterwards, here: python -m benchmarks.gpu_quick --unpack <files_at>        (-> benchmarks/results/)
# What it does and how its time is boxed: benchmarks/gpu_quick.py. Arguments are passed on to it
# (e.g. --parts ab, --box b=150). It needs only what the CUDA image has (torch, triton, pytest,
# numpy, pillow, pyyaml, tqdm); the real training loop of part e also needs nltk: download its wheel
# into .whl/ beforehand (ignored by git: `pip download --no-deps --only-binary=:all: --python-version
# 3.12 -d .whl nltk`; its dependencies regex, click, joblib and tqdm are on the image) and carry .whl.
# Files in $OUT (at most 8 come back): quick.jsonl (every row), quick.md (all tables, what was not
# reached), quick.log (this output), warm.log (the warm-up workers), loop/ (the loop's results).
set -uo pipefail
OUT=${OUT:-gpu-quick-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1
  python3 -m benchmarks.gpu_quick --out "$OUT" "$@" 2>&1
} | tee "$OUT/quick.log"
exit "${PIPESTATUS[0]}"
