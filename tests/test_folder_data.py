"""Your own images: the folder layout (images in any sub-folders + metadata.jsonl/.csv), checked before any
training step with one line per problem, and run through data prepare, pretrain-damsm, train and evaluate
with the synthetic birds' commands; captions per image that differ from image to image in the protocol."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from attngan_fast.cli import main as cli
from attngan_fast.config import ConfigError, load_config
from attngan_fast.data.dataset import TextImageDataset
from attngan_fast.data.folder import held_out_score
from attngan_fast.data.layouts import DataError
from attngan_fast.data.prepare import CACHE_NAME, load_captions, prepare
from attngan_fast.protocol import cut_captions, draw_pairs, r_precision
from attngan_fast.text import tokenize
from data_fixtures import folder_image_name, make_folder


def _prepare(root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's one non-ASCII word
        return prepare(root, "folder", kwargs.pop("cpi", 10), progress=False, **kwargs)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("own-images"))


def test_prepare_reads_strings_lists_nested_folders_png_and_classes(folder_root):
    cache = _prepare(folder_root)
    rows = [json.loads(line) for line in (folder_root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = cache.keys["train"] + cache.keys["test"]
    assert sorted(keys) == sorted(r["file_name"] for r in rows) and len(keys) == 200
    odd = [folder_image_name(i) for i in (7, 13, 21, 22)]
    assert odd == ["yellow/a/img_007.png", "blue/a/img_013.JPG", "blue/a/img_021.jpeg", "green/b/deeper/img_022.PNG"]
    assert set(odd) <= set(keys)
    # Every caption of every image, in the metadata's order, as token ids; strings are one caption.
    by_name = {r["file_name"]: ([r["text"]] if isinstance(r["text"], str) else r["text"]) for r in rows}
    for split in ("train", "test"):
        for i, key in enumerate(cache.keys[split]):
            assert cache.caption_counts(split)[i] == len(by_name[key])
            for c, caption in enumerate(by_name[key]):
                assert cache.vocab.decode(cache.caption(split, i, c)) == tokenize(caption)
    # Classes: the colour names, numbered alphabetically, the same in both splits.
    names = sorted({r["class"] for r in rows})
    for split in ("train", "test"):
        assert cache.class_ids[split] == [names.index(by_row["class"]) for by_row in
                                          (next(r for r in rows if r["file_name"] == k) for k in cache.keys[split])]
    report = cache.report
    assert report["images"]["train"] + report["images"]["test"] == 200
    assert report["captions_per_image"] == {"min": 1, "mean": 2.0, "max": 4}
    assert report["classes"] == {"train": 4, "test": 4} and report["vocabulary"] == len(cache.vocab)
    assert report["words_changed_by_the_tokenizer"] == {"count": 1, "examples": ["'très' -> 'trs'"]}
    assert report["unlisted_images"] == 0


def test_the_held_out_split_is_the_hash_rule_and_the_same_on_every_run(folder_root, tmp_path):
    cache = _prepare(folder_root, test_fraction=0.25)
    expected = sorted(folder_image_name(i) for i in range(200) if held_out_score(folder_image_name(i)) < 0.25)
    assert sorted(cache.keys["test"]) == expected and 25 <= len(expected) <= 75
    # Another folder with the same names, made with other pixels and in another order of rows: same split.
    other = make_folder(tmp_path / "again", seed=5)
    lines = (other / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    (other / "metadata.jsonl").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    assert sorted(_prepare(other, test_fraction=0.25).keys["test"]) == expected
    # Adding images never moves an earlier test image into training.
    assert set(_prepare(folder_root, test_fraction=0.3).keys["test"]) >= set(expected)


def test_a_split_column_decides_and_csv_reads_as_jsonl(tmp_path):
    jsonl = _prepare(make_folder(tmp_path / "j", n=40, split_column=True))
    csv = _prepare(make_folder(tmp_path / "c", n=40, fmt="csv", split_column=True))
    assert jsonl.keys["test"] == [folder_image_name(i) for i in range(0, 40, 10)]
    assert csv.keys == jsonl.keys and csv.captions == jsonl.captions and csv.vocab.words == jsonl.vocab.words
    assert csv.counts == jsonl.counts and csv.class_ids == jsonl.class_ids


def test_captions_per_image_is_an_upper_bound(folder_root):
    cache = _prepare(folder_root, cpi=2)
    assert max(max(cache.caption_counts(s)) for s in ("train", "test")) == 2
    assert cache.report["captions_beyond_the_cap"] == sum(max(0, (1 + i % 4) - 2) for i in range(200) if i % 3)


def test_dataset_items_cover_each_images_own_captions(folder_root):
    cache = _prepare(folder_root)
    train = TextImageDataset(folder_root, "folder", "train", captions_per_image=10, words_num=18, image_size=32,
                             branches=2, cache=cache)
    png = next(i for i, k in enumerate(train.keys) if k.lower().endswith(".png") and train.caption_counts[i] > 1)
    seen = {train[(png, s)]["caption_index"] for s in range(40)}
    assert seen == set(range(train.caption_counts[png]))
    item = train[(png, 1)]
    assert [tuple(x.shape) for x in item["images"]] == [(3, 16, 16), (3, 32, 32)] and item["class_id"] >= 0
    test = TextImageDataset(folder_root, "folder", "test", captions_per_image=10, words_num=18, image_size=32,
                            train=False, cache=cache)
    assert all(test[i]["caption_index"] < test.caption_counts[i] for i in range(len(test)))


def test_each_problem_is_one_line_naming_the_file_and_row_before_any_training_step(tmp_path, capsys):
    root = make_folder(tmp_path / "broken", n=24)
    meta = root / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines()]
    (root / rows[2]["file_name"]).unlink()  # line 3: missing image
    rows[4]["text"] = "   "  # line 5: empty caption
    rows[5]["text"] = ["a red square", ""]  # line 6: an empty caption in a list
    (root / rows[8]["file_name"]).write_bytes(b"\xff\xd8\xff not really a jpeg")  # line 9: undecodable
    rows[10]["text"] = "红色"  # line 11: no word the tokenizer keeps
    rows.append(dict(rows[1]))  # line 25: duplicate of line 2
    meta.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    assert cli(["data", "prepare", "--root", str(root), "--layout", "folder", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"attngan-fast: error: 6 problems in {meta} (nothing was trained; fix them and run again):"
    expected = {
        3: rf"\({re.escape(rows[2]['file_name'])}\): missing image: expected {re.escape(str(root / rows[2]['file_name']))}",
        5: rf"\({re.escape(rows[4]['file_name'])}\): empty caption$",
        6: rf"\({re.escape(rows[5]['file_name'])}\): empty caption \(caption 2 of 2\)",
        9: rf"\({re.escape(rows[8]['file_name'])}\): the image cannot be decoded",
        11: rf"\({re.escape(rows[10]['file_name'])}\): no word the tokenizer keeps",
        25: rf"\({re.escape(rows[1]['file_name'])}\): duplicate row, the image is already listed on line 2",
    }
    assert len(err) == 1 + len(expected)
    assert [int(line.split()[2]) for line in err[1:]] == sorted(expected)  # in the file's order
    for line_no, pattern in expected.items():
        matching = [line for line in err[1:] if line.startswith(f"metadata.jsonl line {line_no} ")]
        assert len(matching) == 1 and re.search(pattern, matching[0]), (line_no, matching)

    # Training on it stops at the same lines before any step, and leaves no run folder behind.
    out = tmp_path / "run"
    assert cli(["pretrain-damsm", "--config", "synthetic", "--set", "data.layout=folder", "--data", str(root),
                "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == err[1:]
    assert not out.exists()


def test_metadata_mistakes_are_one_line_each(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    with pytest.raises(DataError, match=r"missing metadata for the folder layout: expected .*metadata.jsonl"):
        _prepare(root)
    make_folder(root, n=8)
    (root / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(DataError, match="holds both metadata.jsonl and metadata.csv: keep one"):
        _prepare(root)
    (root / "metadata.csv").unlink()
    meta = root / "metadata.jsonl"
    lines = meta.read_text(encoding="utf-8").splitlines()
    bad = ["{not json", json.dumps({"file_name": "../x.jpg", "text": "a"}), json.dumps({"text": "no name"}),
           json.dumps({"file_name": "red/a/img_001.jpg", "text": "a", "split": "val"}),
           json.dumps({"file_name": "notes.txt", "text": "a"}), json.dumps({"file_name": "x.jpg", "txt": "a"})]
    meta.write_text("\n".join(lines[:1] + bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err, pytest.warns(UserWarning, match="column 'txt' not used"):
        _prepare_strict(root)
    found = str(err.value).splitlines()[1:]
    assert [int(re.match(r"metadata.jsonl line (\d+)\b", line).group(1)) for line in found] == list(range(2, 8))
    for n, text in zip(range(2, 8), ["not valid JSON", "no '..'", "no file_name", "split must be 'train' or 'test'",
                                     "not a JPEG or PNG", "no text column (the caption, or a list of them); it has 'txt'"]):
        assert text in found[n - 2], found[n - 2]


def test_the_cache_follows_the_metadata_and_the_images(tmp_path):
    root = make_folder(tmp_path / "f", n=30)
    first = _prepare(root)
    assert (root / CACHE_NAME).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_captions(root, "folder", 10, progress=False)
    assert again.captions == first.captions and again.counts == first.counts and again.class_ids == first.class_ids
    # A replaced image is checked again (here it no longer decodes), before anything trains.
    victim = root / first.keys["train"][0]
    victim.write_bytes(b"broken")
    with pytest.raises(DataError, match=re.escape(f"({first.keys['train'][0]}): the image cannot be decoded")):
        load_captions(root, "folder", 10, progress=False)


def test_variable_caption_counts_in_the_protocol():
    counts = [1, 3, 2, 4]
    pairs = draw_pairs(4, counts, 10, seed=3)
    assert sorted(pairs) == sorted((i, c) for i, n in enumerate(counts) for c in range(n)), "each pair once"
    assert draw_pairs(5, [3] * 5, 40, seed=1) == draw_pairs(5, 3, 40, seed=1), "fixed counts: as before"

    class Cache:
        def caption(self, split, i, c):
            return list(range(1, 2 + 10 * i + c))

    assert cut_captions(Cache(), "test", 3, 2, 30, 0) == cut_captions(Cache(), "test", 3, [2, 2, 2], 30, 0)
    cut = cut_captions(Cache(), "test", 4, counts, 5, 0)
    assert len(cut) == sum(counts) and all(1 <= len(x) <= 5 for x in cut)
    # R-precision: every image's vector is its own first caption's: all hits, whatever the counts.
    # Fixed vectors: with shuffled pairs an image's own caption is a distractor only when the draw of 6 of
    # its 7-9 eligible captions picks it, so on fresh random vectors the 0.0 below held for most seeds only
    # (ATTNGAN_TEST_SEED=524752420 gave 0.25).
    caption_vecs = torch.randn(sum(counts), 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    firsts = [0, 1, 4, 6]
    image_vecs = caption_vecs[firsts]
    r = r_precision(image_vecs, caption_vecs, [(i, 0) for i in range(4)], counts, None, folds=2)
    # The candidates: 1 true caption + the other images' captions, for the image with the fewest such (6).
    assert r["mean"] == 1.0 and r["candidates"] == 7
    shuffled = r_precision(image_vecs, caption_vecs, [(i, 0) for i in (1, 2, 3, 0)], counts, None, folds=2)
    assert shuffled["mean"] == 0.0, "each image's own caption is now another image's distractor, and wins"


def test_the_test_fraction_is_checked():
    with pytest.raises(ConfigError, match=r"data.test_fraction must be between 0 and 1 \(exclusive\), got 1.0"):
        load_config("synthetic", ["data.test_fraction=1.0"])
    with pytest.raises(ConfigError, match="data.layout must be one of"):
        load_config("synthetic", ["data.layout=imagefolder"])


@pytest.mark.slow
def test_own_images_run_through_prepare_damsm_train_and_evaluate(folder_root, tmp_path, capsys):
    root = str(folder_root)
    assert cli(["data", "prepare", "--root", root, "--layout", "folder", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"]["train"] + report["images"]["test"] == 200 and report["classes"]["train"] == 4

    toy = ["--set", "data.layout=folder", "--set", "data.image_size=32", "--set", "text_encoder.embedding_dim=16",
           "--set", "text_encoder.hidden_dim=16", "--set", "image_encoder.compact_width=8"]
    damsm = tmp_path / "damsm"
    assert cli(["pretrain-damsm", "--config", "synthetic", "--data", root, "--out", str(damsm), "--quiet", *toy,
                "--set", "damsm.batch_size=8", "--set", "damsm.max_steps=4", "--set", "runtime.eval_batches=1"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["step"] == 4 and result["retrieval_candidates"] >= 2

    gan_out = tmp_path / "gan"
    assert cli(["train", "--config", "synthetic", "--data", root, "--damsm", str(damsm / "latest.pt"),
                "--out", str(gan_out), "--quiet", *toy, "--set", "gan.stages=2", "--set", "gan.base_size=16",
                "--set", "gan.gf_dim=4", "--set", "gan.df_dim=4", "--set", "gan.batch_size=8",
                "--set", "gan.max_steps=3", "--set", "gan.samples_every=3"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3
    assert (gan_out / "samples" / "step0000003.png").is_file()

    out = tmp_path / "report.json"
    assert cli(["evaluate", "--checkpoint", str(gan_out / "latest.pt"), "--damsm", str(damsm / "latest.pt"),
                "--data", root, "--n-images", "40", "--out", str(out), "--quiet", "--discard-images"]) == 0
    full = json.loads(out.read_text())
    n_test = report["images"]["test"]
    assert full["layout"] == "folder" and full["n_images"] == 40 and 0.0 <= full["r_precision"]["mean"] <= 1.0
    assert f"from all {n_test} test images x 1-4 (" in full["protocol"]["pairs"]
    assert full["protocol"]["word_cap"] == 25


def _six_squares(root, one_class: bool):
    """Six images, the last one the only test image; with ``one_class`` all of one class."""
    from PIL import Image

    rows = []
    for i in range(6):
        Image.new("RGB", (24, 24), (40 * i, 90, 160)).save(root / f"img_{i}.jpg")
        row = {"file_name": f"img_{i}.jpg", "text": f"a square of colour number {i}",
               "split": "test" if i == 5 else "train"}
        rows.append(json.dumps({**row, "class": "squares"} if one_class else row))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_one_class_is_one_clear_error_before_training(tmp_path, capsys):
    """Captions of the same class are never negatives: a dataset of one class cannot train a DAMSM."""
    _six_squares(tmp_path, one_class=True)
    with pytest.raises(DataError, match="every image of the train split .* has the same class"):
        _prepare(tmp_path)
    assert cli(["data", "prepare", "--root", str(tmp_path), "--layout", "folder"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the image check's progress bar
    assert last.startswith("attngan-fast: error: every image of the train split")


def test_a_test_split_of_one_image_warns_and_evaluation_refuses_it(tmp_path):
    """Without classes a test image's distractors are the other test images' captions: with one test
    image data prepare warns (DAMSM training reports no retrieval score) and the R-precision
    evaluations refuse it in one line before generating anything."""
    from attngan_fast.protocol import FixedEvaluation

    _six_squares(tmp_path, one_class=False)
    with pytest.warns(UserWarning, match="the test split of .* holds 1 image: retrieval and R-precision"):
        _prepare_warned(tmp_path)
    test_set = TextImageDataset(tmp_path, "folder", "test", captions_per_image=10, words_num=18, image_size=32,
                                train=False)
    with pytest.raises(DataError, match="holds 1 image"):
        FixedEvaluation.build(test_set, None, n_images=4, z_dim=4, c_dim=4, seed=0, batch_size=2, device="cpu")


def _prepare_warned(root):
    return prepare(root, "folder", 10, progress=False)


def _prepare_strict(root):
    return prepare(root, "folder", 10, progress=False)


def test_other_columns_are_read_past_with_one_warning(tmp_path):
    """Hugging Face's imagefolder lets metadata carry any columns (sizes, sources, licences)."""
    root = make_folder(tmp_path / "extra", n=24)
    meta = root / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines()]
    meta.write_text("".join(json.dumps({**r, "width": 40, "height": 40, "source": "camera"}, ensure_ascii=False) + "\n"
                            for r in rows), encoding="utf-8")
    with pytest.warns(UserWarning, match="columns 'height', 'source', 'width' not used") as caught:
        cache = _prepare_strict(root)
    assert sum("not used" in str(w.message) for w in caught) == 1
    assert sum(len(k) for k in cache.keys.values()) == 24


def test_imagefolder_split_folders_each_with_their_metadata(tmp_path, capsys):
    """train/ and test/, each with its own metadata.jsonl and file names relative to it: the folder is
    the split. A validation/ folder is named in the error (this layout has train and test)."""
    from PIL import Image

    for split, count in (("train", 8), ("test", 3)):
        (tmp_path / split / "pics").mkdir(parents=True)
        rows = []
        for i in range(count):
            Image.new("RGB", (24, 24), (20 * i, 80, 200)).save(tmp_path / split / "pics" / f"{i}.jpg")
            rows.append(json.dumps({"file_name": f"pics/{i}.jpg", "text": [f"a {split} square number {i}"]}))
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    cache = _prepare_strict(tmp_path)
    assert cache.keys["train"][:2] == ["train/pics/0.jpg", "train/pics/1.jpg"] and len(cache.keys["test"]) == 3
    assert cache.report["split_rule"] == "the metadata's split column"
    dataset = TextImageDataset(tmp_path, "folder", "test", captions_per_image=10, words_num=18, image_size=32,
                               train=False, cache=cache)
    assert dataset[0]["images"][-1].shape == (3, 32, 32)

    (tmp_path / "test" / "metadata.jsonl").write_text(json.dumps({"file_name": "pics/9.jpg", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"test/metadata.jsonl line 1 \(test/pics/9.jpg\): missing image"):
        _prepare_strict(tmp_path)
    (tmp_path / "test").rename(tmp_path / "validation")
    with pytest.raises(DataError, match=r"split folders must be named train and test; found metadata in validation/"):
        _prepare_strict(tmp_path)
