"""Package-level promises: the command line answers, and nothing in the package can download."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attngan_fast import kernels
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


def test_openmp_threads_sleep_while_waiting_only_when_the_machine_is_busy():
    from attngan_fast.cli import BUSY_LOAD, openmp_wait_policy

    assert openmp_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, 9.0) == (None, "set by the user")
    assert openmp_wait_policy({}, BUSY_LOAD)[0] == "PASSIVE"
    assert openmp_wait_policy({}, 7.5)[0] == "PASSIVE" and "7.50" in openmp_wait_policy({}, 7.5)[1]
    assert openmp_wait_policy({}, None)[0] == "PASSIVE"  # no load reported: the safe choice
    assert openmp_wait_policy({}, 0.0)[0] is None and "quiet" in openmp_wait_policy({}, 0.0)[1]


def test_the_command_line_sets_the_wait_policy_before_torch_loads():
    # libgomp's own report (OMP_DISPLAY_ENV) shows the policy it took: spin count 0 = sleep at once.
    # Which branch a run takes depends on this machine's load; the command says which, and the test
    # checks that libgomp took exactly that.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    for module in ("attngan_fast", "attngan_fast.cli"):
        out = subprocess.run([sys.executable, "-m", module, "info"], capture_output=True, text=True, check=True,
                             cwd=ROOT, env=env)
        facts = json.loads(out.stdout)
        if "busy" in facts["omp_wait_policy_reason"]:
            assert facts["omp_wait_policy"] == "PASSIVE" and "GOMP_SPINCOUNT = '0'" in out.stderr
        else:
            assert "quiet" in facts["omp_wait_policy_reason"], facts
            assert facts["omp_wait_policy"] is None and "GOMP_SPINCOUNT = '0'" not in out.stderr
    quiet = ("import os, runpy, sys; os.getloadavg = lambda: (0.1, 0.1, 0.1); sys.argv = ['attngan-fast', 'info']; "
             "runpy.run_module('attngan_fast', run_name='__main__')")  # the quiet branch, whatever the load
    out = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert json.loads(out.stdout)["omp_wait_policy"] is None and "GOMP_SPINCOUNT = '0'" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**env, "OMP_WAIT_POLICY": "ACTIVE"})  # the user's choice wins
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stderr and json.loads(out.stdout)["omp_wait_policy"] == "ACTIVE"


def _package_folders() -> set[str]:
    """Every package of the repository under its import name: attngan_fast/... and kernels/..., the
    latter installed as attngan_fast.kernels (pyproject.toml's package-dir)."""
    found = set()
    for top, name in (("attngan_fast", "attngan_fast"), ("kernels", "attngan_fast.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *parts)))
    return found


def test_the_wheel_installs_one_top_level_name_and_every_package(tmp_path):
    """The wheel holds `attngan_fast` only (the name `kernels` is Hugging Face's kernel hub), with
    every package folder of the repository in it; installed from the wheel, `import kernels` finds
    nothing of ours and the ops import as attngan_fast.kernels."""
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = wheels.glob("attngan_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"attngan_fast", wheel.name.split("-py")[0] + ".dist-info"}
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == _package_folders()
    assert any(n.startswith("attngan_fast/configs/") and n.endswith(".yaml") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    probe = ("import importlib.util, json; from attngan_fast import kernels; "
             "print(json.dumps([kernels.__file__, importlib.util.find_spec('kernels') is None, "
             "callable(kernels.word_attention)]))")
    path, no_top_level_kernels, callable_op = _printed_json(probe, tmp_path, PYTHONPATH=str(target))
    assert Path(path).is_relative_to(target) and no_top_level_kernels and callable_op


def _printed_json(probe: str, cwd: Path, *flags: str, **env: str):
    """What ``python FLAGS -c probe`` prints as JSON, run in ``cwd`` with ``env`` added to ours."""
    out = subprocess.run([sys.executable, *flags, "-c", probe], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_a_checkout_runs_without_being_installed(tmp_path):
    """``PYTHONPATH=<checkout>`` alone (a machine that cannot reach PyPI to install): the kernels
    import as attngan_fast.kernels from the top-level kernels/ folder, the ops run, and the command
    line answers. ``-S`` keeps this environment's install (its .pth files) out of the way."""
    site_packages = Path(torch.__file__).resolve().parents[1]
    path_alone = os.pathsep.join([str(ROOT), str(site_packages)])
    probe = ("import json, sys, torch; from attngan_fast import kernels; "
             "q, c = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 4); m = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]).bool(); "
             "ctx = kernels.word_attention(q, c, m, impl='reference')[0]; "
             "ref = kernels.word_attention_ref(q.double(), c.double(), m)[0]; "
             "print(json.dumps([kernels.__file__, 'kernels' in sys.modules, (ctx.double() - ref).abs().max().item()]))")
    path, second_name, error = _printed_json(probe, tmp_path, "-S", PYTHONPATH=path_alone)
    assert Path(path) == ROOT / "kernels" / "__init__.py" and not second_name and error < 1e-5
    out = subprocess.run([sys.executable, "-S", "-m", "attngan_fast", "info"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": path_alone})
    assert out.returncode == 0 and json.loads(out.stdout)["torch"] == torch.__version__, out.stderr[-2000:]

    # A second checkout on PYTHONPATH, beside this environment's install: its package takes its own
    # kernels, never the installed copy's, and registers its finder once.
    other = tmp_path / "other-checkout"
    for name in ("attngan_fast", "kernels"):
        shutil.copytree(ROOT / name, other / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", other)
    probe = ("import importlib, json, sys; import attngan_fast; from attngan_fast import kernels; "
             "importlib.reload(attngan_fast); "
             "print(json.dumps([attngan_fast.__file__, kernels.__file__, "
             "sum(getattr(f, 'attngan_fast_checkout', False) for f in sys.meta_path)]))")
    package, kernels_file, finders = _printed_json(probe, tmp_path, PYTHONPATH=str(other))
    assert Path(package).is_relative_to(other) and Path(kernels_file) == other / "kernels" / "__init__.py"
    assert finders == 1


def test_the_kernels_folder_refuses_a_second_import_name():
    # Importing kernels/ as the top-level `kernels` (the repository root on sys.path) would register
    # the custom ops twice: it stops with the name to use instead.
    out = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "from attngan_fast import kernels" in out.stderr


def test_the_paper_row_script_names_the_files_it_misses(tmp_path):
    """scripts/cub_paper_row.sh checks the files listed at its top before any work, one line each."""
    script = ROOT / "scripts" / "cub_paper_row.sh"
    env = {**os.environ, "DATA": str(tmp_path / "birds"), "INCEPTION": str(tmp_path / "inception.pth"),
           "RUNS": str(tmp_path / "runs")}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert f"missing {tmp_path / 'birds'}/CUB_200_2011/images.txt" in out.stderr
    assert not (tmp_path / "runs").exists()
    # IS/FID's weights too, unless FIDELITY is set empty: a mistyped path must not skip them silently
    for name in ("birds/CUB_200_2011/images.txt", "birds/train/filenames.pickle", "birds/test/filenames.pickle",
                 "inception.pth"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "FIDELITY": str(tmp_path / "tf-inception.pth")})
    assert out.returncode == 2 and f"missing {tmp_path / 'tf-inception.pth'}" in out.stderr
    assert "FIDELITY= reports R-precision only" in out.stderr and not (tmp_path / "runs").exists()


def test_the_paper_row_script_resumes_each_step_when_run_again(tmp_path):
    """Run twice with a stand-in attngan-fast that records its calls and writes what each command
    writes: the second run resumes both trainings and leaves the finished report alone."""
    (tmp_path / "birds" / "CUB_200_2011").mkdir(parents=True)
    for name in ("CUB_200_2011/images.txt", "train/filenames.pickle", "test/filenames.pickle"):
        (tmp_path / "birds" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "birds" / name).write_text("")
    (tmp_path / "inception.pth").write_text("")
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "bin" / "attngan-fast"
    stub.parent.mkdir()
    stub.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
out=""; prev=""
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case $1 in
  pretrain-damsm) mkdir -p "$out" && touch "$out/latest.pt" "$out/damsm_epoch0200.pt" ;;
  train) mkdir -p "$out" && touch "$out/latest.pt" ;;
  evaluate) echo '{{}}' > "$out" ;;
esac
""")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "DATA": str(tmp_path / "birds"),
           "INCEPTION": str(tmp_path / "inception.pth"), "FIDELITY": "", "RUNS": str(tmp_path / "runs")}
    script = ROOT / "scripts" / "cub_paper_row.sh"
    for _ in range(2):
        out = subprocess.run(["bash", str(script), "--amp", "bf16"], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["data", "pretrain-damsm", "train", "evaluate",
                                                   "data", "pretrain-damsm", "train"]
    runs = tmp_path / "runs"
    assert "--resume" not in lines[1] and f"--resume {runs}/damsm-bird/latest.pt --amp bf16" in lines[5]
    assert f"--resume {runs}/attngan2-bird/latest.pt --amp bf16" in lines[6]
    assert "--inception-weights" not in lines[3] and "made before" in out.stdout


def test_every_command_in_the_readme_and_the_docs_parses():
    """The commands in the README's and the docs' code blocks (their ``attngan-fast`` lines, continuations
    joined) are ones the command line accepts: a renamed flag fails here, not in a newcomer's terminal.
    (Results files keep the commands as they were run on their day.)"""
    import shlex

    from attngan_fast.cli import build_parser

    commands = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.DOTALL)
        lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
        lines = [line.strip().removeprefix("$ ") for line in lines]  # a shell prompt, where a page shows one
        commands += [(page.name, shlex.split(line.split("  #")[0])[1:]) for line in lines
                     if line.startswith("attngan-fast ")]
    assert len([c for page, c in commands if page == "README.md"]) >= 10 and len(commands) >= 30, commands
    parser = build_parser()
    for page, args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:  # argparse has printed why
            raise AssertionError(f"{page}: attngan-fast {shlex.join(args)}") from None


@pytest.mark.parametrize("page", ["README.md", "docs/kernels.md"])
def test_the_kernel_snippets_run_as_printed_and_their_shapes_hold(page):
    """The ops' snippets are the first code a kernel user copies: each runs, and the shapes its comments
    give hold."""
    (snippet,) = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.DOTALL)
    scope: dict = {}
    exec(compile(snippet, page, "exec"), scope)  # noqa: S102 - the project's own docs
    assert scope["R"].shape == (48, 48) and scope["R"].dtype == torch.float32 and torch.isfinite(scope["R"]).all()
    assert scope["ctx"].shape == (20, 32, 64, 64) and scope["maps"].shape == (20, 18, 64, 64)
    if "attn" in scope:
        assert scope["attn"].shape == (48, 18, 289)
    # each pixel's weights over its own sample's valid words sum to 1, padding words get none
    torch.testing.assert_close(scope["maps"].sum(1), torch.ones(20, 64, 64))
    assert (scope["maps"][scope["pad"]] == 0).all()  # (padding words, H, W)
