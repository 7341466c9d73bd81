"""Where a CPU training step of the synthetic preset spends its time, and what buys it back.

    python -m benchmarks.cpu_levers --data DIR --profile            # torch.profiler, one step each
    python -m benchmarks.cpu_levers --data DIR --rounds 3 --steps 8 \\
        --variants base,bf16,channels_last,threads1              # levers, interleaved A B A B
    python -m benchmarks.cpu_levers --data DIR --loop 100 --damsm CKPT \\
        --variants base,bf16,on_device,bf16_on_device            # the real loops, data loading included

The DAMSM step is the loop's (losses, backward, clip, Adam) on a real batch of the synthetic birds;
the GAN step is the production ``GanStep`` (every D, then G with λ·DAMSM) on a batch of the same
shapes. ``--loop N`` runs ``attngan-fast pretrain-damsm`` / ``train`` instead, N steps per variant
(the loader, logging and checkpoints included) and reads the loop's own steps/s from its log. On a shared machine only ratios measured in the same run mean anything: every round times
each variant once, in turn, and each variant's ratio to ``base`` is taken round by round (then the
median), with the load average printed beside it.
"""

from __future__ import annotations

import argparse
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
from attngan_fast.data.dataset import TextImageDataset, collate
from attngan_fast.train.common import adam
from attngan_fast.train.damsm import build_models, damsm_losses
from benchmarks.train_step import build_step, random_batch

# name -> (config overrides, threads); None threads = torch's default
LEVERS = {
    "base": ([], None),
    "bf16": (["runtime.amp=bf16"], None),
    "channels_last": (["runtime.channels_last=true"], None),
    "bf16_channels_last": (["runtime.amp=bf16", "runtime.channels_last=true"], None),
    "threads1": ([], 1),
    "bf16_threads1": (["runtime.amp=bf16"], 1),
    "on_device": (["data.on_device=true"], None),
    "bf16_on_device": (["runtime.amp=bf16", "data.on_device=true"], None),
    "bf16_channels_last_on_device": (["runtime.amp=bf16", "runtime.channels_last=true", "data.on_device=true"], None),
}


def damsm_step(cfg, data: str, device: torch.device):
    """A closure running one DAMSM training step on a fixed real batch."""
    common = dict(captions_per_image=cfg.data.captions_per_image, words_num=cfg.data.words_num,
                  image_size=cfg.data.image_size, branches=1)
    dataset = TextImageDataset(data, "cub", "train", train=True, **common)
    batch = collate([dataset[(i, i)] for i in range(cfg.damsm.batch_size)], pad_to=cfg.data.words_num)
    torch.manual_seed(0)
    text_encoder, image_encoder = build_models(cfg, dataset.vocab)
    text_encoder.to(device).train()
    image_encoder.to(device).train()
    if cfg.runtime.channels_last:
        image_encoder.to(memory_format=torch.channels_last)
    params = list(text_encoder.parameters()) + [p for p in image_encoder.parameters() if p.requires_grad]
    optimizer = adam(params, cfg.damsm.lr, cfg.damsm.betas)

    def step():
        losses, _ = damsm_losses(text_encoder, image_encoder, batch, cfg, device)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), cfg.damsm.rnn_grad_clip)
        optimizer.step()

    return step


def gan_step(cfg, device: torch.device):
    options = dict(amp=cfg.runtime.amp, compile=False, impl=cfg.runtime.impl, released=False)
    step, _ = build_step(cfg, options, device)
    batch = random_batch(cfg)
    return lambda: step(batch)


def build(kind: str, overrides: list[str], data: str):
    cfg = load_config("synthetic", [f"data.root={data}", "runtime.device=cpu", *overrides])
    device = torch.device("cpu")
    return damsm_step(cfg, data, device) if kind == "damsm" else gan_step(cfg, device)


def seconds_per_step(step, steps: int, threads: int | None) -> float:
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        step()  # warm-up: first-call allocations, optimizer state
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps
    finally:
        torch.set_num_threads(default)


def profile(kind: str, data: str, rows: int) -> str:
    step = build(kind, [], data)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def loop_seconds_per_step(kind: str, lever: tuple, data: str, steps: int, damsm: str | None, work: Path) -> float:
    """Seconds per step of the real training loop, from its log's final line (first interval left out)."""
    shutil.rmtree(work, ignore_errors=True)
    args = ["pretrain-damsm", "--set", f"damsm.max_steps={steps}", "--set", "damsm.max_minutes=null"] if kind == "damsm" else [
        "train", "--damsm", str(damsm), "--set", f"gan.max_steps={steps}", "--set", "gan.max_minutes=null",
        "--set", "gan.eval_every=null"]
    args += ["--config", "synthetic", "--data", data, "--out", str(work), "--device", "cpu", "--quiet",
             "--set", f"runtime.log_every={max(1, steps // 5)}", *[x for o in lever[0] for x in ("--set", o)]]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(lever[1])} if lever[1] else {})}
    subprocess.run([sys.executable, "-m", "attngan_fast", *args], check=True, capture_output=True, env=env)
    final = json.loads((work / "log.jsonl").read_text().splitlines()[-1])  # the loop's closing line
    return 1 / final["steps_per_s"]


def levers(kind: str, names: list[str], data: str, rounds: int, steps: int, loop: int = 0, damsm: str | None = None) -> dict:
    steps_fns = {} if loop else {n: build(kind, LEVERS[n][0], data) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for _ in range(rounds):
        for n in names:  # interleaved: every variant once per round, in turn
            loads.append(os.getloadavg()[0])
            if loop:
                with tempfile.TemporaryDirectory() as work:
                    times[n].append(loop_seconds_per_step(kind, LEVERS[n], data, loop, damsm, Path(work) / "run"))
            else:
                times[n].append(seconds_per_step(steps_fns[n], steps, LEVERS[n][1]))
    out = {"kind": kind, "loop": bool(loop), "rounds": rounds, "steps": loop or steps,
           "load_1min": [round(min(loads), 2), round(max(loads), 2)], "variants": {}}
    for n in names:
        ratios = [b / t for b, t in zip(times["base"], times[n])] if "base" in times else []
        out["variants"][n] = {"ms_per_step": [round(1000 * t, 1) for t in times[n]],
                              "speed_vs_base": round(statistics.median(ratios), 3) if ratios else None}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="synthetic birds (attngan-fast data synth)")
    parser.add_argument("--kinds", default="damsm,gan")
    parser.add_argument("--profile", action="store_true", help="profile one step of each kind instead")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--variants", default="base,bf16,channels_last,threads1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    parser.add_argument("--loop", type=int, default=0, help="run the real training loops for this many steps instead")
    parser.add_argument("--damsm", help="a DAMSM checkpoint, for --loop with the gan kind")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in LEVERS] + [k for k in kinds if k not in ("damsm", "gan")]
    if unknown:
        parser.error(f"unknown {unknown}; variants: {list(LEVERS)}, kinds: damsm, gan")
    print(json.dumps({"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}))
    for kind in kinds:
        if args.profile:
            print(f"## {kind}: one step, by self CPU time\n{profile(kind, args.data, args.rows)}", flush=True)
        else:
            print(json.dumps(levers(kind, names, args.data, args.rounds, args.steps, args.loop, args.damsm)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
