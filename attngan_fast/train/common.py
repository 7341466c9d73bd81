"""Set-up shared by the DAMSM and GAN loops: the caption cache built once, the resumable data loader,
RNG states gathered from every rank into a checkpoint, and the parts of resuming that both loops share."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..config import Config, ConfigError
from ..data.dataset import EpochSampler, collate
from ..data.prepare import CaptionCache, load_captions
from .checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from .runtime import Runtime


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam as released (no weight decay, eps 1e-8), in torch's fused implementation: one kernel per
    step for all of a model's tensors instead of a dozen multi-tensor ones, the same update to
    rounding; and with an fp16 gradient scaler it takes the overflow flag on the device, where the
    other forms make the scaler read it (a host sync) every step."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def caption_cache(cfg: Config, rt: Runtime, progress: bool) -> CaptionCache:
    """Rank 0 builds the cache (if needed) while the other ranks wait, then they read it."""
    cache = None
    if rt.is_main:
        cache = load_captions(cfg.data.root, cfg.data.layout, cfg.data.captions_per_image, progress=progress)
    if rt.distributed:
        dist.barrier()
    if cache is None:
        cache = load_captions(cfg.data.root, cfg.data.layout, cfg.data.captions_per_image, progress=False)
    return cache


def train_loader(dataset, batch_size: int, cfg: Config, rt: Runtime, device: torch.device):
    """(sampler, loader, steps per epoch). The loader's own generator, not the global RNG, seeds its
    workers: the global stream is left to the models (dropout, noise), which a resumed run replays.
    Every batch has one shape (drop_last, captions padded to words_num): compiled models compile once."""
    if len(dataset) // rt.world < batch_size:
        raise ConfigError(f"batch size {batch_size} is larger than the {len(dataset) // rt.world} training images "
                         "each process gets")
    sampler = EpochSampler(len(dataset), seed=cfg.runtime.seed, shuffle=True, rank=rt.rank, world=rt.world)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                        collate_fn=functools.partial(collate, pad_to=dataset.words_num),
                        num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.data.workers > 0,
                        generator=torch.Generator().manual_seed(cfg.runtime.seed + rt.rank))
    return sampler, loader, (len(dataset) // rt.world) // batch_size


def gathered_rng_states(rt: Runtime):
    """This process's RNG state, or every rank's (a list) under torchrun. A collective: all ranks call it."""
    state = rng_state()
    if not rt.distributed:
        return state
    gathered = [None] * rt.world
    dist.all_gather_object(gathered, state)
    return gathered


def open_resume(path, expected_format: str, cache: CaptionCache, root) -> dict:
    """The checkpoint to resume from, checked to be of this loop's kind and of these captions' vocabulary."""
    ckpt = load_checkpoint(path, expected_format)
    if ckpt["vocab"] != cache.vocab.to_json():
        raise CheckpointError(f"{path} was trained with another vocabulary than {root}'s captions")
    return ckpt


def restore_progress(ckpt: dict, scaler, rt: Runtime) -> tuple[int, int, int]:
    """Restores what both loops save beside their models and optimizers (the gradient scaler and this
    rank's RNG states) and returns (epoch, position in the epoch, step)."""
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"][rt.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
    return ckpt["epoch"], ckpt["position"], ckpt["step"]
