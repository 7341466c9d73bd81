"""Text-to-image generation from a trained (or imported) AttnGAN checkpoint.

``generate_images(netG, text_encoder, vocab, captions, ...)`` returns tensors; ``write_generation``
writes each stage's image and, per attention stage, a picture of the five most attended words with
their maps over the image (the paper's Figure 1/4). Words missing from the vocabulary are dropped with
a warning that names them; a caption left with no known word is an error. Every word of a sentence
is kept, as the release's own example generation does (the generator attends over any number of
words); ``words_num`` cuts longer captions to a seeded random ordered subset, as in training. Work is
chunked, so thousands of captions never run out of memory.

Chunking and reproducibility: every image's noise is drawn up front from the seed, and a generator
with the default mask reads only its own caption, so its images do not depend on the batch size. A
generator with the released F_attn mask (``legacy_mask``: the imported release checkpoints) does not
have that property: the released mask gives each pixel row the padding mask of *another* sample of
the batch, so an image depends on the other captions in its batch and on how they are padded. For
such generators ``batch_size=1`` is the reproducible choice (each image sees only its own caption);
a larger batch warns once, and is fed longest caption first (ties by their words), as the release fed
its batches, so that a batch of the same distinct captions gives the same images whatever order they
were listed in.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pictures import generation_grid, save_png, to_pil
from .text import END_TOKEN, Vocabulary, tokenize, truncate, words_as_written
from .train.runtime import autocast


class CaptionError(ValueError):
    """A caption that cannot be turned into word ids."""


@dataclass
class Generated:
    captions: list[str]  # one entry per generated image (a caption repeated n_per_caption times)
    words: list[list[str]]  # the words the generator saw
    images: list[torch.Tensor]  # per stage, (N, 3, s, s) in [-1, 1], on the CPU
    attn: list[torch.Tensor] = field(default_factory=list)  # per attention stage, (N, T, s, s) fp32
    dropped: dict[str, list[str]] = field(default_factory=dict)  # caption -> unknown words dropped


# How a legacy-mask generator's batches are fed (evaluation reports record it).
LEGACY_BATCH_ORDER = "longest caption first, ties by their word ids"
LEGACY_BATCH_WARNING = (
    "this generator uses the released F_attn mask (legacy_mask), which couples the samples of a batch: its "
    "images depend on the other captions generated with them; use batch size 1 for results that depend on "
    "each caption alone")


def encode_captions(captions: list[str], vocab: Vocabulary, words_num: int | None = None, seed: int = 0,
                    names: list[str] | None = None):
    """(word ids per caption, {caption: dropped unknown words, as written}). Each word is read as training
    read its captions (the tokenizer keeps ASCII letters and digits: 'très' is 'trs'), and every known
    word is kept unless ``words_num`` caps the length (a seeded random ordered subset of a longer
    caption). A warning names the words read otherwise than written and the words dropped. Raises
    CaptionError for a caption with no known word, naming it by ``names`` (where each was written, e.g.
    a file's line) or by its number."""
    if words_num is not None and words_num < 1:
        raise CaptionError(f"words_num must be at least 1 (or None to keep every word), got {words_num}")
    ids, dropped, read_as = [], {}, {}
    for n, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise CaptionError(f"caption {n + 1} is empty")
        known, unknown = [], []
        for word in words_as_written(caption):
            token = "".join(tokenize(word))  # as the captions the model was trained on were read
            if token and token in vocab.index and token != END_TOKEN:
                known.append(vocab.index[token])
                if token != word:
                    read_as[word] = token
            else:
                unknown.append(word)
        if unknown:
            dropped[caption] = unknown
        if not known and names:
            raise CaptionError(f"{names[n]}: no word of {caption!r} is in the model's vocabulary")
        if not known:
            raise CaptionError(f"no word of caption {n + 1} ({caption!r}) is in the model's vocabulary")
        ids.append(known if words_num is None else truncate(known, words_num, random.Random(seed * 1_000_003 + n)))
    if read_as:
        listed = ", ".join(f"{w!r} as {t!r}" for w, t in read_as.items())
        warnings.warn(f"read as training read its captions (non-ASCII characters left out): {listed}", stacklevel=2)
    if dropped:
        listed = "; ".join(f"{c!r}: {', '.join(w)}" for c, w in dropped.items())
        warnings.warn(f"words not in the vocabulary were dropped: {listed}", stacklevel=2)
    return ids, dropped


def _pad(ids: list[list[int]]):
    lens = torch.tensor([len(x) for x in ids])
    caps = torch.zeros(len(ids), int(lens.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        caps[i, : len(x)] = torch.tensor(x)
    return caps, lens


def iter_generate(netG, text_encoder, vocab: Vocabulary, captions: list[str], *, words_num: int | None = None,
                  n_per_caption: int = 1, seed: int = 0, batch_size: int = 32, device="cpu", amp: str = "off",
                  return_attn: bool = True, progress=None, names: list[str] | None = None):
    """Yields (first image index, Generated) per chunk of ``batch_size`` images, so that any number of
    captions runs in bounded memory. Every image's noise is drawn up front from ``seed``, so with the
    default mask the result does not depend on the chunking; a ``legacy_mask`` generator's does (see
    the module docstring: use ``batch_size=1`` for it). ``words_num``: None keeps every word; ``names``:
    how errors name the captions (``encode_captions``)."""
    ids, dropped = encode_captions(list(captions), vocab, words_num, seed, names)
    yield from iter_generate_ids(netG, text_encoder, vocab, ids, captions=list(captions), dropped=dropped,
                                 n_per_caption=n_per_caption, seed=seed, batch_size=batch_size, device=device, amp=amp,
                                 return_attn=return_attn, progress=progress)


@torch.no_grad()
def iter_generate_ids(netG, text_encoder, vocab: Vocabulary, ids: list[list[int]], *, captions: list[str] | None = None,
                      dropped: dict | None = None, n_per_caption: int = 1, seed: int = 0, batch_size: int = 32,
                      device="cpu", amp: str = "off", return_attn: bool = True, noise=None, progress=None):
    """``iter_generate`` from word ids (one non-empty list per caption, exactly what the text encoder is
    given; the evaluation passes the ids its judge also reads). ``noise``: (z (N, z_dim), ca (N, c_dim))
    for the N = len(ids)·n_per_caption images, instead of drawing them from ``seed``. Attention maps
    are padded on the word axis to the longest caption, so chunks concatenate."""
    if n_per_caption < 1:
        raise ValueError(f"n_per_caption must be at least 1, got {n_per_caption}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if any(len(x) == 0 for x in ids):
        raise CaptionError("every caption needs at least one word id")
    device = torch.device(device)
    captions = captions if captions is not None else [" ".join(vocab.decode(x)) for x in ids]
    dropped = dropped or {}
    order = [c for c in range(len(ids)) for _ in range(n_per_caption)]
    if getattr(netG, "legacy_mask", False) and batch_size > 1 and len(order) > 1:
        warnings.warn(LEGACY_BATCH_WARNING, stacklevel=3)
    if noise is None:
        gen = torch.Generator().manual_seed(seed)
        noise = (torch.randn(len(order), netG.z_dim, generator=gen), torch.randn(len(order), netG.c_dim, generator=gen))
    z_all, ca_all = noise
    longest = max(len(x) for x in ids)
    legacy = getattr(netG, "legacy_mask", False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        # The release fed every batch longest caption first (training and sampling alike); under its mask
        # an image depends on its place in the batch, so an imported generator gets its batch sorted so.
        # Ties go by the words, so that the order distinct captions are listed in never matters (the
        # release left ties to an unstable sort).
        fed = list(range(len(chunk)))
        if legacy:
            fed.sort(key=lambda i: (-len(ids[chunk[i]]), ids[chunk[i]]))
        back = torch.argsort(torch.tensor(fed)) if legacy else None  # the fed order back to the chunk's
        caps, lens = _pad([ids[chunk[i]] for i in fed])
        caps = caps.to(device)
        rows = torch.arange(start, start + len(chunk))[fed]
        with autocast(device, amp):
            words, sentence = text_encoder(caps, lens)
            out = netG(z_all[rows].to(device), sentence.float(), words.float(), caps == 0, return_attn=return_attn,
                       ca_noise=ca_all[rows].to(device))
        # Chunks differ in their longest caption: pad the word axis to the longest of all to concatenate.
        maps = [torch.nn.functional.pad(_reorder(m.float().cpu(), back), (0, 0, 0, 0, 0, longest - m.shape[1]))
                for m in out.attn if m is not None]
        yield start, Generated(
            captions=[captions[c] for c in chunk], words=[vocab.decode(ids[c]) for c in chunk],
            images=[_reorder(img.float().cpu(), back) for img in out.images], attn=maps,
            dropped={captions[c]: dropped[captions[c]] for c in set(chunk) if captions[c] in dropped},
        )
        if progress is not None:
            progress.update(len(chunk))


def _reorder(t: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    return t if order is None else t[order]


def generate_images(netG, text_encoder, vocab: Vocabulary, captions: list[str], **kwargs) -> Generated:
    """Every image at once (``iter_generate``'s chunks concatenated): images per stage (N, 3, s, s) and
    attention maps per attention stage (N, T, s, s) as CPU tensors, T = the longest caption's words."""
    chunks = [g for _, g in iter_generate(netG, text_encoder, vocab, captions, **kwargs)]
    return Generated(
        captions=[c for g in chunks for c in g.captions], words=[w for g in chunks for w in g.words],
        images=[torch.cat([g.images[i] for g in chunks]) for i in range(len(chunks[0].images))],
        attn=[torch.cat([g.attn[j] for g in chunks]) for j in range(len(chunks[0].attn))],
        dropped={k: v for g in chunks for k, v in g.dropped.items()},
    )


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "caption"


def write_generation(gen: Generated, out_dir: str | Path, *, n_per_caption: int = 1, first: int = 0) -> list[Path]:
    """For image k of caption c: ``c{c:03d}_{slug}_s{k}_stage{i}.png`` per stage and, when maps exist,
    ``..._attention.png`` (every stage's image and the five most attended words per attention stage).
    ``first``: the overall index of ``gen``'s first image (when writing chunk by chunk)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, caption in enumerate(gen.captions):
        k = first + n
        stem = f"c{k // n_per_caption:03d}_{_slug(caption)}_s{k % n_per_caption}"
        for i, stage in enumerate(gen.images):
            path = out_dir / f"{stem}_stage{i + 1}_{stage.shape[-1]}px.png"
            to_pil(stage[n]).save(path)
            written.append(path)
        if gen.attn:
            # No title: the row already writes the words the generator saw, under the images.
            grid = generation_grid([s[n : n + 1] for s in gen.images], [m[n : n + 1] for m in gen.attn], [gen.words[n]],
                                   cell=128)
            written.append(save_png(grid, out_dir / f"{stem}_attention.png"))
    return written
