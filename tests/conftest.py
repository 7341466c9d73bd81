"""Test set-up (the repository's conftest.py has already chosen the Triton interpreter when there is
no CUDA device). Every kernel output is NaN-poisoned; every test gets a fresh, logged seed."""

import os

import pytest
import torch

import kernels
import kernels._runtime as runtime


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
    """A small synthetic-birds dataset shared by the tests that train (96 images, 32 px)."""
    from attngan_fast.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synthetic-birds")
    synthesize(root, images=96, size=32, seed=3, test_fraction=0.25, progress=False)
    return root
