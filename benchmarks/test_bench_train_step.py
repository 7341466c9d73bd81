"""pytest-benchmark of one full training step (D steps + G step with the DAMSM loss) per variant:
the bird preset at B = 20 on a GPU, a tiny two-stage config on the CPU (CI runs it once each)."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
from benchmarks.train_step import VARIANTS, bird_config, build_step, random_batch, tiny_config

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_step(benchmark, variant):
    if VARIANTS[variant]["impl"] == "triton" and not CUDA and not kernels.interpreter_active():
        pytest.skip("the fused kernels need a GPU or the Triton interpreter")
    if VARIANTS[variant].get("cuda_graphs") and not CUDA:
        pytest.skip("CUDA graphs need a GPU")
    if VARIANTS[variant]["compile"]:
        torch._dynamo.reset()
    cfg = bird_config() if CUDA else tiny_config()
    step, context = build_step(cfg, variant, DEVICE)
    batch = random_batch(cfg)
    with context():
        step(batch)  # warm-up (compiles)

        def run():
            losses = step(batch)
            if CUDA:
                torch.cuda.synchronize()
            return losses

        losses = benchmark(run)
    assert all(torch.isfinite(v) for v in losses.values()), losses
