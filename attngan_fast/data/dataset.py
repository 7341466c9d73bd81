"""One dataset over the CUB, COCO and folder layouts: images (pyramid for 1-3 stages) with one caption each.

Randomness (which caption, which words of a long caption, crop, flip) comes from a per-sample seed
that ``EpochSampler`` derives from (run seed, epoch, image index): the same sample gets the same draw
whatever the worker, rank or resume point, so a resumed run sees exactly the data an uninterrupted
run would have seen.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ..text import truncate
from .layouts import DataError, check_cub_boxes, check_negatives, image_path, read_cub_boxes
from .prepare import CaptionCache, load_captions


# EXIF orientation -> the transpose that shows the image upright (2-8; 1 and anything else: as stored).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
TURNED = {5, 6, 7, 8}  # the orientations that swap width and height


def upright(layout: str) -> bool:
    """Whether images of ``layout`` are read as a viewer shows them (the EXIF orientation applied): a
    folder of one's own photos was captioned looking at them so. CUB and COCO are read as stored, as
    the release read them (its captions and scores were made from those pixels)."""
    return layout == "folder"


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image, read from its header (1 when absent or unreadable:
    a malformed EXIF block never stops a load). A PNG's EXIF counts only when it comes before the
    pixels (Pillow would otherwise decode the whole image to look for it)."""
    try:
        if img.format == "PNG":
            raw = img.info.get("exif")
            if raw is None:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any malformed EXIF: the image as stored
        return 1
    return value if value in UPRIGHT else 1


def shown_size(img: Image.Image, exif: bool) -> tuple[int, int]:
    """(width, height) of ``img`` as ``load_rgb(..., exif)`` returns it, from the header alone."""
    if exif and orientation(img) in TURNED:
        return img.height, img.width
    return img.size


def load_rgb(path: Path, exif: bool = False) -> Image.Image:
    """The image as 8-bit RGB; ``exif``: turned as its EXIF orientation says. 16-bit greyscale
    (PNG) is scaled to 8 bits (a plain convert would clip everything above 255 to white)."""
    try:
        with Image.open(path) as img:
            turn = UPRIGHT.get(orientation(img)) if exif else None
            if turn is not None:
                img = img.transpose(turn)  # only the pixels: the EXIF block is not rewritten
            if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
                wide = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"missing image: expected {path}") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"corrupt or unreadable image {path}: {err}") from None


def crop_box(size: tuple[int, int], box) -> tuple[int, int, int, int] | None:
    """The release's CUB crop of an image of ``size`` (width, height): a square of side 1.5 x max(w, h)
    around the box centre, clipped, as (x1, y1, x2, y2); None when nothing of it is inside."""
    x, y, w, h = box
    half = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    width, height = size
    x1, y1 = max(0, cx - half), max(0, cy - half)
    x2, y2 = min(width, cx + half), min(height, cy + half)
    return None if x2 <= x1 or y2 <= y1 else (x1, y1, x2, y2)


def crop_to_box(img: Image.Image, box) -> Image.Image:
    corners = crop_box(img.size, box)
    return img if corners is None else img.crop(corners)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resized_size(size: tuple[int, int], final: int) -> tuple[int, int]:
    """(width, height) of an image of ``size`` with its shorter side resized to 76/64 of ``final``."""
    scale = int(final * 76 / 64) / min(size)
    return max(final, round(size[0] * scale)), max(final, round(size[1] * scale))


def draw_crop(size: tuple[int, int], final: int, rng: random.Random | None) -> tuple[int, int, bool]:
    """(left, top, flip) of a ``final`` square in an image of ``size``: random with ``rng`` (a flip half
    the time), else centred and unflipped."""
    width, height = size
    if rng is None:
        return (width - final) // 2, (height - final) // 2, False
    left, top = rng.randint(0, width - final), rng.randint(0, height - final)
    return left, top, rng.random() < 0.5


def resize_crop(img: Image.Image, final: int, rng: random.Random | None, resample=Image.BILINEAR) -> Image.Image:
    """Resize the shorter side to 76/64 of ``final``, crop a ``final`` square (random with ``rng``, else
    centred) and flip half the time (with ``rng``)."""
    img = img.resize(resized_size(img.size, final), resample)
    left, top, flip = draw_crop(img.size, final, rng)
    img = img.crop((left, top, left + final, top + final))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img


def image_pyramid(img: Image.Image, sizes: list[int], rng: random.Random | None) -> list[torch.Tensor]:
    """``resize_crop`` to the final size, then one tensor per stage size (ascending)."""
    final = sizes[-1]
    img = resize_crop(img, final, rng)
    return [to_tensor(img if s == final else img.resize((s, s), Image.BILINEAR)) for s in sizes]


def stage_sizes(image_size: int, branches: int) -> list[int]:
    """[64, 128, 256] for 256 and 3 branches; the last is ``image_size``."""
    return [image_size // 2 ** (branches - 1 - i) for i in range(branches)]


class TextImageDataset(Dataset):
    """Images of one split of a CUB-, COCO- or folder-layout root, each with one of its captions.

    Item: dict(images=[(3, s, s) per stage], caption=(n,) long word ids, class_id=int (-1 if none),
    key=str, caption_index=int). ``train`` draws the caption, the kept words, the crop and the flip at
    random; otherwise they are fixed per image.
    """

    def __init__(self, root: str | Path, layout: str, split: str, *, captions_per_image: int, words_num: int,
                 image_size: int, branches: int = 1, train: bool = True, cache: CaptionCache | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.layout, self.split = Path(root), layout, split
        self.cache = cache or load_captions(root, layout, captions_per_image)
        self.keys = self.cache.keys[split]
        self.class_ids = self.cache.class_ids[split]
        self.captions_per_image = captions_per_image
        self.caption_counts = self.cache.caption_counts(split)  # folder layout: they may differ per image
        self.words_num = words_num
        self.sizes = stage_sizes(image_size, branches)
        self.train = train
        self.boxes = read_cub_boxes(root) if layout == "cub" else None
        if self.boxes is not None:
            check_cub_boxes(root, self.keys, self.boxes)
        if not self.keys:
            raise DataError(f"the {split} split of {root} lists no images")
        if split == "train":  # data prepare warned about a test split already
            check_negatives(root, split, self.keys, self.class_ids)

    @property
    def vocab(self):
        return self.cache.vocab

    def __len__(self) -> int:
        return len(self.keys)

    def load_image(self, index: int) -> Image.Image:
        key = self.keys[index]
        img = load_rgb(image_path(self.root, self.layout, key), exif=upright(self.layout))
        if self.boxes is not None:  # every key has one: checked when the dataset was made
            img = crop_to_box(img, self.boxes[key])
        return img

    def synthetic_attributes(self) -> dict | None:
        """key -> drawn attributes, for roots written by ``attngan-fast data synth`` (else None)."""
        if not hasattr(self, "_synthetic_attributes"):
            path = self.root / "synthetic_attributes.json"
            self._synthetic_attributes = json.loads(path.read_text())["images"] if path.is_file() else None
        return self._synthetic_attributes

    def part_labels(self, index: int) -> np.ndarray | None:
        """The synthetic part label map of image ``index`` under the evaluation crop, (s, s) uint8, or
        None when the root has no part masks (real data)."""
        path = self.root / "parts" / f"{self.keys[index]}.png"
        if not path.is_file():
            return None
        labels = Image.open(path)
        if self.boxes is not None:
            labels = crop_to_box(labels, self.boxes[self.keys[index]])
        return np.asarray(resize_crop(labels, self.sizes[-1], None, Image.NEAREST))

    def __getitem__(self, item):
        index, sample, rng = self.caption_sample(item)
        sample["images"] = image_pyramid(self.load_image(index), self.sizes, rng if self.train else None)
        return sample

    def caption_sample(self, item) -> tuple[int, dict, random.Random]:
        """(image index, the item without its images, the sample's random stream after the caption's
        draws: the crop and flip are drawn from it next). ``item``: an index or (index, sample seed)."""
        index, sample_seed = item if isinstance(item, tuple) else (item, None)
        if self.train:
            rng = random.Random(sample_seed if sample_seed is not None else random.getrandbits(64))
            caption_index = rng.randrange(self.caption_counts[index])
        else:
            rng = random.Random(index)  # fixed word subset for long captions
            caption_index = index % self.caption_counts[index]
        ids = truncate(self.cache.caption(self.split, index, caption_index), self.words_num, rng)
        return index, {
            "caption": torch.tensor(ids, dtype=torch.long),
            "class_id": self.class_ids[index] if self.class_ids is not None else -1,
            "key": self.keys[index],
            "caption_index": caption_index,
        }, rng


def collate(batch: list[dict], pad_to: int | None = None) -> dict:
    """Stack a batch: images per stage, captions padded with 0 to the longest or to ``pad_to`` words,
    lengths, class ids (None when the dataset has none), keys. No sorting by length (the encoder
    packs unsorted). Training pads to words_num: every batch then has the same shape, so a compiled
    model never meets a new caption length (padding words take no part in anything)."""
    lengths = torch.tensor([len(b["caption"]) for b in batch], dtype=torch.long)
    longest = int(lengths.max())
    if pad_to is not None and pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the batch's longest caption ({longest} words)")
    captions = torch.zeros(len(batch), longest if pad_to is None else pad_to, dtype=torch.long)
    for i, b in enumerate(batch):
        captions[i, : len(b["caption"])] = b["caption"]
    class_ids = torch.tensor([b["class_id"] for b in batch], dtype=torch.long)
    return {
        "images": [torch.stack([b["images"][s] for b in batch]) for s in range(len(batch[0]["images"]))],
        "captions": captions,
        "cap_lens": lengths,
        "class_ids": None if bool((class_ids < 0).all()) else class_ids,
        "keys": [b["key"] for b in batch],
        "caption_index": torch.tensor([b["caption_index"] for b in batch], dtype=torch.long),
    }


class EpochSampler(Sampler):
    """Deterministic sample order for (seed, epoch), sharded across ranks, resumable mid-epoch.

    Yields (index, sample_seed). Each rank gets ``len(dataset) // world`` samples (the remainder is
    dropped, so every rank runs the same number of steps). ``set_epoch(epoch, start)`` skips the first
    ``start`` samples of this rank's share (a resume after ``start / batch_size`` batches).
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        if size < world:
            raise ValueError(f"{size} samples cannot be shared among {world} processes")
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _share(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        per_rank = self.size // self.world
        return order[self.rank :: self.world][:per_rank]

    def sample_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index) % (2**63)

    def __iter__(self):
        for index in self._share()[self.start :]:
            yield index, self.sample_seed(index)

    def __len__(self) -> int:
        return self.size // self.world - self.start
