"""DAMSM pretraining (docs/design.md §2.2, §3): text and image encoders trained with the word and sentence
matching losses.

Released hyper-parameters, with the release's slips fixed: Adam is created once (the release made a
new one every epoch, losing its moments); the lr decays x0.98 per epoch down to lr/10; the text
encoder's gradient norm is clipped at 0.25. Checkpoints are self-contained (config + vocabulary),
written atomically every epoch (``latest.pt``) and kept every ``snapshot_every`` epochs; ``resume``
restores models, optimizer, grad scaler, epoch, position inside the epoch and RNG state, so the
resumed run continues exactly as an uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from attngan_fast import kernels
from ..config import Config, ConfigError, config_from_dict
from ..data.dataset import TextImageDataset, collate
from ..data.synthetic import PART_ID
from ..losses import sent_loss, words_loss
from ..metrics import attention_mass_in_parts, retrieval_top1
from ..models.encoders import TextEncoder, build_image_encoder
from ..pictures import attention_grid, save_png
from ..text import Vocabulary, truncate
from .checkpoint import load_checkpoint, rng_neutral, save_atomic
from .common import (DAMSM_SHAPE_KEYS, adam, caption_cache, claim_output, gathered_rng_states, load_states, open_resume,
                     position_for_batch_size, restore_progress, resume_record, say_if_finished, train_loader)
from .runtime import (Deadline, JsonlLog, LossWatch, Runtime, StepMeter, autocast, compile_mode, grad_scaler,
                      seed_everything, step_begins, training_runtime)

FORMAT = "attngan-fast/damsm/1"
PICTURE_SAMPLES = 6


@dataclass
class DamsmModels:
    text_encoder: TextEncoder
    image_encoder: torch.nn.Module
    vocab: Vocabulary
    config: Config


def build_models(cfg: Config, vocab: Vocabulary) -> tuple[TextEncoder, torch.nn.Module]:
    te = cfg.text_encoder
    text_encoder = TextEncoder(len(vocab), te.embedding_dim, te.hidden_dim, te.dropout)
    ie = cfg.image_encoder
    image_encoder = build_image_encoder(ie.kind, te.hidden_dim, inception_weights=ie.inception_weights,
                                        compact_width=ie.compact_width, backbone_bn=ie.backbone_bn)
    return text_encoder, image_encoder


def load_damsm(path: str | Path, device: torch.device | str = "cpu") -> DamsmModels:
    """The encoders of a DAMSM checkpoint (eval mode), with its vocabulary and config."""
    ckpt = load_checkpoint(path, FORMAT)
    cfg = config_from_dict(ckpt["config"], strict=False)
    vocab = Vocabulary(ckpt["vocab"])
    # The backbone weights are in the checkpoint: do not ask for the original weights file again.
    cfg.image_encoder.inception_weights = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text_encoder, image_encoder = build_models(cfg, vocab)
    text_encoder.load_state_dict(ckpt["text_encoder"])
    image_encoder.load_state_dict(ckpt["image_encoder"])
    return DamsmModels(text_encoder.to(device).eval(), image_encoder.to(device).eval(), vocab, cfg)


def keeps_snapshot(d, epoch: int) -> bool:
    """Whether the checkpoint at the end of ``epoch`` epochs is kept as ``damsm_epochNNNN.pt``
    (``d``: a DamsmConfig): every ``snapshot_every`` epochs and each of ``snapshot_epochs``."""
    return epoch % d.snapshot_every == 0 or epoch in d.snapshot_epochs


def lr_at(cfg: Config, epoch: int) -> float:
    """The release's schedule: x lr_decay after every epoch while lr > lr0 / min_lr_divisor."""
    d = cfg.damsm
    lr = d.lr
    for _ in range(epoch):
        if lr > d.lr / d.min_lr_divisor:
            lr *= d.lr_decay
        else:
            break
    return lr


def damsm_losses(text_encoder, image_encoder, batch: dict, cfg: Config, device: torch.device, *,
                 return_attn: bool = False):
    """(dict of the four losses and their sum, attention maps or None) for one batch of ``collate``.

    Nothing here waits for the GPU: the text encoder gets the loader's host lengths, the rest moves
    with non-blocking copies, and the ops' value checks are off (``collate`` makes every caption 1..T
    words long)."""
    d = cfg.damsm
    step_begins(cfg.runtime)
    images = batch["images"][-1].to(device, non_blocking=True)
    if cfg.runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    captions = batch["captions"].to(device, non_blocking=True)
    host_lens = batch["cap_lens"]
    cap_lens = host_lens.to(device, non_blocking=True)
    class_ids = None if batch["class_ids"] is None else batch["class_ids"].to(device, non_blocking=True)
    with autocast(device, cfg.runtime.amp), kernels.value_checks(False):
        words, sentence = text_encoder(captions, host_lens)
        regions, global_code = image_encoder(images)
        w0, w1, attn = words_loss(regions, words, cap_lens, class_ids, d.gamma1, d.gamma2, d.gamma3,
                                  return_attn=return_attn, impl=cfg.runtime.impl, score_form=d.score_form)
        s0, s1 = sent_loss(global_code, sentence, class_ids, d.gamma3)
    losses = {"w0": w0, "w1": w1, "s0": s0, "s1": s1}
    losses["total"] = w0 + w1 + s0 + s1
    return losses, attn


@torch.no_grad()
def encode_captions(text_encoder, ids_list: list[list[int]], device, batch_size: int = 256) -> torch.Tensor:
    """Sentence vectors (M, D) of already truncated captions."""
    out = []
    for start in range(0, len(ids_list), batch_size):
        chunk = ids_list[start : start + batch_size]
        lens = torch.tensor([len(c) for c in chunk])
        caps = torch.zeros(len(chunk), int(lens.max()), dtype=torch.long)
        for i, c in enumerate(chunk):
            caps[i, : len(c)] = torch.tensor(c)
        out.append(text_encoder(caps.to(device), lens.to(device))[1].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(text_encoder, image_encoder, dataset: TextImageDataset, cfg: Config, device: torch.device,
             max_batches: int | None = None, seed: int = 0) -> dict:
    """Validation losses on the test split, held-out retrieval (image -> 1 true caption among 100 of
    other classes, DAMSM global vectors) and, on synthetic data, how much of each colour word's
    attention falls on the part it names."""
    text_encoder.eval()
    image_encoder.eval()
    loader = DataLoader(dataset, batch_size=cfg.damsm.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=cfg.data.workers, generator=torch.Generator().manual_seed(seed))
    sums, count, image_vecs, image_index = {}, 0, [], []
    part_mass, part_share = [], []
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        losses, attn = damsm_losses(text_encoder, image_encoder, batch, cfg, device, return_attn=True)
        n = len(batch["keys"])
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
        with autocast(device, cfg.runtime.amp):
            image_vecs.append(image_encoder(batch["images"][-1].to(device))[1].float().cpu())
        image_index.extend(range(b * cfg.damsm.batch_size, b * cfg.damsm.batch_size + n))
        _collect_part_attention(dataset, batch, attn, b * cfg.damsm.batch_size, part_mass, part_share)
    metrics = {f"val_{k}": v / count for k, v in sums.items()}

    # Retrieval: every caption of every evaluated image is a candidate; each image's true caption is
    # the one the loader showed it with.
    cpi, counts = dataset.captions_per_image, dataset.caption_counts  # counts: each image's (folder layout)
    ids, owner, true_caption = [], [], []
    for k, i in enumerate(image_index):
        true_caption.append(len(ids) + i % counts[i])  # the caption the loader showed (eval: i mod count)
        for c in range(counts[i]):
            ids.append(truncate(dataset.cache.caption(dataset.split, i, c), dataset.words_num,
                                random.Random(i * cpi + c)))
            owner.append(k)
    caption_vecs = encode_captions(text_encoder, ids, device)
    true_caption = torch.tensor(true_caption)
    if dataset.class_ids is not None:
        image_keys = torch.tensor([dataset.class_ids[i] for i in image_index])
    else:
        image_keys = torch.arange(len(image_index))
    if len(set(image_keys.tolist())) < 2:
        # One class among the evaluated images (a small runtime.eval_batches over a split in class order):
        # no caption may serve as a distractor, so there is no retrieval score this time, and the losses,
        # with every negative masked, say nothing either (they are 0).
        metrics.update({k: math.nan for k in metrics})
        metrics.update(retrieval_top1=math.nan, retrieval_top1_std=math.nan, retrieval_candidates=0,
                       retrieval_images=len(image_index))
    else:
        r = retrieval_top1(torch.cat(image_vecs), caption_vecs, true_caption, image_keys,
                           image_keys[torch.tensor(owner)], seed=seed)
        metrics.update(retrieval_top1=r["mean"], retrieval_top1_std=r["std"], retrieval_candidates=r["candidates"],
                       retrieval_images=r["n"])
    if part_mass:
        metrics.update(part_attention_mass=float(torch.tensor(part_mass).mean()),
                       part_area_share=float(torch.tensor(part_share).mean()), part_attention_words=len(part_mass))
    return metrics


_PART_WORDS = {"wing": ("wings", "wing"), "belly": ("belly", "underside", "breast"), "crown": ("crown", "cap")}


def _collect_part_attention(dataset, batch, attn, offset, mass_out, share_out) -> None:
    """For synthetic data: each colour word that names exactly one part of its bird (the wing, belly
    or crown colour, when no other of those parts shares it)."""
    all_attrs = dataset.synthetic_attributes()
    if attn is None or all_attrs is None:
        return
    vocab = dataset.vocab
    maps, masks = [], []
    for b, key in enumerate(batch["keys"]):
        attrs = all_attrs.get(key)
        if attrs is None:
            continue
        labels = torch.from_numpy(dataset.part_labels(offset + b).copy())
        words = vocab.decode(batch["captions"][b, : int(batch["cap_lens"][b])])
        colour_of = {p: attrs[p] for p in _PART_WORDS}
        for t, word in enumerate(words):
            parts = [p for p, c in colour_of.items() if c == word]
            if len(parts) != 1:
                continue
            neighbours = words[max(0, t - 4) : t + 5]
            if not any(w in _PART_WORDS[parts[0]] for w in neighbours):
                continue
            mask = labels == PART_ID[parts[0]]
            if parts[0] == "wing":
                mask |= labels == PART_ID["tail"]  # the tail is drawn in the wing colour
            maps.append(attn[b, t].float().cpu())
            masks.append(mask)
    if maps:
        mass, share = attention_mass_in_parts(torch.stack(maps), torch.stack(masks))
        mass_out.extend(mass.tolist())
        share_out.extend(share.tolist())


@torch.no_grad()
def attention_picture(text_encoder, image_encoder, dataset: TextImageDataset, cfg: Config, device, path, title: str):
    """Each word's region attention over the image for the first test images (fixed across epochs)."""
    text_encoder.eval()
    image_encoder.eval()
    batch = collate([dataset[i] for i in range(min(max(PICTURE_SAMPLES, 2), len(dataset)))])
    _, attn = damsm_losses(text_encoder, image_encoder, batch, cfg, device, return_attn=True)
    words = [dataset.vocab.decode(batch["captions"][b, : int(batch["cap_lens"][b])]) for b in range(len(batch["keys"]))]
    return save_png(attention_grid(batch["images"][-1], attn.float().cpu(), words, max_words=cfg.data.words_num,
                                   title=title), path)


def _check_inception_weights(cfg: Config) -> None:
    """A weights file that is named must exist, whether or not the image encoder uses it (a typo would
    otherwise pass silently with the compact encoder)."""
    path = cfg.image_encoder.inception_weights
    if path is None:
        return
    if not Path(path).is_file():
        raise ConfigError(f"image_encoder.inception_weights (--inception-weights): {path} does not exist")
    if cfg.image_encoder.kind != "inception":
        warnings.warn(f"--inception-weights {path} is not used: image_encoder.kind is {cfg.image_encoder.kind!r}, "
                      "which has no Inception backbone", stacklevel=3)


def train_damsm(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Pretrain the DAMSM as configured; returns the last evaluation metrics and the checkpoint path
    (None when no checkpoint was written). A folder that holds a run needs ``resume`` (its latest.pt)
    or ``overwrite`` (the earlier run is moved aside); see ``run_folder``."""
    with training_runtime(cfg.runtime) as rt:
        return _train(cfg, rt, resume, overwrite, progress)


def _train(cfg: Config, rt: Runtime, resume, overwrite: bool, progress: bool) -> dict:
    # -- the run folder, the captions and the data --------------------------------------------------
    device, d = rt.device, cfg.damsm
    _check_inception_weights(cfg)
    if cfg.damsm.batch_size < 2:  # here, not in the config's ranges: a stored config of 1 still loads
        raise ConfigError(f"damsm.batch_size must be at least 2, got {cfg.damsm.batch_size} (the matching losses "
                          "score each image against the batch's other captions)")
    seed_everything(cfg.runtime.seed, rt.rank)
    out = Path(d.out_dir)
    resume, first_record = claim_output(out, resume, overwrite, rt)
    records = [first_record] if first_record else []
    cache = caption_cache(cfg, rt, progress)
    common = dict(captions_per_image=cfg.data.captions_per_image, words_num=cfg.data.words_num,
                  image_size=cfg.data.image_size, branches=1, cache=cache)
    train_set = TextImageDataset(cfg.data.root, cfg.data.layout, "train", train=True, **common)
    test_set = TextImageDataset(cfg.data.root, cfg.data.layout, "test", train=False, **common)
    vocab = cache.vocab

    # -- models, optimizer, and what a resumed run continues from -------------------------------------
    text_encoder, image_encoder = build_models(cfg, vocab)
    text_encoder.to(device)
    image_encoder.to(device)
    if cfg.runtime.channels_last:
        image_encoder.to(memory_format=torch.channels_last)
    params = list(text_encoder.parameters()) + [p for p in image_encoder.parameters() if p.requires_grad]
    optimizer = adam(params, d.lr, d.betas)
    scaler = grad_scaler(device, cfg.runtime.amp)
    start_epoch, position, step, history = 0, 0, 0, []
    if resume is not None:
        ckpt, changed = open_resume(resume, FORMAT, cache, cfg, DAMSM_SHAPE_KEYS, rt)
        load_states([(text_encoder, ckpt["text_encoder"]), (image_encoder, ckpt["image_encoder"]),
                     (optimizer, ckpt["optimizer"])], resume)
        for group in optimizer.param_groups:  # a changed setting takes effect (the lr is set every epoch)
            group["betas"] = d.betas
        start_epoch, _, step = restore_progress(ckpt, scaler, rt)
        position = position_for_batch_size(ckpt, "damsm", d.batch_size, rt.world)
        history = list(ckpt.get("history", []))
        records.append(resume_record(resume, ckpt, changed))

    # -- several processes, torch.compile, the loader, the log ---------------------------------------
    text_model, image_model = text_encoder, image_encoder
    if rt.distributed:
        ids = [device.index] if device.type == "cuda" else None
        # No device_ids for the text encoder: DDP would copy the host caption lengths to the GPU, and
        # packing reads them back (a host sync per step); its inputs are placed by damsm_losses.
        text_model = DistributedDataParallel(text_encoder)
        image_model = DistributedDataParallel(image_encoder, device_ids=ids)
    if cfg.runtime.compile:
        # one static graph: every batch has one shape
        image_model = torch.compile(image_model, dynamic=False, mode=compile_mode(cfg.runtime))

    sampler, loader, steps_per_epoch = train_loader(train_set, d.batch_size, cfg, rt, device, "damsm.batch_size")
    if rt.is_main:  # only now: a run that fails in its set-up leaves no empty folder
        out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "log.jsonl", rt.is_main, out / "tensorboard" if cfg.runtime.tensorboard else None)
    for record in records:
        log.write(record)
    latest = out / "latest.pt"
    deadline = Deadline(d.max_minutes or None, rt, cfg.runtime.log_every)
    watch = LossWatch("DAMSM", rt)
    metrics: dict = {}

    # -- checkpoints ------------------------------------------------------------------------------------
    def save(epoch: int, pos: int, extra: dict) -> None:
        watch.check(step, latest)  # nothing non-finite is ever saved
        states = gathered_rng_states(rt)
        if rt.is_main:
            payload = {
                "format": FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_json(),
                "text_encoder": text_encoder.state_dict(), "image_encoder": image_encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "position": pos, "step": step, "rng": states,
                "history": history, "metrics": extra,
            }
            # The snapshot first: a kill between the two saves resumes from the previous latest.pt and
            # writes the snapshot again, where the other order would skip it for good.
            if pos == 0 and keeps_snapshot(d, epoch):
                save_atomic(payload, out / f"damsm_epoch{epoch:04d}.pt")
            save_atomic(payload, latest)

    # -- the epochs: training steps, then evaluation, pictures and a checkpoint per epoch --------------
    stopped = d.max_steps is not None and step >= d.max_steps
    say_if_finished(resume, "damsm", d, step, start_epoch, rt)
    cut_by_signal = None  # the signal that stopped the run before its planned end ("SIGINT", "SIGTERM")
    cut_at = None  # the limit that did ("damsm.max_steps", "damsm.max_minutes")
    meter = StepMeter(device, step)
    for epoch in range(start_epoch, d.epochs if not stopped else start_epoch):
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch, start=position * d.batch_size)
        text_model.train()
        image_model.train()
        bar = tqdm(total=steps_per_epoch, initial=position, desc=f"damsm epoch {epoch + 1}", leave=False,
                   disable=not (progress and rt.is_main))
        for batch in loader:
            losses, _ = damsm_losses(text_model, image_model, batch, cfg, device)
            loss = losses["total"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), d.rnn_grad_clip)
            scaler.step(optimizer)
            scaler.update()
            position += 1
            step += 1
            watch.record(step, losses)
            bar.update(1)
            if step % cfg.runtime.log_every == 0:  # the losses are read (a host sync) only here
                watch.check(step, latest)
                running = watch.read(smoothed=True)
                bar.set_postfix(loss=f"{running['total']:.3f}", w=f"{running['w0'] + running['w1']:.3f}",
                                s=f"{running['s0'] + running['s1']:.3f}")
                log.write({"step": step, "epoch": epoch, "lr": lr, **watch.read(), **meter.reading(step)})
            last_step = position >= steps_per_epoch and epoch + 1 >= d.epochs  # the run's planned end
            if d.max_steps is not None and step >= d.max_steps:  # planned end: a late signal changes nothing
                stopped, cut_at = True, None if last_step else "damsm.max_steps"
                break
            if deadline.passed(step):
                stopped, cut_by_signal = True, None if last_step else rt.stop
                cut_at = None if last_step or rt.stop else "damsm.max_minutes"
                break
        bar.close()
        with meter.paused():  # evaluation, pictures and the checkpoint are not training speed
            finished = not stopped or position >= steps_per_epoch
            # A signal's stop saves and ends at once: no evaluation, no picture.
            if rt.is_main and cut_by_signal is None and (stopped or (epoch + 1) % d.eval_every == 0 or epoch + 1 == d.epochs):
                with rng_neutral():
                    # Two decimals: "epoch 6.67", not "6.66667", in the log and the messages.
                    done_epochs = round(epoch + (1 if finished else position / steps_per_epoch), 2)
                    metrics = evaluate(text_encoder, image_encoder, test_set, cfg, device, cfg.runtime.eval_batches,
                                       seed=cfg.runtime.seed)
                    metrics.update(epoch=done_epochs, step=step, lr=lr)
                    history.append(metrics)
                    log.write({"eval": True, **metrics})
                    if (finished and (epoch + 1) % d.pictures_every == 0) or epoch + 1 == d.epochs or stopped:
                        picture = attention_picture(text_encoder, image_encoder, test_set, cfg, device,
                                                    out / f"attention_maps_step{step:07d}.png",
                                                    f"epoch {done_epochs:g} (step {step}): region attention of each "
                                                    "word (DAMSM)")
                        log.picture("attention_maps", picture, step)
                    if progress:
                        retrieval = (f"{metrics['retrieval_top1']:.1%} (1 of {metrics['retrieval_candidates']})"
                                     if metrics["retrieval_candidates"] else "n/a (the evaluated images are of one class)")
                        loss = "n/a" if math.isnan(metrics["val_total"]) else f"{metrics['val_total']:.3f}"
                        tqdm.write(f"epoch {done_epochs:g}: val loss {loss}, retrieval top-1 {retrieval}")
            if finished:
                position = 0
                save(epoch + 1, 0, metrics)
            else:
                save(epoch, position, metrics)  # a time-limited stop: resume continues inside this epoch
        if stopped:
            break
    # -- the closing record -------------------------------------------------------------------------------
    meter.reading(step)
    speed = meter.summary()
    stopped_by = {"stopped_by": cut_by_signal} if cut_by_signal else {"stopped_at": cut_at} if cut_at else {}
    log.write({"final": True, "step": step, **speed, **stopped_by})
    log.close()
    checksum = sum(float(p.detach().double().sum()) for p in params)
    # the last evaluation's step and epoch are older than the run's end when a stop came after it
    return {**metrics, "checkpoint": str(latest) if latest.is_file() else None, "step": step,
            "param_checksum": checksum, "speed": speed, **stopped_by}


def summarize(metrics: dict) -> str:
    keys = ("val_total", "retrieval_top1", "part_attention_mass", "part_area_share")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics and not math.isnan(metrics[k]))
