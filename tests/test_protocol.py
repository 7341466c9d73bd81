"""The evaluation protocol (docs/design.md §5): the judge reads exactly the ids the generator was given, pairs
are drawn from every test image and caption (COCO too), and the report says what its numbers can be
compared with (judge identity, word cap, fold and group sizes, Inception weights, the CUB-IS note,
TF-Inception FID)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import attngan_fast.evaluate as evaluate_module
from attngan_fast.config import load_config
from attngan_fast.data.prepare import load_captions
from attngan_fast.metrics import retrieval_top1
from attngan_fast.models.encoders import TextEncoder, build_image_encoder
from attngan_fast.protocol import damsm_sha256, draw_pairs, tensors_sha256
from attngan_fast.train import damsm as damsm_module
from attngan_fast.train import gan
from attngan_fast.train.checkpoint import save_atomic
from data_fixtures import make_coco
from numerics import INCEPTION_SCORE_FLOOR


def _spy_text_encoder(module: torch.nn.Module, rows: list) -> None:
    """Record every caption a text encoder reads, as the list of its word ids."""

    def hook(_module, args):
        captions, lens = args
        for b in range(captions.shape[0]):
            rows.append(captions[b, : int(lens[b])].tolist())

    module.register_forward_pre_hook(hook)


@pytest.fixture
def spied(monkeypatch):
    """Wraps the evaluation's loaders so that the generator's and the judge's text encoders record what
    they read, and records the pairs the evaluation scored."""
    seen = {"generator": [], "judge": [], "pairs": None}
    load_generator, load_damsm, r_precision = (evaluate_module.load_generator, evaluate_module.load_damsm,
                                               evaluate_module.r_precision)

    def spy_generator(*args, **kwargs):
        netG, text_encoder, vocab, cfg = load_generator(*args, **kwargs)
        _spy_text_encoder(text_encoder, seen["generator"])
        return netG, text_encoder, vocab, cfg

    def spy_damsm(*args, **kwargs):
        models = load_damsm(*args, **kwargs)
        _spy_text_encoder(models.text_encoder, seen["judge"])
        return models

    def spy_r_precision(image_vecs, caption_vecs, pairs, *args, **kwargs):
        seen["pairs"] = list(pairs)
        return r_precision(image_vecs, caption_vecs, pairs, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "load_generator", spy_generator)
    monkeypatch.setattr(evaluate_module, "load_damsm", spy_damsm)
    monkeypatch.setattr(evaluate_module, "r_precision", spy_r_precision)
    return seen


def test_the_judge_reads_the_generators_exact_ids_for_captions_longer_than_the_cap(trained, synthetic_root,
                                                                                      tmp_path, spied):
    cap = 4
    report = evaluate_module.evaluate_generator(trained[1], trained[0], synthetic_root, tmp_path / "r.json",
                                                n_images=40, words_num=cap, seed=3, keep_images=False, progress=False)
    cache = load_captions(synthetic_root, "cub", 10, progress=False)
    n_test, cpi = len(cache.keys["test"]), 10
    generator_rows, judge_rows, pairs = spied["generator"], spied["judge"], spied["pairs"]
    assert len(generator_rows) == 40 and len(judge_rows) == n_test * cpi and len(pairs) == 40
    full = [cache.caption("test", img, c) for img, c in pairs]
    assert sum(len(x) > cap for x in full) >= 30, "the test needs captions longer than the cap"
    for k, (img, c) in enumerate(pairs):
        ids = generator_rows[k]
        assert ids == judge_rows[img * cpi + c], f"image {k}: the judge read other words than the generator"
        assert len(ids) == min(cap, len(full[k]))
        position = iter(full[k])  # an ordered subset of the caption's words
        assert all(any(w == v for v in position) for w in ids)
    assert all(len(row) <= cap for row in judge_rows), "distractors are cut by the same rule"
    long_first_words = sum(ids != full[k][:cap] for k, ids in enumerate(generator_rows) if len(full[k]) > cap)
    assert long_first_words > 0, "the cut is a random subset, not the first words"
    assert report["protocol"]["word_cap"] == cap


def test_pairs_come_from_every_image_and_caption():
    pairs = draw_pairs(7, 5, 35, seed=1)
    assert sorted(pairs) == [(i, c) for i in range(7) for c in range(5)], "all pairs once before any repeats"
    more = draw_pairs(7, 5, 80, seed=1)
    assert more[:35] == pairs and sorted(more[35:70]) == sorted(pairs) and len(more) == 80
    assert draw_pairs(7, 5, 35, seed=2) != pairs


def _untrained_checkpoints(root, layout: str, cpi: int, out):
    """A generator and a DAMSM checkpoint (random weights, compact encoder) on ``root``'s vocabulary."""
    cache = load_captions(root, layout, cpi, progress=False)
    cfg = load_config("synthetic", [f"data.root={root}", f"data.layout={layout}", f"data.captions_per_image={cpi}",
                                    "text_encoder.embedding_dim=8", "text_encoder.hidden_dim=8",
                                    "image_encoder.compact_width=4", "gan.stages=1", "gan.base_size=16",
                                    "gan.gf_dim=2", "data.image_size=16"])
    text = TextEncoder(len(cache.vocab), 8, 8, 0.0)
    image = build_image_encoder("compact", 8, compact_width=4)
    netG = gan.build_generator(cfg)
    damsm_path, gan_path = out / "damsm.pt", out / "gan.pt"
    save_atomic({"format": damsm_module.FORMAT, "config": cfg.to_dict(), "vocab": cache.vocab.to_json(),
                 "text_encoder": text.state_dict(), "image_encoder": image.state_dict()}, damsm_path)
    save_atomic({"format": gan.FORMAT, "config": cfg.to_dict(), "vocab": cache.vocab.to_json(), "legacy_mask": False,
                 "text_encoder": text.state_dict(), "netG": netG.state_dict(), "netG_ema": netG.state_dict()}, gan_path)
    return damsm_path, gan_path


def test_coco_layout_evaluation_draws_captions_other_than_the_first(tmp_path, spied):
    root = make_coco(tmp_path / "coco", n_train=4, n_test=6, captions=5)
    damsm_path, gan_path = _untrained_checkpoints(root, "coco", 5, tmp_path)
    # Fewer images than test images (30,000 of COCO's 40,504): not caption 0 of the first ones.
    report = evaluate_module.evaluate_generator(gan_path, damsm_path, root, tmp_path / "r.json", n_images=5, seed=0,
                                                keep_images=False, progress=False)
    pairs = spied["pairs"]
    assert len(set(pairs)) == 5 and any(c != 0 for _, c in pairs) and pairs != [(i, 0) for i in range(5)]
    assert report["protocol"]["word_cap"] == 20 and report["layout"] == "coco"
    evaluate_module.evaluate_generator(gan_path, damsm_path, root, tmp_path / "r.json", n_images=30, seed=0,
                                       keep_images=False, overwrite=True, progress=False)
    assert sorted(spied["pairs"]) == [(i, c) for i in range(6) for c in range(5)], "every pair once"


def test_r_precision_groups_of_100_beside_the_folds():
    torch.manual_seed(0)
    n = 430
    caption_vecs = torch.randn(n, 16)
    keys = torch.arange(n)
    hit = torch.arange(n) % 2 == 0  # half the images match their caption, half its opposite
    images = torch.where(hit[:, None], caption_vecs, -caption_vecs)
    r = retrieval_top1(images, caption_vecs, torch.arange(n), keys, keys, seed=1, group_size=100)
    groups = r["groups"]
    assert groups["count"] == 4 and groups["left_out"] == 30 and groups["size"] == 100
    assert 0.35 < groups["mean"] < 0.65 and groups["std"] > 0
    assert r["fold_size"] == [43] * 10 and abs(r["mean"] - 0.5) < 1e-12
    exact = retrieval_top1(images[:400], caption_vecs[:400], torch.arange(400), keys[:400], keys[:400], seed=1,
                           group_size=100)
    assert abs(exact["groups"]["mean"] - 0.5) < 1e-12, "every image is in a group: their mean is the hit rate"


def test_weights_hash_names_the_weights():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    b = {"b": torch.zeros(2), "w": torch.arange(6.0).view(2, 3)}
    assert tensors_sha256(a) == tensors_sha256(b)
    changed = dict(a, w=a["w"].clone())
    changed["w"][1, 2] += 1e-6
    assert tensors_sha256(changed) != tensors_sha256(a)
    assert tensors_sha256({"w": a["w"].view(3, 2)}) != tensors_sha256({"w": a["w"]})


@pytest.mark.slow
def test_the_report_holds_every_protocol_field(trained, synthetic_root, fidelity_weights, tmp_path, capsys):
    from attngan_fast.cli import main as cli

    out = tmp_path / "report.json"
    args = ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data", str(synthetic_root),
            "--out", str(out), "--quiet"]
    assert cli(args + ["--n-images", "200"]) == 0
    report = json.loads(out.read_text())
    judge = damsm_module.load_damsm(trained[0])
    assert report["judge"]["path"] == str(trained[0]) and report["judge"]["role"] == "training"
    assert report["judge"]["weights_sha256"] == damsm_sha256(judge)
    protocol, r = report["protocol"], report["r_precision"]
    assert protocol["word_cap"] == 25 and protocol["folds"] == 10 and protocol["fold_size"] == 20
    assert protocol["group_size"] == 100 and "TF-Inception FID" in protocol["fid"]
    assert r["groups_of_100"]["count"] == 2 and r["groups_of_100"]["std"] is not None
    assert abs(r["groups_of_100"]["mean"] - r["mean"]) < 1e-9 and "folds" in r["which_is_which"]
    assert "67.82" in r["comparable_with"] and report["inception_weights"] is None
    assert report["batch_size"] == 32 and report["legacy_mask"] is False and report["device"] == "cpu"
    assert report["legacy_batch_order"] is None  # only a legacy-mask generator's batches are sorted
    assert "4.36" in report["inception_note"]

    # An earlier report is never replaced unasked: one line, the report as it was.
    before = out.read_bytes()
    assert cli(args + ["--n-images", "10"]) == 2
    assert f"--out {out} holds an earlier report: give another --out, or --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    args.append("--overwrite")

    # A separate judge (other weights) and the IS/FID fields.
    other = torch.load(trained[0], weights_only=True)
    other["text_encoder"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in other["text_encoder"].items()}
    other_path = tmp_path / "other_damsm.pt"
    save_atomic(other, other_path)
    assert cli(args + ["--n-images", "30", "--inception-weights", str(fidelity_weights), "--eval-damsm",
                       str(other_path), "--words-num", "7"]) == 0
    assert "4.36" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["judge"]["role"] == "separate" and report["judge"]["path"] == str(other_path)
    assert report["judge"]["weights_sha256"] != damsm_sha256(judge)
    assert report["protocol"]["word_cap"] == 7 and report["r_precision"]["groups_of_100"]["count"] == 0
    weights = report["inception_weights"]
    assert weights["path"] == str(fidelity_weights)
    assert weights["sha256"] == hashlib.sha256(fidelity_weights.read_bytes()).hexdigest()
    assert weights["published"] is False and "not its published file" in weights["name"]  # random weights
    assert "4.36" in report["inception_score_note"] and report["fid_name"] == "TF-Inception FID"
    assert report["tf_inception_fid"] is not None and report["inception_score"]["mean"] >= INCEPTION_SCORE_FLOOR and "fid" not in report

    # The training DAMSM given again as --eval-damsm is still the training judge.
    assert cli(args + ["--n-images", "10", "--eval-damsm", str(trained[0])]) == 0
    assert json.loads(out.read_text())["judge"]["role"] == "training"
