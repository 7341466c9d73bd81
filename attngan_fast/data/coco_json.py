"""COCO's own caption files as the source of the ``coco`` layout, for a COCO as downloaded:
``annotations/captions_train2014.json`` (the training split) and ``annotations/captions_val2014.json``
(the test split), the 2014 train/val split that AttnGAN's COCO lists follow, with the images in
``train2014/`` and ``val2014/``. A root that also holds AttnGAN's preprocessed ``text/`` and split
lists is read from those instead (the release's exact lists).

Each file is read once per ``data prepare`` and parsed from the same bytes its SHA-256 is taken of, so
the caption cache never pairs one version's digest with another's captions; a cache that is current
is used without parsing them again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .layouts import SPLITS, DataError

CAPTION_FILES = {"train": "captions_train2014.json", "test": "captions_val2014.json"}
SOURCE = "annotations"  # the caption cache's name for this source


def caption_files(root: str | Path) -> dict[str, Path] | None:
    """split -> COCO's caption file when both are in ``root/annotations``, else None."""
    files = {split: Path(root) / "annotations" / name for split, name in CAPTION_FILES.items()}
    return files if all(path.is_file() for path in files.values()) else None


def reads_from_json(root: str | Path) -> bool:
    """Whether a coco root is read from COCO's caption files: they are there and AttnGAN's ``text/`` is not."""
    return not (Path(root) / "text").exists() and caption_files(root) is not None


def digest(root: str | Path, contents: dict[str, bytes] | None = None) -> str:
    """SHA-256 of both caption files (``contents``: their bytes, when already read)."""
    h = hashlib.sha256(SOURCE.encode())
    files = caption_files(root)
    if files is None:
        return "missing"
    for split in SPLITS:
        h.update(contents[split] if contents else files[split].read_bytes())
    return h.hexdigest()


def read_root(root: str | Path) -> tuple[dict[str, tuple[list[str], dict[str, list[str]]]], str]:
    """({split: (image keys in the file's image order, key -> its captions in the file's order)}, the
    files' digest). A key is the image's file name without ``.jpg`` (``COCO_val2014_000000000042``), as
    in AttnGAN's lists."""
    files = caption_files(root)
    if files is None:
        raise DataError(f"{Path(root) / 'annotations'} lacks COCO's {' or '.join(CAPTION_FILES.values())}")
    contents = {split: files[split].read_bytes() for split in SPLITS}
    return {split: _parse(files[split], contents[split]) for split in SPLITS}, digest(root, contents)


def _parse(path: Path, raw: bytes) -> tuple[list[str], dict[str, list[str]]]:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
        names = {image["id"]: Path(image["file_name"]).stem for image in data["images"]}
        notes = data["annotations"]
        iter(notes)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not COCO's caption JSON ({err})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not COCO's caption JSON (expected images with id and file_name, and "
                        f"annotations; {type(err).__name__}: {err})") from None
    captions: dict[str, list[str]] = {name: [] for name in names.values()}
    for n, note in enumerate(notes):
        caption = note.get("caption") if isinstance(note, dict) else None
        image = note.get("image_id") if isinstance(note, dict) else None
        if not isinstance(caption, str):
            raise DataError(f"{path}: annotation {n} has no caption text (got {caption!r})")
        if image not in names:
            raise DataError(f"{path}: annotation {n} names image_id {image!r}, which the file's images do not list")
        captions[names[image]].append(caption)
    return list(captions), captions
