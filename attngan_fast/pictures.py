"""Pictures a person looks at: attention maps of words over images (like the release's
``attention_maps*.png`` and the paper's Figure 1/4), as PNG grids drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def overlay(image: Image.Image, attn: torch.Tensor) -> Image.Image:
    """Spotlight a (h, w) attention map over the image: attended regions keep their colour, the rest
    is dimmed and tinted."""
    size = image.size[::-1]
    m = F.interpolate(attn[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
    m = (m / m.max().clamp(min=1e-12)).numpy()[..., None]
    base = np.asarray(image, dtype=np.float32)
    tint = np.array([30.0, 30.0, 90.0])
    out = base * (0.15 + 0.85 * m) + tint * (1 - m) * 0.5
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def attention_grid(images: torch.Tensor, attn: torch.Tensor, words: list[list[str]], *, cell: int = 96,
                   max_words: int = 12, title: str | None = None) -> Image.Image:
    """One row per sample: the image, then each word's attention map over it, the word written under
    it. images: (B, 3, H, W) in [-1, 1]; attn: (B, T, h, w); words[b]: the caption's words (<= T)."""
    font = _font(max(10, cell // 8))
    label = cell // 5
    head = label if title else 0
    cols = 1 + min(max_words, max((len(w) for w in words), default=0))
    grid = Image.new("RGB", (cols * cell, head + len(words) * (cell + label)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for b, caption in enumerate(words):
        y = head + b * (cell + label)
        img = to_pil(images[b]).resize((cell, cell), Image.BILINEAR)
        grid.paste(img, (0, y))
        draw.text((4, y + cell + 1), "image", fill="gray", font=font)
        for t, word in enumerate(caption[: cols - 1]):
            grid.paste(overlay(img, attn[b, t]), ((t + 1) * cell, y))
            draw.text(((t + 1) * cell + 4, y + cell + 1), word, fill="black", font=font)
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def top_words(attn: torch.Tensor, n_words: int, k: int) -> list[int]:
    """Indices of the k words (among the first n_words) with the most attention mass. attn: (T, h, w)."""
    mass = attn[:n_words].float().sum((1, 2))
    return mass.argsort(descending=True)[:k].tolist()


def generation_grid(images: list[torch.Tensor], maps: list[torch.Tensor], words: list[list[str]], *, top_k: int = 5,
                    cell: int = 96, title: str | None = None) -> Image.Image:
    """One row per caption: the image of every stage, then for each attention stage the ``top_k`` most
    attended words with their maps over that stage's image (the paper's Figure 1/4), the caption under
    the row. images[i]: (B, 3, s_i, s_i); maps[j]: (B, T, s_j, s_j), the attention that shaped stage
    j + 1, drawn (as the release draws it) over the image of stage j + 1; words[b]: caption b's words."""
    font = _font(max(10, cell // 8))
    label = cell // 5
    head = label if title else 0
    cols = len(images) + len(maps) * top_k
    row_h = cell + 2 * label
    grid = Image.new("RGB", (cols * cell, head + len(words) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for b, caption in enumerate(words):
        y = head + b * row_h
        for i, stage in enumerate(images):
            grid.paste(to_pil(stage[b]).resize((cell, cell), Image.BILINEAR), (i * cell, y))
            draw.text((i * cell + 4, y + cell + 1), f"{stage.shape[-1]}px", fill="gray", font=font)
        for j, attn in enumerate(maps):
            stage_img = to_pil(images[min(j + 1, len(images) - 1)][b]).resize((cell, cell), Image.BILINEAR)
            for r, t in enumerate(top_words(attn[b], len(caption), top_k)):
                x = (len(images) + j * top_k + r) * cell
                grid.paste(overlay(stage_img, attn[b, t]), (x, y))
                draw.text((x + 4, y + cell + 1), caption[t], fill="black", font=font)
        draw.text((4, y + cell + label), " ".join(caption), fill="black", font=font)
    return grid
