"""COCO's own caption files as the source of the ``coco`` layout, for a COCO as downloaded:
``annotations/captions_train2014.json`` (the training split) and ``annotations/captions_val2014.json``
(the test split), the 2014 train/val split that AttnGAN's COCO lists follow, with the images in
``train2014/`` and ``val2014/``; or, where only COCO 2017's are there, ``captions_train2017.json`` and
``captions_val2017.json`` with ``train2017/`` and ``val2017/`` (another split: val2017 is 5,000 of
val2014's images, so its scores are not the paper's). A root that also holds AttnGAN's preprocessed
``text/`` and split lists is read from those instead (the release's exact lists).

Each file is read once per ``data prepare`` and parsed from the same bytes its SHA-256 is taken of, so
the caption cache never pairs one version's digest with another's captions; a cache that is current
is used without parsing them again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .layouts import SPLITS, DataError

# Per release of COCO, split -> its image folder (the caption file is annotations/captions_<folder>.json).
FOLDERS = {2014: {"train": "train2014", "test": "val2014"}, 2017: {"train": "train2017", "test": "val2017"}}
CAPTION_FILES = {split: f"captions_{folder}.json" for split, folder in FOLDERS[2014].items()}
SOURCE = "annotations"  # the caption cache's name for this source


def year(root: str | Path) -> int | None:
    """2014 when both of its caption files are in ``root/annotations``, else 2017 when both of those
    are, else None."""
    return next((y for y, folders in FOLDERS.items()
                 if all((Path(root) / "annotations" / f"captions_{f}.json").is_file() for f in folders.values())),
                None)


def caption_files(root: str | Path) -> dict[str, Path] | None:
    """split -> COCO's caption file (``year``'s), or None."""
    found = year(root)
    if found is None:
        return None
    return {split: Path(root) / "annotations" / f"captions_{folder}.json" for split, folder in FOLDERS[found].items()}


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
    files, found = caption_files(root), year(root)
    if files is None:
        raise DataError(f"{Path(root) / 'annotations'} lacks COCO's {' and '.join(CAPTION_FILES.values())}")
    contents = {split: files[split].read_bytes() for split in SPLITS}
    # 2014's file names carry their folder (COCO_val2014_...: AttnGAN's keys); 2017's do not, so its
    # keys do (val2017/000000000139), and layouts.image_path finds the image under the root by them.
    prefix = {split: "" if found == 2014 else f"{FOLDERS[found][split]}/" for split in SPLITS}
    return {split: _parse(files[split], contents[split], prefix[split]) for split in SPLITS}, digest(root, contents)


def _parse(path: Path, raw: bytes, prefix: str = "") -> tuple[list[str], dict[str, list[str]]]:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
        names = {image["id"]: prefix + Path(image["file_name"]).stem for image in data["images"]}
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
