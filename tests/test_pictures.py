"""Attention pictures a person can read: heat overlays (red where a map peaks, dark blue where it is
zero) with their colour scale drawn in every grid, and a caption written once per strip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from attngan_fast.generate import Generated, write_generation
from attngan_fast.pictures import attention_grid, generation_grid, heat_colours, overlay


def _grey(size=32, level=128):
    return Image.fromarray(np.full((size, size, 3), level, dtype=np.uint8))


def test_overlay_is_a_heat_map_red_at_the_peak_and_blue_where_there_is_none():
    attn = torch.zeros(8, 8)
    attn[1, 1] = torch.rand(()) + 0.5  # any scale: each map is drawn relative to its own maximum
    out = np.asarray(overlay(_grey(), attn), dtype=np.int32)
    hot, cold = out[5, 5], out[28, 28]  # (1, 1) of 8 x 8 covers pixels 4-7 of 32
    assert hot[0] > hot[2] + 60 and hot[0] > 160, hot  # red over a grey bird
    assert cold[2] > cold[0] + 40, cold  # blue where the word does not look
    # The bird stays visible: the heat colour is blended with the image, not painted over it.
    lighter = np.asarray(overlay(_grey(level=250), attn), dtype=np.int32)
    assert (lighter[28, 28] - cold).min() > 40  # 45 % of the image shows through


def test_heat_scale_runs_from_dark_blue_to_red_through_distinct_hues():
    colours = heat_colours(np.linspace(0, 1, 5))
    assert colours[0][2] > 100 and colours[0][0] < 50  # zero: dark blue
    assert colours[-1][0] > 200 and colours[-1][2] < 50  # maximum: red
    assert len({tuple(np.round(c / 40)) for c in colours}) == 5  # five visibly different colours


def _has_scale(picture: Image.Image) -> bool:
    """The legend: a horizontal run of the heat scale's colours in the bottom strip."""
    arr = np.asarray(picture, dtype=np.int32)
    bottom = arr[-arr.shape[0] // 8 :] if arr.shape[0] > 200 else arr[-40:]
    want = heat_colours(np.array([0.0, 0.5, 1.0]))
    return all((np.abs(bottom - w).sum(-1) < 12).any() for w in want)


def test_every_attention_grid_carries_its_colour_scale():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    damsm = attention_grid(images, torch.rand(2, 5, 4, 4), [["a", "red", "bird"], ["blue", "wings"]], title="t")
    assert _has_scale(damsm)
    maps = [torch.rand(2, 5, 32, 32)]
    gan = generation_grid([torch.rand(2, 3, 16, 16) * 2 - 1, images], maps, [["a", "red", "bird"], ["blue", "wings"]])
    assert _has_scale(gan)


def test_an_attention_strip_writes_its_caption_once(tmp_path):
    gen = Generated(captions=["a red bird"], words=[["a", "red", "bird"]], images=[torch.zeros(1, 3, 16, 16),
                    torch.zeros(1, 3, 32, 32)], attn=[torch.rand(1, 18, 32, 32)])
    path = [p for p in write_generation(gen, tmp_path) if p.name.endswith("_attention.png")][0]
    untitled = generation_grid(gen.images, gen.attn, gen.words, cell=128)
    titled = generation_grid(gen.images, gen.attn, gen.words, cell=128, title="a red bird")
    # The strip has its words under the images (once); a title row would write them a second time.
    assert Image.open(path).size == untitled.size != titled.size


def test_a_flat_series_gets_an_axis_from_zero():
    from attngan_fast.pictures import axis_range

    assert axis_range([0.0, 0.0]) == (0.0, 0.5)  # an R-precision of 0 % all along
    assert axis_range([40.0]) == (0.0, 60.0)
    assert axis_range([-3.0, -3.0]) == (-3.0, 1.5)
    assert axis_range([1.0, 4.0]) == (1.0, 4.0)  # a moving series keeps its own range
