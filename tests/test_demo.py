"""The newcomer's demo end to end with a tiny budget: every promised file is written, and a re-run
reuses what is built."""

from __future__ import annotations

import json
import re

import pytest

from attngan_fast.cli import main as cli
from attngan_fast.demo import FIGURE5, MORE_CAPTIONS


@pytest.mark.slow
def test_demo_writes_every_promised_file_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--minutes", "0.2", "--images", "96", "--quiet"]
    assert cli(args) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    for path in ("index.html", "report.json", "summary.json", "damsm/latest.pt", "damsm/log.jsonl",
                 "attngan/latest.pt", "attngan/log.jsonl", "data/CUB_200_2011/images.txt"):
        assert (out / path).is_file(), path
    assert list((out / "damsm").glob("attention_maps_step*.png")) and list((out / "attngan" / "samples").glob("*.png"))
    for c in range(len(FIGURE5 + MORE_CAPTIONS)):
        assert len(list((out / "generated").glob(f"c{c:03d}_*_stage2_64px.png"))) == 3
        assert len(list((out / "generated").glob(f"c{c:03d}_*_attention.png"))) == 3
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(links) > 10 and all((out / link).exists() for link in links)
    assert all(caption in page for caption in FIGURE5)
    assert 0.0 <= summary["r_precision"] <= 1.0 and summary["gan_steps"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["r_precision"]["candidates"] >= 2

    assert cli(args) == 0
    said = capsys.readouterr().out
    assert "1/5 data: reusing" in said and "2/5 DAMSM pretraining: reusing" in said
    assert "3/5 AttnGAN training: reusing" in said
