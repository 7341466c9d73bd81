"""The newcomer's path: ``attngan-fast demo`` synthesizes the bird data, pretrains the compact DAMSM,
trains AttnGAN, generates the paper's Figure 5 captions (one attribute changed at a time) with their
attention pictures, computes R-precision (IS/FID too when Inception weights are given) and writes an
``index.html`` report. On a GPU it uses the fused kernels, bf16 AMP and ``torch.compile``.

What it guarantees is training *steps* (``--damsm-steps``, ``--gan-steps``), not minutes: a busy
machine takes longer, not worse. ``--max-minutes`` caps the training time; when the cap cuts a phase
short, or the generated birds' R-precision is near chance, the page says so at its top instead of the
headline. Each training phase writes ``phase.json`` when it starts and when it completes: a re-run
reuses a phase only if it completed its steps (and, for AttnGAN, with the same DAMSM), resumes one
that was interrupted or cut short, and continues one whose budget was raised; the page and
``summary.json`` say what this run trained and what it reused.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text_atomic
from . import strict_json
from .paths import check_folder
from .config import load_config  # plain Python and YAML: the CLI reads this module's defaults without torch

FIGURE5 = [
    "this bird has wings that are black and has a white belly",
    "this bird has wings that are red and has a yellow belly",
    "this bird has wings that are blue and has a red belly",
]
MORE_CAPTIONS = [
    "a small bird with a yellow crown and a short black beak",
    "this bird has green wings, a white belly and a long brown beak",
]
# With bf16 on a quiet 2-core CPU, about 5 + 7 minutes; R-precision 76.0 % (benchmarks/results/
# cpu-amd-epyc-2-cores-2026-12-06-demo-quiet.md: 1,330 GAN steps read 73.3 %, 1,600 no more than 1,400).
DAMSM_STEPS, GAN_STEPS, MAX_MINUTES = 1500, 1400, 60.0
DEFAULT_OUT = "demo"  # the demo's folder without --out; `attngan-fast serve` looks there for its generator
DAMSM_CAP_SHARE = 0.4  # of the time cap, for the DAMSM: about its share of the training time
DAMSM_EVAL_EVERY = 5  # epochs: each evaluation costs about a tenth of an epoch's training on a CPU
NEAR_CHANCE = 5.0  # R-precision below this many times chance is "near chance"
UNLIMITED_EPOCHS = 10**6  # the steps are the budget: a phase ends at its steps or at the time cap
MARKER = "phase.json"
DATA_MARKER = "demo_data.json"


class DemoError(ValueError):
    """A demo folder that does not fit the request (another dataset in it)."""


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, strict_json.dumps(data, indent=2))


def _checkpoint_step(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - unreadable: treated as absent
        return None


@dataclass
class Plan:
    """What a training phase does in this run: "reuse" (it completed its steps), "resume" (from its
    latest.pt: interrupted, cut short by the cap, or asked for more steps), "restart" (its files are
    moved aside: they belong to another DAMSM, or saved no checkpoint) or "train" (nothing there)."""

    action: str
    reason: str
    steps: int | None = None  # the checkpoint's step when there is one


def plan_phase(folder: Path, budget_steps: int, depends_on: str | None) -> Plan:
    marker = _read_json(folder / MARKER)
    latest = folder / "latest.pt"
    step = _checkpoint_step(latest) if latest.is_file() else None
    if marker is not None and marker.get("depends_on") != depends_on:
        return Plan("restart", "it was trained with another DAMSM", step)
    if step is None:
        from .train.run_folder import describe_run

        found = describe_run(folder) if folder.is_dir() else None
        return Plan("restart", "its earlier run saved no checkpoint", None) if found else Plan("train", "", None)
    if marker is not None and marker.get("status") == "complete":
        if step >= budget_steps:
            more = f", more than the {budget_steps:,} asked" if step > budget_steps else ""
            return Plan("reuse", f"completed earlier ({step:,} steps{more})", step)
        if marker.get("budget_steps") == budget_steps:
            return Plan("resume", f"the time cap cut it short at step {step:,} of {budget_steps:,}", step)
        return Plan("resume", f"its budget rose from {marker.get('budget_steps'):,} to {budget_steps:,} steps", step)
    if step >= budget_steps:  # interrupted, but already past what this run asks for
        return Plan("reuse", f"interrupted earlier at step {step:,}, already past the {budget_steps:,} asked", step)
    return Plan("resume", f"it was interrupted at step {step:,}", step)


def run_phase(label: str, folder: Path, budget_steps: int, cap_minutes: float, depends_on: str | None, train) -> dict:
    """Reuse, resume, restart or train one phase (``train(resume, cap_minutes)`` runs it) and record it."""
    from .train.run_folder import claim_run_folder

    plan = plan_phase(folder, budget_steps, depends_on)
    record = {"action": {"reuse": "reused", "resume": "resumed", "restart": "restarted", "train": "trained"}[plan.action],
              "reason": plan.reason, "budget_steps": budget_steps, "cap_minutes": round(cap_minutes, 2)}
    if plan.action == "reuse":
        _say(f"{label}: reusing {folder} ({plan.reason})")
        # A reused phase has at least this run's steps: whatever cut an earlier, longer budget short
        # did not cut this one.
        return {**record, "steps": plan.steps, "steps_this_run": 0, "minutes_this_run": 0.0, "cut_by_cap": False}
    if plan.action == "restart":
        _say(f"{label}: starting over because {plan.reason}")
        claim_run_folder(folder, resume=None, overwrite=True)  # moved aside, never deleted
    elif plan.action == "resume":
        _say(f"{label}: resuming from step {plan.steps:,} because {plan.reason}")
    _say(f"{label}: training to step {budget_steps:,} (time cap {cap_minutes:.3g} minutes)")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / MARKER, {"status": "started", "depends_on": depends_on, "budget_steps": budget_steps,
                                  "cap_minutes": cap_minutes, "from_step": plan.steps or 0})
    started = time.time()
    result = train(folder / "latest.pt" if plan.action == "resume" else None, cap_minutes)
    if "stopped_by" in result:  # saved where it was: the phase stays "started", and a re-run resumes it
        _say(f"{label}: stopped by {result['stopped_by']} at step {result['step']:,} (saved); run the demo again "
             "to go on")
        raise KeyboardInterrupt
    steps = result["step"]
    minutes = (time.time() - started) / 60
    cut = steps < budget_steps
    _write_json(folder / MARKER, {"status": "complete", "depends_on": depends_on, "budget_steps": budget_steps,
                                  "cap_minutes": cap_minutes, "from_step": plan.steps or 0, "steps": steps,
                                  "cut_by_cap": cut, "minutes": round(minutes, 2)})
    if cut:
        _say(f"warning: the time cap stopped {label} at step {steps:,} of {budget_steps:,}")
    return {**record, "steps": steps, "steps_this_run": steps - (plan.steps or 0), "minutes_this_run": round(minutes, 2),
            "cut_by_cap": cut}


def _data_phase(data: Path, images: int, size: int, progress: bool) -> dict:
    from .data.synthetic import synthesize

    wanted = {"images": images, "size": size, "seed": 0}
    marker = _read_json(data / DATA_MARKER)
    if (data / "train" / "filenames.pickle").is_file():
        if marker is not None and marker != wanted:
            raise DemoError(f"{data} holds {marker['images']} birds of {marker['size']} px, not the {images} of {size} px "
                            "asked for: give another --out, or the same --images and --size as before")
        _say(f"1/5 data: reusing {data}")
        return {"action": "reused", **(marker or {})}
    _say(f"1/5 data: synthesizing {images} birds of {size} px in {data}")
    synthesize(data, images=images, size=size, seed=0, progress=progress)
    _write_json(data / DATA_MARKER, wanted)
    return {"action": "built", **wanted}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, slower."""
    import torch

    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def speed_settings(dev) -> tuple[list[str], list[str]]:
    """(DAMSM, AttnGAN) overrides that make the phases fast on ``dev`` (docs/training-speed.md): the
    images decoded once and kept on the device (on a CPU the batches are the PIL loader's, bit for
    bit); on a GPU bf16 autocast, torch.compile and the fused kernels; on a CPU with bf16 instructions
    bf16 autocast, and channels_last for the DAMSM's image encoder (the GAN's convolutions are slower
    in it)."""
    both = ["data.on_device=true"]
    if dev.type == "cuda":
        both += ["runtime.amp=bf16", "runtime.compile=true", "runtime.impl=auto"]
        return both, both
    if cpu_has_bf16():
        both.append("runtime.amp=bf16")
        return [*both, "runtime.channels_last=true"], both
    return both, both


def run_demo(out: str | Path = DEFAULT_OUT, *, damsm_steps: int = DAMSM_STEPS, gan_steps: int = GAN_STEPS,
             max_minutes: float = MAX_MINUTES, images: int = 2000, size: int = 64, inception_weights: str | None = None,
             device: str = "auto", progress: bool = True) -> dict:
    import torch

    from .evaluate import evaluate_generator
    from .generate import generate_images, write_generation
    from .data.synthetic import MAX_SIZE
    from .protocol import file_sha256
    from .train.damsm import train_damsm
    from .train.gan import load_generator, train_gan
    from .train.runtime import pick_device

    for name, value, least in (("--damsm-steps", damsm_steps, 1), ("--gan-steps", gan_steps, 1), ("--images", images, 20),
                               ("--size", size, 16)):
        if value < least:
            raise DemoError(f"{name} must be at least {least}, got {value}")
    if size > MAX_SIZE:  # the synthetic birds' bound
        raise DemoError(f"--size must be between 16 and {MAX_SIZE} pixels, got {size}")
    if not max_minutes > 0:
        raise DemoError(f"--max-minutes must be above 0, got {max_minutes}")
    if inception_weights:  # checked before the training phases, not after them
        from .evaluate import check_inception_weights

        check_inception_weights(inception_weights)
    out = check_folder(out)
    dev = pick_device(device)
    damsm_speed, gan_speed = speed_settings(dev)
    timings, started = {}, time.time()
    data = out / "data"
    phases = {"data": _data_phase(data, images, size, progress)}
    timings["data"] = time.time() - started

    damsm_dir, gan_dir = out / "damsm", out / "attngan"
    damsm_ckpt, gan_ckpt = damsm_dir / "latest.pt", gan_dir / "latest.pt"

    def train_damsm_for(resume, cap: float) -> dict:
        return train_damsm(load_config("synthetic", [
            f"data.root={data}", f"damsm.out_dir={damsm_dir}", f"data.image_size={size}", f"damsm.max_steps={damsm_steps}",
            f"damsm.epochs={UNLIMITED_EPOCHS}", f"damsm.max_minutes={cap}", f"damsm.eval_every={DAMSM_EVAL_EVERY}",
            f"runtime.device={dev}", *damsm_speed]),
            resume=resume, progress=progress)

    def train_gan_for(resume, cap: float) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return train_gan(load_config("synthetic", [
                f"data.root={data}", f"gan.damsm={damsm_ckpt}", f"gan.out_dir={gan_dir}", f"gan.max_steps={gan_steps}",
                f"gan.epochs={UNLIMITED_EPOCHS}", f"gan.max_minutes={cap}", f"runtime.device={dev}", *gan_speed]),
                resume=resume, progress=progress)

    t = time.time()
    phases["damsm"] = run_phase("2/5 DAMSM pretraining", damsm_dir, damsm_steps, max_minutes * DAMSM_CAP_SHARE, None,
                                train_damsm_for)
    timings["damsm"] = time.time() - t
    t = time.time()
    gan_cap = max(0.05 * max_minutes, max_minutes - phases["damsm"]["minutes_this_run"])
    phases["gan"] = run_phase("3/5 AttnGAN training (2 stages, 32 -> 64 px)", gan_dir, gan_steps, gan_cap,
                              file_sha256(damsm_ckpt), train_gan_for)
    timings["gan"] = time.time() - t

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small --images is below the protocol's size: the page says the size
        report = evaluate_generator(gan_ckpt, damsm_ckpt, data, out / "report.json", n_images=n_eval, overwrite=True,
                                    inception_weights=inception_weights, device=dev, progress=progress,
                                    keep_images=False)
    timings["evaluate"] = time.time() - t

    damsm_metrics = torch.load(damsm_ckpt, map_location="cpu", weights_only=True).get("metrics", {})
    summary = {
        "out": str(out), "device": str(dev), "seconds": round(time.time() - started, 1),
        "budget": {"damsm_steps": damsm_steps, "gan_steps": gan_steps, "max_minutes": max_minutes},
        "data": {"images": images, "size": size},
        "settings": {"damsm": damsm_speed, "gan": gan_speed},
        "phases": phases, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "damsm_steps": phases["damsm"]["steps"], "gan_steps": phases["gan"]["steps"],
        "damsm_retrieval_top1": damsm_metrics.get("retrieval_top1"),
        "damsm_part_attention_mass": damsm_metrics.get("part_attention_mass"),
        "damsm_part_area_share": damsm_metrics.get("part_area_share"),
        "r_precision": report["r_precision"]["mean"], "r_precision_std": report["r_precision"]["std"],
        "r_precision_chance": report["r_precision"]["chance"], "r_precision_images": n_eval,
        "inception_score": report.get("inception_score"), "fid": report.get("tf_inception_fid"),
    }
    summary["warnings"] = demo_warnings(summary)
    _write_json(out / "summary.json", summary)
    write_report(out, summary, captions)
    for line in summary["warnings"]:
        _say(f"warning: {line}")
    _say(f"done in {summary['seconds'] / 60:.1f} minutes: open {out / 'index.html'}")
    return summary


PHASE_NAMES = {"damsm": "DAMSM pretraining", "gan": "AttnGAN training"}


def demo_warnings(s: dict) -> list[str]:
    """Plain sentences for what a reader of the page must know before looking at the pictures."""
    out = []
    for key, name in PHASE_NAMES.items():
        p = s["phases"][key]
        if p["cut_by_cap"]:
            out.append(f"The time cap (--max-minutes {s['budget']['max_minutes']:g}) stopped {name} at step "
                       f"{p['steps']:,} of the {p['budget_steps']:,} it should have run (this machine: "
                       f"{s['machine']['cpus']} CPU cores, load {s['machine']['load_average_1min']:g} at the end). "
                       "Run the same command again to continue it to its full budget.")
    r, chance = s["r_precision"], s["r_precision_chance"]
    if r < NEAR_CHANCE * chance:
        out.append(f"R-precision is {100 * r:.1f} %, near chance ({100 * chance:.1f} %): the generator does not yet "
                   "draw what the captions say, so the pictures below do not show what AttnGAN learns.")
    return out


def _latest(folder: Path, pattern: str) -> Path | None:
    files = sorted(folder.glob(pattern))
    return files[-1] if files else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _phase_sentence(name: str, p: dict) -> str:
    if p["action"] == "reused":
        return f"{name}: reused from an earlier run ({p['steps']:,} steps)"
    start = f"resumed at step {p['steps'] - p['steps_this_run']:,} and trained" if p["action"] == "resumed" else "trained"
    again = " (the earlier run was moved aside: " + p["reason"] + ")" if p["action"] == "restarted" else ""
    return (f"{name}: {start} {p['steps_this_run']:,} steps to step {p['steps']:,} in {p['minutes_this_run']:.1f} "
            f"minutes{again}")


def write_report(out: Path, s: dict, captions: list[str]) -> Path:
    """A single HTML page with every picture and number of the demo (images referenced relatively,
    commands with absolute paths)."""
    rel = lambda p: html.escape(str(Path(p).relative_to(out))) if p else ""  # noqa: E731
    gen_dir = out / "generated"
    rows = []
    for c, caption in enumerate(captions):
        imgs = sorted(gen_dir.glob(f"c{c:03d}_*_stage2_*px.png")) or sorted(gen_dir.glob(f"c{c:03d}_*_stage*px.png"))
        attn = sorted(gen_dir.glob(f"c{c:03d}_*_s0_attention.png"))
        cells = "".join(f'<a href="{rel(p)}"><img src="{rel(p)}" width="128" alt="noise draw {k + 1}"></a>'
                        for k, p in enumerate(imgs))
        link = f'<a href="{rel(attn[0])}">attention</a>' if attn else ""
        rows.append(f"<tr><td>{html.escape(caption)}</td><td>{cells}</td><td>{link}</td></tr>")
    # Each strip writes its caption's words under its images: no heading repeats them.
    strips = "".join(f'<p><a href="{rel(p)}"><img class="strip" src="{rel(p)}" alt="{html.escape(c)}"></a></p>'
                     for c, p in ((c, _latest(gen_dir, f"c{i:03d}_*_s0_attention.png")) for i, c in enumerate(captions[:3]))
                     if p)
    samples = _latest(out / "attngan" / "samples", "step*.png")
    damsm_maps = _latest(out / "damsm", "attention_maps_step*.png")
    isc = s.get("inception_score")
    phases = s["phases"]
    done = "; ".join([f"data: {'reused' if phases['data']['action'] == 'reused' else 'synthesized'}",
                      _phase_sentence("DAMSM", phases["damsm"]), _phase_sentence("AttnGAN", phases["gan"])])
    if s["warnings"]:
        notice = ('<div class="warning"><h2>Read this first</h2>'
                  + "".join(f"<p>{html.escape(w)}</p>" for w in s["warnings"]) + "</div>")
        figure_heading = "The paper's Figure 5 captions (one attribute changed at a time)"
    else:
        notice = ""
        figure_heading = "Changing one word changes the matching part (the paper's Figure 5)"
    root = out.resolve()
    q = lambda p: html.escape(str(p))  # noqa: E731
    # Continuing means this run's data, steps and speed settings again, with the AttnGAN budget doubled.
    budget, data = s["budget"], s.get("data", {"images": 2000, "size": 64})
    more = 2 * budget["gan_steps"]
    continue_demo = (f"attngan-fast demo --out {q(root)} --images {data['images']} --size {data['size']} "
                     f"--damsm-steps {budget['damsm_steps']} --gan-steps {more}")
    speed = "".join(f" --set {q(setting)}" for setting in s.get("settings", {}).get("gan", []))
    continue_train = (f"attngan-fast train --config synthetic --data {q(root / 'data')} --damsm "
                      f"{q(root / 'damsm' / 'latest.pt')} --out {q(root / 'attngan')} --resume "
                      f"{q(root / 'attngan' / 'latest.pt')} --set gan.max_steps={more} --set gan.epochs={UNLIMITED_EPOCHS}"
                      f"{speed}")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>attngan-fast demo</title>
<style>
body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}}
td{{padding:4px 8px;vertical-align:middle}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}
img{{image-rendering:pixelated;margin:2px;vertical-align:middle}} img.strip{{max-width:100%;height:auto}}
.wide{{overflow-x:auto;border:1px solid #ddd;padding:4px}} .wide img{{max-width:none}}
.warning{{background:#fff3cd;border:2px solid #e0a800;padding:0.5em 1em;margin:1em 0}} .warning h2{{margin:0.2em 0}}
pre{{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:0.6em;border:1px solid #ddd}}
</style></head>
<body>
<h1>attngan-fast demo: text-to-image on synthetic birds</h1>
{notice}
<p>Budget: {s['budget']['damsm_steps']:,} DAMSM and {s['budget']['gan_steps']:,} AttnGAN training steps, with
{s['budget']['max_minutes']:g} minutes as the cap on training time. This run on {html.escape(s['device'])}
({s['seconds'] / 60:.1f} minutes): {html.escape(done)}; generation and evaluation
{s['timings_s']['generate'] + s['timings_s']['evaluate']:.0f} seconds. Details: <a href="summary.json">summary.json</a>.</p>
<h2>{figure_heading}</h2>
<p>Three noise draws per caption, 64 px (last stage); click an image for the file.</p>
<table>{''.join(rows)}</table>
<h2>Metrics</h2>
<table>
<tr><td>R-precision of {s['r_precision_images']} generated images (true caption among 100, other classes; 10 folds)</td><td><b>{_pct(s['r_precision'])}</b> ± {_pct(s['r_precision_std'])} (chance {_pct(s['r_precision_chance'])})</td></tr>
<tr><td>DAMSM held-out retrieval, real images (1 of 100)</td><td>{_pct(s['damsm_retrieval_top1'])}</td></tr>
<tr><td>share of a colour word's attention on the part it names (part's share of the image)</td><td>{_pct(s['damsm_part_attention_mass'])} ({_pct(s['damsm_part_area_share'])})</td></tr>
<tr><td>Inception Score / FID (torch-fidelity)</td><td>{'n/a: pass --inception-weights with a local weights file' if isc is None else f"{isc['mean']:.2f} ± {isc['std']:.2f} / {s['fid']:.1f}"}</td></tr>
</table>
<p>Full report: <a href="report.json">report.json</a> (protocol, seeds, versions).</p>
<h2>Where the generator looks: the five most attended words per caption</h2>
<p>Heat maps over the image each stage drew, scaled to each map's maximum (colour scale under each strip).</p>
{strips}
<h2>Training samples (EMA generator, fixed noise, held-out captions)</h2>
{f'<div class="wide"><a href="{rel(samples)}"><img src="{rel(samples)}" alt="training samples"></a></div>' if samples else '<p>none</p>'}
<h2>DAMSM: each word's region attention</h2>
{f'<div class="wide"><a href="{rel(damsm_maps)}"><img src="{rel(damsm_maps)}" alt="DAMSM attention maps"></a></div><p>Full size: <a href="{rel(damsm_maps)}">{rel(damsm_maps)}</a>.</p>' if damsm_maps else '<p>none</p>'}
<h2>Continue</h2>
<p>Type your own sentences and watch the attention in your browser: run the first command below, then open the
local address it prints (port 7860 on 127.0.0.1 unless that port is taken). The page needs the optional extra:
<code>pip install -e ".[app]"</code>.</p>
<pre>attngan-fast serve --checkpoint {q(root / 'attngan' / 'latest.pt')} --data {q(root / 'data')}
attngan-fast generate --checkpoint {q(root / 'attngan' / 'latest.pt')} --out {q(root / 'my-samples')} "this bird has wings that are green and has a black belly"
{continue_demo}
{continue_train}</pre>
</body></html>
"""
    return write_text_atomic(out / "index.html", page)
