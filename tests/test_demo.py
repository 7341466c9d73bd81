"""The newcomer's demo: every promised file is written; a re-run reuses only phases that completed their
steps, resumes an interrupted one, continues one whose budget rose; the page and summary.json say what
was trained and what reused; a time cap that cuts training, or R-precision near chance, is said at the
top of the page instead of the headline."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch

import attngan_fast.demo as demo
from attngan_fast.cli import main as cli
from attngan_fast.demo import FIGURE5, MORE_CAPTIONS, Plan, plan_phase, write_report

TINY = ["--images", "96", "--quiet"]
HEADLINE = "Changing one word changes the matching part"


def _run(capsys, out, *flags):
    assert cli(["demo", "--out", str(out), *TINY, *flags]) == 0
    said = capsys.readouterr().out
    return json.loads((out / "summary.json").read_text()), (out / "index.html").read_text(), said


@pytest.mark.slow
def test_demo_writes_every_promised_file_and_reuses_only_what_completed(tmp_path, capsys):
    out = tmp_path / "demo"
    summary, page, _ = _run(capsys, out, "--damsm-steps", "6", "--gan-steps", "4")
    for path in ("index.html", "report.json", "summary.json", "damsm/latest.pt", "damsm/log.jsonl", "damsm/phase.json",
                 "attngan/latest.pt", "attngan/log.jsonl", "attngan/phase.json", "data/CUB_200_2011/images.txt"):
        assert (out / path).is_file(), path
    assert list((out / "damsm").glob("attention_maps_step*.png")) and list((out / "attngan" / "samples").glob("*.png"))
    for c in range(len(FIGURE5 + MORE_CAPTIONS)):
        assert len(list((out / "generated").glob(f"c{c:03d}_*_stage2_64px.png"))) == 3
        assert len(list((out / "generated").glob(f"c{c:03d}_*_attention.png"))) == 3
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(links) > 10 and all((out / link).exists() for link in links)
    assert all(caption in page for caption in FIGURE5)
    phases = summary["phases"]
    assert phases["data"]["action"] == "built"
    assert (phases["damsm"]["action"], phases["damsm"]["steps"], phases["damsm"]["steps_this_run"]) == ("trained", 6, 6)
    assert (phases["gan"]["action"], phases["gan"]["steps"]) == ("trained", 4) and summary["gan_steps"] == 4
    assert "DAMSM: trained 6 steps to step 6" in page and "AttnGAN: trained 4 steps to step 4" in page
    assert 0.0 <= summary["r_precision"] <= 1.0 and json.loads((out / "report.json").read_text())["r_precision"]
    # The page's "Continue" commands repeat this run's data, steps and speed settings (the demo would
    # refuse other data; a bare train --resume would change the settings).
    root = html.escape(str(out.resolve()))
    assert (f"attngan-fast demo --out {root} --images 96 --size 64 --damsm-steps 6 --gan-steps 8") in page
    assert "--set gan.max_steps=8" in page and all(f"--set {html.escape(x)}" in page for x in summary["settings"]["gan"])

    # The same command again: everything completed, so everything is reused, and the page says so.
    summary, page, said = _run(capsys, out, "--damsm-steps", "6", "--gan-steps", "4")
    assert "1/5 data: reusing" in said and "2/5 DAMSM pretraining: reusing" in said
    assert "3/5 AttnGAN training (2 stages, 32 -> 64 px): reusing" in said
    assert {k: p["action"] for k, p in summary["phases"].items()} == {"data": "reused", "damsm": "reused", "gan": "reused"}
    assert "DAMSM: reused from an earlier run (6 steps)" in page and "AttnGAN: reused from an earlier run (4 steps)" in page
    assert "trained 6 steps" not in page

    # A larger AttnGAN budget is honoured: it continues from step 4; the DAMSM is still reused.
    summary, page, said = _run(capsys, out, "--damsm-steps", "6", "--gan-steps", "7")
    gan = summary["phases"]["gan"]
    assert (gan["action"], gan["steps"], gan["steps_this_run"]) == ("resumed", 7, 3), gan
    assert "its budget rose from 4 to 7 steps" in said and summary["phases"]["damsm"]["action"] == "reused"
    assert "AttnGAN: resumed at step 4 and trained 3 steps to step 7" in page
    resumed = [json.loads(line) for line in (out / "attngan" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("resumed") and r["step"] == 4 for r in resumed)


@pytest.mark.slow
def test_an_interrupted_phase_resumes_and_the_gan_follows_a_retrained_damsm(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    real = demo.run_phase

    def ctrl_c_in_the_damsm(label, folder, budget, cap, depends_on, train):
        if "DAMSM" not in label:
            return real(label, folder, budget, cap, depends_on, train)

        def three_steps_then_interrupt(resume, cap_minutes):
            from attngan_fast.train.damsm import train_damsm
            from attngan_fast.config import load_config

            train_damsm(load_config("synthetic", [f"data.root={out / 'data'}", f"damsm.out_dir={folder}",
                                                  "data.image_size=64", "damsm.max_steps=3"]), progress=False)
            raise KeyboardInterrupt

        return real(label, folder, budget, cap, depends_on, three_steps_then_interrupt)

    monkeypatch.setattr(demo, "run_phase", ctrl_c_in_the_damsm)
    assert cli(["demo", "--out", str(out), *TINY, "--damsm-steps", "6", "--gan-steps", "3"]) == 130
    assert json.loads((out / "damsm" / "phase.json").read_text())["status"] == "started"
    monkeypatch.setattr(demo, "run_phase", real)
    summary, page, said = _run(capsys, out, "--damsm-steps", "6", "--gan-steps", "3")
    damsm = summary["phases"]["damsm"]
    assert "reusing" not in said.split("2/5")[1].split("\n")[0], said  # a 3-step checkpoint is not reused
    assert (damsm["action"], damsm["steps"], damsm["steps_this_run"]) == ("resumed", 6, 3), damsm
    assert "it was interrupted at step 3" in said

    # More DAMSM steps: the DAMSM continues, and the AttnGAN trained on the old one starts over, its
    # earlier run moved aside (not deleted).
    summary, page, said = _run(capsys, out, "--damsm-steps", "8", "--gan-steps", "3")
    assert summary["phases"]["damsm"]["action"] == "resumed" and summary["phases"]["gan"]["action"] == "restarted"
    assert "it was trained with another DAMSM" in said
    assert [p for p in (out / "attngan").iterdir() if p.name.startswith("replaced-")]


@pytest.mark.slow
def test_a_time_cap_that_cuts_training_is_said_at_the_top(tmp_path, capsys):
    out = tmp_path / "demo"
    summary, page, said = _run(capsys, out, "--damsm-steps", "400", "--gan-steps", "400", "--max-minutes", "0.002")
    assert summary["phases"]["damsm"]["cut_by_cap"] and summary["phases"]["damsm"]["steps"] < 400
    assert summary["phases"]["gan"]["cut_by_cap"]
    top = page.split("<h2>", 2)
    assert "Read this first" in top[1] and "The time cap (--max-minutes 0.002) stopped DAMSM pretraining at step" in page
    assert HEADLINE not in page and "warning: The time cap" in said
    # Re-running the same command continues the phase that the cap cut short.
    assert plan_phase(out / "damsm", 400, None).action == "resume"


def _summary(r_precision: float, cut: bool = False) -> dict:
    phase = {"action": "trained", "reason": "", "budget_steps": 10, "cap_minutes": 1.0, "steps": 6 if cut else 10,
             "steps_this_run": 6 if cut else 10, "minutes_this_run": 0.5, "cut_by_cap": cut}
    s = {"out": "x", "device": "cpu", "seconds": 60.0, "budget": {"damsm_steps": 10, "gan_steps": 10, "max_minutes": 1.0},
         "phases": {"data": {"action": "built"}, "damsm": dict(phase), "gan": dict(phase)},
         "timings_s": {"data": 1, "damsm": 20, "gan": 30, "generate": 1, "evaluate": 2},
         "machine": {"cpus": 2, "load_average_1min": 6.5}, "damsm_retrieval_top1": 0.5, "damsm_part_attention_mass": 0.2,
         "damsm_part_area_share": 0.05, "r_precision": r_precision, "r_precision_std": 0.01, "r_precision_chance": 0.01,
         "r_precision_images": 300, "inception_score": None, "fid": None}
    s["warnings"] = demo.demo_warnings(s)
    return s


def test_near_chance_r_precision_replaces_the_headline(tmp_path):
    page = write_report(tmp_path, _summary(0.017), FIGURE5).read_text()
    notice = page.split("<h1>")[1].split("<h2>The paper")[0]
    assert "R-precision is 1.7 %, near chance (1.0 %)" in notice and HEADLINE not in page
    good = write_report(tmp_path, _summary(0.6), FIGURE5).read_text()
    assert "Read this first" not in good and HEADLINE in good


def test_a_cut_phase_names_steps_and_load():
    (line,) = [w for w in demo.demo_warnings(_summary(0.6, cut=True)) if "DAMSM" in w]
    assert line.startswith("The time cap (--max-minutes 1) stopped DAMSM pretraining at step 6 of the 10")
    assert "2 CPU cores, load 6.5" in line


def test_the_page_links_full_size_pictures_and_wraps_absolute_commands(tmp_path):
    from PIL import Image

    (tmp_path / "damsm").mkdir()
    Image.new("RGB", (1800, 700), "white").save(tmp_path / "damsm" / "attention_maps_step0000010.png")
    page = write_report(tmp_path, _summary(0.6), FIGURE5).read_text()
    picture = "damsm/attention_maps_step0000010.png"
    assert f'<a href="{picture}"><img src="{picture}"' in page and 'width="1100"' not in page
    commands = page.split("<pre>")[1].split("</pre>")[0]
    assert str(tmp_path.resolve() / "attngan" / "latest.pt") in commands
    assert all(word.startswith("/") for line in commands.splitlines() for word in line.split()
               if "/" in word and not word.startswith('"'))
    assert "white-space:pre-wrap" in page and "overflow-wrap:anywhere" in page


def test_plan_phase_reuses_only_completed_work(tmp_path):
    def checkpoint(step):
        tmp_path.mkdir(exist_ok=True)
        torch.save({"format": "attngan-fast/damsm/1", "step": step, "epoch": 0}, tmp_path / "latest.pt")

    def marker(**fields):
        (tmp_path / "phase.json").write_text(json.dumps(fields))

    assert plan_phase(tmp_path, 10, None).action == "train"
    checkpoint(4)
    assert plan_phase(tmp_path, 10, None).reason == "it was interrupted at step 4"  # no marker: interrupted
    # an interrupted phase already past a lower budget is reused, not "resumed" to train nothing
    assert plan_phase(tmp_path, 3, None) == Plan("reuse", "interrupted earlier at step 4, already past the 3 asked", 4)
    marker(status="started", depends_on=None, budget_steps=10)
    assert plan_phase(tmp_path, 10, None).action == "resume"
    checkpoint(10)
    marker(status="complete", depends_on=None, budget_steps=10, steps=10)
    assert plan_phase(tmp_path, 10, None).action == "reuse"
    assert plan_phase(tmp_path, 8, None).reason == "completed earlier (10 steps, more than the 8 asked)"
    assert plan_phase(tmp_path, 12, None).reason == "its budget rose from 10 to 12 steps"
    assert plan_phase(tmp_path, 10, "another damsm").action == "restart"
    checkpoint(6)
    marker(status="complete", depends_on=None, budget_steps=10, steps=6, cut_by_cap=True)
    assert plan_phase(tmp_path, 10, None).reason == "the time cap cut it short at step 6 of 10"


def test_a_phase_reused_under_a_lower_budget_is_not_reported_as_cut(tmp_path, capsys):
    # An earlier run's cap cut it at step 6 of 10; this run asks for 5: the phase is reused whole, and
    # neither the summary nor the warnings may say that a cap stopped it at "6 of the 5".
    torch.save({"format": "attngan-fast/damsm/1", "step": 6, "epoch": 0}, tmp_path / "latest.pt")
    (tmp_path / "phase.json").write_text(json.dumps({"status": "complete", "depends_on": None, "budget_steps": 10,
                                                     "steps": 6, "cut_by_cap": True}))

    def train(resume, cap_minutes):
        raise AssertionError("a reused phase trains nothing")

    record = demo.run_phase("2/5 DAMSM pretraining", tmp_path, 5, 1.0, None, train)
    assert record["action"] == "reused" and record["steps"] == 6 and record["cut_by_cap"] is False
    summary = _summary(0.6)
    summary["phases"]["damsm"] = record
    assert not [w for w in demo.demo_warnings(summary) if "DAMSM" in w]


@pytest.mark.parametrize("bf16", [True, False])
def test_the_phases_speed_settings_follow_the_device(monkeypatch, bf16):
    monkeypatch.setattr(demo, "cpu_has_bf16", lambda: bf16)
    damsm, gan = demo.speed_settings(torch.device("cpu"))
    assert "data.on_device=true" in damsm and "data.on_device=true" in gan  # on CPU the PIL loader's batches
    assert ("runtime.amp=bf16" in damsm) == ("runtime.amp=bf16" in gan) == bf16
    assert ("runtime.channels_last=true" in damsm) == bf16 and "runtime.channels_last=true" not in gan
    assert not any("compile" in s for s in damsm + gan)
    damsm, gan = demo.speed_settings(torch.device("cuda"))
    assert damsm == gan and {"runtime.amp=bf16", "runtime.compile=true", "data.on_device=true"} <= set(gan)
