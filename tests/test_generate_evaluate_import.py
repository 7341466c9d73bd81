"""Generation from text, the evaluation protocol (R-precision, IS/FID from a local weights file) and the
import of the release's checkpoints (state_dicts built from the recorded layouts)."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch

from attngan_fast.cli import main as cli
from attngan_fast.generate import CaptionError, encode_captions, generate_images, write_generation
from attngan_fast.metrics import retrieval_top1
from attngan_fast.release_import import ReleaseImportError, import_original
from attngan_fast.text import Vocabulary
from attngan_fast.train import gan
from data_fixtures import RELEASE_LAYOUTS
from numerics import INCEPTION_SCORE_FLOOR



def test_generate_shapes_files_and_unknown_words(trained, tmp_path):
    netG, text_encoder, vocab, cfg = gan.load_generator(trained[1])
    captions = ["this bird has wings that are black and has a white belly", "a red zebra bird with purple stripes"]
    with pytest.warns(UserWarning, match="'a red zebra bird with purple stripes': zebra, purple, stripes"):
        gen = generate_images(netG, text_encoder, vocab, captions, n_per_caption=3, seed=4, batch_size=4)
    assert [tuple(x.shape) for x in gen.images] == [(6, 3, 16, 16), (6, 3, 32, 32)]
    assert gen.attn[0].shape == (6, 12, 16, 16) and gen.words[3] == ["a", "red", "bird", "with"]
    assert gen.captions == [captions[0]] * 3 + [captions[1]] * 3
    files = write_generation(gen, tmp_path, n_per_caption=3)
    assert len(files) == 6 * 3 and all(f.exists() for f in files)
    assert (tmp_path / "c001_a_red_zebra_bird_with_purple_stripes_s2_attention.png").exists()


def test_generation_is_seeded_and_independent_of_chunking(trained):
    netG, text_encoder, vocab, _ = gan.load_generator(trained[1])
    captions = [f"a bird with {c} wings and a {b} belly" for c in ("red", "blue", "green") for b in ("white", "black")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = generate_images(netG, text_encoder, vocab, captions, seed=9, batch_size=64)
        chunked = generate_images(netG, text_encoder, vocab, captions, seed=9, batch_size=2)
        other = generate_images(netG, text_encoder, vocab, captions, seed=10, batch_size=64)
    torch.testing.assert_close(one.images[-1], chunked.images[-1])
    assert not torch.allclose(one.images[-1], other.images[-1])


def test_caption_errors_and_truncation():
    vocab = Vocabulary.build([["a", "bird", "red", "wings"]])
    with pytest.raises(CaptionError, match="no word of caption 2"):  # counted from 1, as a user counts
        encode_captions(["a bird", "zebra stripes"], vocab, 18)
    with pytest.raises(CaptionError, match="caption 1 is empty"):
        encode_captions(["  "], vocab, 18)
    long = ["a red bird red wings a red bird " * 3]
    ids, _ = encode_captions(long, vocab, 5, seed=1)
    assert len(ids[0]) == 5
    assert encode_captions(long, vocab, 5, seed=1)[0] == ids


def test_cli_generate_errors(trained, tmp_path, capsys):
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path), "zebra stripes"]) == 2
    assert "is in the model's vocabulary" in capsys.readouterr().err
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path)]) == 2
    assert "give at least one caption" in capsys.readouterr().err
    captions = tmp_path / "captions.txt"
    captions.write_text("this bird is red\n\n\nzebra stripes\n")  # blank lines are skipped, not renumbered
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "g"), "--captions",
                str(captions)]) == 2
    assert f"--captions {captions} line 4: no word of 'zebra stripes' is in" in capsys.readouterr().err


def test_r_precision_is_perfect_for_matching_vectors_and_chance_for_shuffled():
    torch.manual_seed(0)
    n_images, cpi = 400, 2
    caption_vecs = torch.randn(n_images * cpi, 32)
    classes = torch.arange(n_images) % 40
    caption_keys = classes.repeat_interleave(cpi)
    true = torch.arange(n_images) * cpi
    images = caption_vecs[true] + 0.05 * torch.randn(n_images, 32)  # "a DAMSM made to match them"
    perfect = retrieval_top1(images, caption_vecs, true, classes, caption_keys, seed=1)
    assert perfect["mean"] > 0.99 and perfect["candidates"] == 100 and len(perfect["folds"]) == 10
    shuffled = true[torch.randperm(n_images)]
    chance = retrieval_top1(images, caption_vecs, shuffled, classes, caption_keys, seed=1)
    assert chance["mean"] < 0.05, chance["mean"]  # about 1 in 100


def test_every_image_faces_the_same_number_of_distractors_whatever_the_chunking():
    """Classes of very different sizes: the images of the big class have only a few captions of other
    classes. All images then face that fewest number, and the hits do not depend on how the images
    are chunked (the draw of each row comes from one generator in order)."""
    torch.manual_seed(0)
    classes = torch.cat([torch.zeros(60, dtype=torch.long), torch.arange(1, 13)])  # 60 birds of class 0, 12 others
    caption_vecs = torch.randn(len(classes), 16)
    images = caption_vecs + 0.8 * torch.randn(len(classes), 16)
    true = torch.arange(len(classes))
    results = [retrieval_top1(images, caption_vecs, true, classes, classes, seed=3, chunk=chunk)
               for chunk in (512, 7, 1)]
    assert all(r["candidates"] == 13 and r["chance"] == 1 / 13 for r in results)  # class 0 sees 12 others
    assert results[0]["folds"] == results[1]["folds"] == results[2]["folds"]


@pytest.mark.slow
def test_torch_fidelity_runs_from_a_local_weights_file(fidelity_weights, tmp_path):
    from attngan_fast.evaluate import fidelity_metrics
    from PIL import Image

    torch.manual_seed(1)
    for name in ("a", "b", "noise"):
        (tmp_path / name).mkdir()
    smooth = torch.rand(24, 3, 1, 1) * torch.linspace(0, 1, 32).view(1, 1, 1, 32) * 255
    for i in range(24):
        arr = smooth[i].expand(3, 32, 32).permute(1, 2, 0).byte().numpy()
        Image.fromarray(arr).save(tmp_path / "a" / f"{i}.png")
        Image.fromarray(arr).save(tmp_path / "b" / f"{i}.png")
        Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy()).save(tmp_path / "noise" / f"{i}.png")
    same = fidelity_metrics(tmp_path / "a", tmp_path / "b", fidelity_weights, torch.device("cpu"))
    other = fidelity_metrics(tmp_path / "a", tmp_path / "noise", fidelity_weights, torch.device("cpu"))
    assert abs(same["tf_inception_fid"]) < 1e-3, same
    assert other["tf_inception_fid"] > 1.0 and other["tf_inception_fid"] > 100 * abs(same["tf_inception_fid"])
    assert same["inception_score"]["mean"] >= INCEPTION_SCORE_FLOOR


@pytest.mark.slow
def test_evaluate_writes_the_report(trained, synthetic_root, fidelity_weights, tmp_path, capsys):
    args = ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data", str(synthetic_root),
            "--n-images", "30", "--out", str(tmp_path / "report.json"), "--quiet"]
    assert cli(args) == 0
    err = capsys.readouterr().err
    assert "IS and FID skipped" in err and "weights-inception-2015-12-05-6726825d.pth" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_images"] == 30 and report["tf_inception_fid"] is None and report["seed"] == 0
    assert 0 <= report["r_precision"]["mean"] <= 1 and report["r_precision"]["candidates"] >= 2
    assert set(report["versions"]) >= {"torch", "torch_fidelity", "attngan_fast"} and "r_precision" in report["protocol"]
    assert cli(args + ["--inception-weights", str(fidelity_weights), "--eval-damsm", str(trained[0]), "--overwrite"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tf_inception_fid"] is not None and report["inception_score"]["mean"] >= INCEPTION_SCORE_FLOOR
    assert report["judge_damsm"] == str(trained[0]) and report["inception_weights"]["path"] == str(fidelity_weights)


# ------------------------------------------------------------------------------------ release import

def _release_files(tmp_path, n_words=5450, drop_batches_tracked=True, corrupt=None):
    layouts = RELEASE_LAYOUTS
    files = {}
    torch.manual_seed(0)
    for key, name in (("netG", "netG_bird"), ("text_encoder", "text_encoder(n_words=5450)"),
                      ("image_encoder", "image_encoder")):
        state = {}
        for param, shape in layouts[name].items():
            if param.endswith("num_batches_tracked"):
                if drop_batches_tracked:
                    continue  # files saved by PyTorch < 0.4.1 lack them
                state[param] = torch.tensor(0)
            elif param.endswith("running_var"):
                state[param] = torch.rand(shape) + 0.5
            else:
                state[param] = torch.randn(shape) * 0.05
        if corrupt is not None and corrupt[0] == key:
            corrupt[1](state)
        files[key] = tmp_path / f"{key}.pth"
        torch.save(state, files[key])
    words = ["<end>"] + [f"w{i}" for i in range(1, n_words)]
    words[1:6] = ["this", "bird", "has", "red", "wings"]
    with open(tmp_path / "captions.pickle", "wb") as fh:
        pickle.dump([[[1, 2]], [[2, 3]], dict(enumerate(words)), {w: i for i, w in enumerate(words)}], fh, protocol=2)
    files["captions"] = tmp_path / "captions.pickle"
    return files


@pytest.mark.slow
def test_import_release_layout_loads_completely_and_generates(tmp_path):
    files = _release_files(tmp_path)
    summary = import_original(netG=files["netG"], text_encoder=files["text_encoder"], captions=files["captions"],
                              image_encoder=files["image_encoder"], preset="bird", out=tmp_path / "bird_release.pt")
    assert summary["vocabulary"] == 5450 and summary["legacy_mask"] is True
    netG, text_encoder, vocab, cfg = gan.load_generator(tmp_path / "bird_release.pt")
    assert netG.legacy_mask and netG.sizes == [64, 128, 256]
    original = torch.load(files["netG"], weights_only=True)
    for name, tensor in netG.state_dict().items():
        if name in original:
            assert torch.equal(tensor, original[name]), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = generate_images(netG, text_encoder, vocab, ["this bird has red wings"], return_attn=True)
    assert gen.images[-1].shape == (1, 3, 256, 256) and torch.isfinite(gen.images[-1]).all()
    from attngan_fast.train.damsm import load_damsm

    damsm = load_damsm(summary["damsm_checkpoint"])
    regions, code = damsm.image_encoder(gen.images[-1])
    assert regions.shape == (1, 256, 17, 17) and code.shape == (1, 256)


@pytest.mark.parametrize("corrupt, match", [
    (("netG", lambda s: s.pop("h_net2.att.conv_context.weight")), "missing 1 tensors .*h_net2.att.conv_context.weight"),
    (("netG", lambda s: s.__setitem__("h_net2.upsample.1.weight", torch.zeros(64, 64, 5, 5))),
     r"mis-shaped .*h_net2.upsample.1.weight: file \(64, 64, 5, 5\), model \(64, 64, 3, 3\)"),
    (("text_encoder", lambda s: s.__setitem__("extra.weight", torch.zeros(1))), "1 unexpected tensors .*extra.weight"),
    (("text_encoder", lambda s: s.__setitem__("encoder.weight", s["encoder.weight"][:-1])),  # another vocabulary
     r"encoder.weight: file \(5449, 300\), model \(5450, 300\)\) — was .*captions.pickle released with this text encoder"),
])
def test_import_names_what_does_not_fit(tmp_path, corrupt, match):
    files = _release_files(tmp_path, corrupt=corrupt)
    with pytest.raises(ReleaseImportError, match=match):
        import_original(netG=files["netG"], text_encoder=files["text_encoder"], captions=files["captions"],
                        preset="bird", out=tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_import_with_the_wrong_preset_is_a_clear_cli_error(tmp_path, capsys):
    files = _release_files(tmp_path)
    code = cli(["import-original", "--netG", str(files["netG"]), "--text-encoder", str(files["text_encoder"]),
                "--captions", str(files["captions"]), "--preset", "coco", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "are --preset (bird or coco) and --variant (attngan or attndcgan) right" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "text", "code"])
def test_an_unreadable_or_unsafe_release_file_is_one_line(tmp_path, capsys, damage):
    """A truncated .pth, a text file, a pickle that carries code: one line (torch's own message would
    suggest weights_only=False), and the code never runs."""
    import pickle

    files = _release_files(tmp_path)
    marker = tmp_path / "ran"
    if damage == "truncated":
        data = files["netG"].read_bytes()
        files["netG"].write_bytes(data[: len(data) // 2])
    elif damage == "text":
        files["netG"].write_text("not a checkpoint\n")
    else:
        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        files["netG"].write_bytes(pickle.dumps({"h_net1.fc.0.weight": Payload()}))
    code = cli(["import-original", "--netG", str(files["netG"]), "--text-encoder", str(files["text_encoder"]),
                "--captions", str(files["captions"]), "--preset", "bird", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "weights_only" not in err, err
    assert err.startswith(f"attngan-fast: error: {files['netG']} is not a readable torch.save file of tensors")
    assert "a whole pickled model too: save its state_dict()" in err
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


def test_cli_checkpoint_errors_are_clear(trained, tmp_path, capsys):
    assert cli(["generate", "--checkpoint", str(trained[0]), "--out", str(tmp_path), "a bird"]) == 2
    assert "is a DAMSM checkpoint; this needs a generator checkpoint" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    assert cli(["generate", "--checkpoint", str(garbage), "--out", str(tmp_path), "a bird"]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_a_captions_file_that_is_not_the_releases_is_one_clear_error(tmp_path):
    """A text file, a truncated pickle and a pickle of the wrong shape are refused with their name, no
    traceback (the restricted unpickler's errors, and the vocabulary's shape)."""
    import pickle as std_pickle

    from attngan_fast.release_import import ReleaseImportError, release_vocabulary
    from attngan_fast.safe_pickle import UnsafePickleError

    text = tmp_path / "captions.txt"
    text.write_text("this bird is red\n")
    truncated = tmp_path / "truncated.pickle"
    truncated.write_bytes(std_pickle.dumps([[1, 2], [3], {0: "<end>"}, {}], protocol=2)[:-5])
    for path in (text, truncated):
        with pytest.raises(UnsafePickleError, match=f"{path.name} is not a readable pickle"):
            release_vocabulary(path)
    empty_vocab = tmp_path / "empty.pickle"
    empty_vocab.write_bytes(std_pickle.dumps([[], [], {}, {}], protocol=2))
    with pytest.raises(ReleaseImportError, match="ixtoword, item 3"):
        release_vocabulary(empty_vocab)


def test_the_demo_checks_the_inception_weights_before_training(tmp_path):
    from attngan_fast.demo import run_demo
    from attngan_fast.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="--inception-weights .*missing.pth does not exist"):
        run_demo(tmp_path / "demo", inception_weights=str(tmp_path / "missing.pth"), device="cpu", progress=False)
    assert not (tmp_path / "demo").exists()  # nothing was trained


def test_a_bird_generator_with_cocos_text_encoder_and_captions_is_named(tmp_path):
    """Every shape fits (both datasets' encoders have the same), so the vocabulary's size is the tell:
    27,297 words is the release's COCO vocabulary, not the birds' 5,450."""
    files = _release_files(tmp_path, n_words=27297)
    state = torch.load(files["text_encoder"], weights_only=True)
    state["encoder.weight"] = torch.randn(27297, state["encoder.weight"].shape[1]) * 0.05
    torch.save(state, files["text_encoder"])
    with pytest.warns(UserWarning, match="27,297 words, the size of the release's coco vocabulary, but --preset is "
                                         "bird .*are the text encoder and captions.pickle the bird ones"):
        import_original(netG=files["netG"], text_encoder=files["text_encoder"], captions=files["captions"],
                        preset="bird", out=tmp_path / "out.pt")
