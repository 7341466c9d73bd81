"""The dataset layouts on disk (docs/design.md §4), read with clear errors: the release's two, and
``folder`` for users' own images (``folder.py``).

CUB:  <root>/CUB_200_2011/images/<key>.jpg, CUB_200_2011/images.txt, CUB_200_2011/bounding_boxes.txt,
      <root>/text/<key>.txt (10 captions), <root>/{train,test}/filenames.pickle, optional class_info.pickle
COCO: <root>/images/<key>.jpg (or the download's train2014/ and val2014/), <root>/text/<key>.txt (5 captions),
      <root>/{train,test}/filenames.pickle; or, as downloaded, <root>/annotations/captions_{train,val}2014.json
folder: <root>/**/<file_name> (JPEG or PNG), <root>/metadata.jsonl or metadata.csv (key = file_name)
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..safe_pickle import as_text, load_plain_pickle

LAYOUTS = ("cub", "coco", "folder")
SPLITS = ("train", "test")


class DataError(ValueError):
    """Data on disk is missing or not in the expected layout; the message says what is expected where."""


@dataclass
class SplitIndex:
    keys: list[str]
    class_ids: list[int] | None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"missing {what}: expected {path}")
    return path


def check_layout(root: str | Path, layout: str) -> Path:
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "folder":
        from .folder import find_metadata  # folder.py reads this module's errors: imported here, not above

        if not root.is_dir():
            raise DataError(f"data root {root} does not exist (expected images and metadata.jsonl there)")
        find_metadata(root)
        return root
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (expected the release's {layout.upper()} layout there)")
    if not (root / "text").exists() and any((root / name).is_file() for name in ("metadata.jsonl", "metadata.csv")):
        raise DataError(f"{root} holds a metadata file, not the {layout.upper()} layout: it is a folder dataset "
                        "(--layout folder for data prepare, --set data.layout=folder for training)")
    from .coco_json import CAPTION_FILES, reads_from_json  # coco_json reads this module's errors: not above
    from .coco_json import year as coco_year

    from_json = layout == "coco" and reads_from_json(root)
    if layout != "coco" and not (root / "text").exists() and reads_from_json(root):
        raise DataError(f"{root} holds COCO's caption files, not the {layout.upper()} layout: --layout coco for data "
                        "prepare, --set data.layout=coco for training")
    if not (root / "text").exists() and not from_json:
        found = sorted(p.relative_to(root).as_posix() for p in [*root.glob("captions_*.json"),
                                                                *root.glob("annotations/captions_*.json")])
        at_root = [name for name in found if "/" not in name]
        if found and not (root / "captions.pickle").is_file():
            raise DataError(f"missing captions: expected AttnGAN's {root / 'text'} (one <key>.txt per image, with "
                            f"{{train,test}}/filenames.pickle), or COCO's {' and '.join(CAPTION_FILES.values())} "
                            f"(or 2017's) in {root / 'annotations'}; found {', '.join(found)}"
                            + (f" ({', '.join(at_root)} must be in annotations/, as COCO's download has them)"
                               if at_root else " (both files of one year are needed)"))
    if not from_json and not (root / "text").exists() and not (root / "captions.pickle").is_file():
        renamed = [name for name in ("text_c10", "captions") if (root / name).is_dir()]
        raise DataError(f"missing caption folder (one <key>.txt per image) or the release's captions.pickle: "
                        f"expected {root / 'text'}" + (f"; {root / renamed[0]} looks like it: rename it to text"
                                                       if renamed else ""))
    if layout == "cub":
        _require(root / "CUB_200_2011" / "images", "CUB image folder")
    elif from_json and coco_year(root) == 2017:
        for name in ("train2017", "val2017"):
            _require(root / name, "COCO 2017 image folder")
    elif not any((root / name).is_dir() for name in COCO_IMAGE_FOLDERS):
        found = [name for name in ("train2017", "val2017") if (root / name).is_dir()]
        raise DataError(f"missing COCO image folder: expected {root / 'images'} (every image), or COCO's own "
                        f"{root / 'train2014'} and {root / 'val2014'} as downloaded"
                        + (f" ({' and '.join(found)} are COCO 2017's: AttnGAN's split lists name the 2014 images; "
                           "put the images they list in images/)" if found else ""))
    for split in SPLITS:
        if not from_json:
            _require(root / split / "filenames.pickle", f"{split} split list")
    return root


def read_split(root: str | Path, split: str) -> SplitIndex:
    """Keys of a split from ``filenames.pickle`` and class ids from ``class_info.pickle`` when present
    (a COCO as downloaded has no lists: ``prepare`` takes its keys from ``coco_json``)."""
    root = Path(root)
    path = _require(root / split / "filenames.pickle", f"{split} split list")
    keys = load_plain_pickle(path)
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise DataError(f"{path} must hold a list of image keys")
    keys = [as_text(k) for k in keys]
    class_ids = None
    info = root / split / "class_info.pickle"
    if info.exists():
        raw = load_plain_pickle(info)
        try:
            class_ids = [int(c) for c in raw]
        except (TypeError, ValueError):
            raise DataError(f"{info} must hold one integer class id per image") from None
        if len(class_ids) != len(keys):
            raise DataError(f"{info} has {len(class_ids)} class ids but {path} has {len(keys)} keys")
    return SplitIndex(keys, class_ids)


def negatives_problem(root: str | Path, split: str, keys: list[str], class_ids: list[int] | None) -> str | None:
    """Why a split leaves no caption to contrast an image with, or None. A caption of the same class (of
    the same image, without classes) is never another image's negative (the DAMSM losses) or distractor
    (retrieval, R-precision): training needs two classes, evaluation two classes or two images."""
    if class_ids is not None and len(set(class_ids)) < 2:
        return (f"every image of the {split} split of {root} has the same class: a caption of the same class is "
                "never another image's negative or distractor, so one class leaves none; give the images two "
                "classes or more, or no class at all")
    if class_ids is None and len(keys) < 2:
        return (f"the {split} split of {root} holds {len(keys)} image: retrieval and R-precision need captions "
                "of other images as distractors (and the DAMSM losses as negatives); give the split more images "
                "(data.test_fraction, or a split column)")
    return None


def check_negatives(root: str | Path, split: str, keys: list[str], class_ids: list[int] | None,
                    evaluation: bool = False) -> None:
    """Raises DataError when the train split (or, with ``evaluation``, the test split) has no negatives;
    warns when a test split cannot be evaluated (DAMSM training then reports no retrieval score)."""
    problem = negatives_problem(root, split, keys, class_ids)
    if problem and (split == "train" or evaluation):
        raise DataError(problem)
    if problem:
        warnings.warn(problem, stacklevel=3)


def image_path(root: str | Path, layout: str, key: str) -> Path:
    root = Path(root)
    if layout == "folder":
        return root / key  # the metadata's file_name, extension included
    if layout == "cub":
        return root / "CUB_200_2011" / "images" / f"{key}.jpg"
    if "/" in key:  # COCO 2017 as downloaded: the key names its folder (coco_json)
        return root / f"{key}.jpg"
    return _coco_image_folder(root, key) / f"{key}.jpg"


COCO_IMAGE_FOLDERS = ("images", "train2014", "val2014")


@functools.lru_cache(maxsize=64)
def _coco_folders(root: Path) -> tuple[bool, ...]:
    return tuple((root / name).is_dir() for name in COCO_IMAGE_FOLDERS)


def _coco_image_folder(root: Path, key: str) -> Path:
    """images/ (AttnGAN's layout: every image in one folder) when it exists, else the download's own
    train2014/ or val2014/, which the key's prefix names (COCO_val2014_000000000042)."""
    images, train, val = _coco_folders(root)
    if images or not (train or val):
        return root / "images"
    return root / ("val2014" if key.startswith("COCO_val2014_") else "train2014")


def hash_image_stats(digest, root: str | Path, layout: str, keys: list[str]) -> None:
    """Feeds each image's key, size and modification time to ``digest`` (a hashlib object): what a cache
    made from the images follows (a replaced image changes it; reading every image's bytes would not
    pay on a large dataset)."""
    for key in keys:
        path = image_path(root, layout, key)
        stat = path.stat() if path.is_file() else None
        digest.update(f"{key}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}\0".encode())


def caption_path(root: str | Path, key: str) -> Path:
    return Path(root) / "text" / f"{key}.txt"


def read_caption_lines(root: str | Path, key: str) -> list[str]:
    """The non-blank lines of an image's caption file."""
    path = caption_path(root, key)
    if not path.is_file():
        raise DataError(f"missing captions for {key!r}: expected {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_cub_boxes(root: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """key -> (x, y, width, height) from the CUB images.txt / bounding_boxes.txt pair."""
    base = Path(root) / "CUB_200_2011"
    images = _require(base / "images.txt", "CUB image list")
    boxes = _require(base / "bounding_boxes.txt", "CUB bounding boxes")
    id_to_key = {}
    for lineno, line in enumerate(images.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{images}:{lineno}: expected '<id> <path>.jpg', got {line!r}")
        id_to_key[parts[0]] = parts[1][:-4] if parts[1].endswith(".jpg") else parts[1]
    out = {}
    for lineno, line in enumerate(boxes.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            box = tuple(float(v) for v in parts[1:])
        except ValueError:
            box = ()
        if len(parts) != 5 or parts[0] not in id_to_key or len(box) != 4 or not all(map(math.isfinite, box)):
            raise DataError(f"{boxes}:{lineno}: expected '<id> x y width height' (numbers) for an id of images.txt, "
                            f"got {line!r}")
        out[id_to_key[parts[0]]] = box
    return out


def check_cub_boxes(root: str | Path, keys, boxes: dict | None = None) -> None:
    """Every image of ``keys`` has its box in ``boxes`` (default: the root's; the CUB crop needs it, and a
    missing one would otherwise stop a run when the loader reaches that image)."""
    boxes = read_cub_boxes(root) if boxes is None else boxes
    missing = [key for key in keys if key not in boxes]
    if missing:
        raise DataError(f"{len(missing)} listed image(s) have no bounding box in "
                        f"{Path(root) / 'CUB_200_2011' / 'bounding_boxes.txt'} (by their images.txt id): "
                        + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
