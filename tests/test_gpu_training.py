"""A training step on a CUDA device never waits for the GPU: CUDA's own sync detector
(``torch.cuda.set_sync_debug_mode("error")``) turns any host sync inside the step into an error.
Skipped without CUDA; on CPU, ``test_gan.py`` and ``test_damsm_training.py`` check the same of our
code with a detector of host reads, which cannot see syncs inside torch."""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks.train_step import build_step, random_batch, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def syncs_are_errors():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("variant", ["ours-fp32-eager", "ours-bf16", "ours-fp16", "ours-bf16-compile-fused"])
def test_a_gan_training_step_never_syncs_with_the_host(variant):
    torch._dynamo.reset()
    cfg = tiny_config(batch=8)
    step, context = build_step(cfg, variant, torch.device("cuda"))
    batch = random_batch(cfg)
    batch["class_ids"] = torch.arange(cfg.gan.batch_size) % 3
    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else [x.pin_memory() for x in v] if isinstance(v, list)
             else v for k, v in batch.items()}  # as the loader delivers it on CUDA
    with context():
        step(batch)  # compiles and autotunes (those synchronize)
        step(batch)
        torch.cuda.synchronize()
        with syncs_are_errors():
            losses = step(batch)
    assert all(torch.isfinite(v).item() for v in losses.values()), losses
