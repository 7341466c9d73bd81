"""Dataset layouts (CUB with boxes, COCO), the caption cache, the dataset, sampler and collate, the
synthetic birds, and the errors a user gets for broken data."""

from __future__ import annotations

import hashlib
import json
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from attngan_fast.cli import main as cli
from attngan_fast.data.dataset import EpochSampler, TextImageDataset, collate, crop_to_box
from attngan_fast.data.layouts import DataError
from attngan_fast.data.prepare import CACHE_NAME, load_captions, prepare
from attngan_fast.data.synthetic import COLOURS, PART_ID, synthesize
from attngan_fast.text import tokenize
from data_fixtures import make_coco, make_coco_download, make_cub


def test_prepare_cub_counts_and_cache(tmp_path):
    root = make_cub(tmp_path / "cub")
    cache = prepare(root, "cub", 10, progress=False)
    assert cache.report["images"] == {"train": 6, "test": 3}
    assert cache.report["captions"] == {"train": 60, "test": 30}
    assert cache.class_ids["train"] == [1, 2, 3, 1, 2, 3]
    assert (root / CACHE_NAME).exists()
    # Token ids decode back to the text file's words (blank line skipped).
    key = cache.keys["train"][0]
    lines = [l for l in (root / "text" / f"{key}.txt").read_text().splitlines() if l.strip()]
    assert cache.vocab.decode(cache.caption("train", 0, 3)) == tokenize(lines[3])
    again = load_captions(root, "cub", 10)
    assert again.captions == cache.captions and again.vocab.words == cache.vocab.words


def test_release_captions_pickle_supplies_the_vocabulary(tmp_path):
    root = make_cub(tmp_path / "cub", n_train=2, n_test=1, captions=2)
    ixtoword = {0: "<end>", 1: "bird", 2: "red"}
    train = [[1, 2], [2], [1], [1, 2, 1]]
    test = [[2, 2], [1]]
    with open(root / "captions.pickle", "wb") as fh:
        pickle.dump([train, test, ixtoword, {v: k for k, v in ixtoword.items()}], fh, protocol=2)
    cache = prepare(root, "cub", 2, progress=False)
    assert cache.source == "captions.pickle" and cache.vocab.words == ["<end>", "bird", "red"]
    assert cache.caption("train", 1, 1) == [1, 2, 1]


def test_cub_dataset_items_pyramid_and_box_crop(tmp_path):
    root = make_cub(tmp_path / "cub")
    ds = TextImageDataset(root, "cub", "train", captions_per_image=10, words_num=4, image_size=64, branches=3)
    item = ds[(0, 123)]
    assert [tuple(x.shape) for x in item["images"]] == [(3, 16, 16), (3, 32, 32), (3, 64, 64)]
    assert all(x.min() >= -1 and x.max() <= 1 for x in item["images"])
    assert 1 <= len(item["caption"]) <= 4 and item["class_id"] == 1
    assert torch.equal(ds[(0, 123)]["images"][2], item["images"][2]), "same sample seed, same draw"
    draws = {tuple(ds[(0, s)]["caption"].tolist()) for s in range(30)}
    assert len(draws) > 3, "captions and word subsets vary with the sample seed"
    # The crop is a square of 1.5 x max(w, h) = 60 around the box centre (30, 23), clipped to the image.
    img = Image.new("RGB", (90, 70))
    assert crop_to_box(img, (10.0, 8.0, 40.0, 30.0)).size == (60, 53)


def test_eval_items_are_fixed(tmp_path):
    root = make_cub(tmp_path / "cub")
    ds = TextImageDataset(root, "cub", "test", captions_per_image=10, words_num=18, image_size=32, train=False)
    a, b = ds[1], ds[1]
    assert torch.equal(a["images"][0], b["images"][0]) and torch.equal(a["caption"], b["caption"])


def test_coco_layout_has_no_classes(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = TextImageDataset(root, "coco", "train", captions_per_image=5, words_num=18, image_size=32)
    batch = collate([ds[(i, i)] for i in range(4)])
    assert batch["class_ids"] is None
    assert batch["images"][0].shape == (4, 3, 32, 32)
    assert batch["captions"].shape == (4, int(batch["cap_lens"].max()))
    for row, n in zip(batch["captions"], batch["cap_lens"]):
        assert (row[:n] > 0).all() and (row[n:] == 0).all(), "padding id 0 after each caption, no sorting"


def test_sampler_is_deterministic_sharded_and_resumable():
    full = EpochSampler(10, seed=7, world=1)
    full.set_epoch(3)
    order = list(full)
    assert sorted(i for i, _ in order) == list(range(10))
    again = EpochSampler(10, seed=7)
    again.set_epoch(3)
    assert list(again) == order
    again.set_epoch(4)
    assert [i for i, _ in again] != [i for i, _ in order]
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=7, rank=rank, world=3)
        s.set_epoch(3)
        shards.append(list(s))
    assert all(len(x) == 3 for x in shards) and len({i for x in shards for i, _ in x}) == 9
    resumed = EpochSampler(10, seed=7)
    resumed.set_epoch(3, start=4)
    assert list(resumed) == order[4:]


def test_missing_data_errors_say_what_is_expected_where(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nothing", "cub", 10)
    root = make_cub(tmp_path / "cub")
    (root / "test" / "filenames.pickle").unlink()
    with pytest.raises(DataError, match=re.escape(f"missing test split list: expected {root / 'test' / 'filenames.pickle'}")):
        prepare(root, "cub", 10)


def test_too_few_captions_is_an_error(tmp_path):
    root = make_cub(tmp_path / "cub", captions=3)
    with pytest.raises(DataError, match="has 3 captions with words, 10 are needed"):
        prepare(root, "cub", 10, progress=False)


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    root = make_cub(tmp_path / "cub")
    ds = TextImageDataset(root, "cub", "train", captions_per_image=10, words_num=18, image_size=32)
    path = root / "CUB_200_2011" / "images" / f"{ds.keys[0]}.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="corrupt or unreadable image .*Test_Bird_0000.jpg"):
        ds[0]
    path.unlink()
    with pytest.raises(DataError, match="missing image: expected .*Test_Bird_0000.jpg"):
        ds[0]


def test_cli_reports_data_errors_without_traceback(tmp_path, capsys):
    assert cli(["data", "prepare", "--root", str(tmp_path / "none"), "--quiet"]) == 2
    assert "attngan-fast: error: data root" in capsys.readouterr().err


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synthetic_birds_are_deterministic(tmp_path):
    synthesize(tmp_path / "a", images=12, size=32, seed=5, progress=False)
    synthesize(tmp_path / "b", images=12, size=32, seed=5, progress=False)
    synthesize(tmp_path / "c", images=12, size=32, seed=6, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_synthetic_captions_name_the_drawn_attributes(synthetic_root):
    attrs = json.loads((synthetic_root / "synthetic_attributes.json").read_text())["images"]
    named_wing = named_belly = 0
    for key, a in attrs.items():
        captions = (synthetic_root / "text" / f"{key}.txt").read_text().splitlines()
        assert len(captions) == 10 and len(set(captions)) > 3, "varied wording"
        for caption in captions:
            words = tokenize(caption)
            colours = [w for w in words if w in COLOURS]
            assert set(colours) <= {a["wing"], a["belly"], a["crown"], a["beak_colour"]}
            nouns = {"wing": {"wings", "wing"}, "belly": {"belly", "underside"}, "crown": {"crown", "cap"}, "beak": {"beak", "bill"}}
            assert sum(bool(n & set(words)) for n in nouns.values()) >= 2, f"{caption!r} names fewer than two parts"
            for part, nouns in (("wing", ("wings", "wing")), ("belly", ("belly", "underside"))):
                for i, w in enumerate(words):
                    if w in nouns:
                        window = words[max(0, i - 4): i + 4]
                        assert a[part] in window, f"{caption!r} names the {part} without its colour {a[part]}"
                        named_wing += part == "wing"
                        named_belly += part == "belly"
    assert named_wing > 100 and named_belly > 100


def test_synthetic_layout_classes_and_part_masks(synthetic_root):
    cache = load_captions(synthetic_root, "cub", 10, progress=False)
    attrs = json.loads((synthetic_root / "synthetic_attributes.json").read_text())["images"]
    for split in ("train", "test"):
        for key, cls in zip(cache.keys[split], cache.class_ids[split]):
            a = attrs[key]
            assert cls == COLOURS.index(a["wing"]) * len(COLOURS) + COLOURS.index(a["belly"]) + 1
    key = cache.keys["train"][0]
    labels = np.asarray(Image.open(synthetic_root / "parts" / f"{key}.png"))
    image = np.asarray(Image.open(synthetic_root / "CUB_200_2011" / "images" / f"{key}.jpg")).astype(float)
    from attngan_fast.data.synthetic import PALETTE

    for part in ("wing", "belly"):
        inside = image[labels == PART_ID[part]].mean(0)
        assert np.abs(inside - np.array(PALETTE[attrs[key][part]])).max() < 60, f"{part} pixels have its colour"
    ds = TextImageDataset(synthetic_root, "cub", "test", captions_per_image=10, words_num=18, image_size=32, train=False)
    assert ds.part_labels(0).shape == (32, 32)


def test_cli_synth_and_prepare(tmp_path, capsys):
    assert cli(["data", "synth", "--out", str(tmp_path / "s"), "--images", "10", "--size", "32", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 10
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli(["data", "synth", "--out", str(tmp_path / "s"), "--images", "4", "--size", "32", "--quiet"]) == 2
    assert "already holds a dataset (CUB_200_2011/images.txt)" in capsys.readouterr().err  # no stale birds mixed in
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert cli(["data", "prepare", "--root", str(tmp_path / "s"), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["captions"]["train"] + report["captions"]["test"] == 100


def test_collate_pads_to_a_fixed_length_when_asked():
    def item(n):
        return {"caption": torch.arange(1, n + 1), "images": [torch.zeros(3, 4, 4)], "class_id": -1, "key": "k",
                "caption_index": 0}

    batch = [item(3), item(5)]
    assert collate(batch)["captions"].shape == (2, 5)
    padded = collate(batch, pad_to=18)
    assert padded["captions"].shape == (2, 18) and padded["cap_lens"].tolist() == [3, 5]
    assert padded["captions"][0, 3:].eq(0).all() and padded["captions"][1, :5].tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="pad_to=4 is shorter than the batch's longest caption"):
        collate(batch, pad_to=4)


def test_the_caption_cache_follows_the_caption_files(tmp_path, capsys):
    root = make_cub(tmp_path / "cub")
    first = load_captions(root, "cub", 10, progress=False)
    path = root / "text" / f"{first.keys['train'][0]}.txt"
    original = path.read_text()
    path.write_text("a crimson bird\n" + original)  # caption 0 of image 0 edited after the cache was made
    edited = load_captions(root, "cub", 10, progress=False)
    assert "crimson" in edited.vocab and edited.vocab.decode(edited.caption("train", 0, 0)) == ["a", "crimson", "bird"]
    assert "changed since" in capsys.readouterr().err
    # An edit of the same size within the same clock tick: the cache is keyed on the files' content.
    path.write_text("a scarlet bird\n" + original)
    again = load_captions(root, "cub", 10, progress=False)
    assert again.vocab.decode(again.caption("train", 0, 0)) == ["a", "scarlet", "bird"]
    path.write_text("")  # an emptied caption file is refused, not trained on from the stale cache
    with pytest.raises(DataError, match=re.escape(f"{path} has 0 captions with words, 10 are needed")):
        load_captions(root, "cub", 10, progress=False)


def test_an_unchanged_cache_is_reused_not_rebuilt(tmp_path, monkeypatch):
    root = make_cub(tmp_path / "cub")
    load_captions(root, "cub", 10, progress=False)
    import attngan_fast.data.prepare as prep

    monkeypatch.setattr(prep, "prepare", lambda *a, **k: pytest.fail("rebuilt an unchanged cache"))
    assert len(load_captions(root, "cub", 10, progress=False).captions["train"]) == 60


def test_coco_as_downloaded_reads_train2014_and_val2014(tmp_path):
    """COCO's own folders work without merging them into images/: the key's prefix names the folder."""
    import shutil

    from attngan_fast.data.layouts import image_path

    root = make_coco(tmp_path / "coco", n_train=4, n_test=2)
    (root / "train2014").mkdir()
    (root / "val2014").mkdir()
    for path in sorted((root / "images").iterdir()):
        shutil.move(path, root / "train2014" / path.name)
    (root / "images").rmdir()
    key = "COCO_val2014_000000000042"
    assert image_path(root, "coco", key) == root / "val2014" / f"{key}.jpg"
    prepare(root, "coco", 5, progress=False)
    dataset = TextImageDataset(root, "coco", "test", captions_per_image=5, words_num=18, image_size=32)
    assert dataset[(0, 0)]["images"][-1].shape == (3, 32, 32)


def test_coco_as_downloaded_reads_its_own_caption_json(tmp_path, capsys):
    """annotations/captions_{train,val}2014.json with train2014/ and val2014/: the 2014 split (val2014
    is the test split, as in AttnGAN's lists), each image's first five captions with words in the file's
    order, keys as AttnGAN names them; the cache follows an edit of the JSON."""
    import json as json_module

    root = make_coco_download(tmp_path / "coco")
    cache = prepare(root, "coco", 5, progress=False)
    assert cache.source == "annotations"
    assert cache.keys["train"][0] == "COCO_train2014_000000001000" and len(cache.keys["test"]) == 3
    skipped = 0
    for split, name in (("train", "captions_train2014.json"), ("test", "captions_val2014.json")):
        data = json_module.loads((root / "annotations" / name).read_text())
        for i, image in enumerate(data["images"]):
            worded = []
            for note in (n for n in data["annotations"] if n["image_id"] == image["id"]):
                if len(worded) < 5:
                    skipped += not tokenize(note["caption"])
                    worded += [tokenize(note["caption"])] if tokenize(note["caption"]) else []
            assert [cache.vocab.decode(cache.caption(split, i, c)) for c in range(5)] == worded
    assert cache.report["lines_without_words_skipped"] == skipped >= 1
    dataset = TextImageDataset(root, "coco", "test", captions_per_image=5, words_num=18, image_size=32)
    assert dataset[0]["images"][-1].shape == (3, 32, 32)
    assert cli(["data", "prepare", "--root", str(root), "--layout", "coco", "--quiet"]) == 0
    capsys.readouterr()
    data = json_module.loads((root / "annotations" / "captions_val2014.json").read_text())
    data["annotations"][0]["caption"] = "a zebra stands next to a giraffe"
    (root / "annotations" / "captions_val2014.json").write_text(json_module.dumps(data))
    again = load_captions(root, "coco", 5, progress=False)
    assert "zebra" in again.vocab.index and "rebuilding it" in capsys.readouterr().err


def test_a_current_coco_json_cache_is_used_without_parsing_and_the_release_files_win(tmp_path, monkeypatch):
    """A second load parses nothing (the digest covers the keys); AttnGAN's text/ added later is read
    instead; captions.pickle with COCO's files but without the release's lists is refused (its captions
    would go to COCO's images by position)."""
    import pickle as pickle_module
    import shutil

    from attngan_fast.data import coco_json

    root = make_coco_download(tmp_path / "coco")
    built = prepare(root, "coco", 5, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(coco_json, "_parse", lambda *a: pytest.fail("a current cache parsed COCO's files again"))
        again = load_captions(root, "coco", 5, progress=False)
    assert again.keys == built.keys and again.captions == built.captions
    with open(root / "captions.pickle", "wb") as fh:
        pickle_module.dump([[], [], {0: "<end>"}, {"<end>": 0}], fh, protocol=2)
    with pytest.raises(DataError, match="pairs with the release's .*filenames.pickle, which .* lacks"):
        prepare(root, "coco", 5, progress=False)
    (root / "captions.pickle").unlink()
    coco = make_coco(tmp_path / "release", n_train=3, n_test=2)  # the release's text/ and lists, same root
    for name in ("text", "train", "test"):
        shutil.copytree(coco / name, root / name)
    for image in (coco / "images").iterdir():  # its keys name train2014 images
        shutil.copy(image, root / "train2014" / image.name)
    from_text = load_captions(root, "coco", 5, progress=False)
    assert from_text.source == "text" and from_text.keys["train"] == [f"COCO_train2014_{i:012d}" for i in range(3)]


@pytest.mark.parametrize("damage, match", [
    ({"image_id": 777}, "annotation 0 names image_id 777, which the file's images do not list"),
    ({"caption": None}, "annotation 0 has no caption text"),
])
def test_a_coco_annotation_that_does_not_fit_is_named(tmp_path, damage, match):
    import json as json_module

    root = make_coco_download(tmp_path / "coco")
    path = root / "annotations" / "captions_val2014.json"
    data = json_module.loads(path.read_text())
    data["annotations"][0].update(damage)
    path.write_text(json_module.dumps(data))
    with pytest.raises(DataError, match=match):
        prepare(root, "coco", 5, progress=False)


def test_coco_2017_as_downloaded_is_read_with_its_folder_in_the_key(tmp_path):
    """2017's file names are bare ids, so the key names the folder; 2014's files win when both are there."""
    root = make_coco_download(tmp_path / "coco", year=2017)
    cache = prepare(root, "coco", 5, progress=False)
    assert cache.keys["test"] == ["val2017/000000000042", "val2017/000000000043", "val2017/000000000044"]
    dataset = TextImageDataset(root, "coco", "test", captions_per_image=5, words_num=18, image_size=32)
    assert dataset[0]["images"][-1].shape == (3, 32, 32)
    make_coco_download(root, year=2014)
    assert load_captions(root, "coco", 5, progress=False).keys["test"][0] == "COCO_val2014_000000000042"


def test_coco_with_other_annotation_files_says_what_is_read(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text('{"images": [], "annotations": []}')
    (tmp_path / "train2017").mkdir()
    with pytest.raises(DataError, match=r"or COCO's captions_train2014.json and captions_val2014.json \(or 2017's\) "
                                        r"in .*; found annotations/captions_train2017.json \(both files of one year"):
        prepare(tmp_path, "coco", 5, progress=False)


def test_coco_caption_files_in_the_wrong_place_or_under_another_layout_say_so(tmp_path):
    root = make_coco_download(tmp_path / "coco", year=2017)
    with pytest.raises(DataError, match="holds COCO's caption files, not the CUB layout: --layout coco"):
        prepare(root, "cub", 10, progress=False)
    for path in (root / "annotations").iterdir():
        path.rename(root / path.name)
    with pytest.raises(DataError, match=r"captions_train2017.json, captions_val2017.json must be in annotations/"):
        prepare(root, "coco", 5, progress=False)


def test_a_broken_coco_caption_json_is_one_line(tmp_path):
    root = make_coco_download(tmp_path / "coco")
    (root / "annotations" / "captions_train2014.json").write_text('{"images": [{"id": 1}], "annotations": []}')
    with pytest.raises(DataError, match=r"captions_train2014.json is not COCO's caption JSON \(expected images "):
        prepare(root, "coco", 5, progress=False)


@pytest.mark.parametrize("layout", ["cub", "coco"])
def test_prepare_finds_missing_and_truncated_images_before_training(tmp_path, layout, capsys):
    """A listed image that is missing, or truncated (COCO's own download holds one), is found by data
    prepare, every one on a line of its own, not by the loader hours into a run."""
    root = make_cub(tmp_path / "d", n_train=6, n_test=3) if layout == "cub" else make_coco(tmp_path / "d")
    from attngan_fast.data.layouts import image_path, read_split

    train, test = read_split(root, "train").keys, read_split(root, "test").keys
    image_path(root, layout, train[1]).unlink()
    data = image_path(root, layout, test[0]).read_bytes()
    image_path(root, layout, test[0]).write_bytes(data[: len(data) // 2])
    assert cli(["data", "prepare", "--root", str(root), "--layout", layout, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("attngan-fast: error: 2 of the images listed under") and len(err) == 3
    assert f"train image {train[1]}: missing image" in err[1]
    assert f"test image {test[0]}: the image cannot be decoded" in err[2]
