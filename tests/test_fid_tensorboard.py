"""FID during training (torch-fidelity, against the test images' statistics cached beside the data) and
TensorBoard event files that TensorBoard's own reader reads back: scalars and pictures."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from attngan_fast import inception_metrics as im
from attngan_fast.cli import main as cli
from attngan_fast.config import load_config
from attngan_fast.data.dataset import TextImageDataset
from attngan_fast.train import gan
from numerics import INCEPTION_SCORE_FLOOR


@pytest.fixture
def data_copy(synthetic_root, tmp_path):
    """The synthetic birds in a folder of this test's own (the FID statistics are cached beside the data)."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


def _test_set(root, size=32):
    return TextImageDataset(root, "cub", "test", captions_per_image=10, words_num=18, image_size=size, branches=2,
                            train=False)


@pytest.mark.slow
def test_fid_and_is_are_torch_fidelitys_and_the_real_statistics_are_cached(tmp_path, fidelity_weights, monkeypatch):
    import torch_fidelity

    from attngan_fast.data.synthetic import synthesize

    # Few images: each costs an Inception pass at 299 px on the CPU.
    data_copy = tmp_path / "small"
    synthesize(data_copy, images=24, size=32, seed=1, test_fraction=0.25, progress=False)
    test = _test_set(data_copy)
    assert len(test) == 6
    fakes = torch.rand(6, 3, 32, 32, dtype=torch.float32) * 2 - 1
    real = im.real_statistics(test, fidelity_weights, torch.device("cpu"))
    features = im.inception_features(fakes, fidelity_weights, torch.device("cpu"))
    ours = {"fid": im.frechet_distance(features, real), **im.inception_score(features)}
    theirs = torch_fidelity.calculate_metrics(
        input1=im.UInt8Images(fakes), input2=im.FinalImages(test), isc=True, fid=True, cuda=False, verbose=False,
        feature_extractor_weights_path=str(fidelity_weights), save_cpu_ram=True, cache=False, isc_splits=6)
    # The same features and formula; the statistics are float64 here, float32 means there.
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert ours["std"] == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    assert ours["fid"] > 0

    # Cached once per dataset and size: a second run reads the file, without the Inception.
    assert len(list((data_copy / im.CACHE_DIR).glob("test_32px_*.npz"))) == 1
    monkeypatch.setattr(im, "inception_features", lambda *a, **k: pytest.fail("the statistics were computed again"))
    again = im.real_statistics(_test_set(data_copy), fidelity_weights, torch.device("cpu"))
    assert np.array_equal(again["mu"], real["mu"]) and np.array_equal(again["sigma"], real["sigma"])
    # Another image size, another weights file or a replaced image has statistics of its own.
    digest = im.statistics_identity(test, fidelity_weights)[0]
    assert im.statistics_identity(_test_set(data_copy, size=16), fidelity_weights)[0] != digest
    other_weights = data_copy / "other.pth"
    other_weights.write_bytes(fidelity_weights.read_bytes() + b"\0")
    assert im.statistics_identity(test, other_weights)[0] != digest
    image = data_copy / "CUB_200_2011" / "images" / f"{test.keys[0]}.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert im.statistics_identity(test, fidelity_weights)[0] != digest


def _read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_a_run_with_the_evaluation_hook_writes_fid_rows_and_tensorboard_events(data_copy, trained, fidelity_weights,
                                                                              tmp_path):
    out = tmp_path / "gan"
    cfg = load_config("synthetic", [
        f"data.root={data_copy}", f"gan.damsm={trained[0]}", f"gan.out_dir={out}", "data.workers=0",
        "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16", "gan.stages=2", "gan.base_size=16",
        "gan.gf_dim=4", "gan.df_dim=4", "gan.z_dim=8", "gan.c_dim=8", "gan.r_num=0", "gan.batch_size=24",
        "gan.epochs=2", "gan.max_minutes=null", "gan.samples_every=2", "runtime.log_every=1", "gan.eval_every=1",
        "gan.eval_images=6", f"gan.eval_inception_weights={fidelity_weights}", "runtime.tensorboard=true"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gan.train_gan(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval")]
    n_test = len(_test_set(data_copy))
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 and r["fid_real_images"] == n_test for r in evals)
    assert all(r["inception_score"] >= INCEPTION_SCORE_FLOOR for r in evals)
    assert len(list((data_copy / im.CACHE_DIR).glob("test_32px_*.npz"))) == 1, "real statistics computed once"
    assert (out / "eval_curve.png").stat().st_size > 1000

    events = _read_events(out / "tensorboard")
    tags = events.Tags()
    for tag in ("train/G", "train/D0", "train/D1", "train/damsm", "speed/steps_per_s", "eval/r_precision",
                "eval/inception_score", "eval/fid"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("eval/fid")] == [r["step"] for r in evals]
    assert [e.value for e in events.Scalars("eval/fid")] == pytest.approx([r["fid"] for r in evals], rel=1e-6)
    train_rows = [r for r in rows if "G" in r]
    assert [e.value for e in events.Scalars("train/G")] == pytest.approx([r["G"] for r in train_rows], rel=1e-6)
    samples = events.Images("samples")
    assert [e.step for e in samples] == [2, 4, 6] and result["step"] == 6, "the final grid is not drawn twice"
    assert samples[0].width > 100 and samples[0].height > 50


def test_damsm_pretraining_with_tensorboard_from_the_command_line(synthetic_root, tmp_path, capsys):
    out = tmp_path / "damsm"
    assert cli(["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--out", str(out), "--quiet",
                "--tensorboard", "--set", "data.image_size=32", "--set", "damsm.batch_size=8",
                "--set", "damsm.max_steps=4", "--set", "text_encoder.hidden_dim=16", "--set", "runtime.log_every=2",
                "--set", "runtime.eval_batches=1", "--set", "image_encoder.compact_width=8"]) == 0
    capsys.readouterr()
    events = _read_events(out / "tensorboard")
    tags = events.Tags()
    assert {"train/total", "train/w0", "train/lr", "speed/steps_per_s", "eval/val_total",
            "eval/retrieval_top1"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/total")] == [2, 4]
    assert tags["images"] == ["attention_maps"] and events.Images("attention_maps")[0].step == 4


def test_without_the_flag_there_is_no_tensorboard_folder(synthetic_root, tmp_path, capsys):
    out = tmp_path / "damsm"
    assert cli(["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--out", str(out), "--quiet",
                "--set", "data.image_size=32", "--set", "damsm.batch_size=8", "--set", "damsm.max_steps=1",
                "--set", "text_encoder.hidden_dim=16", "--set", "runtime.eval_batches=1",
                "--set", "image_encoder.compact_width=8"]) == 0
    capsys.readouterr()
    assert (out / "log.jsonl").is_file() and not (out / "tensorboard").exists()
