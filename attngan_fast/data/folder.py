"""Users' own data, the ``folder`` layout (docs/design.md §4), in the convention of Hugging Face's
imagefolder: images anywhere under a root, and one metadata file beside them.

  <root>/metadata.jsonl   {"file_name": "sub/x.jpg", "text": "a caption" | ["caption 1", ...],
                           "split": "train" | "test" (optional), "class": "sparrow" | 3 (optional)}
  <root>/metadata.csv     the same columns; a ``text`` cell holds one caption, or a JSON list of them

No pickles. Any number of captions per image (at least one; ``data.captions_per_image`` keeps the
first that many). JPEG and PNG, any case of extension; captions are UTF-8. Without a ``split``
column an image is held out for the test set when a hash of its file name falls below
``data.test_fraction``: the same split on every run and on every machine, and an image keeps its
split when others are added (no test image ever moves into training).

Other columns are read past (one warning names them). Everything is checked before anything trains,
and every problem found is one line that names the metadata file, the line and the image: a missing
or undecodable image, an empty caption (or one with no word the tokenizer keeps), a duplicate row, a
bad split or class value.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import tokenize as python_tokens  # the module; ..text.tokenize is the captions
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..text import tokenize, words_as_written
from .layouts import SPLITS, DataError, check_negatives, hash_image_stats

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COLUMNS = ("file_name", "text", "split", "class")
SPLIT_SALT = "attngan-fast held-out split:"  # part of the hash: the split rule's seed
MAX_PROBLEM_LINES = 200  # a metadata file broken everywhere lists this many, then counts the rest


@dataclass
class Row:
    line: int  # in the metadata file, counted from 1 (the CSV header is line 1)
    file_name: str
    captions: list[str]
    split: str | None = None
    label: str | None = None  # the class, as written
    where: str = "metadata.jsonl"  # the metadata file, as problems name it


@dataclass
class FolderIndex:
    """What ``read_folder`` found: per split the images (file names), their tokenized captions and class ids."""

    metadata: Path
    keys: dict[str, list[str]]
    tokens: dict[str, list[list[list[str]]]]  # split -> image -> caption -> words
    class_ids: dict[str, list[int] | None]
    class_names: list[str] | None
    split_rule: str
    report: dict = field(default_factory=dict)


def _metadata_in(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder} holds both {METADATA_NAMES[0]} and {METADATA_NAMES[1]}: keep one")
    return found[0] if found else None


def metadata_files(root: Path) -> list[Path]:
    """The metadata file at the root, or one per split folder (imagefolder's ``train/`` and ``test/``,
    each with its own metadata; their rows' file names are relative to their folder)."""
    top = _metadata_in(root)
    if top is not None:
        return [top]
    per_split = {split: _metadata_in(root / split) for split in SPLITS if (root / split).is_dir()}
    others = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in SPLITS and _metadata_in(d))
    if others and all(per_split.get(split) for split in SPLITS):  # Hugging Face's train/validation/test
        raise DataError(f"{root}: this layout has two splits, {' and '.join(SPLITS)}; {', '.join(others)}/ would not "
                        f"be read: move its images and rows into {SPLITS[0]}/ (or {SPLITS[1]}/), or out of {root}")
    if others:
        raise DataError(f"{root}: split folders must be named {' and '.join(SPLITS)}; found metadata in "
                        f"{', '.join(others)}/ (e.g. rename validation/ to test/)")
    if all(per_split.get(split) for split in SPLITS):
        return [per_split[split] for split in SPLITS]
    if any(per_split.values()):
        have = [s for s, m in per_split.items() if m]
        raise DataError(f"{root}: split folders need metadata in both {SPLITS[0]}/ and {SPLITS[1]}/, found it in "
                        f"{', '.join(have)}/ only")
    raise DataError(f"missing metadata for the folder layout: expected {root / METADATA_NAMES[0]} (or "
                    f"{METADATA_NAMES[1]}, or one in each of train/ and test/) with one row per image: file_name, "
                    "text (a caption or a list), optional split and class")


def find_metadata(root: Path) -> Path:
    """The (first) metadata file of a folder-layout root; raises DataError naming what is expected."""
    return metadata_files(root)[0]


def _as_captions(value) -> list[str] | None:
    """The ``text`` value as a list of captions, or None when it is neither a string nor a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _csv_text(cell: str):
    """A CSV ``text`` cell: one caption, or a list of captions written as JSON, as Python writes a list
    (pandas' ``to_csv`` of a list column: ``['a bird', 'a small bird']``) or as NumPy writes an array of
    strings (a column from Arrow or parquet: ``['a bird' 'a small bird']``, no commas)."""
    stripped = cell.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return cell
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    listed = _string_literals(stripped)
    return listed if listed is not None else cell


def _string_literals(text: str) -> list[str] | None:
    """The strings of ``[s1, s2, ...]`` or ``[s1 s2 ...]`` (each a Python string literal), else None.
    Read token by token: literal_eval of the whole would join NumPy's comma-less strings into one."""
    try:
        tokens = [t for t in python_tokens.generate_tokens(io.StringIO(text).readline)
                  if t.type not in (python_tokens.NL, python_tokens.NEWLINE, python_tokens.ENDMARKER)]
        inner = tokens[1:-1]
        if tokens[0].string != "[" or tokens[-1].string != "]":
            return None
        strings = [ast.literal_eval(t.string) for t in inner if t.type == python_tokens.STRING]
    except (python_tokens.TokenError, SyntaxError, ValueError, IndexError):
        return None
    others = [t.string for t in inner if t.type != python_tokens.STRING]
    if not strings or any(o != "," for o in others) or not all(isinstance(x, str) for x in strings):
        return None
    return strings


def _raw_records(path: Path) -> list[tuple[int, dict | str]]:
    """(line, record) per row; a record that is not a mapping comes as the reason it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    out: list[tuple[int, dict | str]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                out.append((n, f"not valid JSON ({err.msg} at column {err.colno})"))
                continue
            out.append((n, record if isinstance(record, dict) else "not a JSON object"))
        return out
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = reader.fieldnames or []
    missing = [c for c in ("file_name", "text") if c not in header]
    if missing:
        raise DataError(f"{path}: the header (line 1) must name the columns file_name and text; "
                        f"it lacks {', '.join(missing)} (it has: {', '.join(header) or 'nothing'})")
    for record in reader:
        if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
            continue
        if None in record:  # more cells than header columns
            out.append((reader.line_num, f"has more cells than the header's {len(header)} columns"))
            continue
        record = {k: v for k, v in record.items() if not (k in ("split", "class") and (v or "").strip() == "")}
        if "text" in record and record["text"] is not None:
            record["text"] = _csv_text(record["text"])
        out.append((reader.line_num, record))
    return out


def read_rows(path: Path, name: str | None = None) -> tuple[list[Row], list[str]]:
    """The metadata's rows and one line per problem in them (the images are not looked at here);
    ``name``: the file as problems name it (default: its file name)."""
    rows, problems = [], []
    first_line: dict[str, int] = {}
    ignored: set[str] = set()
    name = name or path.name
    for line, record in _raw_records(path):
        where = f"{name} line {line}"
        if isinstance(record, str):
            problems.append(f"{where}: {record}")
            continue
        unknown = sorted(set(record) - set(COLUMNS))
        ignored.update(unknown)  # other columns are the user's (imagefolder allows any): read past, said once
        file_name = record.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            problems.append(f"{where}: no file_name (the image's path relative to the root)")
            continue
        file_name = file_name.strip()
        where = f"{where} ({file_name})"
        posix = PurePosixPath(file_name)
        if posix.is_absolute() or ".." in posix.parts or "\\" in file_name:
            problems.append(f"{where}: file_name must be a path under the root with '/' separators, no '..'")
            continue
        file_name = posix.as_posix()
        if posix.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{where}: not a JPEG or PNG file name (.jpg, .jpeg or .png, any case)")
            continue
        if file_name in first_line:
            problems.append(f"{where}: duplicate row, the image is already listed on line {first_line[file_name]}: "
                            "give all its captions in one row, as a list")
            continue
        first_line[file_name] = line
        if "text" not in record:
            has = f"; it has {', '.join(map(repr, unknown))}" if unknown else ""
            problems.append(f"{where}: no text column (the caption, or a list of them){has}")
            continue
        captions = _as_captions(record.get("text"))
        if captions is None:
            problems.append(f"{where}: text must be a caption or a list of captions, got {record.get('text')!r}")
            continue
        if not captions:
            problems.append(f"{where}: empty caption list (every image needs at least one caption)")
            continue
        empty = [n + 1 for n, c in enumerate(captions) if not c.strip()]
        if empty:
            which = "" if len(captions) == 1 else f" (caption {', '.join(map(str, empty))} of {len(captions)})"
            problems.append(f"{where}: empty caption{which}")
            continue
        split = record.get("split")
        if split is not None and split not in SPLITS:
            problems.append(f"{where}: split must be 'train' or 'test', got {split!r}")
            continue
        label = record.get("class")
        if label is not None and (isinstance(label, (bool, dict, list)) or str(label).strip() == ""):
            problems.append(f"{where}: class must be a name or a number, got {label!r}")
            continue
        rows.append(Row(line, file_name, [c.strip() for c in captions], split,
                        None if label is None else str(label).strip()))
    if ignored:
        warnings.warn(f"{name}: column{'s' if len(ignored) > 1 else ''} {', '.join(map(repr, sorted(ignored)))} "
                      f"not used (read: {', '.join(COLUMNS)})", stacklevel=3)
    if rows:
        for column, attr in (("split", "split"), ("class", "label")):
            having = [r for r in rows if getattr(r, attr) is not None]
            if having and len(having) < len(rows):
                problems.extend(f"{name} line {r.line} ({r.file_name}): no {column}, but other rows have one"
                                for r in rows if getattr(r, attr) is None)
    return rows, problems


def check_images(root: Path, rows: list[Row], progress: bool) -> list[str]:
    """Opens and fully decodes every image (a progress bar counts them); one line per image that fails."""
    return image_problems([(f"{row.where} line {row.line} ({row.file_name})", root / row.file_name) for row in rows],
                          progress)


def image_problems(images: list[tuple[str, Path]], progress: bool, draft: bool = False) -> list[str]:
    """``images``: (how a problem names it, path). One line per image that is missing, not a JPEG or
    PNG, or cannot be decoded to its last pixel; ``draft`` decodes JPEGs at 1/8 scale (the whole
    compressed stream is still read, so a truncated file fails; for datasets of 100k images)."""
    problems, names_in = [], {}
    for where, path in tqdm(images, desc="checking images", unit="image", disable=not progress):
        if not path.is_file():
            problems.append(f"{where}: missing image: expected {path}{_other_unicode_form(path, names_in)}")
            continue
        try:
            with Image.open(path) as img:
                if img.format not in ("JPEG", "PNG"):
                    problems.append(f"{where}: the file holds a {img.format} image, not a JPEG or PNG")
                    continue
                if draft and img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.convert("RGB")  # decodes every pixel: a truncated file fails here, not in training
        except Image.DecompressionBombError as err:  # PIL's guard against a header that asks for gigapixels
            problems.append(f"{where}: the image is too large to decode safely ({err}); resize it")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            problems.append(f"{where}: the image cannot be decoded ({err})")
    return problems


def _other_unicode_form(path: Path, names_in: dict) -> str:
    """A hint when the folder holds the file under the same name in another Unicode normal form (a zip
    made on macOS writes "é" as "e" + accent: the name looks the same and is not). ``names_in`` caches
    each folder's names by their NFC form, so a folder is listed once however many of its files miss."""
    folder = path.parent
    if folder not in names_in:
        names_in[folder] = ({unicodedata.normalize("NFC", p.name): p.name for p in folder.iterdir()}
                            if folder.is_dir() else {})
    there = names_in[folder].get(unicodedata.normalize("NFC", path.name))
    return (f" ({there!r} is there, the same name in another Unicode form, as macOS archives write names: "
            "rename the file or the metadata to match)") if there and there != path.name else ""


def held_out_score(file_name: str) -> float:
    """A number in [0, 1) fixed by the file name: the image is a test image when it is below the test fraction."""
    digest = hashlib.sha256((SPLIT_SALT + file_name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(rows: list[Row], test_fraction: float) -> tuple[dict[str, list[Row]], str]:
    """(rows per split in metadata order, the rule in words): the ``split`` column when the rows have one,
    else the held-out rule (and at least one test image: the lowest score, when none falls below)."""
    if rows and rows[0].split is not None:
        return {s: [r for r in rows if r.split == s] for s in SPLITS}, "the metadata's split column"
    folders = {r.file_name.split("/", 1)[0] for r in rows}
    if folders == set(SPLITS):  # one metadata file over imagefolder's train/ and test/ folders
        return ({s: [r for r in rows if r.file_name.startswith(f"{s}/")] for s in SPLITS},
                f"the folder each file name starts with ({SPLITS[0]}/ or {SPLITS[1]}/)")
    if set(SPLITS) <= folders:
        outside = [r.file_name for r in rows if r.file_name.split("/", 1)[0] not in SPLITS]
        warnings.warn(f"the file names start with {SPLITS[0]}/ and {SPLITS[1]}/ but {len(outside)} do not (e.g. "
                      f"{outside[0]}): the split is the held-out rule, not the folders; put every image under one of "
                      "them, or give the metadata a split column", stacklevel=3)
    scores = {r.file_name: held_out_score(r.file_name) for r in rows}
    test = {r.file_name for r in rows if scores[r.file_name] < test_fraction}
    if not test and len(rows) > 1:
        test = {min(scores, key=scores.get)}
    rule = (f"held out by file name (data.test_fraction {test_fraction:g}: images whose name hashes below it; "
            "the same on every run)")
    return {"train": [r for r in rows if r.file_name not in test], "test": [r for r in rows if r.file_name in test]}, rule


def _tokenized(row: Row, cap: int, stats: dict) -> tuple[list[list[str]], str | None]:
    """(token lists of the row's first ``cap`` captions, a problem or None). Counts what the tokenizer
    changes: words with characters outside ASCII (it keeps ASCII only)."""
    out = []
    for n, caption in enumerate(row.captions[:cap]):
        toks = tokenize(caption)
        for word in words_as_written(caption):
            if not word.isascii():
                stats["changed"] += 1
                kept = "".join(tokenize(word))
                example = f"{word!r} -> {kept!r}" if kept else f"{word!r} dropped"
                if len(stats["examples"]) < 5 and example not in stats["examples"]:
                    stats["examples"].append(example)
        if not toks:
            which = "" if len(row.captions) == 1 else f"caption {n + 1}: "
            return [], f"{which}no word the tokenizer keeps (it keeps ASCII letters and digits) in {caption!r}"
        out.append(toks)
    stats["dropped_captions"] += max(0, len(row.captions) - cap)
    return out, None


def _line_of(problem: str) -> int:
    """The metadata line a problem names ("metadata.jsonl line 12 ...": 12), 0 for none: problems are
    reported in the file's order whichever check found them."""
    words = problem.split()
    number = words[2].rstrip(":") if len(words) > 2 and words[1] == "line" else ""
    return int(number) if number.isdigit() else 0


def _raise(metadata: Path, problems: list[str]) -> None:
    problems = sorted(problems, key=lambda p: (p.split()[0], _line_of(p)))  # per file; a line's keep their order
    shown = problems[:MAX_PROBLEM_LINES]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more"] if more else []
    raise DataError("\n".join([f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {metadata} "
                               "(nothing was trained; fix them and run again):", *shown, *tail]))


def _read_all(root: Path, files: list[Path]) -> tuple[list[Row], list[str]]:
    """The rows of every metadata file: in a split folder a row's file name gains the folder (and the
    folder is its split; a split column there must agree)."""
    rows, problems = [], []
    for path in files:
        folder = path.parent.relative_to(root).as_posix()
        name = path.relative_to(root).as_posix()
        found, found_problems = read_rows(path, name)
        problems += found_problems
        for row in found:
            row.where = name
            if folder != ".":
                if row.split not in (None, folder):
                    problems.append(f"{name} line {row.line} ({row.file_name}): split {row.split!r} in the {folder}/ "
                                    "folder's metadata")
                    continue
                row.file_name, row.split = f"{folder}/{row.file_name}", folder
            rows.append(row)
    return rows, problems


def read_folder(root: str | Path, captions_per_image: int, test_fraction: float, *,
                progress: bool = True) -> FolderIndex:
    """Reads and checks a folder-layout root; raises DataError listing every problem, one per line."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (expected images and {METADATA_NAMES[0]} there)")
    if not 0 < test_fraction < 1:
        raise DataError(f"data.test_fraction must be between 0 and 1, got {test_fraction}")
    files = metadata_files(root)
    metadata = files[0]
    rows, problems = _read_all(root, files)
    problems += check_images(root, rows, progress)
    stats = {"changed": 0, "examples": [], "dropped_captions": 0}
    tokens_of: dict[str, list[list[str]]] = {}
    for row in rows:
        toks, problem = _tokenized(row, captions_per_image, stats)
        if problem:
            problems.append(f"{row.where} line {row.line} ({row.file_name}): {problem}")
        tokens_of[row.file_name] = toks
    if problems:
        _raise(metadata, problems)
    if not rows:
        raise DataError(f"{metadata} lists no images")
    by_split, rule = assign_splits(rows, test_fraction)
    for split in SPLITS:
        if not by_split[split]:
            raise DataError(f"{metadata}: the {split} split is empty ({rule}); every layout needs images in both")
    labels = sorted({r.label for r in rows}, key=_label_order) if rows[0].label is not None else None
    index_of = {name: i for i, name in enumerate(labels or [])}
    for split in SPLITS:
        check_negatives(metadata, split, [r.file_name for r in by_split[split]],
                        [index_of[r.label] for r in by_split[split]] if labels else None)
    report = {
        "metadata": ", ".join(str(f) for f in files), "split_rule": rule,
        "captions_per_image": _spread([len(tokens_of[r.file_name]) for r in rows]),
        "captions_beyond_the_cap": stats["dropped_captions"],
        "words_changed_by_the_tokenizer": {"count": stats["changed"], "examples": stats["examples"]},
        "unlisted_images": _unlisted(root, {r.file_name for r in rows}),
    }
    if stats["changed"]:
        n = stats["changed"]
        named = " and ".join(f.relative_to(root).as_posix() for f in files)  # train/ and test/ each have one
        warnings.warn(f"{n} word{'s' if n > 1 else ''} of {named}'s captions {'have' if n > 1 else 'has'} "
                      f"characters outside ASCII, which the tokenizer drops ({', '.join(stats['examples'])})",
                      stacklevel=3)
    return FolderIndex(
        metadata=metadata,
        keys={s: [r.file_name for r in by_split[s]] for s in SPLITS},
        tokens={s: [tokens_of[r.file_name] for r in by_split[s]] for s in SPLITS},
        class_ids={s: ([index_of[r.label] for r in by_split[s]] if labels else None) for s in SPLITS},
        class_names=labels, split_rule=rule, report=report)


def _label_order(label: str):
    """Numbers in numeric order, then names alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _spread(values: list[int]) -> dict:
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def _unlisted(root: Path, listed: set[str]) -> int:
    """Images under the root that the metadata does not list (they are not used; the report counts them)."""
    found = 0
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found += path.relative_to(root).as_posix() not in listed
    return found


def folder_digest(root: Path, keys: dict[str, list[str]]) -> str:
    """SHA-256 of the metadata's content and of each listed image's size and modification time: a
    replaced image, like an edited row, makes the cache (and its check of every image) be made again."""
    h = hashlib.sha256(b"folder\0")
    for metadata in metadata_files(root):
        h.update(metadata.read_bytes())
    for split in SPLITS:
        hash_image_stats(h, root, "folder", keys.get(split, []))
    return h.hexdigest()
