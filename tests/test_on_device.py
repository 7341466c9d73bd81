"""``data.on_device``: the batches it makes on the device equal the PIL loader's (on CPU exactly; the
GPU's float resize within a grey level), it refuses data that would not fit, and a training run with
it is the PIL run's twin and resumes exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import attngan_fast.data.on_device as on_device
import attngan_fast.train.gan as gan
from attngan_fast.data.dataset import TextImageDataset, collate
from attngan_fast.data.layouts import DataError
from attngan_fast.data.on_device import OnDeviceDataset, pyramid
from attngan_fast.train import damsm
from data_fixtures import make_cub
from test_damsm_training import _assert_same, _final_state, tiny_config
from test_gan import damsm_checkpoint, tiny_gan_config  # noqa: F401 - a fixture, used by name

GREY_LEVEL = 1 / 127.5


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """CUB layout whose images have different sizes and aspect ratios, so the box crops (and the
    stored images) are not all square nor of one size."""
    root = make_cub(tmp_path_factory.mktemp("cub"), n_train=8, n_test=3)
    rng = np.random.default_rng(5)
    for i, size in enumerate([(120, 50), (50, 130), (61, 61), (200, 90)]):
        key = f"{i % 3 + 1:03d}.Test_Bird/Test_Bird_{i:04d}"
        smooth = np.kron(rng.integers(0, 255, (size[1] // 5 + 1, size[0] // 5 + 1, 3)), np.ones((5, 5, 1)))
        Image.fromarray(smooth[: size[1], : size[0]].astype(np.uint8)).save(root / "CUB_200_2011" / "images" / f"{key}.jpg")
    return root


def _datasets(root, train: bool, image_size=32, branches=3):
    pil = TextImageDataset(root, "cub", "train", captions_per_image=10, words_num=18, image_size=image_size,
                           branches=branches, train=train)
    return pil, OnDeviceDataset(pil, torch.device("cpu"))


@pytest.mark.parametrize("train", [True, False])
def test_batches_equal_the_pil_loaders(cub_root, train):
    pil, device = _datasets(cub_root, train)
    items = [(i, 1000 + 37 * i + k) for k in range(4) for i in range(len(pil))]  # every image, several draws
    expected = collate([pil[it] for it in items], pad_to=18)
    got = device.collate([device[it] for it in items])
    flips = {device[it]["crop"][3] for it in items}
    assert flips == ({0, 1} if train else {0}), "both flips are drawn in training, none in evaluation"
    for key in ("captions", "cap_lens", "class_ids", "caption_index"):
        assert torch.equal(got[key], expected[key]), key
    assert got["keys"] == expected["keys"]
    assert [x.shape for x in got["images"]] == [x.shape for x in expected["images"]]
    for small, ref in zip(got["images"], expected["images"]):  # on CPU, torch's uint8 resize is PIL's to the bit
        assert small.is_contiguous() and torch.equal(small, ref)
    # The GPU's path resizes in float: PIL's fixed-point 8-bit arithmetic is a rounding away.
    crops = device.images.crops([device[it]["crop"] for it in items], 32)
    for small, ref in zip(pyramid(crops, pil.sizes, integer=False)[:-1], expected["images"][:-1]):
        diff = (small - ref).abs()
        assert float(diff.max()) <= GREY_LEVEL + 1e-6 and float(diff.mean()) < 0.2 * GREY_LEVEL


def test_refuses_images_that_do_not_fit_the_free_memory(cub_root, monkeypatch):
    pil = TextImageDataset(cub_root, "cub", "train", captions_per_image=10, words_num=18, image_size=32)
    monkeypatch.setattr(on_device, "free_memory", lambda device: 1000)
    with pytest.raises(DataError, match=r"data.on_device: the 8 train images need .* GiB on cpu, more than half of its"):
        OnDeviceDataset(pil, torch.device("cpu"))


@pytest.mark.slow
def test_damsm_on_device_trains_as_the_pil_loader_and_resumes_exactly(synthetic_root, tmp_path):
    # The DAMSM sees the final stage only, which the two loaders make identically: the runs are twins.
    pil = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "pil", "damsm.epochs=1"), progress=False)
    on = [tiny_config(synthetic_root, tmp_path / d, "data.on_device=true") for d in ("full", "part")]
    full = damsm.train_damsm(on[0], progress=False)
    on[1].damsm.max_steps = 4
    damsm.train_damsm(on[1], progress=False)
    on[1].damsm.max_steps = None
    resumed = damsm.train_damsm(on[1], resume=tmp_path / "part" / "latest.pt", progress=False)
    assert resumed["step"] == full["step"] == 2 * pil["step"] == 18
    _assert_same(_final_state(tmp_path / "full" / "latest.pt"), _final_state(tmp_path / "part" / "latest.pt"))
    twin = damsm.train_damsm(tiny_config(synthetic_root, tmp_path / "twin", "damsm.epochs=1", "data.on_device=true"),
                             progress=False)
    assert twin["param_checksum"] == pil["param_checksum"]


@pytest.mark.slow
def test_gan_on_device_trains_as_the_pil_loader_and_resumes_exactly(synthetic_root, damsm_checkpoint, tmp_path):  # noqa: F811
    extra = ("gan.epochs=1", "data.on_device=true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pil = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "pil", "gan.epochs=1"),
                            progress=False)
        full = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "full", *extra), progress=False)
        gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", *extra, "gan.max_steps=4"),
                      progress=False)
        resumed = gan.train_gan(tiny_gan_config(synthetic_root, damsm_checkpoint, tmp_path / "part", *extra),
                                resume=tmp_path / "part" / "latest.pt", progress=False)
    assert resumed["step"] == full["step"] == 9 and resumed["param_checksum"] == full["param_checksum"]
    assert full["param_checksum"] == pil["param_checksum"], "on CPU the two loaders' batches are equal"
    assert all(torch.isfinite(torch.tensor(full[k])) for k in ("G", "D0", "D1"))
