"""Every user error is one clear line (no traceback), warnings are plain lines, ``python -m
attngan_fast.cli`` runs the command line, and under torchrun only rank 0 prints the result."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attngan_fast.cli import main as cli
from attngan_fast.generate import CaptionError, encode_captions
from attngan_fast.text import Vocabulary, words_as_written
from host_sync import free_port

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, args, expected: str) -> str:
    code = cli(args)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.startswith("attngan-fast: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--n-per-caption", "0"], "--n-per-caption must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    (["--device", "gpu"], "--device 'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    (["--seed", "-1"], "--seed must be between 0 and 2^63 - 1, got -1"),
    (["--seed", str(2**63)], f"--seed must be between 0 and 2^63 - 1, got {2**63}"),
    (["--n-per-caption", "1000000000"], "1 caption(s) x --n-per-caption 1,000,000,000 would be 1,000,000,000 images; "
                                        "one command makes at most 100,000"),
])
def test_generate_flag_errors(trained, tmp_path, capsys, flags, expected):
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"), "a bird", *flags],
                   expected)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_line(trained, synthetic_root, tmp_path, capsys):
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"), "a bird",
                            "--device", "cuda"], "--device cuda: no CUDA device is available on this machine")
    one_line_error(capsys, ["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--quiet",
                            "--out", str(tmp_path / "d"), "--device", "cuda"], "no CUDA device is available")


def test_generate_into_an_existing_file_and_from_a_text_file(trained, tmp_path, capsys):
    taken = tmp_path / "samples"
    taken.write_text("my notes")
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(taken), "a bird"],
                   f"--out {taken} is a file, not a folder")
    assert taken.read_text() == "my notes"
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(taken / "sub" / "o"), "a bird"],
                   f"--out {taken / 'sub' / 'o'} cannot be made: {taken} is a file, not a folder")
    one_line_error(capsys, ["generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "a bird"],
                   f"{tmp_path} is a folder, not a checkpoint file")
    captions = tmp_path / "captions.txt"
    captions.write_bytes("a red bird\n".encode() + b"a bird in caf\xe9 colours\n")  # latin-1, not UTF-8
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"),
                            "--captions", str(captions)], f"--captions {captions} line 2 is not UTF-8 text (byte 0xe9)")
    captions.write_bytes(b"\xef\xbb\xbfab\n\xe9")  # a byte-order mark first: the byte and line are still right
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"),
                            "--captions", str(captions)], f"--captions {captions} line 2 is not UTF-8 text (byte 0xe9)")
    assert not (tmp_path / "o").exists()
    for text in ("hello world\n", "every bird\n", "# notes\n"):  # KeyError, IndexError, UnpicklingError inside torch
        notes = tmp_path / "notes.txt"
        notes.write_text(text)
        one_line_error(capsys, ["generate", "--checkpoint", str(notes), "--out", str(tmp_path / "o"), "a bird"],
                       f"{notes} is not a readable checkpoint")


def test_a_second_generation_into_the_same_folder_is_refused_or_replaces_the_first(trained, tmp_path, capsys):
    """--out gets a generation.json listing its images: a second generation there would mix two sets,
    so it is refused; --overwrite removes exactly the listed files (a user's file stays)."""
    out = tmp_path / "o"
    base = ["generate", "--checkpoint", str(trained[1]), "--out", str(out), "--quiet"]
    assert cli(base + ["--n-per-caption", "2", "a red bird", "a blue bird"]) == 0
    capsys.readouterr()
    first = json.loads((out / "generation.json").read_text())
    assert first["complete"] and first["captions"] == ["a red bird", "a blue bird"] and first["seed"] == 0
    assert sorted(first["files"] + ["generation.json"]) == sorted(p.name for p in out.iterdir())
    (out / "my_notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    one_line_error(capsys, base + ["--seed", "5", "a green bird"],
                   f"--out {out} holds an earlier generation (generation.json): give another --out, or --overwrite")
    assert sorted(p.name for p in out.iterdir()) == before
    assert cli(base + ["--seed", "5", "--overwrite", "a green bird"]) == 0
    second = json.loads((out / "generation.json").read_text())
    assert second["complete"] and second["captions"] == ["a green bird"] and second["seed"] == 5
    assert sorted(second["files"] + ["generation.json", "my_notes.txt"]) == sorted(p.name for p in out.iterdir())
    assert all(name.startswith("c000_a_green_bird") for name in second["files"])


def test_evaluate_refuses_zero_images_and_warns_below_the_protocol(trained, synthetic_root, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data", str(synthetic_root),
            "--quiet", "--out", str(tmp_path / "r.json")]
    one_line_error(capsys, base + ["--n-images", "0"], "--n-images must be at least 1, got 0")
    # A refusal of the data is its one line, not after the warning about too few images
    missing = [*base[:6], str(tmp_path / "no-birds"), *base[7:], "--n-images", "5"]
    one_line_error(capsys, missing, f"--data {tmp_path / 'no-birds'} does not exist")
    assert cli(base + ["--n-images", "5"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "too few" in line]
    assert warning == ["attngan-fast: warning: --n-images 5 is too few for the R-precision protocol (10 folds "
                       "need at least 100 images, 10 per fold; the paper's figures use 30,000): the numbers will be "
                       "noisy"], err
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == 5
    # More images than (test image, caption) pairs: every pair is generated several times, and said so.
    pairs = json.loads((tmp_path / "r.json").read_text())["r_precision"]
    assert cli(base + ["--n-images", "300", "--overwrite"]) == 0
    repeat = [line for line in capsys.readouterr().err.splitlines() if "is more than the" in line]
    assert len(repeat) == 1 and "(test image, caption) pairs" in repeat[0], (repeat, pairs)


def test_evaluate_never_takes_files_that_are_not_its_own(trained, synthetic_root, tmp_path, capsys):
    """A probe saw an evaluation delete a user's file kept in its images folder. Now: refused before any
    work, and the folder untouched; its own PNGs alone are replaced. An --out under a file is one line."""
    base = ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data", str(synthetic_root),
            "--quiet", "--n-images", "2"]
    mine = tmp_path / "r_images" / "generated" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("precious")
    one_line_error(capsys, base + ["--out", str(tmp_path / "r.json")],
                   f"{tmp_path / 'r_images'}, where this evaluation keeps its images, holds files that are not an "
                   f"evaluation's (e.g. {mine})")
    assert mine.read_text() == "precious"
    mine.unlink()
    (mine.parent / "000007.png").write_bytes(b"an earlier evaluation's image")  # its own: replaced
    assert cli(base + ["--out", str(tmp_path / "r.json")]) == 0
    assert not (mine.parent / "000007.png").exists() and len(list(mine.parent.glob("*.png"))) == 2
    capsys.readouterr()
    holiday = mine.parent / "holiday.png"  # a PNG, but not one an evaluation names: not its to remove
    holiday.write_bytes(b"png")
    one_line_error(capsys, base + ["--out", str(tmp_path / "r.json"), "--overwrite"], f"(e.g. {holiday})")
    assert holiday.read_bytes() == b"png"
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, base + ["--out", str(tmp_path / "afile" / "r.json")],
                   f"--out {tmp_path / 'afile' / 'r.json'} cannot be made: {tmp_path / 'afile'} is a file, not a folder")
    one_line_error(capsys, base + ["--out", str(tmp_path / "s.json"), "--inception-weights", str(tmp_path)],
                   f"--inception-weights {tmp_path} is a folder: give torch-fidelity's")


def test_evaluate_checks_the_inception_weights_before_generating(trained, synthetic_root, tmp_path, capsys):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    base = ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data", str(synthetic_root),
            "--n-images", "20", "--quiet", "--out", str(tmp_path / "r.json")]
    one_line_error(capsys, base + ["--inception-weights", str(wrong)],
                   f"--inception-weights {wrong} is not torch-fidelity's Inception weights")
    one_line_error(capsys, base + ["--inception-weights", str(trained[0])],
                   f"--inception-weights {trained[0]} is not torch-fidelity's Inception weights")
    one_line_error(capsys, base + ["--inception-weights", str(tmp_path / "missing.pth")],
                   f"--inception-weights {tmp_path / 'missing.pth'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.pth"]  # no image was generated, no report


class _RunsCode:
    """Pickled as a call of ``Path.touch`` on a marker file: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_weights_file_that_asks_to_run_code_runs_nothing(trained, synthetic_root, tmp_path, capsys):
    """torch-fidelity itself unpickles its weights file with code allowed: every path that hands it one
    (evaluate, the training hook) reads the user's file with weights_only=True first."""
    marker = tmp_path / "RAN"
    evil = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _RunsCode(marker)}, evil)
    one_line_error(capsys, ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data",
                            str(synthetic_root), "--inception-weights", str(evil), "--out", str(tmp_path / "r.json")],
                   f"--inception-weights {evil} is not torch-fidelity's Inception weights (not a torch.save file")
    one_line_error(capsys, ["train", "--config", "synthetic", "--damsm", str(trained[0]), "--data", str(synthetic_root),
                            "--quiet", "--out", str(tmp_path / "g"), "--set", "gan.eval_every=1",
                            "--set", f"gan.eval_inception_weights={evil}"],
                   f"gan.eval_inception_weights {evil} is not torch-fidelity's Inception weights")
    assert not marker.exists() and not (tmp_path / "g").exists()


def test_a_weights_file_that_loads_but_is_not_the_published_one_is_named_so(fidelity_weights, monkeypatch):
    """The fixture's weights have the right architecture but random values: the check warns, and the
    report names them as unverified; a file with the published SHA-256 prefix is named as the real one."""
    from attngan_fast import evaluate

    with pytest.warns(UserWarning, match="not its published file"):
        evaluate.check_inception_weights(fidelity_weights)
    identity = evaluate.inception_weights_identity(fidelity_weights)
    assert not identity["published"] and identity["name"] == evaluate.UNVERIFIED_NAME
    monkeypatch.setattr(evaluate, "PUBLISHED_SHA256_PREFIX", identity["sha256"][:8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate.check_inception_weights(fidelity_weights)
    identity = evaluate.inception_weights_identity(fidelity_weights)
    assert identity["published"] and identity["name"] == evaluate.PUBLISHED_NAME


def test_impl_triton_where_the_kernels_cannot_run_is_one_line_before_any_work(synthetic_root, tmp_path, capsys,
                                                                             monkeypatch):
    """On a CPU without the interpreter (a user's machine: only the tests set TRITON_INTERPRET), the ops
    would raise at the first step, after the run folder was made."""
    from attngan_fast import kernels

    monkeypatch.setattr(kernels, "interpreter_active", lambda: False)
    damsm = tmp_path / "damsm.pt"
    damsm.write_bytes(b"checked later than the impl")
    base = ["--config", "synthetic", "--data", str(synthetic_root), "--quiet", "--out", str(tmp_path / "run"),
            "--impl", "triton"]
    for args in (["pretrain-damsm", *base], ["train", *base, "--damsm", str(damsm)]):
        one_line_error(capsys, args, "runtime.impl=triton (--impl triton) runs the Triton kernels on a CUDA device; "
                                     "this run is on the CPU: use --impl auto")
    assert not (tmp_path / "run").exists()


def test_training_config_errors_are_one_line(synthetic_root, tmp_path, capsys):
    for flag, expected in (("damsm.batch_size=1", "damsm.batch_size must be at least 2, got 1"),
                           ("damsm.batch_size=-4", "damsm.batch_size must be at least 1, got -4"),
                           ("data.words_num=0", "data.words_num must be at least 1, got 0")):
        one_line_error(capsys, ["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--quiet",
                                "--out", str(tmp_path / "d"), "--set", flag], expected)
    assert not (tmp_path / "d").exists()


def test_a_missing_synthetic_root_says_how_to_make_it(tmp_path, capsys):
    missing = tmp_path / "birds"
    one_line_error(capsys, ["pretrain-damsm", "--config", "synthetic", "--data", str(missing), "--quiet",
                            "--out", str(tmp_path / "d")], f"make them with: attngan-fast data synth --out {missing}")


def test_unknown_and_non_ascii_words_are_one_plain_warning_line(trained, tmp_path, capsys):
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"),
                "this bird has röd wings and a 红 zebra belly"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "vocabulary" in line]
    assert lines == ["attngan-fast: warning: words not in the vocabulary were dropped: "
                     "'this bird has röd wings and a 红 zebra belly': röd, 红, zebra"], err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_words_are_read_as_training_read_its_captions_and_the_rest_dropped_by_name():
    """Training's tokenizer keeps ASCII letters and digits ('très' was trained on as 'trs'): the same
    caption gets the same ids at generation, and the warnings say which words were read so and which
    were dropped, each as written."""
    vocab = Vocabulary.build([["a", "bird", "red", "trs", "wings"]])
    with pytest.warns(UserWarning) as seen:
        ids, dropped = encode_captions(["a très red bird with 红 wings"], vocab, 18)
    assert vocab.decode(ids[0]) == ["a", "trs", "red", "bird", "wings"]
    assert dropped == {"a très red bird with 红 wings": ["with", "红"]}
    assert [str(w.message) for w in seen] == [
        "read as training read its captions (non-ASCII characters left out): 'très' as 'trs'",
        "words not in the vocabulary were dropped: 'a très red bird with 红 wings': with, 红"]
    from attngan_fast.text import tokenize  # what data prepare and the loaders read captions with

    assert tokenize("a très red bird") == ["a", "trs", "red", "bird"]


def test_generate_shows_progress_over_many_captions(trained, tmp_path, capsys):
    captions = [f"a bird with {c} wings" for c in ("red", "blue", "green", "black", "white")] * 8
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"), "--batch-size", "8",
                *captions]) == 0
    err = capsys.readouterr().err
    assert "generating" in err and "40/40" in err, err
    assert cli(["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "q"), "--quiet", *captions]) == 0
    assert "generating" not in capsys.readouterr().err


def test_a_refused_pickle_names_its_file(tmp_path, capsys):
    from attngan_fast.safe_pickle import UnsafePickleError, load_plain_pickle

    path = tmp_path / "filenames.pickle"
    path.write_bytes(pickle.dumps(os.system))
    with pytest.raises(UnsafePickleError, match=f"^{path}: refusing to load posix.system"):
        load_plain_pickle(path)


def test_info_says_which_path_the_ops_take():
    out = subprocess.run([sys.executable, "-m", "attngan_fast", "info"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    ops = json.loads(out.stdout)["ops"]
    if torch.cuda.is_available():
        assert ops.startswith("Triton kernels on CUDA tensors"), ops
    else:
        assert ops.startswith("on CPU tensors the DAMSM score by the reference (plain PyTorch), the word attention "
                              "by PyTorch's scaled_dot_product_attention for channels_last features and the "
                              "reference for nchw features (no CUDA device"), ops


def test_python_dash_m_cli_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "attngan_fast.cli", "info"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["torch"] == torch.__version__, out
    out = subprocess.run([sys.executable, "-m", "attngan_fast.cli"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "usage: attngan-fast" in out.stderr


@pytest.mark.slow
def test_under_torchrun_only_rank_zero_prints_the_result(synthetic_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "attngan_fast.cli",
           "pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--out", str(tmp_path / "d"),
           "--quiet", "--set", "data.image_size=32", "--set", "text_encoder.hidden_dim=16",
           "--set", "image_encoder.compact_width=8", "--set", "damsm.batch_size=8", "--set", "damsm.max_steps=2",
           "--set", "runtime.eval_batches=1", "--device", "cpu"]
    # TMPDIR: torchrun leaves a torchelastic_* log folder in the temporary folder even after a clean run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count('"checkpoint"') == 1 and out.stdout.count("done: ") == 1, out.stdout
    # max_steps stopped it before its epochs: said once, with a command that runs as many processes again
    assert out.stderr.count("stopped at damsm.max_steps at step 2") == 1, out.stderr[-3000:]
    assert "to go on: raise damsm.max_steps, then torchrun --nproc_per_node=2 -m attngan_fast pretrain-damsm" in out.stderr


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(trained, synthetic_root, tmp_path, capsys):
    taken = tmp_path / "my.yaml"
    taken.write_text("notes: keep me\n")
    for args in (["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--quiet"],
                 ["train", "--config", "synthetic", "--data", str(synthetic_root), "--damsm", str(trained[0]), "--quiet"],
                 ["demo", "--quiet", "--images", "20"],
                 ["data", "synth", "--images", "20"]):
        one_line_error(capsys, args + ["--out", str(taken)], f"{taken} is a file, not a folder: give another --out")
    assert taken.read_text() == "notes: keep me\n"
    # evaluate's --out is the report: a folder there is refused before any image is generated
    folder = tmp_path / "reports"
    folder.mkdir()
    one_line_error(capsys, ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data",
                            str(synthetic_root), "--quiet", "--n-images", "20", "--out", str(folder)],
                   f"--out {folder} is a folder, not a file")
    assert list(folder.iterdir()) == [] and not (tmp_path / "reports_images").exists()


def test_wrong_inception_weights_for_damsm_pretraining_are_one_line(synthetic_root, tmp_path, capsys):
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    not_inception = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, not_inception)
    base = ["pretrain-damsm", "--config", "bird", "--data", str(synthetic_root), "--quiet", "--out", str(tmp_path / "d"),
            "--set", "data.workers=0"]
    one_line_error(capsys, base + ["--inception-weights", str(page)], f"--inception-weights {page} is not a torch weights file")
    one_line_error(capsys, base + ["--inception-weights", str(not_inception)],
                   "lacks 470 of the Inception-v3 backbone's tensors")
    # A named file must exist even where the encoder has no Inception backbone (a typo is not silent)...
    synthetic = ["pretrain-damsm", "--config", "synthetic", "--data", str(synthetic_root), "--quiet",
                 "--out", str(tmp_path / "s")]
    one_line_error(capsys, synthetic + ["--inception-weights", str(tmp_path / "nope.pth")],
                   f"image_encoder.inception_weights (--inception-weights): {tmp_path / 'nope.pth'} does not exist")
    # ...and an existing one there is said to be unused.
    assert cli(synthetic + ["--inception-weights", str(page), "--set", "damsm.max_steps=1", "--set",
                            "runtime.eval_batches=1", "--set", "data.workers=0"]) == 0
    assert f"warning: --inception-weights {page} is not used: image_encoder.kind is 'compact'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_word_cap_below_one_is_one_line(trained, synthetic_root, tmp_path, capsys, value):
    one_line_error(capsys, ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data",
                            str(synthetic_root), "--quiet", "--n-images", "20", "--out", str(tmp_path / "r.json"),
                            "--words-num", value], f"--words-num must be at least 1 (or left out for the protocol's cap), "
                                                   f"got {value}")
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"), "a bird",
                            "--words-num", value], f"--words-num must be at least 1, got {value}")


def test_smaller_mistakes_are_one_named_line(trained, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("damsm:\n  lr: [0.1\n")
    one_line_error(capsys, ["pretrain-damsm", "--config", str(broken), "--out", str(tmp_path / "d")],
                   f"{broken} is not valid YAML: ")
    one_line_error(capsys, ["train", "--config", "synthetic", "--set", "gan.lambda_damsm=-1", "--out",
                            str(tmp_path / "g")], "gan.lambda_damsm must be at least 0, got -1")
    one_line_error(capsys, ["generate", "--checkpoint", str(trained[1]), "--out", str(tmp_path / "o"),
                            "--captions", str(tmp_path / "none.txt")], f"--captions {tmp_path / 'none.txt'}: no such file")
    missing = tmp_path / "birds"
    one_line_error(capsys, ["evaluate", "--checkpoint", str(trained[1]), "--damsm", str(trained[0]), "--data",
                            str(missing), "--quiet", "--n-images", "100", "--out", str(tmp_path / "r.json")],
                   f"make them with: attngan-fast data synth --out {missing}")


def test_bad_synthetic_data_flags_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "birds")
    one_line_error(capsys, ["data", "synth", "--out", out, "--images", "0"], "--images must be at least 2, got 0")
    one_line_error(capsys, ["data", "synth", "--out", out, "--size", "8"], "--size must be between 16 and 1024 pixels, got 8")
    # a probe's 100,000 px took ~24 GB before the OOM killer ended it; a negative seed was numpy's traceback
    one_line_error(capsys, ["data", "synth", "--out", out, "--size", "100000"], "--size must be between 16 and 1024")
    one_line_error(capsys, ["data", "synth", "--out", out, "--seed", "-1"], "--seed must be between 0 and 2^63 - 1")
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "demo"), "--size", "100000"], "--size must be between 16")
    one_line_error(capsys, ["data", "synth", "--out", out, "--test-fraction", "2"],
                   "--test-fraction must be between 0 and 1 (exclusive), got 2.0")
    assert not (tmp_path / "birds").exists() and not (tmp_path / "demo").exists()


def test_a_folder_dataset_read_as_cub_says_which_layout_it_is(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a bird"}\n')
    one_line_error(capsys, ["data", "prepare", "--root", str(tmp_path / "mine")],
                   "holds a metadata file, not the CUB layout: it is a folder dataset (--layout folder")


def test_the_config_flag_names_every_preset(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "a preset (attndcgan, attngan1, attngan2, bird, coco, synthetic) or a YAML file" in help_text


def test_an_error_raised_in_a_loader_worker_is_its_own_one_line_message():
    """torch re-raises a worker's exception with the worker's traceback folded into the message; the
    command line prints the message the worker raised, as it does for one raised in the main process."""
    from torch.utils.data import DataLoader, Dataset

    from attngan_fast.cli import _own_message
    from attngan_fast.data.layouts import DataError

    class Missing(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError(f"missing image: expected /data/images/{index}.jpg")

    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(Missing(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)
    assert _own_message(caught.value) == "missing image: expected /data/images/0.jpg"
    assert _own_message(DataError("in the main process")) == "in the main process"


@pytest.mark.parametrize("argv, flag", [
    (["train", "--config", "synthetic", "--damsm", "{missing}"], "--damsm"),
    (["pretrain-damsm", "--config", "synthetic", "--resume", "{missing}"], "--resume"),
    (["generate", "--checkpoint", "{missing}", "--out", "g", "a red bird"], "--checkpoint"),
    (["evaluate", "--checkpoint", "{missing}", "--damsm", "{missing}", "--data", ".", "--out", "r.json"],
     "--checkpoint"),
])
def test_a_missing_checkpoint_names_its_flag(tmp_path, capsys, argv, flag):
    missing = str(tmp_path / "nope.pt")
    assert cli([a.format(missing=missing) for a in argv]) == 2
    assert capsys.readouterr().err.strip() == f"attngan-fast: error: {flag} {missing} does not exist"


def test_the_presets_damsm_that_is_not_there_says_what_makes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "--config", "synthetic", "--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist (--damsm, or gan.damsm in the config: `attngan-fast pretrain-damsm --config synthetic`" in err


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60))
def test_an_ascii_caption_gets_the_ids_it_always_got(caption):
    """Reading words as training read them changes nothing for ASCII text: the ids and the dropped
    words are those of looking each word up as written."""
    vocab = Vocabulary.build([["a", "bird", "red", "with", "3rd", "don", "t", "crowned", "wings", "_"]])
    expected, unknown = vocab.encode(words_as_written(caption))
    if not expected:
        with pytest.raises(CaptionError):
            encode_captions([caption], vocab)
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ids, dropped = encode_captions([caption], vocab)
    assert ids == [expected] and dropped.get(caption, []) == unknown
    assert not any("read as training" in str(w.message) for w in seen)
