"""The real training loop, timed from its own log: steps/s and peak memory of ``attngan-fast train``
(or ``pretrain-damsm``, ``--kind damsm``) per variant of its flags, e.g. ``--amp bf16 --compile``
against ``--amp off`` on the bird preset (a few hundred steps each).

    python -m benchmarks.train_loop                     # GPU: synthetic birds at 256 px, bird preset
    python -m benchmarks.train_loop --device cpu --tiny   # the path at toy sizes on CPU (a check, no speed)
    python -m benchmarks.train_loop --device cpu --config synthetic --data DIR --damsm CKPT --steps 100 \
        --rounds 2 --variants off,bf16,bf16-on-device      # CPU levers, interleaved rounds (A B C A B C)

Unlike ``python -m benchmarks.gpu --only train`` (one step, repeated on a fixed batch), this runs the
whole loop a user runs: data loading with workers, the frozen DAMSM, EMA, logging, checkpoints. Each
variant is its own process. Its speed is the training loop's ``StepMeter`` reading (the log's final
line): steps per second over every log interval but the first, where compilation and autotuning land,
with sample grids and checkpoints left out; peak memory is ``max_memory_allocated`` over the run. With
``--rounds N`` every variant runs once per round, in turn, so that the load of a shared machine falls
on all alike; a variant's speed is the median over the rounds.

The data are synthetic birds (CUB layout: the real loader reads them) and the DAMSM is a briefly
pretrained one (a random Inception-v3 backbone unless weights are named): the speed of a step does
not depend on what the weights have learnt. Captions need nltk (on a machine without it, carry it).
Writes ``<out>/<device>-<date>-train-loop.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attngan_fast.config import load_config
from benchmarks.environment import environment, results_stem

# --tiny: the synthetic preset shrunk to toy sizes (CPU checks of the path)
TINY = ["gan.stages=2", "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.r_num=1", "gan.batch_size=8",
        "text_encoder.hidden_dim=16", "data.image_size=32", "damsm.batch_size=8", "runtime.eval_batches=1",
        "data.workers=0"]
TINY_ARGS = dict(config="synthetic", steps=3, log_every=1, images=16, size=32, damsm_steps=1)

ON_DEVICE = ["--set", "data.on_device=true"]
VARIANTS = {
    "off": ["--amp", "off"],
    "bf16": ["--amp", "bf16"],
    "channels-last": ["--amp", "off", "--channels-last"],
    "bf16-channels-last": ["--amp", "bf16", "--channels-last"],
    "on-device": ["--amp", "off", *ON_DEVICE],
    "bf16-on-device": ["--amp", "bf16", *ON_DEVICE],
    "bf16-channels-last-on-device": ["--amp", "bf16", "--channels-last", *ON_DEVICE],
    "bf16-compile": ["--amp", "bf16", "--compile"],
    "bf16-compile-graphs": ["--amp", "bf16", "--compile", "--set", "runtime.cuda_graphs=true"],
    "bf16-compile-graphs-on-device": ["--amp", "bf16", "--compile", "--set", "runtime.cuda_graphs=true", *ON_DEVICE],
}


def _run(args: list[str], log_path: Path, timeout: float) -> float:
    """Runs ``python -m attngan_fast ARGS`` with its output in ``log_path``; seconds taken."""
    if timeout <= 0:
        raise subprocess.TimeoutExpired(["attngan-fast", *args], 0)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "attngan_fast", *args], stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"`attngan-fast {' '.join(args)}` exited with {proc.returncode}:\n{tail}")
    return time.time() - start


def final_record(log_jsonl: Path) -> dict:
    """The training log's closing line (steps/s and peak memory of the run)."""
    records = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    finals = [r for r in records if r.get("final")]
    if not finals:
        raise RuntimeError(f"{log_jsonl} has no final record: did the run finish?")
    return finals[-1]


def _save(report: dict, out: Path) -> None:
    """Ratios against ``--amp off`` brought up to date, then the JSON and markdown files."""
    base = next((r for r in report["variants"] if r["variant"] == "off" and "steps_per_s" in r), None)
    for r in report["variants"]:
        if base and "steps_per_s" in r:
            r["speed_vs_off"] = round(r["steps_per_s"] / base["steps_per_s"], 2)
            if base.get("peak_memory_mb") and r.get("peak_memory_mb"):
                r["memory_vs_off"] = round(r["peak_memory_mb"] / base["peak_memory_mb"], 2)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results_stem(report)}-{'damsm' if report['kind'] == 'damsm' else 'train'}-loop"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    env = report["environment"]
    what = "DAMSM pretraining loop" if report.get("kind") == "damsm" else "AttnGAN training loop"
    lines = [f"# {what} on {env['device']} ({report['date']})", "",
             f"torch {env['torch']}, triton {env['triton']}. Command: `{report['command']}`", "",
             f"Preset `{report['config']}`, batch {report['batch_size']}, {report['image_size']} px, "
             f"{report['steps']} steps per variant, {report.get('rounds', 1)} round(s); steps/s (median over rounds) from the loop's log (first interval, with compilation "
             "and autotuning, left out), peak memory over the whole run.", "",
             "| variant | flags | steps/s (median) | images/s | peak memory MB | process wall s | speed vs --amp off | memory vs --amp off |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["variants"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | `{' '.join(r['flags'])}` | error: {r['error'][:120]} | | | | | |")
            continue
        if "steps_per_s" not in r:  # its first round has not run yet
            lines.append(f"| {r['variant']} | `{' '.join(r['flags'])}` | not run yet | | | | | |")
            continue
        peak = r.get("peak_memory_mb")
        lines.append(f"| {r['variant']} | `{' '.join(r['flags'])}` | {r['steps_per_s']:.2f} | {r['images_per_s']:.1f} | "
                     f"{'-' if peak is None else f'{peak:.0f}'} | {r['wall_s']:.0f} | {r.get('speed_vs_off', '-')}x | "
                     f"{r.get('memory_vs_off', '-')} |")
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (a bad value exits with a message naming the flag); ``args.variants``
    comes back as a list."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="bird")
    parser.add_argument("--kind", choices=["gan", "damsm"], default="gan",
                        help="time attngan-fast train (default) or pretrain-damsm")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument("--log-every", type=int, default=50, help="steps per speed reading")
    parser.add_argument("--images", type=int, default=1000, help="synthetic images to draw")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--damsm-steps", type=int, default=20, help="DAMSM pretraining steps")
    parser.add_argument("--data", help="a CUB-layout root to train on instead of synthetic birds")
    parser.add_argument("--damsm", help="a DAMSM checkpoint for the AttnGAN runs instead of a brief pretraining")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every variant, interleaved")
    parser.add_argument("--variants", default="off,bf16-compile", help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both commands")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "attngan-fast-train-loop"),
                        help="data and runs (reused if present; default: in the system's temporary folder)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--timeout", type=float, default=540, help="seconds for the whole benchmark")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the synthetic preset shrunk): a check of "
                                                            "the path on CPU")
    args = parser.parse_args(argv)
    if args.tiny:
        vars(args).update(TINY_ARGS, set=TINY + args.set)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown or 'none given'}; choose from {list(VARIANTS)}")
    for name, value, least in (("--steps", args.steps, 1), ("--log-every", args.log_every, 1),
                               ("--images", args.images, 2), ("--size", args.size, 16),
                               ("--damsm-steps", args.damsm_steps, 1), ("--timeout", args.timeout, 1),
                               ("--rounds", args.rounds, 1)):
        if value < least:
            parser.error(f"{name} must be at least {least}, got {value}")
    if args.log_every >= args.steps:
        parser.error(f"--log-every ({args.log_every}) must be below --steps ({args.steps}): the speed is read "
                     "over every log interval but the first")
    for name in ("data", "damsm"):
        path = getattr(args, name)
        if path and not Path(path).exists():
            parser.error(f"--{name}: {path} does not exist")
    args.variants = variants
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    variants = args.variants
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks.train_loop: no CUDA device; use --device cpu for a self-check", file=sys.stderr)
        return 2
    deadline = time.time() + args.timeout
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, "--quiet", *[x for kv in args.set for x in ("--set", kv)]]

    data = Path(args.data) if args.data else work / f"birds-{args.images}-{args.size}"
    if not (data / "CUB_200_2011" / "images.txt").exists():
        _run(["data", "synth", "--out", str(data), "--images", str(args.images), "--size", str(args.size), "--quiet"],
             work / "synth.log", deadline - time.time())
    damsm = Path(args.damsm) if args.damsm else work / f"damsm-{args.config}" / "latest.pt"
    if args.kind == "gan" and not damsm.exists():
        _run(["pretrain-damsm", "--config", args.config, "--data", str(data), "--out", str(damsm.parent),
              "--set", f"damsm.max_steps={args.damsm_steps}", "--set", "runtime.eval_batches=1", *common],
             work / "damsm.log", deadline - time.time())

    cfg = load_config(args.config, args.set)
    batch = cfg.gan.batch_size if args.kind == "gan" else cfg.damsm.batch_size
    report = {"date": datetime.date.today().isoformat(), "environment": environment(device),
              "command": "python -m benchmarks.train_loop " + " ".join(sys.argv[1:] if argv is None else argv),
              "kind": args.kind, "config": args.config, "steps": args.steps, "rounds": args.rounds,
              "batch_size": batch, "image_size": cfg.gan.image_size if args.kind == "gan" else cfg.data.image_size,
              "variants": [{"variant": v, "flags": VARIANTS[v], "rounds_steps_per_s": []} for v in variants]}
    loop = (["train", "--damsm", str(damsm), "--set", "gan.samples_every=1000000000", "--set", "gan.max_minutes=null"]
            if args.kind == "gan" else ["pretrain-damsm", "--set", "damsm.max_minutes=null"])
    for _ in range(args.rounds):
        for row in report["variants"]:  # interleaved: every variant once per round, in turn
            if "error" in row:
                continue
            run_dir = work / f"{args.kind}-{args.config}-{row['variant']}"
            try:
                shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: a leftover checkpoint would resume instead
                row["load_1min"] = round(os.getloadavg()[0], 2)
                row["wall_s"] = _run([*loop, "--config", args.config, "--data", str(data), "--out", str(run_dir),
                                      "--set", f"{args.kind}.max_steps={args.steps}",
                                      "--set", f"runtime.log_every={args.log_every}", *row["flags"], *common],
                                     work / f"{args.kind}-{row['variant']}.log", deadline - time.time())
                final = final_record(run_dir / "log.jsonl")
                row["rounds_steps_per_s"].append(final["steps_per_s"])
                row.update({k: final[k] for k in ("timed_steps", "peak_memory_mb") if k in final})
                row["steps_per_s"] = statistics.median(row["rounds_steps_per_s"])
                row["images_per_s"] = row["steps_per_s"] * batch
            except (RuntimeError, subprocess.TimeoutExpired, KeyError) as err:
                row["error"] = f"{type(err).__name__}: {err}"[-600:]
            print(json.dumps(row), flush=True)
            _save(report, Path(args.out))  # after every run: a later one that overruns loses only itself
    print(markdown(report))
    return 0 if all("error" not in r for r in report["variants"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
