"""Inception Score and TF-Inception FID of generated image tensors, for the GAN training's evaluation
hook, with torch-fidelity's Inception loaded from a local weights file (nothing is downloaded;
docs/design.md §5).

One pass of the Inception over the generated images gives both numbers: its logits (IS, as
torch-fidelity computes it: 10 splits, shuffled with its seed) and its pool3 features (FID). The
real side of the FID, the mean and covariance of the pool3 features of *every* test image at the
generator's final size (the evaluation's centred crop), is computed once per dataset, split, image
size and weights file, and kept beside the data as ``<root>/attngan_fast_fid/<split>_<size>px_<id>.npz``
(plain arrays, read without pickle): later evaluations and later runs read it. The ``<id>`` follows
the weights file's content and each image's name, size and modification time, so a replaced image
or another weights file gets statistics of its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import atomic_path
from .data.layouts import hash_image_stats
from .paths import private_temp_folder
from .protocol import file_sha256
from .train.checkpoint import save_atomic

FEATURE_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's port of the TF Inception
FID_LAYER, IS_LAYER = "2048", "logits_unbiased"
CACHE_DIR = "attngan_fast_fid"
STATS_FORMAT = 1


class UInt8Images(torch.utils.data.Dataset):
    """Images (N, 3, H, W) in [-1, 1] as torch-fidelity's input: uint8 (3, H, W) per item, rounded as a
    PNG of them would be."""

    def __init__(self, images: torch.Tensor):
        self.images = to_uint8(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class FinalImages(torch.utils.data.Dataset):
    """A ``TextImageDataset``'s images at its final size (its evaluation crop when built with
    ``train=False``) as torch-fidelity's uint8 input."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_uint8(self.dataset[index]["images"][-1])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class UnsafeWeightsError(ValueError):
    """A weights file that is not tensors and plain data (a pickle that asks for code, or no torch.save file)."""


def vetted_weights(path: str | Path) -> str:
    """A path torch-fidelity may load: torch-fidelity reads its weights file with ``torch.load(...,
    weights_only=False)``, which runs whatever code a pickle names. The user's file is read here with
    ``weights_only=True`` (tensors and plain data only) and torch-fidelity gets a copy written by us, in
    a private temporary folder that goes with the process."""
    stat = Path(path).stat()
    return _vetted_copy(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _vetted_copy(path: str, mtime_ns: int, size: int) -> str:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the restricted unpickler's and torch.load's errors alike
        raise UnsafeWeightsError(f"{path} is not a file of tensors (torch.load with weights_only=True refuses it: "
                                 f"{str(err).splitlines()[0][:120]})") from None
    copy = private_temp_folder("attngan-fast-inception-") / "weights.pth"
    save_atomic(state, copy)  # a full temporary folder is then one line, not torch's "unexpected pos"
    return str(copy)


@functools.lru_cache(maxsize=2)
def _extractor(weights: str, device: str):
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor(FEATURE_EXTRACTOR, [FID_LAYER, IS_LAYER], cuda=device.startswith("cuda"),
                                    feature_extractor_weights_path=vetted_weights(weights), verbose=False)


def inception_features(images, weights: str | Path, device: torch.device, batch_size: int = 64) -> dict:
    """{layer: (N, F) features} of images in [-1, 1] (a tensor) or of a uint8 image dataset."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    device = torch.device(device)
    data = UInt8Images(images) if isinstance(images, torch.Tensor) else images
    return get_featuresdict_from_dataset(data, _extractor(str(weights), str(device)), batch_size,
                                         device.type == "cuda", save_cpu_ram=True, verbose=False)


def inception_score(features: dict, splits: int = 10) -> dict:
    """{"mean", "std"} over ``splits`` splits (fewer when there are fewer images), as torch-fidelity."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = features[IS_LAYER]
    out = isc_features_to_metric(logits, splits=max(1, min(splits, logits.shape[0])))
    return {"mean": out["inception_score_mean"], "std": out["inception_score_std"]}


def statistics(features: torch.Tensor) -> dict:
    """{"mu": (F,), "sigma": (F, F)} float64 of pool3 features (N, F)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.double())


def frechet_distance(features: dict, real: dict) -> float:
    """TF-Inception FID of the images whose ``inception_features`` these are against ``real`` statistics."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    return float(fid_statistics_to_metric(statistics(features[FID_LAYER]), real, verbose=False)
                 ["frechet_inception_distance"])


def statistics_identity(dataset, weights: str | Path) -> tuple[str, dict]:
    """(a digest, what it covers) of the real statistics of ``dataset`` (a TextImageDataset) under ``weights``."""
    size = dataset.sizes[-1]
    described = {"format": STATS_FORMAT, "extractor": FEATURE_EXTRACTOR, "weights_sha256": file_sha256(weights),
                 "layout": dataset.layout, "split": dataset.split, "size": size, "images": len(dataset),
                 "crop": "evaluation (centred; CUB: around the bounding box)"}
    h = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    hash_image_stats(h, dataset.root, dataset.layout, dataset.keys)
    return h.hexdigest(), described


def real_statistics(dataset, weights: str | Path, device: torch.device, *, batch_size: int = 64,
                    progress: bool = False) -> dict:
    """The pool3 statistics of every image of ``dataset`` (a TextImageDataset built with ``train=False``),
    read from the cache beside the data, or computed and cached there (when the data's folder cannot be
    written, computed and said in a warning)."""
    digest, described = statistics_identity(dataset, weights)
    path = Path(dataset.root) / CACHE_DIR / f"{dataset.split}_{dataset.sizes[-1]}px_{digest[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["digest"]) == digest:
                    return {"mu": saved["mu"], "sigma": saved["sigma"]}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed again below and replaced
    images = FinalImages(dataset)
    if progress:
        tqdm.write(f"FID: computing the statistics of {len(images)} {dataset.split} images at {dataset.sizes[-1]} px "
                   f"(once; cached in {path.parent})")
    stats = statistics(inception_features(images, weights, device, batch_size)[FID_LAYER])
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=stats["mu"], sigma=stats["sigma"], digest=np.array(digest),
                         described=np.array(json.dumps(described)))
    except OSError as err:
        warnings.warn(f"could not cache the FID statistics in {path.parent} ({err}); they are computed again "
                      "at every run", stacklevel=2)
    return stats
