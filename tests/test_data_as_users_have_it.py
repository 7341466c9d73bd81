"""Data as users have it on disk: phone photos with an EXIF orientation, 16-bit PNGs, a header that
asks for gigapixels, pandas' way of writing a list column, the release's CUB with a broken or missing
bounding box, its captions.pickle without text/, and the folder names mirrors use. Each is read right or
refused in one line before any training step."""

from __future__ import annotations

import json
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngan_fast import strict_json
from attngan_fast.cli import main as cli
from attngan_fast.data.dataset import TextImageDataset, load_rgb
from attngan_fast.data.layouts import DataError
from attngan_fast.data.on_device import OnDeviceDataset
from attngan_fast.data.prepare import prepare
from data_fixtures import make_coco, make_cub

pytestmark = pytest.mark.filterwarnings("ignore:every image of the test split")


def _turned_photo(path, orientation: int = 6):
    """A 30 x 20 JPEG stored on its side: its top row red, and EXIF saying a viewer turns it 90 degrees
    clockwise (6) to show it, so that upright it is 20 x 30 with the red row on the right."""
    arr = np.full((20, 30, 3), 200, dtype=np.uint8)
    arr[:3] = (220, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def _folder_of_photos(root, n: int = 8):
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"photo_{i}.jpg"
        _turned_photo(root / name)
        rows.append({"file_name": name, "text": f"a photo number {i} of a red edge", "class": f"c{i % 2}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_folder_of_photos_is_read_upright_as_a_viewer_shows_it(tmp_path):
    red = np.array([220, 20, 20])
    image = np.asarray(load_rgb(_turned_photo(tmp_path / "p.jpg"), exif=True)).astype(int)
    assert image.shape == (30, 20, 3)  # turned: 20 wide, 30 high
    assert np.abs(image[:, -2] - red).max() < 40 and np.abs(image[:, 2] - 200).max() < 40  # red on the right
    stored = np.asarray(load_rgb(tmp_path / "p.jpg")).astype(int)
    assert stored.shape == (20, 30, 3) and np.abs(stored[1] - red).max() < 40  # as stored: red on top

    root = _folder_of_photos(tmp_path / "photos")
    prepare(root, "folder", 1, progress=False, test_fraction=0.25)
    dataset = TextImageDataset(root, "folder", "train", captions_per_image=1, words_num=18, image_size=16,
                               train=False)
    pil = dataset[0]["images"][-1]
    # The loader's crop is the centre square of the upright 20 x 30 photo; the on-device path (header
    # sizes, then the decode) agrees with it.
    on_device = OnDeviceDataset(dataset, "cpu")
    batch = on_device.collate([on_device[0]])["images"][-1][0]
    assert pil.shape == batch.shape == (3, 16, 16)
    assert (pil - batch).abs().max() < 0.05


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_orientation_is_turned_as_pillow_shows_it_and_bad_exif_never_stops_a_load(tmp_path, fmt):
    from PIL import ImageOps

    from attngan_fast.data.dataset import shown_size

    arr = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3  # no symmetry: every turn differs
    for value in range(1, 9):
        path = tmp_path / f"o{value}.{fmt.lower()}"
        exif = Image.Exif()
        exif[0x0112] = value
        Image.fromarray(arr).save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
        with Image.open(path) as img:
            expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            size = shown_size(img, exif=True)
        got = np.asarray(load_rgb(path, exif=True))
        assert got.shape == expected.shape and size == (got.shape[1], got.shape[0]), value
        assert np.array_equal(got, expected), value
    # A JPEG whose EXIF block Pillow's exif_transpose cannot rebuild (one byte of another tag changed by
    # a fuzzer): turned by its orientation all the same, with no error.
    broken = Path(__file__).parent / "data" / "exif_pillow_cannot_rebuild.jpg"
    with Image.open(broken) as img, pytest.raises(TypeError):
        ImageOps.exif_transpose(img)
    assert load_rgb(broken, exif=True).size == (20, 40) and load_rgb(broken).size == (40, 20)


def test_the_release_layouts_are_read_as_stored_as_the_release_read_them(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_test=2)
    first = sorted((root / "images").iterdir())[0]
    _turned_photo(first)
    prepare(root, "coco", 5, progress=False)
    dataset = TextImageDataset(root, "coco", "train", captions_per_image=5, words_num=18, image_size=16)
    key = first.stem
    assert dataset.load_image(dataset.keys.index(key)).size == (30, 20)


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    levels = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert np.asarray(load_rgb(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 64, 128, 255]


def _png_header_only(path, width: int, height: int):
    """A PNG whose header claims width x height pixels (a few bytes on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_an_image_too_large_to_decode_is_one_line_not_a_traceback(tmp_path, capsys):
    root = make_cub(tmp_path / "cub", n_train=4, n_test=2)
    victim = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    _png_header_only(victim, 20000, 10000)
    assert cli(["data", "prepare", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the image is too large to decode safely" in err
    with pytest.raises(DataError, match="too large to decode safely"):
        load_rgb(victim)


def test_a_pandas_list_column_is_a_list_of_captions(tmp_path):
    """pandas' to_csv writes a list cell as Python's repr ("['a', 'b']"), not as JSON."""
    import csv

    root = tmp_path / "f"
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)  # quoting as pandas does: the repr's double quotes doubled
        writer.writerow(["file_name", "text", "class"])
        for i in range(6):
            Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(root / f"{i}.png")
            captions = [f"a grey square number {i}", "it's a plain square"]
            if i % 2:  # a column from Arrow or parquet holds NumPy arrays: no commas between the strings
                cell = "[" + " ".join(repr(c) for c in captions) + "]"
            else:
                cell = str(captions)
            writer.writerow([f"{i}.png", cell, f"c{i % 2}"])
    cache = prepare(root, "folder", 5, progress=False, test_fraction=0.3)
    assert cache.report["captions_per_image"] == {"min": 2, "mean": 2.0, "max": 2}
    words = [cache.vocab.words[t] for t in cache.caption("train", 0, 1)]
    assert words[:2] == ["it", "s"] or words[0] == "its", words


def test_a_cub_image_without_a_bounding_box_is_found_by_prepare(tmp_path, capsys):
    root = make_cub(tmp_path / "cub", n_train=4, n_test=2)
    boxes = root / "CUB_200_2011" / "bounding_boxes.txt"
    lines = boxes.read_text().splitlines()
    boxes.write_text("\n".join(lines[:-1]) + "\n")  # the last (a test image's) box gone
    assert cli(["data", "prepare", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attngan-fast: error: 1 listed image(s) have no bounding box in") and "\n" not in err


def test_a_malformed_box_names_its_line_and_a_bom_is_read_past(tmp_path, capsys):
    root = make_cub(tmp_path / "cub", n_train=4, n_test=2)
    images = root / "CUB_200_2011" / "images.txt"
    images.write_text("\ufeff" + images.read_text(), encoding="utf-8")  # Notepad's byte-order mark
    prepare(root, "cub", 10, progress=False)
    boxes = root / "CUB_200_2011" / "bounding_boxes.txt"
    boxes.write_text(boxes.read_text().replace("1 10.0 8.0", "1 10,0 8.0", 1))
    assert cli(["data", "prepare", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"attngan-fast: error: {boxes}:1: expected '<id> x y width height' (numbers)"), err


def test_the_release_captions_pickle_needs_no_text_folder(tmp_path):
    """The release reads captions.pickle when it is there; text/ is then not needed."""
    import shutil

    root = make_cub(tmp_path / "cub", n_train=2, n_test=1, captions=2)
    ixtoword = {0: "<end>", 1: "bird", 2: "red"}
    with open(root / "captions.pickle", "wb") as fh:
        pickle.dump([[[1, 2], [2], [1], [1, 2, 1]], [[2, 2], [1]], ixtoword, {v: k for k, v in ixtoword.items()}],
                    fh, protocol=2)
    shutil.rmtree(root / "text")
    cache = prepare(root, "cub", 2, progress=False)
    assert cache.source == "captions.pickle" and cache.caption("test", 0, 0) == [2, 2]


def test_a_mirrors_text_c10_folder_is_named_in_the_error(tmp_path):
    root = make_cub(tmp_path / "cub", n_train=2, n_test=1)
    (root / "text").rename(root / "text_c10")
    with pytest.raises(DataError, match=r"text_c10 looks like it: rename it to text"):
        prepare(root, "cub", 10, progress=False)


def test_coco_2017_folders_are_named_in_the_error(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=2, n_test=1)
    (root / "images").rename(root / "train2017")
    with pytest.raises(DataError, match=r"train2017 are COCO 2017's"):
        prepare(root, "coco", 5, progress=False)


def test_scores_that_could_not_be_computed_are_null_in_every_json_we_write(tmp_path):
    """Python's json writes NaN bare, which JSON readers refuse: a score that has no value is null."""
    text = strict_json.dumps({"a": math.nan, "b": [1.5, -math.inf], "c": {"d": math.inf}, "e": torch.tensor(1).item()})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": {"d": None}, "e": 1}
    from attngan_fast.train.runtime import JsonlLog

    log = JsonlLog(tmp_path / "log.jsonl", enabled=True)
    log.write({"step": 3, "val_total": math.nan, "retrieval_top1": 0.25})
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 3, "val_total": None, "retrieval_top1": 0.25}


def test_a_test_split_that_cannot_be_scored_logs_null_not_a_zero_loss(tmp_path, capsys):
    """One test image (no distractor, every negative masked): the DAMSM's validation has no score, and
    the log says null (it said val_total 0.0, and wrote a bare NaN that JSON readers refuse)."""
    from test_folder_data import _six_squares
    from test_run_folder import TINY_DAMSM

    (tmp_path / "data").mkdir()
    _six_squares(tmp_path / "data", one_class=False)
    out = tmp_path / "run"
    code = cli(["pretrain-damsm", "--data", str(tmp_path / "data"), "--out", str(out), *TINY_DAMSM,
                "--set", "data.layout=folder", "--set", "damsm.batch_size=4", "--set", "damsm.epochs=1",
                "--set", "damsm.max_steps=null"])
    assert code == 0
    assert '"val_total": null' in capsys.readouterr().out  # the printed result is strict JSON too
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # strict: no NaN
    validation = [r for r in records if "val_total" in r]
    assert validation and all(r["val_total"] is None and r["retrieval_top1"] is None for r in validation)


def _squares(root, names):
    rows = []
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (30 * i, 90, 160)).save(root / name)
        rows.append(json.dumps({"file_name": name, "text": f"a square of colour number {i}"}))
    return rows


def test_one_root_metadata_over_train_and_test_folders_takes_the_split_from_them(tmp_path):
    names = [f"train/{i}.jpg" for i in range(5)] + [f"test/{i}.jpg" for i in range(3)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(_squares(tmp_path, names)) + "\n")
    cache = prepare(tmp_path, "folder", 1, progress=False)
    assert cache.keys == {"train": names[:5], "test": names[5:]}
    assert "train/ or test/" in cache.report["split_rule"]


def test_a_third_split_folder_is_refused_not_left_unread(tmp_path):
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        (tmp_path / split).mkdir()
        rows = _squares(tmp_path / split, [f"{i}.jpg" for i in range(n)])
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"two splits, train and test; validation/ would not be read: move its"):
        prepare(tmp_path, "folder", 1, progress=False)


def test_a_name_in_another_unicode_form_is_pointed_out(tmp_path):
    """macOS archives write "é" as "e" and a combining accent (NFD): the name in the error looks right."""
    import unicodedata

    names = [f"pinson été {i}.jpg" for i in range(4)]
    rows = _squares(tmp_path, names)
    (tmp_path / names[0]).rename(tmp_path / unicodedata.normalize("NFD", names[0]))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="the same name in another Unicode form"):
        prepare(tmp_path, "folder", 1, progress=False)


def test_cub_without_class_info_says_every_image_is_its_own_class(tmp_path):
    root = make_cub(tmp_path / "cub", n_train=4, n_test=2, classes=False)
    with pytest.warns(UserWarning, match="has no {train,test}/class_info.pickle: every image is its own class"):
        cache = prepare(root, "cub", 10, progress=False)
    assert cache.class_ids == {"train": None, "test": None}


def test_the_tokenizer_warning_names_every_metadata_file_it_read(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        (tmp_path / split).mkdir()
        rows = _squares(tmp_path / split, [f"{i}.jpg" for i in range(n)])
        if split == "test":
            rows[0] = rows[0].replace("colour", "couleur très")
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"1 word of train/metadata.jsonl and test/metadata.jsonl's captions has "):
        prepare(tmp_path, "folder", 1, progress=False)


def test_train_and_test_folders_with_images_outside_them_warn_that_the_hash_rule_decides(tmp_path):
    names = [f"train/{i}.jpg" for i in range(5)] + [f"test/{i}.jpg" for i in range(3)] + ["extra/x.jpg"]
    (tmp_path / "metadata.jsonl").write_text("\n".join(_squares(tmp_path, names)) + "\n")
    with pytest.warns(UserWarning, match=r"but 1 do not \(e.g. extra/x.jpg\): the split is the held-out rule"):
        cache = prepare(tmp_path, "folder", 1, progress=False)
    assert "held out by file name" in cache.report["split_rule"]
