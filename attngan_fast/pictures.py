"""Pictures a person looks at: attention maps of words over images (like the release's
``attention_maps*.png`` and the paper's Figure 1/4), as PNG grids drawn with Pillow, and the evaluation
curves of a GAN run (the paper's Figure 3).

As the paper's figures draw them (``style="paper"``, the default): a generator stage's words are ranked
by their attention after zeroing every weight ≤ 1/T (T = the caption's words: the weight of a word no
pixel prefers over the uniform share), the map is drawn with those weights zeroed, and every map is
upsampled smoothly (bilinear, then a Gaussian of σ = the upscale factor in output pixels) rather than
showing its coarse cells. ``style="plain"`` ranks by the whole attention mass and upsamples bilinearly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


STYLES = ("paper", "plain")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) blurred by a separable Gaussian of std ``sigma`` pixels (edges replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    y = x[None, None]
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return y[0, 0]


def upsample_map(attn: torch.Tensor, size: tuple[int, int], *, smooth: bool = True) -> torch.Tensor:
    """A (h, w) attention map at ``size`` (H, W): bilinear, then (``smooth``) a Gaussian whose σ is the
    upscale factor, so the map's cells become soft blobs as in the paper's figures."""
    m = F.interpolate(attn[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
    scale = max(size[0] / attn.shape[-2], size[1] / attn.shape[-1])
    if smooth and scale > 1:
        m = _gaussian_blur(m, scale)
    return m


def above_uniform(attn: torch.Tensor, n_words: int) -> torch.Tensor:
    """Word-attention maps (T, h, w) with every weight ≤ 1/n_words zeroed (the paper's figures)."""
    return attn.float() * (attn.float() > 1.0 / max(n_words, 1))


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


def overlay(image: Image.Image, attn: torch.Tensor, *, smooth: bool = True) -> Image.Image:
    """A (h, w) attention map over the image as a heat overlay, scaled to the map's own maximum (red)
    down to zero (dark blue), blended with the image so that the bird stays visible. ``smooth``:
    Gaussian upsampling (``upsample_map``)."""
    m = upsample_map(attn, image.size[::-1], smooth=smooth)
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
                   max_words: int = 12, title: str | None = None, smooth: bool = True) -> Image.Image:
    """One row per sample: the image, then each word's attention map over it, the word written under
    it. images: (B, 3, H, W) in [-1, 1]; attn: (B, T, h, w); words[b]: the caption's words (<= T).
    ``smooth``: Gaussian upsampling of the maps (``upsample_map``)."""
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
            grid.paste(overlay(img, attn[b, t], smooth=smooth), ((t + 1) * cell, y))
            draw.text(((t + 1) * cell + 4, y + cell + 1), word, fill="black", font=font)
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    """``image`` as a PNG at ``path``, atomically: a write killed halfway leaves no truncated picture that
    a resumed run would take for a finished one."""
    path = Path(path)
    with atomic_path(path, durable=False, clean=False) as tmp:
        image.save(tmp, format="PNG")
    return path


def top_words(attn: torch.Tensor, n_words: int, k: int, *, style: str = "paper") -> list[int]:
    """Indices of the k words (among the first n_words) with the most attention mass, attn: (T, h, w);
    ``"paper"`` counts only the weights above 1/n_words (``above_uniform``), ``"plain"`` all of them."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {list(STYLES)}, got {style!r}")
    maps = attn[:n_words].float()
    if style == "paper":
        maps = above_uniform(maps, n_words)
    return maps.sum((1, 2)).argsort(descending=True, stable=True)[:k].tolist()


def generation_grid(images: list[torch.Tensor], maps: list[torch.Tensor], words: list[list[str]], *, top_k: int = 5,
                    cell: int = 96, title: str | None = None, style: str = "paper") -> Image.Image:
    """One row per caption: the image of every stage, then for each attention stage the ``top_k`` most
    attended words with their maps over that stage's image (the paper's Figure 1/4), the caption under
    the row. images[i]: (B, 3, s_i, s_i); maps[j]: (B, T, s_j, s_j), the attention that shaped stage
    j + 1, drawn (as the release draws it) over the image of stage j + 1; words[b]: caption b's words.
    ``style``: ``"paper"`` (ranking and maps with weights ≤ 1/T zeroed, Gaussian upsampling) or
    ``"plain"`` (see the module docstring)."""
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
        for j, stage_words in enumerate(attended_words(images, maps, caption, b, top_k=top_k, cell=cell, style=style)):
            for r, (word, picture) in enumerate(stage_words):
                x = (len(images) + j * top_k + r) * cell
                grid.paste(picture, (x, y))
                draw.text((x + 4, y + cell + 1), word, fill="black", font=font)
        draw.text((4, y + cell + label), " ".join(caption), fill="black", font=font)
    return grid


def attended_words(images: list[torch.Tensor], maps: list[torch.Tensor], caption: list[str], b: int, *,
                   top_k: int = 5, cell: int = 96, style: str = "paper") -> list[list[tuple[str, Image.Image]]]:
    """For sample ``b``, per attention stage j: its ``top_k`` most attended words, each with its map over
    the image of stage j + 1 (``cell`` pixels square), as ``generation_grid`` draws them. images[i]:
    (B, 3, s_i, s_i); maps[j]: (B, T, s_j, s_j); caption: sample b's words."""
    out = []
    for j, attn in enumerate(maps):
        stage_img = to_pil(images[min(j + 1, len(images) - 1)][b]).resize((cell, cell), Image.BILINEAR)
        shown = above_uniform(attn[b], len(caption)) if style == "paper" else attn[b]
        out.append([(caption[t], overlay(stage_img, shown[t], smooth=style == "paper"))
                    for t in top_words(attn[b], len(caption), top_k, style=style)])
    return out


def line_chart(panels: list[tuple[str, list[float], list[float]]], *, x_label: str, title: str,
               width: int = 640, panel_height: int = 220) -> Image.Image:
    """One panel per (y label, xs, ys), stacked, sharing the x axis: a polyline with dots and the y range
    written at the axis (enough to read a training curve; no plotting library needed)."""
    font = _font(12)
    left, right, top, bottom = 70, 20, 28, 34
    chart = Image.new("RGB", (width, top + len(panels) * (panel_height + bottom)), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((left, 6), title, fill="black", font=font)
    all_x = [x for _, xs, _ in panels for x in xs]
    x0, x1 = (min(all_x), max(all_x)) if all_x else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1
    for p, (label, xs, ys) in enumerate(panels):
        y_top = top + p * (panel_height + bottom)
        y_bottom = y_top + panel_height
        draw.rectangle((left, y_top, width - right, y_bottom), outline="gray")
        draw.text((4, y_top + panel_height // 2 - 6), label, fill="black", font=font)
        if not ys:
            continue
        lo, hi = axis_range(ys)
        draw.text((left - 64, y_top), f"{hi:.3g}", fill="gray", font=font)
        draw.text((left - 64, y_bottom - 12), f"{lo:.3g}", fill="gray", font=font)

        def at(x, y):
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    y_bottom - (y - lo) / (hi - lo) * (panel_height - 10) - 5)

        points = [at(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=(30, 80, 200), width=2)
        for px, py in points:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(30, 80, 200))
        draw.text((left, y_bottom + 4), f"{x0:g}", fill="gray", font=font)
        draw.text((width - right - 40, y_bottom + 4), f"{x1:g}", fill="gray", font=font)
        draw.text((width // 2 - 20, y_bottom + 4), x_label, fill="black", font=font)
    return chart


def axis_range(ys: list[float]) -> tuple[float, float]:
    """The y axis of a panel: its values' range, or for a flat series one from 0 (an R-precision of 0 %
    drawn on -0.5 .. 0.5 said nothing)."""
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = min(lo, 0.0), max(hi, 0.0) + max(abs(hi), 1.0) / 2
    return lo, hi


def eval_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """The ``"eval"`` rows of a GAN run's log.jsonl (its evaluation hook) as a chart: R-precision and,
    when computed, the Inception Score and the FID over the epochs. None when the log has no such row."""
    rows = []
    for line in Path(log_path).read_text().splitlines():
        row = json.loads(line)
        if row.get("eval") and row.get("r_precision") is not None:  # null: not computed (strict_json)
            rows.append(row)
    if not rows:
        return None
    xs = [float(r["epoch"]) for r in rows]
    panels = [("R-precision %", xs, [100 * r["r_precision"] for r in rows])]
    for key, label in (("inception_score", "IS"), ("fid", "FID")):
        having = [r for r in rows if r.get(key) is not None]
        if having:
            panels.append((label, [float(r["epoch"]) for r in having], [r[key] for r in having]))
    title = (f"evaluation hook: EMA generator, {rows[-1].get('r_precision_images', '?')} fixed test pairs, "
             f"training DAMSM as judge")
    return save_png(line_chart(panels, x_label="epoch", title=title), out_path)
