"""The training-loop benchmark runs end to end on CPU at toy sizes (what a GPU session runs at the bird
preset), reading speed from the loop's own log."""

from __future__ import annotations

import json

import pytest

from benchmarks import train_loop

@pytest.mark.slow
def test_train_loop_benchmark_writes_speed_and_ratios(tmp_path, capsys):
    args = ["--device", "cpu", "--tiny", "--variants", "off,bf16", "--rounds", "2", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out")]
    assert train_loop.main(args) == 0
    (json_path,) = (tmp_path / "out").glob("*-train-loop.json")
    report = json.loads(json_path.read_text())
    assert [v["variant"] for v in report["variants"]] == ["off", "bf16"]
    for v in report["variants"]:
        assert v["steps_per_s"] > 0 and v["timed_steps"] == 2 and v["images_per_s"] == v["steps_per_s"] * 8
        assert len(v["rounds_steps_per_s"]) == 2 and min(v["rounds_steps_per_s"]) <= v["steps_per_s"]
    assert report["variants"][0]["speed_vs_off"] == 1.0 and "speed_vs_off" in report["variants"][1]
    assert "| bf16 |" in json_path.with_suffix(".md").read_text()


@pytest.mark.slow
def test_the_damsm_loop_is_timed_on_the_users_data(tmp_path, capsys):
    """--kind damsm times pretrain-damsm per variant (here the on-device loader against the PIL one) on
    a CUB-layout root the user names; no AttnGAN and no brief DAMSM pretraining are run."""
    from attngan_fast.data.synthetic import synthesize

    synthesize(tmp_path / "birds", images=16, size=32, seed=0, progress=False)
    args = ["--device", "cpu", "--tiny", "--kind", "damsm", "--data", str(tmp_path / "birds"), "--variants",
            "off,on-device", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert train_loop.main(args) == 0
    (json_path,) = (tmp_path / "out").glob("*-damsm-loop.json")
    report = json.loads(json_path.read_text())
    assert report["kind"] == "damsm" and report["batch_size"] == 8
    assert all(v["steps_per_s"] > 0 and v["timed_steps"] == 2 for v in report["variants"])
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["damsm-off.log", "damsm-on-device.log",
                                                                     "damsm-synthetic-off", "damsm-synthetic-on-device"]
    assert "# DAMSM pretraining loop" in json_path.with_suffix(".md").read_text()


def test_a_run_without_a_final_record_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 2, "G": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="no final record"):
        train_loop.final_record(log)
    log.write_text(log.read_text() + json.dumps({"final": True, "step": 2, "steps_per_s": 3.0}) + "\n")
    assert train_loop.final_record(log)["steps_per_s"] == 3.0


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "50", "--log-every", "50"], "--log-every (50) must be below --steps (50)"),
    (["--variants", "fp8"], "--variants: unknown ['fp8']"),
    (["--size", "8"], "--size must be at least 16"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--data", "/no/such/folder"], "--data: /no/such/folder does not exist"),
])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_loop.main(["--device", "cpu", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_the_bird_preset_runs_unchanged(tmp_path, capsys):
    """What a GPU session runs (python -m benchmarks.gpu's loop part), with nothing shrunk but the step counts:
    synthetic birds at 256 px, the bird preset's DAMSM (Inception-v3 image encoder, batch 48) and its
    AttnGAN2 (3 stages to 256 px, batch 20, three discriminators). About a minute on 2 cores."""
    args = ["--device", "cpu", "--config", "bird", "--steps", "2", "--log-every", "1", "--images", "60",
            "--size", "256", "--damsm-steps", "1", "--variants", "off", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out")]
    assert train_loop.main(args) == 0
    assert "backbone is RANDOM" in (tmp_path / "work" / "damsm.log").read_text()  # no weights here: loudly said
    (json_path,) = (tmp_path / "out").glob("*-train-loop.json")
    report = json.loads(json_path.read_text())
    assert (report["config"], report["batch_size"], report["image_size"]) == ("bird", 20, 256)
    (row,) = report["variants"]
    assert row["steps_per_s"] > 0 and row["timed_steps"] == 1, row
    from attngan_fast.train import gan

    netG, _, _, cfg = gan.load_generator(tmp_path / "work" / "gan-bird-off" / "latest.pt")
    assert cfg.gan.stages == 3 and cfg.gan.gf_dim == 32 and cfg.gan.r_num == 2
