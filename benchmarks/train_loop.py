"""The ``loop`` part of ``python -m benchmarks.gpu``: the real training loop, timed from its own log.
Each run is ``attngan-fast train`` (or ``pretrain-damsm``: ``--loop-kind damsm``) with one variant of
its flags, in a process of its own, e.g. ``--amp bf16 --compile`` against ``--amp off``.

Unlike the ``train`` part (one step, repeated on a fixed batch), this is the whole loop a user runs:
data loading with workers, the frozen DAMSM, EMA, logging, checkpoints. A run's speed is the loop's
``StepMeter`` reading (the log's final line): steps per second over every log interval but the first,
where compilation and autotuning land, with sample grids and checkpoints left out; peak memory is
``max_memory_allocated`` over the run. Rounds interleave the variants (A B C A B C), so that the load of
a shared machine falls on all alike; a variant's speed is the median over its rounds.

The data are synthetic birds (CUB layout: the real loader reads them) or the CUB-layout root ``--data``
names; the DAMSM is a briefly pretrained one (a random Inception-v3 backbone unless weights are named)
or the checkpoint ``--damsm`` names: the speed of a step does not depend on what the weights have
learnt. Captions need nltk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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
# --sizes small: the synthetic preset shrunk to toy sizes (a check of the path on CPU)
TINY = ["gan.stages=2", "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.r_num=1", "gan.batch_size=8",
        "text_encoder.hidden_dim=16", "data.image_size=32", "damsm.batch_size=8", "runtime.eval_batches=1",
        "data.workers=0"]


@dataclass
class Loop:
    """What the loop part runs: ``kind`` "gan" or "damsm", a preset and its overrides, steps per run."""

    kind: str
    config: str
    device: str
    steps: int
    work: Path  # synthetic data, the brief DAMSM, the runs and their logs
    data: Path | None = None  # a CUB-layout root (default: synthetic birds)
    damsm: Path | None = None  # a DAMSM checkpoint (default: a brief pretraining)
    small: bool = False  # toy sizes
    sets: list[str] = field(default_factory=list)

    def __post_init__(self):
        cuda = self.device.startswith("cuda")
        # synthetic images, their side, brief DAMSM steps
        self.images, self.size, self.damsm_steps = (
            (16, 32, 1) if self.small else (1000, 256, 20) if cuda else (60, 256, 1))
        self.sets = (TINY if self.small else []) + self.sets
        if self.data is None:
            self.data = self.work / f"birds-{self.images}-{self.size}"
        if self.damsm is None:  # one per preset, overrides and data: a reused one must fit the run
            from attngan_fast.config import load_config  # the settings themselves: a YAML file may be edited

            settings = load_config(self.config, self.sets).to_dict()
            key = hashlib.sha1(repr((settings, str(self.data.resolve()))).encode()).hexdigest()[:8]
            self.damsm = self.work / f"damsm-{Path(self.config).stem}-{key}" / "latest.pt"
        self.log_every = max(1, self.steps // 6)

    def common(self) -> list[str]:
        return ["--config", self.config, "--data", str(self.data), "--device", self.device, "--quiet",
                *[x for kv in self.sets for x in ("--set", kv)]]


def run_command(args: list[str], log_path: Path, timeout: float | None) -> float:
    """Runs ``python -m attngan_fast ARGS`` with its output in ``log_path``; seconds taken. ``timeout``:
    seconds, or None for no limit."""
    start = time.time()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "attngan_fast", *args], stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"attngan-fast {args[0]} ran out of the budget's {timeout:.0f} s (output: {log_path})") from None
    if proc.returncode != 0:  # the command's own last line says why (its errors are one line)
        last = next((line for line in reversed(log_path.read_text().splitlines()) if line.strip()), "")
        raise RuntimeError(f"attngan-fast {args[0]} exited with {proc.returncode} (output: {log_path}): "
                           f"{last.strip()[:400]}")
    return time.time() - start


def final_record(log_jsonl: Path) -> dict:
    """The training log's closing line (steps/s and peak memory of the run)."""
    records = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    finals = [r for r in records if r.get("final")]
    if not finals:
        raise RuntimeError(f"{log_jsonl} has no final record: did the run finish?")
    return finals[-1]


def prepare(loop: Loop, timeout: float | None) -> dict:
    """The synthetic birds and the brief DAMSM, where not given and not made before."""
    try:
        import nltk  # noqa: F401
    except ImportError as err:
        return {"not_applicable": f"nltk is not importable ({err})"}
    loop.work.mkdir(parents=True, exist_ok=True)
    if not (loop.data / "CUB_200_2011" / "images.txt").exists():
        run_command(["data", "synth", "--out", str(loop.data), "--images", str(loop.images), "--size",
                     str(loop.size), "--quiet"], loop.work / f"{loop.data.name}.log", timeout)
    if loop.kind == "gan" and not loop.damsm.exists():
        shutil.rmtree(loop.damsm.parent, ignore_errors=True)  # a pretraining cut short (the budget) left its log
        run_command(["pretrain-damsm", "--out", str(loop.damsm.parent), "--set", f"damsm.max_steps={loop.damsm_steps}",
                     "--set", "runtime.eval_batches=1", *loop.common()], loop.work / f"{loop.damsm.parent.name}.log",
                    timeout)
    return {"op": "loop_setup", "data": str(loop.data), "damsm": str(loop.damsm) if loop.kind == "gan" else None}


def run_variant(loop: Loop, variant: str, timeout: float | None) -> dict:
    """One fresh run of ``variant``: its steps/s, peak memory and wall seconds."""
    from attngan_fast.config import load_config

    cfg = load_config(loop.config, loop.sets)
    batch = cfg.gan.batch_size if loop.kind == "gan" else cfg.damsm.batch_size
    # the process in the name: two benchmarks may run at once; a config's file name, not its path
    run_dir = loop.work / f"{loop.kind}-{Path(loop.config).stem}-{variant}-{os.getpid()}"
    args = (["train", "--damsm", str(loop.damsm), "--set", "gan.samples_every=1000000000", "--set",
             "gan.max_minutes=null"] if loop.kind == "gan" else ["pretrain-damsm", "--set", "damsm.max_minutes=null"])
    row = {"op": "train_loop", "kind": loop.kind, "variant": variant, "flags": VARIANTS[variant],
           "case": f"{loop.config} B={batch} {cfg.gan.image_size if loop.kind == 'gan' else cfg.data.image_size}px",
           "load_1min": round(os.getloadavg()[0], 2)}
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: a leftover checkpoint would resume instead
    log = loop.work / f"{run_dir.name}.log"
    row["wall_s"] = round(run_command([*args, *loop.common(), "--out", str(run_dir),
                                       "--set", f"{loop.kind}.max_steps={loop.steps}",
                                       "--set", f"runtime.log_every={loop.log_every}", *VARIANTS[variant]],
                                      log, timeout), 1)
    final = final_record(run_dir / "log.jsonl")
    shutil.rmtree(run_dir)  # its checkpoints (~1.3 GB a variant at the bird preset)
    log.unlink()  # read: only a failed run's output is kept (its error names it)
    row.update({k: final[k] for k in ("steps_per_s", "timed_steps", "peak_memory_mb") if k in final})
    row["images_per_s"] = row["steps_per_s"] * batch
    return row
