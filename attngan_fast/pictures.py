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


# A heat scale from dark blue (no attention) through cyan, green and yellow to red (the map's maximum),
# as (position, RGB) anchors interpolated linearly: hues a reader tells apart at a glance.
HEAT_ANCHORS = ((0.0, (20, 30, 140)), (0.25, (0, 140, 255)), (0.5, (40, 220, 110)), (0.75, (255, 220, 0)),
                (1.0, (230, 20, 10)))
HEAT_ALPHA = 0.55  # share of the heat colour in an overlay pixel; the rest is the image


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB of the heat scale for values in [0, 1]."""
    pos = np.array([a for a, _ in HEAT_ANCHORS])
    rgb = np.array([c for _, c in HEAT_ANCHORS], dtype=np.float32)
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, pos, rgb[:, ch]) for ch in range(3)], axis=-1)


def overlay(image: Image.Image, attn: torch.Tensor) -> Image.Image:
    """A (h, w) attention map over the image as a heat overlay, scaled to the map's own maximum (red)
    down to zero (dark blue), blended with the image so that the bird stays visible."""
    size = image.size[::-1]
    m = F.interpolate(attn[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
    m = (m / m.max().clamp(min=1e-12)).clamp(min=0).numpy()
    base = np.asarray(image, dtype=np.float32)
    out = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * heat_colours(m)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def colour_scale(width: int, height: int, font) -> Image.Image:
    """The legend of ``overlay``: the heat scale left (0) to right (the map's maximum), labelled."""
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    bar_w, bar_h = max(32, min(width // 3, 240)), max(6, height // 3)
    x0 = 4 + int(draw.textlength("attention 0 ", font=font))
    bar = heat_colours(np.linspace(0.0, 1.0, bar_w))[None].repeat(bar_h, axis=0)
    strip.paste(Image.fromarray(bar.round().astype(np.uint8)), (x0, (height - bar_h) // 2))
    text_y = (height - bar_h) // 2 - 2
    draw.text((4, text_y), "attention 0", fill="black", font=font)
    draw.text((x0 + bar_w + 4, text_y), "max (each map scaled to its own maximum)", fill="black", font=font)
    return strip


def attention_grid(images: torch.Tensor, attn: torch.Tensor, words: list[list[str]], *, cell: int = 96,
                   max_words: int = 12, title: str | None = None) -> Image.Image:
    """One row per sample: the image, then each word's attention map over it, the word written under
    it. images: (B, 3, H, W) in [-1, 1]; attn: (B, T, h, w); words[b]: the caption's words (<= T)."""
    font = _font(max(10, cell // 8))
    label = cell // 5
    head = label if title else 0
    cols = 1 + min(max_words, max((len(w) for w in words), default=0))
    body = head + len(words) * (cell + label)
    grid = Image.new("RGB", (cols * cell, body + 2 * label), "white")
    grid.paste(colour_scale(cols * cell, 2 * label, font), (0, body))
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
    body = head + len(words) * row_h
    grid = Image.new("RGB", (cols * cell, body + (2 * label if maps else 0)), "white")
    if maps:
        grid.paste(colour_scale(cols * cell, 2 * label, font), (0, body))
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
