"""Test set-up (the repository's conftest.py has already chosen the Triton interpreter when there is
no CUDA device). Every kernel output is NaN-poisoned; every test gets a fresh, logged seed."""

import os
import warnings

import pytest
import torch

from attngan_fast import kernels
import attngan_fast.kernels._runtime as runtime


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every output buffer a launcher allocates starts as NaN, so an element left unwritten fails."""
    monkeypatch.setattr(runtime, "POISON_OUTPUTS", True)


@pytest.fixture(autouse=True)
def fresh_seed():
    """A fresh, logged seed per test: inputs differ from run to run, and a failure can be replayed with
    ATTNGAN_TEST_SEED."""
    seed = int(os.environ.get("ATTNGAN_TEST_SEED", torch.seed() % 2**31))
    torch.manual_seed(seed)
    yield seed


def pytest_report_header(config):
    mode = "interpreter (CPU tensors)" if kernels.interpreter_active() else "compiled"
    return f"attngan-fast: triton kernels {mode}; cuda={torch.cuda.is_available()}; seed via ATTNGAN_TEST_SEED"


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None and "fresh_seed" in item.funcargs:
        item.add_report_section("call", "seed", f"ATTNGAN_TEST_SEED={item.funcargs['fresh_seed']}")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic-birds dataset shared by the tests that train (96 images, 32 px). Its captions
    are tokenized with nltk: on a machine without it (a GPU image, say) those tests skip and say why."""
    pytest.importorskip("nltk", reason="nltk is not installed: the captions of the training tests need its tokenizer")
    from attngan_fast.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synthetic-birds")
    synthesize(root, images=96, size=32, seed=3, test_fraction=0.25, progress=False)
    return root


@pytest.fixture(scope="session")
def trained(synthetic_root, tmp_path_factory):
    """A tiny DAMSM and a tiny 2-stage generator trained for a few steps on the synthetic birds."""
    from attngan_fast.config import load_config
    from attngan_fast.train import gan
    from attngan_fast.train.damsm import train_damsm

    base = tmp_path_factory.mktemp("models")
    common = [f"data.root={synthetic_root}", "data.workers=0", "text_encoder.embedding_dim=16",
              "text_encoder.hidden_dim=16"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_damsm(load_config("synthetic", common + [
            f"damsm.out_dir={base / 'damsm'}", "data.image_size=32", "image_encoder.compact_width=8",
            "damsm.batch_size=8", "damsm.epochs=1", "damsm.max_minutes=null", "runtime.eval_batches=1"]), progress=False)
        gan.train_gan(load_config("synthetic", common + [
            f"gan.damsm={base / 'damsm' / 'latest.pt'}", f"gan.out_dir={base / 'gan'}", "gan.stages=2",
            "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.batch_size=8", "gan.max_steps=3",
            "gan.max_minutes=null"]), progress=False)
    return base / "damsm" / "latest.pt", base / "gan" / "latest.pt"


@pytest.fixture(scope="session")
def fidelity_weights(tmp_path_factory):
    """A torch-fidelity Inception weights file made here: constructed with loading stubbed (nothing
    is downloaded), convolutions re-initialised (Kaiming) so that features carry signal."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    original_load, original_url = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *a, **k: None
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = original_load, original_url
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("fidelity") / "inception-test.pth"
    torch.save(model.state_dict(), path)
    return path
