"""Synthetic birds: the embedded default dataset (docs/design.md §4), written in the CUB layout.

Each image is a bird drawn from parts — body, belly, wings, tail, head, crown, beak, eye — whose
attributes are drawn at random: wing, belly and crown colours from a fixed palette, a short or long
beak and its colour, small or large, facing left or right, a tinted, noisy background with a perch.
Ten captions per image each name a random subset of the attributes in varied wording ("this bird has
wings that are black and has a white belly", "a small bird with a yellow crown and a short black
beak"). Classes are the (wing, belly) colour pairs. Per-image part masks (``parts/<key>.png``, label
ids in ``parts_legend.json``) let attention be scored against where a named part really is.

Deterministic: image i depends only on (seed, i), so any subset can be regenerated identically.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..paths import check_folder

GENERATOR_VERSION = 1

PALETTE = {
    "red": (205, 35, 35),
    "blue": (40, 80, 215),
    "yellow": (240, 210, 40),
    "green": (40, 150, 60),
    "black": (25, 25, 25),
    "white": (242, 242, 242),
    "brown": (125, 75, 35),
    "orange": (245, 135, 25),
}
COLOURS = list(PALETTE)
BEAK_COLOURS = ["black", "orange", "yellow", "brown"]
BODY_RGB = (168, 156, 142)
PARTS = ["background", "body", "tail", "wing", "belly", "head", "crown", "beak", "eye"]
PART_ID = {name: i for i, name in enumerate(PARTS)}


@dataclass
class BirdAttributes:
    wing: str
    belly: str
    crown: str
    beak_length: str  # short | long
    beak_colour: str
    size: str  # small | large
    facing: str  # left | right

    @property
    def class_id(self) -> int:
        """1-based id of the (wing, belly) colour pair."""
        return COLOURS.index(self.wing) * len(COLOURS) + COLOURS.index(self.belly) + 1

    @property
    def class_folder(self) -> str:
        return f"{self.class_id:03d}.{self.wing.title()}_Wing_{self.belly.title()}_Belly"


def draw_attributes(rng: np.random.Generator) -> BirdAttributes:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    return BirdAttributes(
        wing=pick(COLOURS), belly=pick(COLOURS), crown=pick(COLOURS),
        beak_length=pick(["short", "long"]), beak_colour=pick(BEAK_COLOURS),
        size=pick(["small", "large"]), facing=pick(["left", "right"]),
    )


# ---------------------------------------------------------------------------------------- captions

_PHRASES = {
    "wing": ["{c} wings", "wings that are {c}", "{c} feathers on its wings", "{c} wing feathers"],
    "belly": ["a {c} belly", "a belly that is {c}", "a {c} underside", "a {c} breast and belly"],
    "crown": ["a {c} crown", "a crown that is {c}", "a {c} cap on its head"],
    "beak": ["a {l} {c} beak", "a {l} beak", "a {c} beak", "a {c} bill that is {l}", "a {l} {c} bill"],
}
_TEMPLATES = [
    "this bird has {parts}",
    "a {size}bird with {parts}",
    "the {size}bird has {parts}",
    "this is a {size}bird with {parts}",
    "this {size}bird has {parts}",
    "{size}bird with {parts}",
]


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    comma = "," if len(parts) > 2 and rng.random() < 0.5 else ""
    return ", ".join(parts[:-1]) + f"{comma} and {parts[-1]}"


def _phrase(part: str, attrs: BirdAttributes, rng: np.random.Generator) -> str:
    template = _PHRASES[part][int(rng.integers(len(_PHRASES[part])))]
    colour = {"wing": attrs.wing, "belly": attrs.belly, "crown": attrs.crown, "beak": attrs.beak_colour}[part]
    return template.format(c=colour, l=attrs.beak_length)


def write_caption(attrs: BirdAttributes, rng: np.random.Generator) -> tuple[str, list[str]]:
    """One caption and the parts it names. Wings and belly (the class) are named most often; every
    caption names at least two parts."""
    chosen = [p for p, prob in (("wing", 0.8), ("belly", 0.8), ("crown", 0.45), ("beak", 0.45)) if rng.random() < prob]
    while len(chosen) < 2:
        extra = ["wing", "belly", "crown", "beak"][int(rng.integers(4))]
        if extra not in chosen:
            chosen.append(extra)
    order = ["wing", "belly", "crown", "beak"]
    chosen.sort(key=order.index)
    if chosen == ["wing", "belly"] and rng.random() < 0.3:
        # The paper's Figure 5 wording.
        return f"this bird has wings that are {attrs.wing} and has a {attrs.belly} belly", chosen
    size = f"{attrs.size} " if rng.random() < 0.4 else ""
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    if "{size}" not in template:
        size = ""
    parts = _join([_phrase(p, attrs, rng) for p in chosen], rng)
    return template.format(size=size, parts=parts), chosen


# ---------------------------------------------------------------------------------------- drawing

def _ellipse(cx, cy, rx, ry, angle=0.0, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return [(cx + ca * a - sa * b, cy + sa * a + ca * b) for a, b in zip(x, y)]


def _mask(side: int, shapes) -> np.ndarray:
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    for shape in shapes:
        draw.polygon(shape, fill=255)
    return np.asarray(img) > 127


def render_bird(attrs: BirdAttributes, size: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """(RGB image, part label map (size, size) uint8 with PART_ID values)."""
    side = 2 * size  # drawn at twice the size, then downsampled: smooth edges
    s = (1.0 if attrs.size == "large" else 0.74) * side
    cx = side * (0.47 + 0.06 * rng.uniform(-1, 1))
    cy = side * (0.55 + 0.05 * rng.uniform(-1, 1))
    hx, hy, hr = cx + 0.24 * s, cy - 0.15 * s, 0.10 * s
    beak_len = (0.07 if attrs.beak_length == "short" else 0.17) * s
    body = _mask(side, [_ellipse(cx, cy, 0.26 * s, 0.17 * s)])
    head = _mask(side, [_ellipse(hx, hy, hr, hr)])
    rows = np.arange(side)[:, None]
    masks = {
        "tail": _mask(side, [[(cx - 0.18 * s, cy - 0.03 * s), (cx - 0.44 * s, cy - 0.13 * s), (cx - 0.41 * s, cy + 0.05 * s)]]),
        "body": body,
        "belly": _mask(side, [_ellipse(cx + 0.06 * s, cy + 0.10 * s, 0.19 * s, 0.10 * s)]) & body,
        "wing": _mask(side, [_ellipse(cx - 0.07 * s, cy - 0.05 * s, 0.17 * s, 0.065 * s, angle=-0.2)]),
        "head": head,
        "crown": head & (rows < hy - 0.025 * s),
        "beak": _mask(side, [[(hx + 0.08 * s, hy - 0.035 * s), (hx + 0.08 * s, hy + 0.03 * s), (hx + 0.08 * s + beak_len, hy + 0.005 * s)]]),
        "eye": _mask(side, [_ellipse(hx + 0.035 * s, hy - 0.005 * s, 0.02 * s, 0.02 * s)]),
    }
    colours = {
        "tail": PALETTE[attrs.wing], "body": BODY_RGB, "belly": PALETTE[attrs.belly], "wing": PALETTE[attrs.wing],
        "head": BODY_RGB, "crown": PALETTE[attrs.crown], "beak": PALETTE[attrs.beak_colour], "eye": (10, 10, 10),
    }
    tint = rng.uniform(150, 235, size=3)
    canvas = np.broadcast_to(tint, (side, side, 3)).copy()
    canvas += rng.normal(0, 7, size=(side, side, 3))
    perch_y = int(cy + 0.2 * s)
    canvas[perch_y : perch_y + max(2, side // 40), int(side * 0.1) : int(side * 0.9)] = (95, 65, 35)
    labels = np.zeros((side, side), dtype=np.uint8)
    for part in ("tail", "body", "belly", "wing", "head", "crown", "beak", "eye"):
        m = masks[part]
        shade = np.array(colours[part], dtype=np.float64)
        canvas[m] = shade + rng.normal(0, 4, size=(int(m.sum()), 3))
        labels[m] = PART_ID[part]
        if part in ("wing", "belly", "crown"):
            # A darker rim keeps a part visible against a neighbour of the same colour.
            rim = m & ~_erode(m, max(1, side // 64))
            canvas[rim] = shade * 0.6
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    lab = Image.fromarray(labels)
    if attrs.facing == "left":
        img, lab = img.transpose(Image.FLIP_LEFT_RIGHT), lab.transpose(Image.FLIP_LEFT_RIGHT)
    img = img.resize((size, size), Image.LANCZOS)
    lab = lab.resize((size, size), Image.NEAREST)
    return img, np.asarray(lab)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for axis in (0, 1):
        for shift in range(1, radius + 1):
            out &= np.roll(mask, shift, axis) & np.roll(mask, -shift, axis)
    return out


def bounding_box(labels: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the drawn bird (every non-background label)."""
    ys, xs = np.nonzero(labels)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


# ---------------------------------------------------------------------------------------- dataset

@dataclass
class SynthSummary:
    root: str
    images: int
    train: int
    test: int
    classes: int
    size: int
    seed: int


MAX_SIZE = 1024  # each bird is drawn at full size in memory: 100,000 px took ~24 GB before the OOM killer came


def synthesize(out: str | Path, images: int = 2000, size: int = 64, seed: int = 0, test_fraction: float = 0.15,
               captions_per_image: int = 10, progress: bool = True) -> SynthSummary:
    """Write a complete CUB-layout dataset of synthetic birds to ``out`` (see the module docstring)."""
    if images < 2:
        raise ValueError(f"images must be at least 2 (one per split), got {images}")
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 16 and {MAX_SIZE} pixels, got {size}")
    if seed < 0:  # numpy's generators take a non-negative seed
        raise ValueError(f"seed must not be negative, got {seed}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    out = check_folder(out)
    base = out / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    keys, classes, attributes, image_lines, box_lines = [], [], {}, [], []
    for i in tqdm(range(images), desc="synthesizing birds", disable=not progress):
        rng = np.random.default_rng([seed, i])
        attrs = draw_attributes(rng)
        img, labels = render_bird(attrs, size, rng)
        key = f"{attrs.class_folder}/Synth_Bird_{i:06d}"
        for folder in (base / "images", out / "text", out / "parts"):
            (folder / attrs.class_folder).mkdir(parents=True, exist_ok=True)
        img.save(base / "images" / f"{key}.jpg", quality=95)
        Image.fromarray(labels).save(out / "parts" / f"{key}.png")
        captions = [write_caption(attrs, rng)[0] for _ in range(captions_per_image)]
        (out / "text" / f"{key}.txt").write_text("\n".join(captions) + "\n")
        x, y, w, h = bounding_box(labels)
        image_lines.append(f"{i + 1} {key}.jpg")
        box_lines.append(f"{i + 1} {x}.0 {y}.0 {w}.0 {h}.0")
        keys.append(key)
        classes.append(attrs.class_id)
        attributes[key] = asdict(attrs)
    (base / "images.txt").write_text("\n".join(image_lines) + "\n")
    (base / "bounding_boxes.txt").write_text("\n".join(box_lines) + "\n")
    order = np.random.default_rng([seed, 10**9]).permutation(images)
    n_test = max(1, int(round(images * test_fraction)))
    split_of = {"test": sorted(order[:n_test].tolist()), "train": sorted(order[n_test:].tolist())}
    for split, members in split_of.items():
        (out / split).mkdir(exist_ok=True)
        # The release's layout is pickles of plain lists; ours hold only strings and ints.
        with open(out / split / "filenames.pickle", "wb") as fh:
            pickle.dump([keys[i] for i in members], fh, protocol=2)
        with open(out / split / "class_info.pickle", "wb") as fh:
            pickle.dump([classes[i] for i in members], fh, protocol=2)
    (out / "parts_legend.json").write_text(json.dumps({name: i for i, name in enumerate(PARTS)}, indent=1))
    (out / "synthetic_attributes.json").write_text(json.dumps(
        {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size, "images": attributes}, indent=0))
    return SynthSummary(str(out), images, len(split_of["train"]), len(split_of["test"]), len(set(classes)), size, seed)
