"""The caption cache: token ids of every caption of both splits plus the vocabulary, as JSON.

Built from the text files (``attngan-fast data prepare --root DIR``), or taken from the release's
``captions.pickle`` when it lies in the root (read through the restricted unpickler), so that a
released text encoder keeps its vocabulary. Rebuilt automatically when what it was made from changes:
the split lists, or the content of the caption files (or of ``captions.pickle``), which the cache
records as a SHA-256 digest. Content, not size and time: an edit of the same length within one tick of
the file system's clock would keep both.

The ``folder`` layout (``folder.py``) is built from its metadata file after every image was checked;
its images may have different numbers of captions (``CaptionCache.counts``), and the cache follows the
metadata's content and each image's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..atomic import write_text_atomic
from ..safe_pickle import as_text, load_plain_pickle
from ..text import END_TOKEN, Vocabulary, tokenize
from . import coco_json
from .folder import MAX_PROBLEM_LINES, folder_digest, image_problems, read_folder
from .layouts import (SPLITS, DataError, caption_path, check_cub_boxes, check_layout, check_negatives, image_path,
                      read_caption_lines, read_split, SplitIndex)

CACHE_NAME = "attngan_fast_captions.json"
CACHE_FORMAT = 3  # 2: keyed on the caption files' content; 3: folder splits from train/ test/ file names
DEFAULT_TEST_FRACTION = 0.1  # the folder layout's held-out share without a split column (data.test_fraction)


@dataclass
class CaptionCache:
    layout: str
    captions_per_image: int
    vocab: Vocabulary
    keys: dict[str, list[str]]
    class_ids: dict[str, list[int] | None]
    captions: dict[str, list[list[int]]]  # split -> ids of caption c of image i at offsets[split][i] + c
    source: str = "text"
    report: dict = field(default_factory=dict)
    # split -> captions of each image, when they differ (folder layout); None: captions_per_image each
    counts: dict[str, list[int]] | None = None

    def __post_init__(self):
        self.offsets = {split: caption_offsets(self.caption_counts(split)) for split in self.keys}

    def caption_counts(self, split: str) -> list[int]:
        """How many captions each image of the split has."""
        if self.counts is not None:
            return self.counts[split]
        return [self.captions_per_image] * len(self.keys[split])

    def caption(self, split: str, image: int, index: int) -> list[int]:
        return self.captions[split][self.offsets[split][image] + index]


def caption_offsets(counts: list[int]) -> list[int]:
    """Where each image's captions start in the split's flat caption list (one more entry: the total)."""
    out = [0]
    for n in counts:
        out.append(out[-1] + n)
    return out


def captions_digest(root: Path, keys: dict[str, list[str]], source: str) -> str:
    """SHA-256 of what the captions were read from: ``captions.pickle``, COCO's two caption files, or
    every image's caption file (missing ones count as missing) in split order."""
    h = hashlib.sha256(source.encode())
    if source == "captions.pickle":
        h.update((root / "captions.pickle").read_bytes())
        return h.hexdigest()
    if source == coco_json.SOURCE:
        return coco_json.digest(root)
    for split in SPLITS:
        for key in keys[split]:
            path = caption_path(root, key)
            h.update(key.encode() + b"\0")
            h.update(path.read_bytes() if path.is_file() else b"\0missing\0")
            h.update(b"\0")
    return h.hexdigest()


def _from_release_pickle(path: Path, keys: dict[str, list[str]], cpi: int):
    data = load_plain_pickle(path)
    if not isinstance(data, (list, tuple)) or len(data) != 4:
        raise DataError(f"{path}: expected the release's [train_captions, test_captions, ixtoword, wordtoix]")
    train, test, ixtoword, _ = data
    words = [as_text(ixtoword[i]) for i in range(len(ixtoword))]
    if words[0] != END_TOKEN:
        raise DataError(f"{path}: index 0 of the vocabulary must be {END_TOKEN!r}, got {words[0]!r}")
    captions = {"train": [[int(t) for t in c] for c in train], "test": [[int(t) for t in c] for c in test]}
    for split in SPLITS:
        if len(captions[split]) != len(keys[split]) * cpi:
            raise DataError(
                f"{path}: {len(captions[split])} {split} captions, but {len(keys[split])} images x {cpi} captions "
                "were expected; is captions_per_image right for this dataset?"
            )
        empty = [i for i, c in enumerate(captions[split]) if not c]
        if empty:
            raise DataError(f"{path}: {split} caption {empty[0]} is empty")
    return Vocabulary(words), captions


def _from_text(root: Path, keys: dict[str, list[str]], cpi: int, progress: bool, coco: dict | None = None):
    """Tokenized captions of every image, the first ``cpi`` with words, from the caption files, or from
    COCO's caption JSON when ``coco`` holds it parsed ({split: (keys, key -> captions)}); the vocabulary;
    lines without words skipped."""
    if coco is not None:
        files = coco_json.caption_files(root)

        def lines_of(split, key):
            return [line.strip() for line in coco[split][1].get(key, []) if line.strip()]

        def named(split, key):
            return f"image {key} in {files[split]}"
    else:
        def lines_of(split, key):
            return read_caption_lines(root, key)

        def named(split, key):
            return str(root / "text" / (key + ".txt"))
    tokens: dict[str, list[list[str]]] = {}
    skipped = 0
    for split in SPLITS:
        tokens[split] = []
        for key in tqdm(keys[split], desc=f"tokenizing {split}", disable=not progress, leave=False):
            usable = []
            for line in lines_of(split, key):
                toks = tokenize(line)
                if toks:
                    usable.append(toks)
                else:
                    skipped += 1
                if len(usable) == cpi:
                    break
            if len(usable) < cpi:
                raise DataError(
                    f"{named(split, key)} has {len(usable)} captions with words, "
                    f"{cpi} are needed (data.captions_per_image)"
                )
            tokens[split].extend(usable)
    vocab = Vocabulary.build(tokens["train"] + tokens["test"])
    captions = {split: [vocab.encode(t)[0] for t in tokens[split]] for split in SPLITS}
    return vocab, captions, skipped


def _prepare_folder(root: Path, captions_per_image: int, test_fraction: float, progress: bool) -> CaptionCache:
    index = read_folder(root, captions_per_image, test_fraction, progress=progress)
    vocab = Vocabulary.build(caption for split in SPLITS for image in index.tokens[split] for caption in image)
    captions = {split: [vocab.encode(c)[0] for image in index.tokens[split] for c in image] for split in SPLITS}
    counts = {split: [len(image) for image in index.tokens[split]] for split in SPLITS}
    lengths = [len(c) for split in SPLITS for c in captions[split]]
    report = {
        "root": str(root), "layout": "folder", "source": index.metadata.name,
        "images": {split: len(index.keys[split]) for split in SPLITS},
        "captions": {split: len(captions[split]) for split in SPLITS},
        "classes": {split: (len(set(ids)) if ids is not None else None) for split, ids in index.class_ids.items()},
        "vocabulary": len(vocab),
        "caption_length": {"max": max(lengths), "mean": round(sum(lengths) / len(lengths), 2)},
        **index.report,
    }
    cache = CaptionCache("folder", captions_per_image, vocab, index.keys, index.class_ids, captions,
                         index.metadata.name, report, counts)
    write_text_atomic(root / CACHE_NAME, json.dumps({
        "format": CACHE_FORMAT, "layout": "folder", "captions_per_image": captions_per_image,
        "test_fraction": test_fraction, "source": index.metadata.name, "vocab": vocab.to_json(), "keys": index.keys,
        "captions": captions, "counts": counts, "class_ids": index.class_ids, "class_names": index.class_names,
        "report": report, "digest": folder_digest(root, index.keys),
    }))
    return cache


def _load_folder(root: Path, data: dict | None, captions_per_image: int, test_fraction: float,
                 progress: bool) -> CaptionCache:
    """The folder layout's cache when it is current, else the folder checked and the cache made again."""
    current = (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("layout") == "folder"
               and data.get("captions_per_image") == captions_per_image and data.get("test_fraction") == test_fraction
               and data.get("digest") == folder_digest(root, data.get("keys", {})))
    if not current:
        return _prepare_folder(root, captions_per_image, test_fraction, progress)
    return CaptionCache("folder", captions_per_image, Vocabulary(data["vocab"]), data["keys"], data["class_ids"],
                        data["captions"], data["source"], data.get("report", {}), data["counts"])


def _check_release_images(root: Path, layout: str, keys: dict[str, list[str]], progress: bool) -> None:
    """Every listed image exists and decodes, before anything trains (a missing or truncated file would
    otherwise stop a run when the loader reaches it, hours in); every problem is one line."""
    problems = image_problems([(f"{split} image {key}", image_path(root, layout, key)) for split in SPLITS
                               for key in keys[split]], progress, draft=True)
    if problems:
        more = len(problems) - MAX_PROBLEM_LINES
        shown = problems[:MAX_PROBLEM_LINES] + ([f"... and {more} more"] if more > 0 else [])
        raise DataError("\n".join([f"{len(problems)} of the images listed under {root} cannot be read (nothing was "
                                    "trained; fix them and run again):", *shown]))


def prepare(root: str | Path, layout: str, captions_per_image: int, *, progress: bool = True,
            use_release_pickle: bool = True, test_fraction: float = DEFAULT_TEST_FRACTION) -> CaptionCache:
    """Build the cache from disk and write it to ``<root>/attngan_fast_captions.json``. ``test_fraction``:
    the folder layout's held-out share when its metadata has no split column."""
    root = check_layout(root, layout)
    if layout == "folder":
        return _prepare_folder(root, captions_per_image, test_fraction, progress)
    release = root / "captions.pickle"
    coco, coco_digest = coco_json.read_root(root) if layout == "coco" and coco_json.reads_from_json(root) else (None, None)
    if coco is not None and use_release_pickle and release.exists():
        raise DataError(f"{release} pairs with the release's {{train,test}}/filenames.pickle, which {root} lacks: its "
                        "captions would go to COCO's images by position; add the lists, or remove captions.pickle "
                        "(or data prepare --ignore-release-pickle) to read COCO's caption files")
    splits = ({split: SplitIndex(coco[split][0], None) for split in SPLITS} if coco is not None
              else {split: read_split(root, split) for split in SPLITS})
    keys = {split: s.keys for split, s in splits.items()}
    for split, index in splits.items():
        check_negatives(root, split, index.keys, index.class_ids)
    if layout == "cub":
        check_cub_boxes(root, keys["train"] + keys["test"])
        if any(index.class_ids is None for index in splits.values()):
            warnings.warn(f"{root} has no {{train,test}}/class_info.pickle: every image is its own class (the DAMSM "
                          "then pushes apart captions of the same species, and R-precision may draw them as "
                          "distractors); the release's birds metadata has these files", stacklevel=2)
    _check_release_images(root, layout, keys, progress)
    skipped = 0
    if coco is None and use_release_pickle and release.exists():
        vocab, captions = _from_release_pickle(release, keys, captions_per_image)
        source = "captions.pickle"
    else:
        source = "text" if coco is None else coco_json.SOURCE
        vocab, captions, skipped = _from_text(root, keys, captions_per_image, progress, coco)
    lengths = [len(c) for split in SPLITS for c in captions[split]]
    report = {
        "root": str(root),
        "layout": layout,
        "source": source,
        "images": {split: len(keys[split]) for split in SPLITS},
        "captions": {split: len(captions[split]) for split in SPLITS},
        "classes": {split: (len(set(s.class_ids)) if s.class_ids is not None else None) for split, s in splits.items()},
        "vocabulary": len(vocab),
        "caption_length": {"max": max(lengths), "mean": round(sum(lengths) / len(lengths), 2)},
        "lines_without_words_skipped": skipped,
    }
    cache = CaptionCache(layout, captions_per_image, vocab, keys,
                         {split: s.class_ids for split, s in splits.items()}, captions, source, report)
    write_text_atomic(root / CACHE_NAME, json.dumps({
        "format": CACHE_FORMAT, "layout": layout, "captions_per_image": captions_per_image, "source": source,
        "vocab": vocab.to_json(), "keys": keys, "captions": captions, "report": report,
        "digest": coco_digest or captions_digest(root, keys, source),  # COCO's: of the bytes just parsed
    }))
    return cache


def load_captions(root: str | Path, layout: str, captions_per_image: int, *, progress: bool = True,
                  test_fraction: float = DEFAULT_TEST_FRACTION) -> CaptionCache:
    """The cache when it is current (same split lists, same caption content); otherwise it is (re)built
    first, and a cache made from other captions says so."""
    root = check_layout(root, layout)
    path = root / CACHE_NAME
    if layout == "folder":
        return _load_folder(root, _read_cache(path), captions_per_image, test_fraction, progress)
    data = _read_cache(path) if path.exists() else None
    if layout == "coco" and coco_json.reads_from_json(root):
        # The digest covers the keys too: a current cache is used without parsing COCO's files again.
        if (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("layout") == layout
                and data.get("captions_per_image") == captions_per_image and data.get("source") == coco_json.SOURCE):
            if data.get("digest") == coco_json.digest(root):
                return CaptionCache(layout, captions_per_image, Vocabulary(data["vocab"]), data["keys"],
                                    {split: None for split in SPLITS}, data["captions"], coco_json.SOURCE,
                                    data.get("report", {}))
            print(f"attngan-fast: the captions under {root} changed since {path.name} was made: rebuilding it",
                  file=sys.stderr)
        return prepare(root, layout, captions_per_image, progress=progress)
    if data is not None:
        splits = {split: read_split(root, split) for split in SPLITS}
        current = (
            isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("layout") == layout
            and data.get("captions_per_image") == captions_per_image and data.get("source") != coco_json.SOURCE
            and all(data["keys"].get(split) == splits[split].keys for split in SPLITS)
        )
        if current:
            source = data.get("source", "text")
            if data.get("digest") != captions_digest(root, data["keys"], source):
                print(f"attngan-fast: the captions under {root} changed since {path.name} was made: rebuilding it",
                      file=sys.stderr)
                return prepare(root, layout, captions_per_image, progress=progress,
                               use_release_pickle=source == "captions.pickle")
            return CaptionCache(layout, captions_per_image, Vocabulary(data["vocab"]), data["keys"],
                                {split: s.class_ids for split, s in splits.items()}, data["captions"],
                                data.get("source", "text"), data.get("report", {}))
    return prepare(root, layout, captions_per_image, progress=progress)


def _read_cache(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
