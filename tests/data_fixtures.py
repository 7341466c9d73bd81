"""Small datasets the tests make themselves, in the release's layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "green", "small", "large", "wings", "belly", "beak", "crown", "long", "short"]


def _caption(rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(3, 9)))
    return "This bird has " + " ".join(words) + "."


def _write_split_lists(root: Path, keys: list[str], n_train: int, classes: list[int] | None) -> None:
    for split, members in (("train", range(n_train)), ("test", range(n_train, len(keys)))):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / "filenames.pickle", "wb") as fh:
            pickle.dump([keys[i] for i in members], fh, protocol=2)
        if classes is not None:
            with open(root / split / "class_info.pickle", "wb") as fh:
                pickle.dump([classes[i] for i in members], fh, protocol=2)


def make_cub(root: Path, n_train: int = 6, n_test: int = 3, captions: int = 10, classes: bool = True,
             size=(90, 70), seed: int = 0) -> Path:
    """CUB_200_2011/images/<key>.jpg with images.txt and bounding_boxes.txt, text/<key>.txt,
    {train,test}/filenames.pickle and class_info.pickle."""
    rng = np.random.default_rng(seed)
    keys, class_ids, image_lines, box_lines = [], [], [], []
    for i in range(n_train + n_test):
        cls = i % 3 + 1
        key = f"{cls:03d}.Test_Bird/Test_Bird_{i:04d}"
        (root / "CUB_200_2011" / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "text" / key).parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "CUB_200_2011" / "images" / f"{key}.jpg")
        lines = [_caption(rng) for _ in range(captions)]
        lines.insert(2, "")  # blank lines are skipped, as in the release
        (root / "text" / f"{key}.txt").write_text("\n".join(lines) + "\n")
        image_lines.append(f"{i + 1} {key}.jpg")
        box_lines.append(f"{i + 1} 10.0 8.0 40.0 30.0")
        keys.append(key)
        class_ids.append(cls)
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(image_lines) + "\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(box_lines) + "\n")
    _write_split_lists(root, keys, n_train, class_ids if classes else None)
    return root


def make_coco(root: Path, n_train: int = 5, n_test: int = 3, captions: int = 5, seed: int = 1) -> Path:
    """images/<key>.jpg, text/<key>.txt, {train,test}/filenames.pickle, no classes."""
    rng = np.random.default_rng(seed)
    keys = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "text").mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_test):
        key = f"COCO_train2014_{i:012d}"
        arr = rng.integers(0, 255, size=(48 + 8 * i, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{key}.jpg")
        (root / "text" / f"{key}.txt").write_text("\n".join(_caption(rng) for _ in range(captions)) + "\n")
        keys.append(key)
    _write_split_lists(root, keys, n_train, None)
    return root


def make_coco_download(root: Path, n_train: int = 5, n_test: int = 3, seed: int = 2, year: int = 2014) -> Path:
    """COCO as downloaded: train<year>/ and val<year>/ JPEGs and annotations/captions_{train,val}<year>.json
    (images listed out of id order, 5 to 7 captions each, one of only punctuation, captions of one image
    interleaved with another's as COCO's annotations are; 2014's file names carry their folder, 2017's
    are the bare id)."""
    import json

    rng = np.random.default_rng(seed)
    for split, folder, n in (("train", f"train{year}", n_train), ("val", f"val{year}", n_test)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, notes = [], []
        for i in range(n):
            image_id = 1000 - 7 * i if split == "train" else 42 + i
            name = f"COCO_{folder}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
            arr = rng.integers(0, 255, size=(40 + 4 * i, 56, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / name)
            images.append({"id": image_id, "file_name": name, "height": 40 + 4 * i, "width": 56})
            captions = [_caption(rng) for _ in range(5 + i % 3)]
            if i == 1:
                captions.insert(1, " ... ")
            notes += [{"id": len(notes) + 10 * k, "image_id": image_id, "caption": c} for k, c in enumerate(captions)]
        rng.shuffle(notes)  # COCO's annotations are not grouped by image
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{folder}.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": notes}))
    return root


FOLDER_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 210, 20)}


def folder_image_name(i: int) -> str:
    """Nested sub-folders; one PNG among the JPEGs, and upper-case and .jpeg extensions."""
    colour = list(FOLDER_COLOURS)[i % 4]
    sub = f"{colour}/a" if i % 2 else f"{colour}/b/deeper"
    ext = {7: ".png", 13: ".JPG", 21: ".jpeg", 22: ".PNG"}.get(i, ".jpg")
    return f"{sub}/img_{i:03d}{ext}"


def make_folder(root: Path, n: int = 200, size: int = 40, seed: int = 0, fmt: str = "jsonl",
                split_column: bool = False) -> Path:
    """Your-own-images layout: a square of one of four colours on a light or dark background, in nested
    sub-folders, with metadata.jsonl (or .csv) rows: file_name, text (a caption, or a list of one to four),
    class (the colour) and, with ``split_column``, split. Returns the root."""
    import csv
    import json

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = list(FOLDER_COLOURS)[i % 4]
        dark = bool(rng.integers(2))
        arr = np.full((size, size, 3), 40 if dark else 225, dtype=np.uint8)
        x, y, s = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2)), size // 2
        arr[y : y + s, x : x + s] = FOLDER_COLOURS[colour]
        arr = np.clip(arr.astype(int) + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        name = folder_image_name(i)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / name, format="PNG" if name.lower().endswith(".png") else "JPEG")
        background = "dark" if dark else "light"
        captions = [f"a {colour} square on a {background} background",
                    f"{colour} block, {background} surroundings",
                    f"the square is {colour} and the background is {background}",
                    f"a small {colour} shape"][: 1 + i % 4]
        if i == 5:
            captions[0] += " très simple"  # UTF-8: the tokenizer keeps ASCII only, and says so once
        row = {"file_name": name, "text": captions[0] if i % 3 == 0 else captions, "class": colour}
        if split_column:
            row["split"] = "test" if i % 10 == 0 else "train"
        rows.append(row)
    if fmt == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
    else:
        with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "text": r["text"] if isinstance(r["text"], str)
                                 else json.dumps(r["text"], ensure_ascii=False)})
    return root


# The released checkpoints' state_dict layouts (tensor names and shapes per module): what the import
# fills and what our modules must match for it.
RELEASE_LAYOUTS_FILE = Path(__file__).parent / "data" / "release_state_dict_layouts.json"
RELEASE_LAYOUTS = __import__("json").loads(RELEASE_LAYOUTS_FILE.read_text())["modules"]
