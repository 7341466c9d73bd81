"""The evaluation protocol shared by ``attngan-fast evaluate`` and the GAN training's evaluation hook
(docs/design.md §5): which (image, caption) pairs are drawn, how captions are cut, what the judge reads, and
how a judge or a weights file is identified in a report.

- Pairs: drawn at random with a seed from *all* test images and *all* their captions; every pair is used
  once before any is used again (a fresh permutation per pass).
- Word cap: a caption longer than the cap keeps a seeded random ordered subset of its words; the cut is
  made once per caption, so the generator and the judge read the same ids for the true caption, and
  the distractors are cut by the same rule. The cap follows the release's and DM-GAN's evaluation
  configs: 25 words for birds, 20 for COCO.
- Judge: the DAMSM's global vectors (cosine), R = 1 among 1 true + 99 captions of other classes
  (``metrics.retrieval_top1``).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.prepare import caption_offsets
from .metrics import retrieval_top1
from .text import Vocabulary, truncate

# The release's / DM-GAN's evaluation WORDS_NUM; users' own data (folder layout) takes the birds' longer cap.
EVAL_WORDS_NUM = {"cub": 25, "coco": 20, "folder": 25}
R_PRECISION_GROUP = 100  # the paper's ± spread looks like a std over groups of 100 images


def default_eval_words_num(layout: str) -> int:
    return EVAL_WORDS_NUM[layout]


def caption_counts(n_images_in_split: int, captions_per_image: int | Sequence[int]) -> list[int]:
    """Captions of each image: ``captions_per_image`` as one number for every image (CUB, COCO) or
    as a list of one number per image (the folder layout, whose images may differ)."""
    if isinstance(captions_per_image, int):
        return [captions_per_image] * n_images_in_split
    counts = list(captions_per_image)
    if len(counts) != n_images_in_split:
        raise ValueError(f"{len(counts)} caption counts for {n_images_in_split} images")
    return counts


def draw_pairs(n_images_in_split: int, captions_per_image: int | Sequence[int], n: int,
               seed: int) -> list[tuple[int, int]]:
    """``n`` (image, caption index) pairs drawn at random (``seed``) from every image and every caption of
    a split: seeded permutations of all pairs, one after the other, so no pair repeats before all were used."""
    offsets = caption_offsets(caption_counts(n_images_in_split, captions_per_image))
    total = offsets[-1]
    if total < 1:
        raise ValueError("the split has no captions to draw from")
    gen = torch.Generator().manual_seed(seed)
    flat: list[int] = []
    while len(flat) < n:
        flat.extend(torch.randperm(total, generator=gen)[: n - len(flat)].tolist())
    owners = [bisect.bisect_right(offsets, k) - 1 for k in flat]
    return [(img, k - offsets[img]) for img, k in zip(owners, flat)]


def cut_captions(cache, split: str, n_images_in_split: int, captions_per_image: int | Sequence[int], words_num: int,
                 seed: int) -> list[list[int]]:
    """Every caption of the split (image-major: caption c of image i at offsets[i] + c) as word ids, cut to
    at most ``words_num`` words by one seeded draw per caption."""
    out = []
    for i, count in enumerate(caption_counts(n_images_in_split, captions_per_image)):
        for c in range(count):
            out.append(truncate(cache.caption(split, i, c), words_num, random.Random(seed * 1_000_003 + len(out))))
    return out


def translate_ids(ids_list: list[list[int]], source: Vocabulary, target: Vocabulary) -> tuple[list[list[int]], int]:
    """The same words in another vocabulary's ids (identity when the vocabularies are the same); words the
    target lacks are dropped. Returns (ids, how many captions kept no word: they hold their place as
    the single id 1)."""
    if source.words == target.words:
        return [list(x) for x in ids_list], 0
    out, empty = [], 0
    for ids in ids_list:
        mapped, _ = target.encode(source.decode(ids))
        empty += not mapped
        out.append(mapped or [1])
    return out, empty


def r_precision(image_vecs: torch.Tensor, caption_vecs: torch.Tensor, pairs: list[tuple[int, int]],
                captions_per_image: int | Sequence[int], class_ids: list[int] | None, *, folds: int = 10,
                seed: int = 0) -> dict:
    """R-precision of generated images (N, D) against every caption's judge vector (M, D), image k drawn
    from ``pairs[k]``; distractors come from other classes (other images without classes).
    ``captions_per_image``: one number, or one per image of the split. The result also holds the fold
    size and mean ± std over groups of 100 images."""
    if isinstance(captions_per_image, int):
        counts = caption_counts(caption_vecs.shape[0] // captions_per_image, captions_per_image)
    else:
        counts = list(captions_per_image)
    offsets = caption_offsets(counts)
    keys = class_ids if class_ids else list(range(len(counts)))
    image_keys = torch.tensor([keys[img] for img, _ in pairs])
    caption_keys = torch.tensor([keys[i] for i, count in enumerate(counts) for _ in range(count)])
    true_caption = torch.tensor([offsets[img] + c for img, c in pairs])
    return retrieval_top1(image_vecs, caption_vecs, true_caption, image_keys, caption_keys, folds=folds, seed=seed,
                          group_size=R_PRECISION_GROUP)


def tensors_sha256(*state_dicts: dict) -> str:
    """A hash of the tensors (names, dtypes, shapes, values) of one or more state_dicts: the identity of a
    model's weights, whatever file or format they came in."""
    digest = hashlib.sha256()
    for state in state_dicts:
        for name in sorted(state):
            tensor = state[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def damsm_sha256(damsm) -> str:
    """Identity of a DAMSM (``train.damsm.DamsmModels``): its text and image encoders' weights."""
    return tensors_sha256(damsm.text_encoder.state_dict(), damsm.image_encoder.state_dict())


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FixedEvaluation:
    """The GAN training's evaluation hook: a fixed subset of test pairs, fixed noise, the judge's caption
    vectors computed once (the DAMSM is frozen) and, with torch-fidelity's Inception weights, the test
    images' FID statistics (``inception_metrics.real_statistics``: cached beside the data).
    ``__call__(netG, text_encoder, image_encoder)`` -> dict(r_precision, r_precision_std, ...,
    [inception_score, inception_score_std, fid, fid_real_images])."""

    ids: list[list[int]]
    pairs: list[tuple[int, int]]
    caption_vecs: torch.Tensor
    caption_counts: list[int]  # captions of each test image, in the order of ``ids``
    class_ids: list[int] | None
    noise: tuple[torch.Tensor, torch.Tensor]
    vocab: Vocabulary
    words_num: int
    seed: int
    batch_size: int
    device: torch.device
    amp: str = "off"
    inception_weights: str | None = None
    real_stats: dict | None = None  # {"mu", "sigma", "n"} of the test images at the generator's final size

    @classmethod
    def build(cls, dataset, text_encoder, *, n_images: int, z_dim: int, c_dim: int, seed: int, batch_size: int,
              device, amp: str = "off", inception_weights: str | None = None,
              progress: bool = False) -> FixedEvaluation:
        """``dataset``: the test split at the generator's final size, ``train=False``."""
        from .data.layouts import check_negatives
        from .inception_metrics import real_statistics
        from .train.damsm import encode_captions

        check_negatives(dataset.root, dataset.split, dataset.keys, dataset.class_ids, evaluation=True)

        counts, n_split = dataset.caption_counts, len(dataset)
        words_num = default_eval_words_num(dataset.layout)
        ids = cut_captions(dataset.cache, dataset.split, n_split, counts, words_num, seed)
        pairs = draw_pairs(n_split, counts, n_images, seed)
        if n_images > sum(counts):
            warnings.warn(f"gan.eval_images {n_images} is more than the {sum(counts)} (test image, caption) pairs: "
                          f"each pair is drawn about {n_images / sum(counts):.1f} times", stacklevel=2)
        gen = torch.Generator().manual_seed(seed)
        noise = (torch.randn(n_images, z_dim, generator=gen), torch.randn(n_images, c_dim, generator=gen))
        caption_vecs = encode_captions(text_encoder, ids, device)
        real = None
        if inception_weights:
            real = {**real_statistics(dataset, inception_weights, torch.device(device), batch_size=batch_size,
                                      progress=progress), "n": n_split}
        return cls(ids, pairs, caption_vecs, list(counts), dataset.class_ids, noise, dataset.vocab, words_num, seed,
                   batch_size, torch.device(device), amp, inception_weights, real)

    @torch.no_grad()
    def __call__(self, netG, text_encoder, image_encoder) -> dict:
        from .generate import iter_generate_ids
        from .inception_metrics import frechet_distance, inception_features, inception_score
        from .train.runtime import autocast

        offsets = caption_offsets(self.caption_counts)
        prompts = [self.ids[offsets[img] + c] for img, c in self.pairs]
        finals, vecs = [], []
        for _, chunk in iter_generate_ids(netG, text_encoder, self.vocab, prompts, batch_size=self.batch_size,
                                          device=self.device, amp=self.amp, return_attn=False, noise=self.noise):
            final = chunk.images[-1]
            with autocast(self.device, self.amp):
                vecs.append(image_encoder(final.to(self.device))[1].float().cpu())
            if self.inception_weights:
                finals.append(final)
        r = r_precision(torch.cat(vecs), self.caption_vecs, self.pairs, self.caption_counts, self.class_ids,
                        seed=self.seed)
        row = {"r_precision": r["mean"], "r_precision_std": r["std"], "r_precision_images": r["n"],
               "r_precision_candidates": r["candidates"], "eval_words_num": self.words_num}
        if self.inception_weights:
            features = inception_features(torch.cat(finals), self.inception_weights, self.device, self.batch_size)
            isc = inception_score(features)
            row.update(inception_score=isc["mean"], inception_score_std=isc["std"],
                       fid=frechet_distance(features, self.real_stats), fid_real_images=self.real_stats["n"])
        return row
