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


def _run_steps(graphs: bool, steps: int = 4):
    """Losses of the last step and each parameter's displacement after ``steps`` compiled GAN steps on
    one batch, with the compiled parts as CUDA graphs or not (fp32, fixed kernel configurations)."""
    from attngan_fast import kernels

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = tiny_config(batch=8)
    options = dict(amp="off", compile=True, impl="triton", released=False, cuda_graphs=graphs)
    with kernels.autotuning(False):
        step, _ = build_step(cfg, options, torch.device("cuda"))
        params = [p for m in (step.netG, step.netsD) for p in m.parameters()]
        start = [p.detach().clone() for p in params]
        batch = random_batch(cfg)
        torch.manual_seed(1)
        for _ in range(steps):  # warm-up, recording, then replays
            losses = step(batch)
        torch.cuda.synchronize()
    return {k: v.detach().clone() for k, v in losses.items()}, [p.detach() - s for p, s in zip(params, start)]


def test_a_step_captured_in_cuda_graphs_equals_the_uncaptured_step():
    from numerics import assert_rel

    (plain_losses, plain_moves), (graph_losses, graph_moves) = _run_steps(False), _run_steps(True)
    for k in plain_losses:
        assert_rel(graph_losses[k], plain_losses[k], 1e-4, f"loss {k}")
    # the displacements (~1e-3 of the weights), not the weights, so that a wrong update shows
    for i, (a, b) in enumerate(zip(graph_moves, plain_moves)):
        assert_rel(a, b, 1e-3, f"update of parameter {i}", floor=1e-7)


def test_a_run_with_cuda_graphs_resumes_exactly(synthetic_root, tmp_path):
    import warnings

    import attngan_fast.train.gan as gan
    from attngan_fast.config import load_config
    from attngan_fast.train.damsm import train_damsm

    common = [f"data.root={synthetic_root}", "data.workers=0", "text_encoder.embedding_dim=16",
              "text_encoder.hidden_dim=16", "runtime.device=cuda", "runtime.autotune=false"]
    train_damsm(load_config("synthetic", common + [f"damsm.out_dir={tmp_path / 'damsm'}", "data.image_size=32",
                                                   "image_encoder.compact_width=8", "damsm.batch_size=8", "damsm.epochs=1",
                                                   "damsm.max_minutes=null", "runtime.eval_batches=1"]), progress=False)

    def config(out, *extra):
        return load_config("synthetic", common + [
            f"gan.damsm={tmp_path / 'damsm' / 'latest.pt'}", f"gan.out_dir={tmp_path / out}", "gan.stages=2",
            "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.batch_size=8", "gan.epochs=1",
            "gan.max_minutes=null", "gan.eval_every=null", "runtime.compile=true", "runtime.cuda_graphs=true",
            "data.on_device=true", *extra])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = gan.train_gan(config("full"), progress=False)
        torch._dynamo.reset()
        gan.train_gan(config("part", "gan.max_steps=4"), progress=False)
        torch._dynamo.reset()
        resumed = gan.train_gan(config("part"), resume=tmp_path / "part" / "latest.pt", progress=False)
    assert resumed["step"] == full["step"] > 4
    assert resumed["param_checksum"] == full["param_checksum"]


def test_the_on_device_loader_never_syncs_with_the_host(synthetic_root):
    from attngan_fast.data.dataset import TextImageDataset
    from attngan_fast.data.on_device import OnDeviceDataset

    dataset = OnDeviceDataset(TextImageDataset(synthetic_root, "cub", "train", captions_per_image=10, words_num=18,
                                               image_size=32, branches=2), torch.device("cuda"))
    items = [dataset[(i, 7 * i)] for i in range(8)]
    dataset.collate(items)
    torch.cuda.synchronize()
    with syncs_are_errors():
        batch = dataset.collate(items)
    assert [tuple(x.shape) for x in batch["images"]] == [(8, 3, 16, 16), (8, 3, 32, 32)]
    assert all(x.is_cuda and bool(x.abs().max() <= 1) for x in batch["images"])
