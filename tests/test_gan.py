"""The attentional generator, the discriminators and AttnGAN training on tiny synthetic data: shapes,
the release's parameter layout, the released mask bug only with legacy_mask, fused path = reference
path, learning steps, exact resume, divergence, speed knobs, the command line and 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import attngan_fast.train.gan as gan
from attngan_fast import kernels
from attngan_fast.cli import main as cli
from attngan_fast.config import load_config
from attngan_fast.models.discriminators import Discriminator, discriminator_loss, generator_adversarial_loss
from attngan_fast.models.generator import Generator, kl_loss
from attngan_fast.train.checkpoint import load_checkpoint
from attngan_fast.train.damsm import train_damsm
from attngan_fast.train.runtime import TrainingDiverged
from benchmarks.train_step import build_step, random_batch
from benchmarks.train_step import tiny_config as tiny_step_config
from host_sync import HostReads, free_port
from numerics import assert_rel, needs_interpreter

from data_fixtures import RELEASE_LAYOUTS as LAYOUTS  # noqa: E402


def _inputs(batch=2, emb=256, max_len=7, z_dim=100):
    words = torch.randn(batch, emb, max_len)
    lens = torch.randint(1, max_len + 1, (batch,))
    lens[0] = max_len
    mask = torch.arange(max_len)[None, :] >= lens[:, None]
    return torch.randn(batch, z_dim), torch.randn(batch, emb), words, mask


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("gf_dim, r_num", [(32, 2), (48, 3)])  # bird and coco widths
def test_generator_stage_shapes(stages, gf_dim, r_num):
    netG = Generator(gf_dim, 256, r_num=r_num, stages=stages).eval()
    z, sentence, words, mask = _inputs()
    with torch.no_grad():
        out = netG(z, sentence, words, mask, return_attn=True)
    assert [tuple(x.shape) for x in out.images] == [(2, 3, 64 * 2**i, 64 * 2**i) for i in range(stages)]
    assert [tuple(m.shape) for m in out.attn] == [(2, 7, 64 * 2**i, 64 * 2**i) for i in range(stages - 1)]
    assert all(x.abs().max() <= 1 for x in out.images)
    assert out.mu.shape == (2, 100) and torch.isfinite(kl_loss(out.mu, out.logvar))


def test_attndcgan_has_one_image_head():
    netG = Generator(32, 256, stages=3, variant="attndcgan").eval()
    with torch.no_grad():
        out = netG(*_inputs())
    assert len(out.images) == 1 and out.images[0].shape == (2, 3, 256, 256)


@pytest.mark.parametrize("name, build", [
    ("netG_bird", lambda: Generator(32, 256, r_num=2, stages=3)),
    ("netG_coco", lambda: Generator(48, 256, r_num=3, stages=3)),
    ("netG_attnDCGAN_bird", lambda: Generator(32, 256, r_num=2, stages=3, variant="attndcgan")),
    ("netD0_bird", lambda: Discriminator(64, 64, 256)),
    ("netD1_bird", lambda: Discriminator(128, 64, 256)),
    ("netD2_bird", lambda: Discriminator(256, 64, 256)),
])
def test_parameter_layout_is_the_releases(name, build):
    ours = {k: list(v.shape) for k, v in build().state_dict().items()}
    assert ours == LAYOUTS[name]


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_discriminator_logits_and_losses(size):
    netD = Discriminator(size, 16, 24)
    real = torch.rand(3, 3, size, size) * 2 - 1
    fake = torch.rand(3, 3, size, size) * 2 - 1
    sentence = torch.randn(3, 24)
    assert netD(real).shape == (3, 128, 4, 4)
    assert netD.UNCOND_DNET(netD(real)).shape == (3,) and netD.COND_DNET(netD(real), sentence).shape == (3,)
    loss, parts = discriminator_loss(netD, real, fake, sentence)
    assert set(parts) == {"cond_real", "cond_fake", "uncond_real", "uncond_fake", "cond_mismatch"}
    expected = (parts["uncond_real"] + parts["cond_real"]) / 2 + (
        parts["uncond_fake"] + parts["cond_fake"] + parts["cond_mismatch"]) / 3
    torch.testing.assert_close(loss, expected)
    # Mismatched = real image i with caption i + 1.
    f = netD(real)
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        netD.COND_DNET(f[:2], sentence[1:]), torch.zeros(2))
    torch.testing.assert_close(parts["cond_mismatch"], manual)
    assert torch.isfinite(generator_adversarial_loss(netD, fake, sentence))
    with pytest.raises(ValueError, match=f"takes {size}x{size} images"):
        netD(torch.zeros(1, 3, size * 2, size * 2))


def test_released_mask_bug_only_with_legacy_mask():
    torch.manual_seed(0)
    netG = Generator(8, 16, z_dim=8, c_dim=8, r_num=1, stages=2, base_size=16).eval()
    z, sentence, words, _ = _inputs(batch=3, emb=16, max_len=6, z_dim=8)
    mask = torch.arange(6)[None, :] >= torch.tensor([6, 2, 4])[:, None]
    with torch.no_grad():
        torch.manual_seed(1)
        own = netG(z, sentence, words, mask, return_attn=True)
        netG.legacy_mask = True
        torch.manual_seed(1)
        legacy = netG(z, sentence, words, mask, return_attn=True)
    # With its own mask, sample 1 (2 words) never attends to words 2..5; the released layout does.
    assert own.attn[0][1, 2:].abs().max() == 0
    assert legacy.attn[0][1, 2:].abs().max() > 0
    assert not torch.allclose(own.images[1], legacy.images[1])
    torch.testing.assert_close(own.images[0], legacy.images[0])  # the first stage has no attention


@pytest.mark.parametrize("impl", [pytest.param("triton", marks=needs_interpreter), "sdpa"])
def test_generator_fused_path_equals_reference_path(impl):
    torch.manual_seed(0)
    netG = Generator(16, 24, z_dim=8, c_dim=8, r_num=1, stages=2, base_size=8, impl="reference")
    z, sentence, words, mask = _inputs(batch=2, emb=24, max_len=5, z_dim=8)
    runs = []
    for path in ("reference", impl):
        netG.impl = path
        netG.zero_grad()
        torch.manual_seed(3)
        out = netG(z, sentence, words, mask, return_attn=True)
        (out.images[1].square().mean() + out.images[0].mean()).backward()
        runs.append((out, {n: p.grad.clone() for n, p in netG.named_parameters()}))
    (ref, g_ref), (tri, g_tri) = runs
    assert_rel(tri.images[1], ref.images[1], 1e-5, "stage-2 image")
    assert_rel(tri.attn[0], ref.attn[0], 1e-5, "attention maps")
    for name in g_ref:
        assert_rel(g_tri[name], g_ref[name], 1e-4, f"gradient of {name}")


# ------------------------------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def damsm_checkpoint(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("damsm")
    cfg = load_config("synthetic", [
        f"data.root={synthetic_root}", f"damsm.out_dir={out}", "data.image_size=32", "data.workers=0",
        "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16", "image_encoder.compact_width=8",
        "damsm.batch_size=8", "damsm.epochs=1", "damsm.max_minutes=null", "runtime.eval_batches=1",
    ])
    train_damsm(cfg, progress=False)
    return out / "latest.pt"


def tiny_gan_config(root, damsm_ckpt, out, *extra):
    return load_config("synthetic", [
        f"data.root={root}", f"gan.damsm={damsm_ckpt}", f"gan.out_dir={out}", "data.workers=0",
        "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16",
        "gan.stages=2", "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.z_dim=8", "gan.c_dim=8",
        "gan.r_num=1", "gan.batch_size=8", "gan.epochs=2", "gan.max_minutes=null", "gan.samples_every=5",
        "runtime.log_every=1", *extra,
    ])


def test_one_step_changes_weights_and_keeps_losses_finite(synthetic_root, damsm_checkpoint, tmp_path):
    cfg = tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path, "gan.max_steps=1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gan.train_gan(cfg, progress=False)
    assert result["step"] == 1
    for key in ("G", "G_adv", "damsm", "kl", "D0", "D1"):
        assert torch.isfinite(torch.tensor(result[key])), key
    ckpt = load_checkpoint(tmp_path / "latest.pt", gan.FORMAT)
    torch.manual_seed(cfg.runtime.seed)
    fresh = gan.build_generator(cfg)
    gan.init_weights(fresh)
    changed = [k for k, v in fresh.state_dict().items() if v.is_floating_point() and not torch.equal(v, ckpt["netG"][k])]
    assert len(changed) > 10, "one G step moves the generator's weights"
    assert not torch.equal(ckpt["netG"]["ca_net.fc.weight"], ckpt["netG_ema"]["ca_net.fc.weight"]), "EMA lags"


def _states(path):
    ckpt = load_checkpoint(path, gan.FORMAT)
    return [ckpt["netG"], ckpt["netG_ema"], ckpt["netsD"]]


def test_ema_update_moves_every_parameter_towards_the_model_and_copies_buffers():
    model = Generator(4, 16, z_dim=8, c_dim=8, r_num=1, stages=2)
    ema = Generator(4, 16, z_dim=8, c_dim=8, r_num=1, stages=2)
    model.train()(*_inputs(batch=3, emb=16, z_dim=8))  # moves the BatchNorm statistics
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    gan.ema_update(ema, model, 0.9)
    params = dict(model.named_parameters())
    for name, value in ema.state_dict().items():
        target = model.state_dict()[name]
        if name in params:
            expected = before[name].double() + 0.1 * (target.double() - before[name].double())
            assert_rel(value, expected, 1e-6, name)
        else:
            assert torch.equal(value, target), name
    tracked = [k for k in before if k.endswith("num_batches_tracked")]
    assert tracked and all(ema.state_dict()[k] == 1 for k in tracked)


@pytest.mark.slow
def test_resume_equals_uninterrupted(synthetic_root, damsm_checkpoint, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "full", "gan.epochs=1"),
                             progress=False)
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", "gan.epochs=1",
                                      "gan.max_steps=4"), progress=False)
        resumed = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", "gan.epochs=1"),
                                resume=tmp_path / "part" / "latest.pt", progress=False)
    assert resumed["step"] == full["step"] == 9
    for a, b in zip(_states(tmp_path / "full" / "latest.pt"), _states(tmp_path / "part" / "latest.pt")):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_a_signal_stops_the_gan_loop_with_a_checkpoint_that_resumes_exactly(synthetic_root, damsm_checkpoint,
                                                                               tmp_path, monkeypatch):
    """Ctrl-C at step 4: step 4 is saved mid-epoch and no end-of-run sample is drawn; resumed, the run
    ends equal to the uninterrupted one."""
    from test_run_folder import _signal_at_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "full", "gan.epochs=1",
                                             "gan.samples_every=100"), progress=False)
        with monkeypatch.context() as patch:
            _signal_at_step(patch, 4, signal.SIGINT)
            cut = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", "gan.epochs=1",
                                                "gan.samples_every=3"), progress=False)
        assert cut["stopped_by"] == "SIGINT"
        # no end-of-run grid; the result names the last one made on the way (step 3), not null
        assert cut["step"] == 4 and cut["samples"] == str(tmp_path / "part" / "samples" / "step0000003.png")
        assert sorted(p.name for p in (tmp_path / "part" / "samples").iterdir()) == ["step0000003.png"]
        resumed = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", "gan.epochs=1",
                                                "gan.samples_every=100"), resume=tmp_path / "part" / "latest.pt",
                                progress=False)
    assert resumed["step"] == full["step"] == 9 and "stopped_by" not in resumed
    for a, b in zip(_states(tmp_path / "full" / "latest.pt"), _states(tmp_path / "part" / "latest.pt")):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_and_keeps_the_checkpoint(synthetic_root, damsm_checkpoint, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path, "gan.epochs=1"), progress=False)
        before = (tmp_path / "latest.pt").read_bytes()
        start = load_checkpoint(tmp_path / "latest.pt", gan.FORMAT)["step"]
        calls = []

        def kl_from_the_second_step(mu, logvar):  # the losses are read every 4 steps, not at once
            calls.append(None)
            return kl_loss(mu, logvar) * (float("inf") if len(calls) >= 2 else 1.0)

        monkeypatch.setattr(gan, "kl_loss", kl_from_the_second_step)
        with pytest.raises(TrainingDiverged) as caught:
            gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path, "runtime.log_every=4"),
                          resume=tmp_path / "latest.pt", progress=False)
    message = str(caught.value)
    assert f"GAN loss became non-finite at step {start + 2} (G inf, " in message, message
    assert "kl inf" in message and f"training stopped at step {-(-(start + 2) // 4) * 4}," in message, message
    assert message.endswith(f"the last good checkpoint is {tmp_path / 'latest.pt'}"), message
    assert (tmp_path / "latest.pt").read_bytes() == before


@pytest.mark.parametrize("variant", ["ours-fp32-eager", "ours-bf16"])
def test_a_training_step_reads_nothing_back_from_the_device(variant):
    # Each read of a device value makes the host wait for the GPU's queue to drain; a step has none of
    # ours, so the host runs ahead (the losses stay on the device until a log step reads them).
    cfg = tiny_step_config()
    step, context = build_step(cfg, variant, torch.device("cpu"))
    batch = random_batch(cfg)
    batch["class_ids"] = torch.arange(cfg.gan.batch_size) % 2
    with context():
        step(batch)
        with HostReads() as reads:
            losses = step(batch)
    assert reads.found == []
    assert set(losses) == {"G", "G_adv", "damsm", "kl", "D0", "D1"}
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
@pytest.mark.parametrize("knobs", [
    ("runtime.amp=bf16", "runtime.channels_last=true"),
    ("runtime.amp=fp16",),
    ("runtime.compile=true",),
    pytest.param(("runtime.impl=triton",), marks=needs_interpreter),
    ("runtime.impl=sdpa", "runtime.amp=bf16"),
])
def test_speed_knobs_smoke(synthetic_root, damsm_checkpoint, tmp_path, knobs):
    torch._dynamo.reset()
    cfg = tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path, "gan.max_steps=2", *knobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gan.train_gan(cfg, progress=False)
    assert result["step"] == 2 and all(torch.isfinite(torch.tensor(result[k])) for k in ("G", "D0", "D1"))


@pytest.mark.slow
def test_cli_train_writes_checkpoint_samples_and_log(synthetic_root, damsm_checkpoint, tmp_path, capsys):
    args = ["train", "--config", "synthetic", "--data", str(synthetic_root), "--damsm", str(damsm_checkpoint),
            "--out", str(tmp_path), "--quiet", "--set", "gan.stages=2", "--set", "gan.base_size=16",
            "--set", "gan.gf_dim=4", "--set", "gan.df_dim=4", "--set", "gan.batch_size=8", "--set", "gan.max_steps=6",
            "--set", "gan.samples_every=3", "--set", "runtime.log_every=2"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 6 and Path(result["samples"]).exists()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step0000003.png", "step0000006.png"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 6] and records[-1]["final"]
    # Speed between log lines, and over the run without the first interval (compilation, warm-up).
    assert all(r["steps_per_s"] > 0 for r in records[:3]) and records[-1]["timed_steps"] == 4
    assert result["speed"]["steps_per_s"] == records[-1]["steps_per_s"]
    netG, text_encoder, vocab, cfg = gan.load_generator(tmp_path / "latest.pt")
    assert cfg.gan.stages == 2 and len(vocab) > 10


def test_cli_train_without_damsm_is_a_clear_error(synthetic_root, tmp_path, capsys):
    code = cli(["train", "--config", "bird", "--data", str(synthetic_root), "--set", "gan.damsm=null"])
    assert code == 2 and "needs a DAMSM checkpoint" in capsys.readouterr().err


def _ddp_worker(rank, world, port, root, damsm_ckpt, out, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cfg = tiny_gan_config(root, damsm_ckpt, out, "gan.max_steps=2", "runtime.device=cpu", "gan.batch_size=4")
    results[rank] = gan.train_gan(cfg, progress=False)["param_checksum"]


@pytest.mark.slow
def test_two_process_gloo_ddp(synthetic_root, damsm_checkpoint, tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), str(synthetic_root), str(damsm_checkpoint), str(tmp_path), results),
             nprocs=2, join=True)
    assert results[0] == results[1], "DDP ranks' generators diverged"
    ckpt = load_checkpoint(tmp_path / "latest.pt", gan.FORMAT)
    assert ckpt["step"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2


@needs_interpreter
def test_generator_loss_fused_path_equals_reference_path(synthetic_root, damsm_checkpoint, tmp_path):
    """The whole G objective (adversarial + λ·DAMSM through the word-score kernel + KL, with F_attn in
    the generator) on the same batch and noise, through the fused kernels and the reference."""
    from attngan_fast.data.dataset import TextImageDataset, collate
    from attngan_fast.train.damsm import load_damsm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damsm = load_damsm(damsm_checkpoint)
    cfg = tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path)
    ds = TextImageDataset(synthetic_root, "cub", "train", captions_per_image=10, words_num=18, image_size=32, branches=2)
    batch = collate([ds[(i, i)] for i in range(4)])
    torch.manual_seed(0)
    netG, netsD = gan.build_generator(cfg), gan.build_discriminators(cfg)
    gan.init_weights(netG), gan.init_weights(netsD)
    with torch.no_grad():
        words, sentence = damsm.text_encoder(batch["captions"], batch["cap_lens"])
    z = torch.randn(4, cfg.gan.z_dim)
    results = []
    for impl in ("reference", "triton"):
        cfg.runtime.impl = netG.impl = impl
        netG.zero_grad()
        torch.manual_seed(5)
        out = netG(z, sentence, words, gan.word_mask(batch["captions"]))
        loss, parts = gan.generator_loss(gan.GeneratorAdversarial(netsD), out.images, out.mu, out.logvar, sentence,
                                         words, batch["cap_lens"], batch["class_ids"], damsm.image_encoder, cfg)
        loss.backward()
        results.append((parts, {n: p.grad.clone() for n, p in netG.named_parameters()}))
    (p_ref, g_ref), (p_tri, g_tri) = results
    for k in p_ref:
        assert_rel(p_tri[k], p_ref[k], 1e-5, f"loss part {k}")
    for name in g_ref:
        assert_rel(g_tri[name], g_ref[name], 1e-4, f"gradient of {name}")


def test_cli_batch_larger_than_the_data_is_a_clear_error(synthetic_root, damsm_checkpoint, tmp_path, capsys):
    code = cli(["train", "--config", "synthetic", "--data", str(synthetic_root), "--damsm", str(damsm_checkpoint),
                "--out", str(tmp_path), "--quiet", "--set", "gan.batch_size=5000"])
    err = capsys.readouterr().err
    assert code == 2 and "batch size 5000 is larger than the 72 training images" in err
    assert "lower it with --set gan.batch_size=N" in err


@pytest.mark.slow
def test_compiled_steps_never_recompile_after_the_first(synthetic_root, damsm_checkpoint, tmp_path):
    """A compiled run compiles its graphs in the first step and never again, though caption lengths
    change from batch to batch: captions are padded to words_num, every graph is static (one per
    discriminator), so later steps run what the first compiled. A recompile mid-run costs minutes on
    a GPU and swaps a static graph for a dynamic-shape one."""
    from torch._dynamo.utils import counters

    def graphs_after(steps: int) -> int:
        torch._dynamo.reset()
        counters.clear()
        cfg = tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / str(steps), f"gan.max_steps={steps}",
                              "runtime.compile=true")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gan.train_gan(cfg, progress=False)
        assert not counters["graph_break"], dict(counters["graph_break"])  # each model one whole graph
        return counters["stats"]["unique_graphs"]

    first = graphs_after(1)
    assert first >= 5  # G, each D step (2 here), the G step's pass through the Ds, the image encoder
    assert graphs_after(5) == first


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ours-bf16", "ours-bf16-compile-fused"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_keep_their_parameters_layout(variant, channels_last):
    """CUDA's fused Adam refuses a gradient whose strides differ from its parameter's (size-1 axes
    aside: "params, grads, exp_avgs, and exp_avg_sqs must have same ... layout"); the CPU one does not
    check. So it is checked here, after real steps, eager and compiled, NCHW and channels_last."""
    if variant.endswith("fused") and not kernels.interpreter_active():
        pytest.skip("the fused variant needs the Triton interpreter on CPU")
    torch._dynamo.reset()
    cfg = tiny_step_config(batch=8)
    cfg.runtime.channels_last = channels_last
    step, context = build_step(cfg, variant, torch.device("cpu"))
    with context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step(random_batch(cfg))
        step(random_batch(cfg, seed=1))
    checked = 0
    for optimizer in (step.optG, *step.optsD):
        assert optimizer.param_groups[0]["fused"] is True
        for p in optimizer.param_groups[0]["params"]:
            if p.grad is None:
                continue
            assert p.grad.dtype == p.dtype
            kept = [(s, g) for s, g, n in zip(p.stride(), p.grad.stride(), p.shape) if n != 1]
            assert all(s == g for s, g in kept), (tuple(p.shape), p.stride(), p.grad.stride())
            checked += 1
    assert checked > 20
