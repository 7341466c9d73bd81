"""The loop part of ``python -m benchmarks.gpu`` runs the real training loop end to end on CPU at toy
sizes (what a GPU session runs at the bird preset), reading speed from the loop's own log."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from benchmarks import gpu, train_loop
from benchmarks.report import loop_variants

# the runs' captions are tokenized with nltk
needs_nltk = pytest.mark.skipif(importlib.util.find_spec("nltk") is None, reason="nltk is not installed")


def _loop(tmp_path, monkeypatch, *args) -> list[dict]:
    monkeypatch.setattr(gpu, "WORK", tmp_path / "work")
    assert gpu.main(["--device", "cpu", "--only", "loop", "--out", str(tmp_path / "out"), *args]) == 0
    (path,) = (tmp_path / "out").glob("*-loop.json")
    assert "## The real training loop" in path.with_suffix(".md").read_text()
    return json.loads(path.read_text())["rows"]


@pytest.mark.slow
@needs_nltk
def test_variants_are_timed_in_interleaved_rounds_with_ratios(tmp_path, monkeypatch, capsys):
    rows = _loop(tmp_path, monkeypatch, "--loop-variants", "off,bf16", "--loop-rounds", "2")
    assert [r["id"] for r in rows] == ["loop setup", "loop off round 1", "loop bf16 round 1", "loop off round 2",
                                       "loop bf16 round 2"]
    for r in rows[1:]:
        assert r["steps_per_s"] > 0 and r["timed_steps"] == 2 and r["images_per_s"] == r["steps_per_s"] * 8
    off, bf16 = loop_variants(rows[1:])
    assert off["rounds"] == 2 and off["speed_vs_off"] == "1.00x" and "speed_vs_off" in bf16
    assert min(r["steps_per_s"] for r in rows[1::2]) <= off["steps_per_s"] <= max(r["steps_per_s"] for r in rows[1::2])


@pytest.mark.slow
@needs_nltk
def test_the_damsm_loop_is_timed_on_the_users_data(tmp_path, monkeypatch, capsys):
    """--loop-kind damsm times pretrain-damsm per variant (here the on-device loader against the PIL
    one) on a CUB-layout root the user names; no AttnGAN and no brief DAMSM pretraining are run."""
    from attngan_fast.data.synthetic import synthesize

    synthesize(tmp_path / "birds", images=16, size=32, seed=0, progress=False)
    rows = _loop(tmp_path, monkeypatch, "--loop-kind", "damsm", "--data", str(tmp_path / "birds"),
                 "--loop-variants", "off,on-device")
    assert rows[0]["damsm"] is None and rows[0]["data"] == str(tmp_path / "birds")
    assert all(r["kind"] == "damsm" and r["case"].startswith("synthetic B=8") and r["timed_steps"] == 2
               for r in rows[1:])
    # a run read is gone, its folder and its log (only a failed run's log stays, named by its error)
    assert list((tmp_path / "work" / "loop").iterdir()) == []


def test_a_run_without_a_final_record_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 2, "G": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="no final record"):
        train_loop.final_record(log)
    log.write_text(log.read_text() + json.dumps({"final": True, "step": 2, "steps_per_s": 3.0}) + "\n")
    assert train_loop.final_record(log)["steps_per_s"] == 3.0


def test_a_failed_setup_or_first_run_is_not_repeated(tmp_path, monkeypatch, capsys):
    calls = []

    def fails(loop, variant, timeout):
        calls.append(variant)
        raise RuntimeError("`attngan-fast train` exited with 1")

    monkeypatch.setattr(train_loop, "run_variant", fails)
    monkeypatch.setattr(train_loop, "prepare", lambda loop, timeout: {"op": "loop_setup"})
    rows = _loop(tmp_path, monkeypatch, "--loop-variants", "off,bf16", "--loop-rounds", "2")
    assert calls == ["off", "bf16"] and [r.get("not_applicable") for r in rows[3:]] == ["its first run failed"] * 2
    assert loop_variants(rows[1:])[0]["error"].startswith("RuntimeError")


def test_a_failed_command_is_named_by_its_own_last_line(tmp_path, monkeypatch, capsys):
    """The reason (the CLI's one-line error) reaches the results, not the first 300 characters of the
    command that failed; a setup that failed is said in the markdown."""
    monkeypatch.setattr(gpu, "WORK", tmp_path / "work")
    (tmp_path / "tiny").mkdir()  # a CUB-layout root with no images at all
    (tmp_path / "tiny" / "CUB_200_2011").mkdir()
    (tmp_path / "tiny" / "CUB_200_2011" / "images.txt").write_text("")
    assert gpu.main(["--device", "cpu", "--only", "loop", "--loop-kind", "damsm", "--data", str(tmp_path / "tiny"),
                     "--out", str(tmp_path / "out")]) == 0
    (path,) = (tmp_path / "out").glob("*-loop.json")
    off = json.loads(path.read_text())["rows"][1]
    assert off["error"].startswith("RuntimeError: attngan-fast pretrain-damsm exited with 2 (output: ")
    assert "): attngan-fast: error: missing caption folder" in off["error"]
    assert "`attngan-fast pretrain-damsm`" in path.with_suffix(".md").read_text()


def test_a_failed_setup_is_said_and_a_pretraining_cut_short_is_made_again(tmp_path, monkeypatch, capsys):
    """The setup's error keeps its end (where the command's words and log are); a brief DAMSM whose
    pretraining was cut (a log, no checkpoint) is removed and made again, not refused for good."""
    monkeypatch.setattr(train_loop, "run_command", lambda *a: (_ for _ in ()).throw(
        RuntimeError("x" * 700 + " attngan-fast synth exited with 2 (output: /w/synth.log): no room")))
    rows = _loop(tmp_path, monkeypatch, "--loop-variants", "off")
    assert rows[0]["error"].endswith("(output: /w/synth.log): no room")
    assert rows[1]["not_applicable"] == "the loop's setup did not run"
    loop = train_loop.Loop("gan", "synthetic", "cpu", 3, tmp_path / "w", data=tmp_path / "birds", small=True)
    (loop.data / "CUB_200_2011").mkdir(parents=True)
    (loop.data / "CUB_200_2011" / "images.txt").write_text("")
    loop.damsm.parent.mkdir(parents=True)
    (loop.damsm.parent / "log.jsonl").write_text("{}\n")  # cut short before its checkpoint
    made = []
    monkeypatch.setattr(train_loop, "run_command", lambda args, log, timeout: made.append(
        loop.damsm.parent.exists()))
    pytest.importorskip("nltk")
    train_loop.prepare(loop, 10)
    assert made == [False]  # the leftover folder was gone when pretrain-damsm ran


@pytest.mark.parametrize("args, message", [
    (["--loop-steps", "1"], "--loop-steps must be at least 2"),
    (["--loop-steps", "0"], "--loop-steps must be at least 2 (the first log interval is not timed), got 0"),
    (["--loop-config", "nosuch"], "--loop-config: unknown config 'nosuch'"),
    (["--device", "tpu"], "--device must be cuda, cuda:N or cpu, got 'tpu'"),
    (["--loop-variants", "fp8"], "--loop-variants: unknown ['fp8']"),
    (["--loop-rounds", "0"], "--loop-rounds must be at least 1, got 0"),
    (["--damsm", "/no/such/file.pt"], "--damsm: /no/such/file.pt is not a file"),
])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--device", "cpu", "--only", "loop", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
@needs_nltk
def test_the_bird_preset_runs_unchanged(tmp_path, monkeypatch, capsys):
    """What a GPU session runs, with nothing shrunk but the step counts: synthetic birds at 256 px, the
    bird preset's DAMSM (Inception-v3 image encoder, batch 48) and its AttnGAN2 (3 stages to 256 px,
    batch 20, three discriminators). About a minute on 2 cores."""
    from attngan_fast.data.synthetic import synthesize

    synthesize(tmp_path / "birds", images=60, size=256, seed=0, progress=False)
    rows = _loop(tmp_path, monkeypatch, "--sizes", "model", "--loop-steps", "2", "--data", str(tmp_path / "birds"))
    (damsm_log,) = (tmp_path / "work" / "loop").glob("damsm-bird-*.log")
    assert "backbone is RANDOM" in damsm_log.read_text()  # no weights here: loudly said
    setup, run = rows
    assert run["case"] == "bird B=20 256px" and run["steps_per_s"] > 0 and run["timed_steps"] == 1, run
    # the run's own output says the preset's G: 3 stages to 256 px (its folder, 1.3 GB at this size, is gone)
    assert not (tmp_path / "work" / "loop" / f"gan-bird-off-{os.getpid()}").exists()


def test_a_run_cut_by_the_budget_names_its_log(tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(RuntimeError, match=rf"ran out of the budget's 0 s \(output: {log}\)"):
        train_loop.run_command(["info"], log, timeout=0.01)
    assert log.exists()  # kept: the error names it
