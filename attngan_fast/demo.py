"""The newcomer's path: ``attngan-fast demo`` synthesizes the bird data, pretrains the compact DAMSM,
trains AttnGAN, generates the paper's Figure 5 captions (one attribute changed at a time) with their
attention pictures, computes R-precision (IS/FID too when Inception weights are given) and writes an
``index.html`` report. A re-run reuses every phase already built. On a GPU it uses the fused kernels,
bf16 AMP and ``torch.compile``; on a 2-core CPU the default budget fits in about 15 minutes.
"""

from __future__ import annotations

import html
import json
import shutil
import time
import warnings
from pathlib import Path

import torch

from .config import load_config

FIGURE5 = [
    "this bird has wings that are black and has a white belly",
    "this bird has wings that are red and has a yellow belly",
    "this bird has wings that are blue and has a red belly",
]
MORE_CAPTIONS = [
    "a small bird with a yellow crown and a short black beak",
    "this bird has green wings, a white belly and a long brown beak",
]
DAMSM_SHARE, GAN_SHARE = 0.3, 0.65  # of the training budget


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _phase(number: int, title: str, ckpt: Path, minutes: float, run) -> float:
    """Run a training phase with its share of the budget, unless its checkpoint exists; seconds taken."""
    started = time.time()
    if ckpt.is_file():
        _say(f"{number}/5 {title.split(' (')[0]}: reusing {ckpt}")
    else:
        budget = max(0.05, minutes)
        _say(f"{number}/5 {title} for {budget:.1f} minutes")
        run(budget)
    return time.time() - started


def run_demo(out: str | Path = "demo", minutes: float = 13.0, *, images: int = 2000, size: int = 64,
             inception_weights: str | None = None, device: str = "auto", progress: bool = True) -> dict:
    from .data.synthetic import synthesize
    from .evaluate import evaluate_generator
    from .generate import generate_images, write_generation
    from .train.damsm import train_damsm
    from .train.gan import load_generator, train_gan
    from .train.runtime import pick_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    gpu = dev.type == "cuda"
    speed = ["runtime.amp=bf16", "runtime.compile=true", "runtime.impl=auto"] if gpu else []
    timings = {}
    started = time.time()

    data = out / "data"
    t = time.time()
    if (data / "train" / "filenames.pickle").is_file():
        _say(f"1/5 data: reusing {data}")
    else:
        _say(f"1/5 data: synthesizing {images} birds of {size} px in {data}")
        synthesize(data, images=images, size=size, seed=0, progress=progress)
    timings["data"] = time.time() - t

    damsm_ckpt, gan_ckpt = out / "damsm" / "latest.pt", out / "attngan" / "latest.pt"

    def train_damsm_for(budget: float) -> None:
        train_damsm(load_config("synthetic", [
            f"data.root={data}", f"damsm.out_dir={out / 'damsm'}", f"data.image_size={size}",
            f"damsm.max_minutes={budget}", f"runtime.device={dev}", *speed]), progress=progress)

    def train_gan_for(budget: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_gan(load_config("synthetic", [
                f"data.root={data}", f"gan.damsm={damsm_ckpt}", f"gan.out_dir={out / 'attngan'}",
                f"gan.max_minutes={budget}", f"runtime.device={dev}", *speed]), progress=progress)

    timings["damsm"] = _phase(2, "DAMSM pretraining (text + image encoders)", damsm_ckpt, minutes * DAMSM_SHARE,
                              train_damsm_for)
    timings["gan"] = _phase(3, "AttnGAN training (2 stages, 32 -> 64 px)", gan_ckpt, minutes * GAN_SHARE,
                            train_gan_for)

    t = time.time()
    _say("4/5 generating the Figure 5 captions and their attention pictures")
    netG, text_encoder, vocab, cfg = load_generator(gan_ckpt, dev)
    gen_dir = out / "generated"
    if gen_dir.exists():
        shutil.rmtree(gen_dir)
    captions = FIGURE5 + MORE_CAPTIONS
    gen = generate_images(netG, text_encoder, vocab, captions, n_per_caption=3, seed=0, device=dev)
    write_generation(gen, gen_dir, n_per_caption=3)
    timings["generate"] = time.time() - t

    t = time.time()
    _say("5/5 evaluating (R-precision" + (", IS, FID)" if inception_weights else "; IS/FID need --inception-weights)"))
    n_eval = 300 if images >= 300 else max(30, images // 2)
    report = evaluate_generator(gan_ckpt, damsm_ckpt, data, out / "report.json", n_images=n_eval,
                                inception_weights=inception_weights, device=dev, progress=progress, keep_images=False)
    timings["evaluate"] = time.time() - t

    damsm_metrics = torch.load(damsm_ckpt, map_location="cpu", weights_only=True).get("metrics", {})
    summary = {
        "out": str(out), "device": str(dev), "minutes_budget": minutes, "seconds": round(time.time() - started, 1),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "damsm_retrieval_top1": damsm_metrics.get("retrieval_top1"),
        "damsm_part_attention_mass": damsm_metrics.get("part_attention_mass"),
        "damsm_part_area_share": damsm_metrics.get("part_area_share"),
        "r_precision": report["r_precision"]["mean"], "r_precision_std": report["r_precision"]["std"],
        "r_precision_chance": report["r_precision"]["chance"],
        "inception_score": report.get("inception_score"), "fid": report.get("tf_inception_fid"),
        "gan_steps": torch.load(gan_ckpt, map_location="cpu", weights_only=True)["step"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary, captions)
    _say(f"done in {summary['seconds'] / 60:.1f} minutes: open {out / 'index.html'}")
    return summary


def _latest(folder: Path, pattern: str) -> Path | None:
    files = sorted(folder.glob(pattern))
    return files[-1] if files else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def write_report(out: Path, s: dict, captions: list[str]) -> Path:
    """A single HTML page with every picture and number of the demo (images referenced relatively)."""
    rel = lambda p: html.escape(str(Path(p).relative_to(out))) if p else ""  # noqa: E731
    rows = []
    for c, caption in enumerate(captions):
        imgs = sorted((out / "generated").glob(f"c{c:03d}_*_stage2_*px.png")) or sorted((out / "generated").glob(f"c{c:03d}_*_stage*px.png"))
        attn = sorted((out / "generated").glob(f"c{c:03d}_*_s0_attention.png"))
        cells = "".join(f'<img src="{rel(p)}" width="128">' for p in imgs)
        rows.append(f"<tr><td>{html.escape(caption)}</td><td>{cells}</td>"
                    f"<td>{f'<a href={chr(34)}{rel(attn[0])}{chr(34)}>attention</a>' if attn else ''}</td></tr>")
    attention_pictures = "".join(f'<p><b>{html.escape(c)}</b><br><img src="{rel(p)}"></p>' for c, p in
                                 ((c, _latest(out / "generated", f"c{i:03d}_*_s0_attention.png")) for i, c in enumerate(captions[:3])) if p)
    samples = _latest(out / "attngan" / "samples", "step*.png")
    damsm_maps = _latest(out / "damsm", "attention_maps_step*.png")
    isc = s.get("inception_score")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>attngan-fast demo</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}} td{{padding:4px 8px;vertical-align:middle}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}} img{{image-rendering:pixelated;margin:2px}}</style></head>
<body>
<h1>attngan-fast demo: text-to-image on synthetic birds</h1>
<p>AttnGAN trained from scratch on {html.escape(s['device'])} in {s['seconds'] / 60:.1f} minutes: synthetic bird data,
DAMSM pretraining ({s['timings_s']['damsm'] / 60:.1f} min), AttnGAN training ({s['gan_steps']} steps,
{s['timings_s']['gan'] / 60:.1f} min), generation and evaluation.</p>
<h2>Changing one word changes the matching part (the paper's Figure 5)</h2>
<p>Three noise draws per caption, 64 px (last stage).</p>
<table>{''.join(rows)}</table>
<h2>Metrics</h2>
<table>
<tr><td>R-precision of generated images (true caption among 100, other classes; 10 folds)</td><td><b>{_pct(s['r_precision'])}</b> ± {_pct(s['r_precision_std'])} (chance {_pct(s['r_precision_chance'])})</td></tr>
<tr><td>DAMSM held-out retrieval, real images (1 of 100)</td><td>{_pct(s['damsm_retrieval_top1'])}</td></tr>
<tr><td>share of a colour word's attention on the part it names (part's share of the image)</td><td>{_pct(s['damsm_part_attention_mass'])} ({_pct(s['damsm_part_area_share'])})</td></tr>
<tr><td>Inception Score / FID (torch-fidelity)</td><td>{'n/a: pass --inception-weights with a local weights file' if isc is None else f"{isc['mean']:.2f} ± {isc['std']:.2f} / {s['fid']:.1f}"}</td></tr>
</table>
<p>Full report: <a href="report.json">report.json</a> (protocol, seeds, versions); summary: <a href="summary.json">summary.json</a>.</p>
<h2>Where the generator looks: the five most attended words per caption</h2>
{attention_pictures}
<h2>Training samples (EMA generator, fixed noise, held-out captions)</h2>
{f'<img src="{rel(samples)}">' if samples else '<p>none</p>'}
<h2>DAMSM: each word's region attention</h2>
{f'<img src="{rel(damsm_maps)}" width="1100">' if damsm_maps else '<p>none</p>'}
<h2>Continue</h2>
<pre>attngan-fast generate --checkpoint {html.escape(str(out / 'attngan' / 'latest.pt'))} --out samples "this bird has wings that are green and has a black belly"
attngan-fast train --config synthetic --damsm {html.escape(str(out / 'damsm' / 'latest.pt'))} --resume {html.escape(str(out / 'attngan' / 'latest.pt'))} --data {html.escape(str(out / 'data'))} --out {html.escape(str(out / 'attngan'))}</pre>
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
