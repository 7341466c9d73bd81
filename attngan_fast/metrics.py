"""Retrieval with DAMSM global vectors (docs/design.md §5): for each image, its true caption among
``n_candidates - 1`` captions of *other classes* drawn at random; a hit when the true caption has the
highest cosine. Reported per fold and as mean ± std over the folds, and optionally as mean ± std over
groups of ``group_size`` images (the paper's ± looks like groups of 100: a much wider spread than 10
folds of 3,000 give). The same protocol scores generated images (R-precision) and real ones (DAMSM
validation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def retrieval_top1(image_vecs: torch.Tensor, caption_vecs: torch.Tensor, true_caption: torch.Tensor,
                   image_keys: torch.Tensor, caption_keys: torch.Tensor, *, n_candidates: int = 100,
                   folds: int = 10, seed: int = 0, chunk: int = 512, group_size: int | None = None) -> dict:
    """image_vecs: (N, D); caption_vecs: (M, D); true_caption: (N,) index of each image's caption;
    image_keys (N,) / caption_keys (M,): the class of an image and of a caption's image (or, without
    classes, an image id): a caption is a distractor for an image only when their keys differ.
    Returns dict(mean, std, folds=[...], fold_size, n, candidates, chance) and, with ``group_size``,
    groups=dict(size, count, mean, std, left_out): the images in a seeded random order, cut into
    consecutive groups of ``group_size`` (the remainder, fewer than a group, is left out of them)."""
    n_images = image_vecs.shape[0]
    if n_images == 0:
        raise ValueError("retrieval needs at least one image")
    img = F.normalize(image_vecs.double(), dim=1)
    cap = F.normalize(caption_vecs.double(), dim=1)
    # One number of distractors for every image, the fewest any image has (at most n_candidates - 1),
    # so that every image faces the same chance whatever the chunking.
    keys, per_key = torch.unique(caption_keys, return_counts=True)
    at = torch.searchsorted(keys, image_keys).clamp(max=len(keys) - 1)
    own = torch.where(keys[at] == image_keys, per_key[at], 0)  # captions sharing each image's key
    k = min(n_candidates - 1, int((caption_keys.numel() - own).min()))
    if k < 1:
        raise ValueError("no caption of another class is available as a distractor")
    # The (rows, M) float64 draw at most 2^25 numbers (256 MB) at a time: COCO has 200,000 captions.
    # Rows are drawn in order from one generator, so the draw does not depend on the chunk.
    chunk = max(1, min(chunk, (1 << 25) // max(1, caption_keys.numel())))
    gen = torch.Generator().manual_seed(seed)
    hits = torch.zeros(n_images, dtype=torch.bool)
    for start in range(0, n_images, chunk):
        rows = torch.arange(start, min(start + chunk, n_images))
        eligible = caption_keys[None, :] != image_keys[rows][:, None]  # (n, M)
        noise = torch.rand(eligible.shape, generator=gen, dtype=torch.float64)
        distractors = noise.masked_fill(~eligible, -1.0).topk(k, dim=1).indices  # k random eligible captions
        sims_true = (img[rows] * cap[true_caption[rows]]).sum(1)
        sims_other = torch.einsum("nd,nkd->nk", img[rows], cap[distractors])
        hits[rows] = sims_true > sims_other.max(1).values
    order = torch.randperm(n_images, generator=gen)
    fold_index = np.array_split(order.numpy(), min(folds, n_images))
    fold_hits = [hits[idx].double().mean().item() for idx in fold_index]
    out = {
        "mean": float(np.mean(fold_hits)),
        "std": float(np.std(fold_hits)),
        "folds": fold_hits,
        "fold_size": [len(idx) for idx in fold_index],
        "n": n_images,
        "candidates": k + 1,
        "chance": 1.0 / (k + 1),
    }
    if group_size is not None:
        count = n_images // group_size
        groups = hits[order[: count * group_size]].double().view(count, group_size).mean(1) if count else None
        out["groups"] = {"size": group_size, "count": count, "left_out": n_images - count * group_size,
                         "mean": None if groups is None else float(groups.mean()),
                         "std": None if groups is None else float(groups.std(unbiased=False))}
    return out


def attention_mass_in_parts(attn: torch.Tensor, part_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """attn: (K, h, w) maps that sum to 1; part_masks: (K, H, W) bool of the part each map's word names.
    Returns (mass inside the part, the part's share of the image) per map: attention that ignores the
    picture would put the second number inside the part on average."""
    h, w = attn.shape[1:]
    area = F.adaptive_avg_pool2d(part_masks[:, None].float(), (h, w))[:, 0]  # part fraction per region
    mass = (attn.float() * area).sum((1, 2))
    share = area.mean((1, 2))
    return mass, share

