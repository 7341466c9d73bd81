"""Set-up shared by the DAMSM and GAN loops: the caption cache built once, the resumable data loader,
RNG states gathered from every rank into a checkpoint, and the parts of resuming that both loops share."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..config import Config, ConfigError, config_differences
from ..data.dataset import EpochSampler, collate
from ..data.layouts import DataError
from ..data.on_device import OnDeviceDataset
from ..data.prepare import CaptionCache, load_captions
from .checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from .run_folder import claim_run_folder
from .runtime import Runtime, leave_the_process_group, seed_everything


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam as released (no weight decay, eps 1e-8), in torch's fused implementation: one kernel per
    step for all of a model's tensors instead of a dozen multi-tensor ones, the same update to
    rounding; and with an fp16 gradient scaler it takes the overflow flag on the device, where the
    other forms make the scaler read it (a host sync) every step."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def caption_cache(cfg: Config, rt: Runtime, progress: bool) -> CaptionCache:
    """Rank 0 builds the cache (if needed) while the other ranks wait, then they read it."""
    if cfg.preset == "synthetic" and not Path(cfg.data.root).exists():
        raise DataError(f"data root {cfg.data.root} does not exist; the synthetic birds are drawn, not downloaded: "
                        f"make them with: attngan-fast data synth --out {cfg.data.root}")
    cache = None
    if rt.is_main:
        cache = load_captions(cfg.data.root, cfg.data.layout, cfg.data.captions_per_image, progress=progress,
                              test_fraction=cfg.data.test_fraction)
    if rt.distributed:
        dist.barrier()
    if cache is None:
        cache = load_captions(cfg.data.root, cfg.data.layout, cfg.data.captions_per_image, progress=False,
                              test_fraction=cfg.data.test_fraction)
    return cache


def train_loader(dataset, batch_size: int, cfg: Config, rt: Runtime, device: torch.device, batch_key: str):
    """(sampler, loader, steps per epoch). The loader's own generator, not the global RNG, seeds its
    workers: the global stream is left to the models (dropout, noise), which a resumed run replays.
    Every batch has one shape (drop_last, captions padded to words_num): compiled models compile once.
    With ``data.on_device`` the images are decoded once onto ``device`` and batches made there."""
    if len(dataset) // rt.world < batch_size:
        raise ConfigError(f"batch size {batch_size} is larger than the {len(dataset) // rt.world} training images "
                          f"each process gets: lower it with --set {batch_key}=N")
    sampler = EpochSampler(len(dataset), seed=cfg.runtime.seed, shuffle=True, rank=rt.rank, world=rt.world)
    workers, collate_fn = cfg.data.workers, functools.partial(collate, pad_to=dataset.words_num)
    if cfg.data.on_device:
        dataset = OnDeviceDataset(dataset, device)
        workers, collate_fn = 0, dataset.collate  # device tensors are made in the main process
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate_fn,
                        num_workers=workers, pin_memory=device.type == "cuda" and not cfg.data.on_device,
                        persistent_workers=workers > 0, worker_init_fn=leave_the_process_group,
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


# Settings that change a model's parameters (their shapes or the modules there are): a checkpoint
# cannot continue under other values. Everything else (batch size, learning rates, budgets, the
# runtime) may change on resume; the change is logged.
DAMSM_SHAPE_KEYS = ("text_encoder.embedding_dim", "text_encoder.hidden_dim", "image_encoder.kind",
                    "image_encoder.compact_width")
GAN_SHAPE_KEYS = ("text_encoder.embedding_dim", "text_encoder.hidden_dim", "gan.stages", "gan.base_size", "gan.variant",
                  "gan.gf_dim", "gan.df_dim", "gan.z_dim", "gan.c_dim", "gan.r_num")


def claim_output(out, resume, overwrite: bool, rt: Runtime) -> tuple[Path | None, dict]:
    """``claim_run_folder`` on rank 0, its answer (or its error) shared with every rank."""
    answer = None
    if rt.is_main:
        try:
            answer = ("ok", claim_run_folder(Path(out), resume=resume, overwrite=overwrite))
        except ValueError as err:
            answer = ("error", err)
    if rt.distributed:
        box = [answer]
        dist.broadcast_object_list(box, src=0)
        answer = box[0]
    if answer[0] == "error":
        raise answer[1]
    return answer[1]


def open_resume(path, expected_format: str, cache: CaptionCache, cfg: Config, shape_keys: tuple[str, ...],
                rt: Runtime) -> tuple[dict, dict]:
    """(the checkpoint to resume from, {setting: [checkpoint's, this run's]} for every setting that
    differs). The checkpoint must be of this loop's kind, of these captions' vocabulary and of this
    model's shape; other differences are allowed and said (rank 0) in one line."""
    ckpt = load_checkpoint(path, expected_format)
    if ckpt["vocab"] != cache.vocab.to_json():
        raise CheckpointError(f"{path} was trained with another vocabulary than {cfg.data.root}'s captions")
    changed = config_differences(ckpt["config"], cfg.to_dict())
    if saved_world(ckpt) != rt.world:  # the data order and the RNG streams follow the number of processes
        changed["processes"] = [saved_world(ckpt), rt.world]
    shape = [f"{k} {changed[k][0]} -> {changed[k][1]}" for k in shape_keys if k in changed]
    if shape:
        raise CheckpointError(f"cannot resume {path}: the model's shape differs from the checkpoint's: {', '.join(shape)}")
    if changed and rt.is_main:
        print("attngan-fast: resuming with changed settings: "
              + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), file=sys.stderr)
    return ckpt, changed


def load_states(pairs, path) -> None:
    """``module.load_state_dict(state)`` for each pair; a mismatch the config check did not foresee (a
    file edited by hand) is one line naming the file, not torch's list of every tensor."""
    for module, state in pairs:
        try:
            module.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()
            raise CheckpointError(f"{path} does not fit this model: {first[1].strip() if len(first) > 1 else first[0]}") from None


def resume_record(path, ckpt: dict, changed: dict) -> dict:
    """The log line that marks a resume, so that steps logged twice (after the checkpoint, before a kill)
    are seen to be superseded."""
    return {"resumed": True, "from": str(path), "step": ckpt["step"], "epoch": ckpt["epoch"],
            "position": ckpt["position"], "changed": changed}


def saved_world(ckpt: dict) -> int:
    """How many processes trained the checkpoint (its RNG states are one per rank under torchrun)."""
    return len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1


def position_for_batch_size(ckpt: dict, section: str, batch_size: int, world: int = 1) -> int:
    """The checkpoint's position in its epoch (in batches of the batch size and on the number of
    processes it was saved with), in batches of ``batch_size`` per process of ``world``: a resume with
    another batch size or number of processes continues after the samples all processes saw (the
    epoch's order is one permutation dealt out to the ranks in turn), rounded down: less than one
    global batch is seen again."""
    old = ckpt["config"].get(section, {}).get("batch_size", batch_size)
    return ckpt["position"] * old * saved_world(ckpt) // (batch_size * world)


def say_if_finished(resume, section: str, settings, step: int, start_epoch: int, rt: Runtime) -> None:
    """A resumed run that has already reached its end (``settings``' max_steps or epochs, ``section``
    "damsm" or "gan") says so, rather than ending quietly as if it had trained."""
    if resume is None or not rt.is_main:
        return
    if settings.max_steps is not None and step >= settings.max_steps:
        limit = f"{section}.max_steps = {settings.max_steps}"
    elif start_epoch >= settings.epochs:
        limit = f"{section}.epochs = {settings.epochs}"
    else:
        return
    print(f"attngan-fast: {resume} has already trained to {limit} (step {step}): nothing to train; raise it to "
          "go on", file=sys.stderr)


def restore_progress(ckpt: dict, scaler, rt: Runtime) -> tuple[int, int, int]:
    """Restores what both loops save beside their models and optimizers (the gradient scaler and this
    rank's RNG states; on another number of processes each rank seeds a stream of its own, so such a
    continuation is never the uninterrupted run) and returns (epoch, position in the epoch, step)."""
    scaler.load_state_dict(ckpt["scaler"])
    if saved_world(ckpt) == rt.world:
        set_rng_state(ckpt["rng"][rt.rank] if rt.distributed else ckpt["rng"])
    else:  # another number of processes: fresh streams, one per rank (as a new run seeds them), moved on by step
        seed_everything(ckpt["config"]["runtime"]["seed"] + 1_000_003 * ckpt["step"], rt.rank)
    return ckpt["epoch"], ckpt["position"], ckpt["step"]
