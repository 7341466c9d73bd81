"""Package-level promises: the command line answers, and nothing in the package can download."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import kernels

ROOT = Path(__file__).resolve().parents[1]


def test_cli_info_reports_versions_and_kernel_mode():
    env = {k: v for k, v in os.environ.items() if k != "ATTNGAN_FAST_AUTOTUNE"}
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=env)
    facts = json.loads(out.stdout)
    assert facts["torch"] == torch.__version__
    assert facts["cuda_available"] == torch.cuda.is_available()
    assert isinstance(facts["triton_interpreter"], bool) and facts["autotune"] is True
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**env, "ATTNGAN_FAST_AUTOTUNE": "0"})
    assert json.loads(out.stdout)["autotune"] is False
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**env, "ATTNGAN_FAST_AUTOTUNE": "maybe"})
    assert json.loads(out.stdout)["autotune"].startswith("invalid: ATTNGAN_FAST_AUTOTUNE must be")


def test_cli_without_command_prints_help_and_fails():
    out = subprocess.run([sys.executable, "-m", "attngan_fast"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "usage: attngan-fast" in out.stderr


def test_kernels_import_alone_and_export_the_contract():
    for name in ("damsm_word_scores", "damsm_word_scores_ref", "word_attention", "word_attention_ref"):
        assert callable(getattr(kernels, name))


# Calls that fetch from the network: none may appear in our code (weights and data come from local
# files the user names).
NETWORK_CALLS = re.compile(
    r"load_state_dict_from_url|download_url|urlretrieve|urlopen|requests\.|torch\.hub\.|hf_hub_download"
    r"|pretrained=True|weights=\"DEFAULT\"|nltk\.download|http://|https://"
)


def test_nothing_in_the_package_downloads():
    offenders = []
    for package in ("attngan_fast", "kernels"):
        for path in (ROOT / package).rglob("*.py"):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if NETWORK_CALLS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "network access in package code:\n" + "\n".join(offenders)


def test_the_command_line_makes_torchs_cpu_threads_wait_without_spinning():
    # Spinning OpenMP threads made a 2-core run on a shared machine many times slower; libgomp's own
    # report (OMP_DISPLAY_ENV) shows the policy it took: spin count 0 = sleep at once.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    for module in ("attngan_fast", "attngan_fast.cli"):
        out = subprocess.run([sys.executable, "-m", module, "info"], capture_output=True, text=True, check=True,
                             cwd=ROOT, env=env)
        assert "GOMP_SPINCOUNT = '0'" in out.stderr and json.loads(out.stdout)["omp_wait_policy"] == "PASSIVE"
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**env, "OMP_WAIT_POLICY": "ACTIVE"})  # the user's choice wins
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stderr and json.loads(out.stdout)["omp_wait_policy"] == "ACTIVE"
