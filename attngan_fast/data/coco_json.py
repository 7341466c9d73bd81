"""COCO's own caption files as the source of the ``coco`` layout, for a COCO as downloaded:
``annotations/captions_train2014.json`` (the training split) and ``annotations/captions_val2014.json``
(the test split), the 2014 train/val split that AttnGAN's COCO lists follow, with the images in
``train2014/`` and ``val2014/``. A root that also holds AttnGAN's preprocessed ``text/`` and split
lists is read from those instead (the release's exact lists)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .layouts import DataError, SPLITS

CAPTION_FILES = {"train": "captions_train2014.json", "test": "captions_val2014.json"}


def caption_files(root: str | Path) -> dict[str, Path] | None:
    """split -> COCO's caption file when both are in ``root/annotations``, else None."""
    files = {split: Path(root) / "annotations" / name for split, name in CAPTION_FILES.items()}
    return files if all(path.is_file() for path in files.values()) else None


def read_captions(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(image keys in the file's image order, key -> its captions in the file's order); a key is the
    image's file name without ``.jpg`` (``COCO_val2014_000000000042``), as in AttnGAN's lists."""
    stat = path.stat()
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> tuple[list[str], dict[str, list[str]]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {image["id"]: Path(image["file_name"]).stem for image in data["images"]}
        captions: dict[str, list[str]] = {name: [] for name in names.values()}
        for note in data["annotations"]:
            captions[names[note["image_id"]]].append(str(note["caption"]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not COCO's caption JSON ({err})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not COCO's caption JSON (expected images with id and file_name, and "
                        f"annotations with image_id and caption; {type(err).__name__}: {err})") from None
    return list(captions), captions


def split_keys(root: str | Path, split: str) -> list[str]:
    files = caption_files(root)
    if files is None or split not in SPLITS:
        raise DataError(f"{root}/annotations lacks COCO's {CAPTION_FILES.get(split, split)}")
    return read_captions(files[split])[0]


def caption_lines(root: str | Path, split: str, key: str) -> list[str]:
    """The captions of image ``key`` of ``split``, stripped, blank ones left out."""
    captions = read_captions(caption_files(root)[split])[1]
    return [line.strip() for line in captions.get(key, []) if line.strip()]
