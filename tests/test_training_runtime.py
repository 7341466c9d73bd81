"""The training loops' loss watch and time limit: losses stay on the device until read, the first
non-finite step is named however late it is checked, and under torchrun every rank stops together."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from attngan_fast.train.runtime import Deadline, LossWatch, Runtime, TrainingDiverged, setup_runtime, teardown_runtime
from host_sync import HostReads, free_port

CPU = Runtime(torch.device("cpu"))


def _losses(g, d):
    return {"G": torch.tensor(g), "D0": torch.tensor(d)}


def test_recording_reads_nothing_and_reading_gives_the_latest_and_the_smoothed_losses():
    watch = LossWatch("GAN", CPU, smoothing=0.5)
    assert watch.read() == {}
    with HostReads() as reads:
        watch.record(1, _losses(4.0, 1.0))
        watch.record(2, _losses(2.0, 3.0))
    assert reads.found == []
    assert watch.read() == {"G": 2.0, "D0": 3.0}
    assert watch.read(smoothed=True) == {"G": 3.0, "D0": 2.0}
    watch.check(2, Path("nowhere.pt"))  # all finite: no error


def test_the_first_non_finite_step_is_named_when_checked_later(tmp_path):
    watch = LossWatch("DAMSM", CPU)
    watch.record(1, _losses(1.0, 1.0))
    watch.record(2, _losses(float("nan"), 0.5))
    watch.record(3, _losses(float("inf"), float("nan")))
    watch.record(4, _losses(1.0, 1.0))
    (tmp_path / "latest.pt").write_bytes(b"")
    with pytest.raises(TrainingDiverged, match=r"^DAMSM loss became non-finite at step 2 \(G nan, D0 0\.5\); training "
                                               r"stopped at step 4, the last good checkpoint is .*latest\.pt$"):
        watch.check(4, tmp_path / "latest.pt")
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is none"):
        watch.check(4, tmp_path / "missing.pt")


def test_the_losses_must_keep_their_names():
    watch = LossWatch("GAN", CPU)
    watch.record(1, _losses(1.0, 1.0))
    with pytest.raises(ValueError, match="losses changed"):
        watch.record(2, {"G": torch.tensor(1.0)})


def test_deadline_alone_reads_the_clock_every_step():
    assert not Deadline(None, CPU, every=10).passed(3)
    assert not Deadline(1.0, CPU, every=10).passed(3)
    passed = Deadline(1e-6, CPU, every=10)
    time.sleep(0.01)
    assert passed.passed(3)


def _two_ranks(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    rt = setup_runtime("cpu")
    try:
        watch = LossWatch("GAN", rt)
        for step in (1, 2, 3):
            bad = rank == 1 and step >= 2  # only rank 1 diverges
            watch.record(step, _losses(float("nan") if bad else 1.0, 1.0))
        try:
            watch.check(3, Path(out) / "latest.pt")
            out_message = "no error"
        except TrainingDiverged as err:
            out_message = str(err)
        # Rank 1 is past its time limit, rank 0 not: both stop, at a step where they agree.
        deadline = Deadline(1e-6 if rank == 1 else 60.0, rt, every=4)
        time.sleep(0.01)
        stops = [deadline.passed(step) for step in (1, 2, 3, 4)]
        Path(out, f"rank{rank}.txt").write_text(f"{out_message}\n{stops}")
    finally:
        teardown_runtime(rt)


def test_under_torchrun_every_rank_stops_together(tmp_path):
    mp.spawn(_two_ranks, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert rank0[0].startswith("GAN loss became non-finite at step 2 (on another rank)"), rank0
    assert rank1[0].startswith("GAN loss became non-finite at step 2 (G nan, D0 1)"), rank1
    assert rank0[1] == rank1[1] == "[False, False, False, True]"


def test_adam_is_fused_and_is_the_adam_update():
    """The loops' optimizer against Adam's formula in float64 (released hyperparameters, 3 steps)."""
    from attngan_fast.train.common import adam

    lr, (b1, b2), eps = 2e-4, (0.5, 0.999), 1e-8
    param = torch.nn.Parameter(torch.randn(257))
    opt = adam([param], lr, (b1, b2))
    assert opt.param_groups[0]["fused"] is True
    start = param.detach().double().clone()
    x, m, v = start.clone(), torch.zeros(257, dtype=torch.float64), torch.zeros(257, dtype=torch.float64)
    for t in range(1, 4):
        grad = torch.randn(257)
        param.grad = grad.clone()
        opt.step()
        m = b1 * m + (1 - b1) * grad.double()
        v = b2 * v + (1 - b2) * grad.double() ** 2
        x = x - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    # The displacement (~6e-4), not the parameter (~1), so that a wrong moment or bias correction shows;
    # what is left is the fp32 rounding of the stored parameter (~6e-8).
    moved, expected = param.detach().double() - start, x - start
    assert float((moved - expected).norm() / expected.norm()) < 1e-3


def test_cuda_graphs_are_refused_in_one_line_on_cpu_and_without_compile(synthetic_root, tmp_path):
    from attngan_fast.config import ConfigError, load_config
    from attngan_fast.train.damsm import train_damsm
    from attngan_fast.train.runtime import check_cuda_graphs, compile_mode

    cfg = load_config("synthetic", [f"data.root={synthetic_root}", f"damsm.out_dir={tmp_path / 'run'}",
                                    "runtime.device=cpu", "runtime.compile=true", "runtime.cuda_graphs=true"])
    with pytest.raises(ConfigError, match=r"^runtime.cuda_graphs needs a CUDA device; this run is on cpu \(set it false\)$"):
        train_damsm(cfg, progress=False)
    assert not (tmp_path / "run").exists(), "refused before any work"
    cfg.runtime.compile = False
    with pytest.raises(ConfigError, match=r"^runtime.cuda_graphs captures the compiled parts: it needs runtime.compile"):
        check_cuda_graphs(cfg.runtime, torch.device("cuda"))
    assert compile_mode(cfg.runtime) == "reduce-overhead"
    cfg.runtime.cuda_graphs = False
    check_cuda_graphs(cfg.runtime, torch.device("cpu"))
    assert compile_mode(cfg.runtime) is None


@pytest.mark.parametrize("op", ["damsm", "attention"])
def test_a_training_runs_compiled_backward_under_amp_matches_eager(op):
    """The loops' AMP recipe (forward under bf16 autocast, backward outside it) compiled inside
    training_runtime gives eager's gradients; PyTorch's default assumption (the backward under the
    forward's autocast) re-autocasts the compiled reference's backward matmuls to bf16 (~3e-3)."""
    from attngan_fast import kernels
    from attngan_fast.config import RuntimeConfig
    from attngan_fast.kernels import testing
    from attngan_fast.train.runtime import training_runtime
    from numerics import assert_rel, loss_and_grads

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    if op == "damsm":
        words, cap_lens, regions = testing.damsm_inputs(4, 4, 32, 8, 25, generator=gen)
        leaves = (words, regions)

        def loss(w, r):
            scores = kernels.damsm_word_scores(w, cap_lens, r, impl="reference")
            return torch.nn.functional.cross_entropy(10 * scores, torch.arange(4)) + (scores ** 2).mean()
    else:
        query, context, mask = testing.attention_inputs(2, 16, 6, 6, 7, layout="nchw", generator=gen)
        leaves = (query, context)

        def loss(q, c):
            ctx = kernels.word_attention(q, c, mask, impl="reference")[0]
            return (ctx ** 2).mean() + torch.exp(0.1 * ctx).mean()

    eager = loss_and_grads(loss, *leaves, autocast=True)
    torch._dynamo.reset()
    with training_runtime(RuntimeConfig(device="cpu")):
        compiled = loss_and_grads(torch.compile(loss, backend="aot_eager", fullgraph=True), *leaves, autocast=True)
    for what, a, b in zip(("loss", "grad 0", "grad 1"), eager, compiled):
        assert_rel(b, a, 1e-5, f"{op} compiled {what}")
