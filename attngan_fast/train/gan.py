"""AttnGAN training (docs/design.md §2.2, §3, §7): D steps then a G step per batch, with the frozen DAMSM.

G loss = Σ_stages (uncond + cond fooling terms) + λ·(L1w + L2w + L1s + L2s)(last stage) + KL; the
word loss runs on the fused DAMSM kernel (``runtime.impl``) and the generator's F_attn on the fused
attention kernel. Each D: (uncond_real + cond_real)/2 + (uncond_fake + cond_fake + cond_mismatched)/3.
Adam (2e-4, betas 0.5/0.999) for G and every D; an EMA copy of G draws the samples and is what the
checkpoints offer for generation. Checkpoints are written atomically; ``resume`` restores models,
EMA, optimizers, grad scaler, step, position in the epoch and RNG state; a NaN/inf loss stops the run
and keeps the last good checkpoint. A step never waits for the GPU: the losses stay on the device until
a log step (with fp16 too: the fused Adam takes the gradient scaler's overflow flag on the device).
The AttnDCGAN variant (``gan.variant attndcgan``) is the release's: one image head at the end and one
discriminator with the conditional head only (D: cond_real + (cond_fake + cond_mismatched)/2; G: the
conditional fooling term).

Evaluation hook (``gan.eval_every`` epochs): the EMA generator draws a fixed subset of test pairs with
fixed noise, judged by the training DAMSM under the evaluation protocol (``protocol.py``); R-precision
(and IS and FID against the test images' cached statistics, with ``gan.eval_inception_weights``) go to
``log.jsonl`` as ``"eval"`` rows and ``eval_curve.png`` plots them over the epochs (the paper's
Figure 3). ``runtime.tensorboard`` copies the rows and the sample grids to ``OUT/tensorboard/``.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from attngan_fast import kernels
from ..config import Config, ConfigError, config_from_dict
from ..data.dataset import TextImageDataset, collate
from ..losses import sent_loss, words_loss
from ..models.discriminators import Discriminator, discriminator_loss, generator_adversarial_loss
from ..models.encoders import TextEncoder
from ..models.generator import Generator, kl_loss
from ..pictures import eval_curves, generation_grid, save_png
from ..protocol import FixedEvaluation
from ..text import Vocabulary
from .checkpoint import CheckpointError, load_checkpoint, rng_neutral, save_atomic
from .common import (GAN_SHAPE_KEYS, adam, caption_cache, claim_output, gathered_rng_states, load_states, open_resume,
                     position_for_batch_size, restore_progress, resume_record, say_if_finished, train_loader)
from .damsm import load_damsm
from .runtime import (Deadline, JsonlLog, LossWatch, Runtime, StepMeter, autocast, compile_mode, grad_scaler,
                      seed_everything, step_begins, training_runtime)

FORMAT = "attngan-fast/gan/1"
SAMPLE_CAPTIONS = 8


def build_generator(cfg: Config, *, legacy_mask: bool | None = None) -> Generator:
    g = cfg.gan
    return Generator(g.gf_dim, cfg.text_encoder.hidden_dim, g.z_dim, g.c_dim, g.r_num, g.stages, g.base_size,
                     g.variant, g.legacy_mask if legacy_mask is None else legacy_mask, cfg.runtime.impl)


def build_discriminators(cfg: Config) -> nn.ModuleList:
    g = cfg.gan
    if g.variant == "attndcgan":  # the release's: one D for the final image, conditional head only
        return nn.ModuleList([Discriminator(g.image_size, g.df_dim, cfg.text_encoder.hidden_dim, unconditional=False)])
    sizes = [g.base_size * 2**i for i in range(g.stages)]
    return nn.ModuleList(Discriminator(s, g.df_dim, cfg.text_encoder.hidden_dim) for s in sizes)


def init_weights(module: nn.Module) -> None:
    """Orthogonal convolutions and linear layers, BatchNorm weights N(1, 0.02), biases 0 (the release's)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DiscriminatorStep(nn.Module):
    """One D's loss as a single forward, so that DistributedDataParallel sees one forward per backward."""

    def __init__(self, netD: Discriminator):
        super().__init__()
        self.netD = netD

    def forward(self, real, fake, sentence):
        loss, _ = discriminator_loss(self.netD, real, fake, sentence)
        return loss


class GeneratorAdversarial(nn.Module):
    """The G step's pass through every D: Σ_stages of the fooling terms on the generated images, as one
    forward (one graph under ``--compile``). The Ds' own parameters are frozen meanwhile (GanStep)."""

    def __init__(self, netsD: nn.ModuleList):
        super().__init__()
        self.netsD = netsD

    def forward(self, images: list[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        return sum(generator_adversarial_loss(netD, images[i], sentence) for i, netD in enumerate(self.netsD))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← ema + (1 − decay)·(model − ema) for every parameter; buffers (BatchNorm statistics) copied.
    One multi-tensor launch each (torch's foreach ops, as torch.optim.swa_utils uses) rather than one
    small kernel per tensor: a G has hundreds of parameter tensors."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


def generator_loss(adversarial, images: list[torch.Tensor], mu, logvar, sentence, words, cap_lens, class_ids,
                   image_encoder, cfg: Config) -> tuple[torch.Tensor, dict]:
    """Σ_stages (uncond + cond fooling terms, ``adversarial(images, sentence)``, a GeneratorAdversarial)
    + λ·(L1w + L2w + L1s + L2s) on the last image + KL. Returns (loss, parts as detached tensors)."""
    d = cfg.damsm
    adv = adversarial(images, sentence)
    regions, code = image_encoder(images[-1])
    # The score form is passed only when it is not words_loss's default, the released one: the train-step
    # benchmark swaps words_loss for the release's algorithm, which knows no other form.
    form = {} if d.score_form == "released" else {"score_form": d.score_form}
    w0, w1, _ = words_loss(regions, words, cap_lens, class_ids, d.gamma1, d.gamma2, d.gamma3, return_attn=False,
                           impl=cfg.runtime.impl, **form)
    s0, s1 = sent_loss(code, sentence, class_ids, d.gamma3)
    damsm_loss = cfg.gan.lambda_damsm * (w0 + w1 + s0 + s1)
    kl = kl_loss(mu, logvar)
    loss = adv + damsm_loss + kl
    return loss, {"G": loss.detach(), "G_adv": adv.detach(), "damsm": damsm_loss.detach(), "kl": kl.detach()}


class GanStep:
    """One training step on a batch of ``collate``: every D, then G (the EMA update is the caller's).
    Returns the losses as 0-dim device tensors, unread: reading one waits for the GPU, so the loop
    reads (and checks) them at log steps (``LossWatch``). Nothing in the step reads the device: the
    text encoder packs with the loader's host lengths, class ids move without blocking, and the ops'
    value checks are off (``collate`` makes every caption 1..T words long)."""

    def __init__(self, netG, d_steps, netsD, optG, optsD, scaler, text_encoder, image_encoder, cfg: Config, device,
                 adversarial=None):
        self.netG, self.d_steps, self.netsD = netG, d_steps, netsD
        self.adversarial = GeneratorAdversarial(netsD) if adversarial is None else adversarial
        self.optG, self.optsD, self.scaler = optG, optsD, scaler
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.cfg, self.device = cfg, device
        self.memory_format = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        with kernels.value_checks(False):
            return self._step(batch)

    def _step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, device, amp, g = self.cfg, self.device, self.cfg.runtime.amp, self.cfg.gan
        step_begins(cfg.runtime)
        real = [x.to(device, non_blocking=True).contiguous(memory_format=self.memory_format) for x in batch["images"]]
        captions = batch["captions"].to(device, non_blocking=True)
        cap_lens = batch["cap_lens"].to(device, non_blocking=True)
        class_ids = None if batch["class_ids"] is None else batch["class_ids"].to(device, non_blocking=True)
        with torch.no_grad(), autocast(device, amp):
            words, sentence = self.text_encoder(captions, batch["cap_lens"])
        words, sentence = words.float(), sentence.float()
        z = torch.randn(captions.shape[0], g.z_dim, device=device)
        with autocast(device, amp):
            fake = self.netG(z, sentence, words, word_mask(captions))
        fakes = fake.images

        d_losses = []
        for i, (d_step, opt) in enumerate(zip(self.d_steps, self.optsD)):
            stage = i if g.variant == "attngan" else -1
            with autocast(device, amp):
                loss_d = d_step(real[stage], fakes[i].detach(), sentence)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(opt)
            d_losses.append(loss_d.detach())

        self.netsD.requires_grad_(False)  # D parameters need no gradient in the G step
        with autocast(device, amp):
            loss_g, parts = generator_loss(self.adversarial, fakes, fake.mu, fake.logvar, sentence, words, cap_lens,
                                           class_ids, self.image_encoder, cfg)
        self.netsD.requires_grad_(True)
        self.optG.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.optG)
        self.scaler.update()
        return {**parts, **{f"D{i}": x for i, x in enumerate(d_losses)}}


def compiled(g_model, d_steps, adversarial, image_encoder, mode: str | None = None):
    """(G, the D steps, the G step's pass through the Ds, the image encoder) under ``torch.compile``, each
    as static graphs: every training batch has one shape (``train_loader``), and the discriminator
    steps share one forward, so without ``dynamic=False`` the second would be recompiled with dynamic
    sizes. ``mode``: torch.compile's ("reduce-overhead": CUDA graphs)."""
    static = functools.partial(torch.compile, dynamic=False, mode=mode)
    return static(g_model), [static(s) for s in d_steps], static(adversarial), static(image_encoder)


def word_mask(captions: torch.Tensor) -> torch.Tensor:
    """True at padding (id 0), as the release builds it."""
    return captions == 0


def load_generator(path: str | Path, device: torch.device | str = "cpu", *, ema: bool = True):
    """(generator in eval mode, text encoder, vocabulary, config) from a GAN checkpoint."""
    ckpt = load_checkpoint(path, FORMAT)
    cfg = config_from_dict(ckpt["config"], strict=False)
    vocab = Vocabulary(ckpt["vocab"])
    netG = build_generator(cfg, legacy_mask=ckpt.get("legacy_mask"))
    netG.load_state_dict(ckpt["netG_ema" if ema else "netG"])
    te = cfg.text_encoder
    text_encoder = TextEncoder(len(vocab), te.embedding_dim, te.hidden_dim, te.dropout)
    text_encoder.load_state_dict(ckpt["text_encoder"])
    return netG.to(device).eval(), text_encoder.to(device).eval(), vocab, cfg


def train_gan(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Train AttnGAN as configured (``cfg.gan.damsm`` names the DAMSM checkpoint). A folder that holds a
    run needs ``resume`` (its latest.pt) or ``overwrite`` (the earlier run is moved aside)."""
    with training_runtime(cfg.runtime) as rt:
        return _train(cfg, rt, resume, overwrite, progress)


def _check(cfg: Config) -> None:
    g = cfg.gan
    if g.damsm is None:
        raise ConfigError("AttnGAN training needs a DAMSM checkpoint: --damsm PATH (or gan.damsm in the config)")
    if not Path(g.damsm).exists():
        raise ConfigError(f"the DAMSM checkpoint {g.damsm} does not exist (--damsm, or gan.damsm in the config: "
                          f"`attngan-fast pretrain-damsm --config {cfg.preset}` makes it)")
    if g.batch_size < 2:
        raise ConfigError("gan.batch_size must be at least 2 (the mismatched-caption term pairs image i with caption i+1)")
    if g.eval_every is not None and g.eval_every < 1:
        raise ConfigError(f"gan.eval_every must be a number of epochs >= 1 (or null for no evaluation), got {g.eval_every}")
    if g.eval_every is not None and g.eval_images < 1:
        raise ConfigError(f"gan.eval_images must be at least 1, got {g.eval_images}")
    if g.eval_inception_weights is not None and not Path(g.eval_inception_weights).is_file():
        raise ConfigError(f"gan.eval_inception_weights: torch-fidelity Inception weights file {g.eval_inception_weights} "
                          "does not exist")
    if g.eval_inception_weights is not None and g.eval_every is not None:
        from ..evaluate import EvaluationError, check_inception_weights

        try:  # before any work: the hook would meet a wrong file only at its first evaluation
            check_inception_weights(g.eval_inception_weights)
        except EvaluationError as err:
            raise ConfigError(str(err).replace("--inception-weights", "gan.eval_inception_weights", 1)) from None


def _train(cfg: Config, rt: Runtime, resume, overwrite: bool, progress: bool) -> dict:
    # -- the run folder, the frozen DAMSM, the captions and the data ----------------------------------
    _check(cfg)
    device, g = rt.device, cfg.gan
    seed_everything(cfg.runtime.seed, rt.rank)
    out = Path(g.out_dir)
    resume, first_record = claim_output(out, resume, overwrite, rt)
    records = [first_record] if first_record else []
    damsm = load_damsm(g.damsm, device)
    text_encoder, image_encoder = damsm.text_encoder, damsm.image_encoder
    text_encoder.requires_grad_(False)
    image_encoder.requires_grad_(False)
    if damsm.config.text_encoder != cfg.text_encoder:
        warnings.warn(f"text_encoder settings are taken from the DAMSM checkpoint {g.damsm}", stacklevel=2)
        cfg.text_encoder = damsm.config.text_encoder
    if damsm.config.damsm.score_form != cfg.damsm.score_form:
        warnings.warn(f"the DAMSM {g.damsm} was pretrained with damsm.score_form={damsm.config.damsm.score_form}, "
                      f"this run's DAMSM loss uses {cfg.damsm.score_form}", stacklevel=2)
    cache = caption_cache(cfg, rt, progress)
    if cache.vocab.words != damsm.vocab.words:
        raise CheckpointError(f"the DAMSM {g.damsm} was trained with another vocabulary than {cfg.data.root}'s captions")
    vocab = cache.vocab
    words_num = g.words_num or cfg.data.words_num
    common = dict(captions_per_image=cfg.data.captions_per_image, words_num=words_num, image_size=g.image_size,
                  branches=g.stages, cache=cache)
    train_set = TextImageDataset(cfg.data.root, cfg.data.layout, "train", train=True, **common)
    test_set = TextImageDataset(cfg.data.root, cfg.data.layout, "test", train=False, **common)

    # -- G, its EMA, the Ds, optimizers, and what a resumed run continues from -------------------------
    netG = build_generator(cfg)
    netsD = build_discriminators(cfg)
    init_weights(netG)
    init_weights(netsD)
    if rt.distributed and g.sync_bn and device.type == "cuda":
        netG = nn.SyncBatchNorm.convert_sync_batchnorm(netG)
        netsD = nn.SyncBatchNorm.convert_sync_batchnorm(netsD)
    elif rt.distributed and g.sync_bn and rt.is_main:
        warnings.warn("gan.sync_bn takes effect on CUDA devices only (NCCL): on this CPU run each process "
                      "normalizes over its own batch", stacklevel=2)
    netG.to(device)
    netsD.to(device)
    memory_format = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    if cfg.runtime.channels_last:
        netG.to(memory_format=memory_format)
        netsD.to(memory_format=memory_format)
        image_encoder.to(memory_format=memory_format)
    netG_ema = copy.deepcopy(netG).eval().requires_grad_(False)
    optG = adam(netG.parameters(), g.lr_g, g.betas)
    optsD = [adam(d.parameters(), g.lr_d, g.betas) for d in netsD]
    scaler = grad_scaler(device, cfg.runtime.amp)
    start_epoch, position, step = 0, 0, 0
    if resume is not None:
        ckpt, changed = open_resume(resume, FORMAT, cache, cfg, GAN_SHAPE_KEYS, rt)
        load_states([(netG, ckpt["netG"]), (netG_ema, ckpt["netG_ema"]), (netsD, ckpt["netsD"]), (optG, ckpt["optG"]),
                     *zip(optsD, ckpt["optsD"])], resume)
        for opt, lr in [(optG, g.lr_g)] + [(o, g.lr_d) for o in optsD]:  # a changed setting takes effect
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, g.betas
        start_epoch, _, step = restore_progress(ckpt, scaler, rt)
        position = position_for_batch_size(ckpt, "gan", g.batch_size, rt.world)
        records.append(resume_record(resume, ckpt, changed))

    # -- several processes, torch.compile, the step, the loader, the log ------------------------------
    g_model = netG
    d_steps = [DiscriminatorStep(d) for d in netsD]
    if rt.distributed:
        ids = [device.index] if device.type == "cuda" else None
        g_model = DistributedDataParallel(netG, device_ids=ids)
        d_steps = [DistributedDataParallel(s, device_ids=ids) for s in d_steps]
    image_fn, adversarial = image_encoder, GeneratorAdversarial(netsD)
    if cfg.runtime.compile:
        g_model, d_steps, adversarial, image_fn = compiled(g_model, d_steps, adversarial, image_encoder,
                                                           compile_mode(cfg.runtime))

    step_fn = GanStep(g_model, d_steps, netsD, optG, optsD, scaler, text_encoder, image_fn, cfg, device, adversarial)
    sampler, loader, steps_per_epoch = train_loader(train_set, g.batch_size, cfg, rt, device, "gan.batch_size")
    if rt.is_main:  # only now: a run that fails in its set-up leaves no empty folder
        out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "log.jsonl", rt.is_main, out / "tensorboard" if cfg.runtime.tensorboard else None)
    for record in records:
        log.write(record)
    latest = out / "latest.pt"
    deadline = Deadline(g.max_minutes or None, rt, cfg.runtime.log_every)
    watch = LossWatch("GAN", rt)
    amp = cfg.runtime.amp

    # -- checkpoints, sample grids and the evaluation hook ---------------------------------------------
    # Fixed captions (the first test images') and fixed noise for every sample grid.
    sample_batch = collate([test_set[i] for i in range(min(SAMPLE_CAPTIONS, len(test_set)))])
    sample_gen = torch.Generator().manual_seed(7)
    sample_noise = torch.randn(len(sample_batch["keys"]), g.z_dim, generator=sample_gen)
    sample_ca = torch.randn(len(sample_batch["keys"]), g.c_dim, generator=sample_gen)

    def save(epoch: int, pos: int) -> None:
        watch.check(step, latest)  # nothing non-finite is ever saved
        states = gathered_rng_states(rt)
        if rt.is_main:
            payload = {
                "format": FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_json(), "legacy_mask": g.legacy_mask,
                "text_encoder": text_encoder.state_dict(), "netG": netG.state_dict(), "netG_ema": netG_ema.state_dict(),
                "netsD": netsD.state_dict(), "optG": optG.state_dict(), "optsD": [o.state_dict() for o in optsD],
                "scaler": scaler.state_dict(), "epoch": epoch, "position": pos, "step": step,
                "rng": states, "damsm": str(g.damsm),
            }
            if pos == 0 and epoch % g.snapshot_every == 0:  # before latest.pt, as the DAMSM loop does
                save_atomic(payload, out / f"netG_epoch{epoch:04d}.pt")
            save_atomic(payload, latest)

    def samples() -> Path | None:
        path = out / "samples" / f"step{step:07d}.png"
        if not rt.is_main or path.is_file():  # drawn at this step already (the final call after a grid step)
            return path if rt.is_main else None
        with rng_neutral(), torch.no_grad():
            images, maps, words = generate_from_batch(netG_ema, text_encoder, sample_batch, sample_noise, vocab, device,
                                                      amp, ca_noise=sample_ca)
            grid = generation_grid(images, maps, words, title=f"step {step} (EMA generator, fixed noise)")
            save_png(grid, path)
            log.picture("samples", path, step)
            return path

    evaluation = None
    if g.eval_every is not None and rt.is_main:
        with rng_neutral():
            evaluation = FixedEvaluation.build(test_set, text_encoder, n_images=g.eval_images, z_dim=g.z_dim,
                                               c_dim=g.c_dim, seed=cfg.runtime.seed, batch_size=g.batch_size,
                                               device=device, amp=amp, inception_weights=g.eval_inception_weights,
                                               progress=progress)

    def evaluate_now(done_epochs: int) -> None:
        """One row of the evaluation curve (rank 0; the other ranks go on and wait at the next collective)."""
        if evaluation is None:
            return
        with rng_neutral():
            row = evaluation(netG_ema, text_encoder, image_encoder)
        log.write({"eval": True, "epoch": done_epochs, "step": step, **row})
        eval_curves(log.path, out / "eval_curve.png")
        if progress:
            shown = f", IS {row['inception_score']:.2f}, FID {row['fid']:.1f}" if "inception_score" in row else ""
            k = row["r_precision_candidates"]
            tqdm.write(f"epoch {done_epochs}: R-precision {row['r_precision']:.1%} (1 of {k}, chance {1 / k:.0%}) on "
                       f"{row['r_precision_images']} fixed test pairs{shown}")

    # -- the epochs: training steps (samples every samples_every), then evaluation and a checkpoint ---
    stopped = g.max_steps is not None and step >= g.max_steps
    say_if_finished(resume, "gan", g, step, start_epoch, rt)
    cut_by_signal = None  # the signal that stopped the run before its planned end ("SIGINT", "SIGTERM")
    cut_at = None  # the limit that did ("gan.max_steps", "gan.max_minutes")
    last_samples = None
    meter = StepMeter(device, step)
    for epoch in range(start_epoch, g.epochs if not stopped else start_epoch):
        sampler.set_epoch(epoch, start=position * g.batch_size)
        g_model.train()
        for s in d_steps:
            s.train()
        bar = tqdm(total=steps_per_epoch, initial=position, desc=f"attngan epoch {epoch + 1}", leave=False,
                   disable=not (progress and rt.is_main))
        for batch in loader:
            losses = step_fn(batch)
            ema_update(netG_ema, netG, g.ema_decay)
            position += 1
            step += 1
            watch.record(step, losses)
            bar.update(1)
            if step % cfg.runtime.log_every == 0:  # the losses are read (a host sync) only here
                watch.check(step, latest)
                running = watch.read(smoothed=True)
                bar.set_postfix(G=f"{running['G']:.2f}", D=" ".join(f"{running[f'D{i}']:.2f}" for i in range(len(netsD))))
                log.write({"step": step, "epoch": epoch, **watch.read(), **meter.reading(step)})
            if step % g.samples_every == 0:
                with meter.paused():
                    last_samples = samples()
            last_step = position >= steps_per_epoch and epoch + 1 >= g.epochs  # the run's planned end
            if g.max_steps is not None and step >= g.max_steps:  # planned end: a late signal changes nothing
                stopped, cut_at = True, None if last_step else "gan.max_steps"
                break
            if deadline.passed(step):
                stopped, cut_by_signal = True, None if last_step else rt.stop
                cut_at = None if last_step or rt.stop else "gan.max_minutes"
                break
        bar.close()
        finished = position >= steps_per_epoch
        with meter.paused():
            if finished:
                position = 0
                if g.eval_every is not None and (epoch + 1) % g.eval_every == 0 and cut_by_signal is None:
                    evaluate_now(epoch + 1)
                save(epoch + 1, 0)
            else:
                save(epoch, position)
        if stopped:
            break
    # -- the closing record and the last sample grid ---------------------------------------------------
    meter.reading(step)
    speed = meter.summary()
    stopped_by = {"stopped_by": cut_by_signal} if cut_by_signal else {"stopped_at": cut_at} if cut_at else {}
    log.write({"final": True, "step": step, **speed, **stopped_by})
    # a signal's stop saves and ends at once: its result names the last grid made on the way
    picture = samples() if cut_by_signal is None else last_samples
    log.close()
    checksum = sum(float(p.detach().double().sum()) for p in netG.parameters())
    return {"checkpoint": str(latest) if latest.is_file() else None, "step": step,
            "samples": str(picture) if picture else None,
            "param_checksum": checksum, "speed": speed, **watch.read(), **stopped_by}


@torch.no_grad()
def generate_from_batch(netG: Generator, text_encoder: TextEncoder, batch: dict, noise: torch.Tensor, vocab: Vocabulary,
                        device, amp: str = "off", ca_noise: torch.Tensor | None = None):
    """Images per stage (B, 3, s, s), attention maps per attention stage (B, T, s, s) and the words of
    each caption, for a collated batch and fixed noise."""
    captions, cap_lens = batch["captions"], batch["cap_lens"]  # host tensors, as collate makes them
    on_device = captions.to(device)
    with autocast(torch.device(device) if isinstance(device, str) else device, amp):
        words, sentence = text_encoder(on_device, cap_lens)
        out = netG(noise.to(device), sentence.float(), words.float(), word_mask(on_device), return_attn=True,
                   ca_noise=None if ca_noise is None else ca_noise.to(device))
    words_list = [vocab.decode(captions[b, : int(cap_lens[b])]) for b in range(captions.shape[0])]
    return ([x.float().cpu() for x in out.images], [m.float().cpu() for m in out.attn if m is not None], words_list)

