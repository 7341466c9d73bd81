"""A run folder is never overwritten silently (docs/design.md §7).

A training command whose output folder already holds a run (a ``latest.pt``, or the log of a run
killed before its first checkpoint) stops with a one-line error that says what is there and offers
``--resume OUT/latest.pt`` or ``--overwrite``; ``--overwrite`` moves the earlier run's files into
``OUT/replaced-<time>/`` and says so (nothing is deleted). Only files the training loops write are
considered, so ``--out .`` never moves a user's own files.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from .checkpoint import load_checkpoint
from ..paths import check_folder

# What the loops (and the demo's phase marker) write into a run folder; the first two kinds say that
# a run is there, the rest move with it.
RUN_MARKS = ("latest.pt", "log.jsonl")
RUN_MARK_PATTERNS = ("damsm_epoch*.pt", "netG_epoch*.pt")
RUN_FILES = RUN_MARKS + ("phase.json", "eval_curve.png")
# ".NAME.*.tmp": what a killed atomic write of a checkpoint or picture left behind (atomic.atomic_path)
RUN_PATTERNS = RUN_MARK_PATTERNS + ("attention_maps_step*.png", ".*.pt.*.tmp", ".*.png.*.tmp")
RUN_FOLDERS = ("samples", "tensorboard")
KINDS = {"attngan-fast/damsm/1": "a DAMSM run", "attngan-fast/gan/1": "an AttnGAN run"}


class RunExistsError(ValueError):
    """The output folder holds a run that this one would overwrite."""


def run_files(out: Path) -> list[Path]:
    """The files and folders of a run in ``out`` (empty when it holds none)."""
    found = [out / name for name in RUN_FILES + RUN_FOLDERS if (out / name).exists()]
    for pattern in RUN_PATTERNS:
        found += sorted(out.glob(pattern))
    return found


KILLED_WRITES = (".*.pt.*.tmp", ".*.png.*.tmp", "samples/.*.png.*.tmp")


def remove_killed_writes(out: Path) -> list[Path]:
    """Removes the temporary files that atomic writes killed halfway left in a run folder this run now
    owns (a whole checkpoint's size each; a finished write never leaves one); returns them."""
    found = [path for pattern in KILLED_WRITES for path in out.glob(pattern) if path.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def describe_run(out: Path) -> tuple[str, str] | None:
    """(what the folder holds, in full and short), e.g. ('a DAMSM run (latest.pt at step 50, epoch 2)',
    'DAMSM run (step 50)'), or None when ``out`` holds no run."""
    latest = out / "latest.pt"
    if latest.is_file():
        try:
            ckpt = load_checkpoint(latest)
        except (ValueError, OSError):
            return "a latest.pt that is not a readable checkpoint", "unreadable latest.pt"
        kind = KINDS.get(ckpt.get("format"), f"a {ckpt.get('format')!r} run")
        step = ckpt.get("step")
        return f"{kind} (latest.pt at step {step}, epoch {ckpt.get('epoch')})", f"{kind.split(' ', 1)[1]} (step {step})"
    if any((out / name).exists() for name in RUN_MARKS) or any(any(out.glob(p)) for p in RUN_MARK_PATTERNS):
        return "the log of a run that saved no checkpoint", "run's files (no checkpoint)"
    return None


def claim_run_folder(out: Path, *, resume: str | Path | None, overwrite: bool) -> tuple[Path | None, dict]:
    """Checks that a run may write into ``out``; with ``overwrite``, moves the earlier run aside. Call it
    in one process (rank 0). Returns (the checkpoint to resume from, which moves with the earlier run
    if it was one of its files; the first record of the new log, {} or {"started": True, "replaced":
    folder})."""
    out = check_folder(out)
    found = describe_run(out) if out.is_dir() else None
    resume = None if resume is None else Path(resume)
    continues = resume is not None and resume.resolve() == (out / "latest.pt").resolve()
    if continues and overwrite:
        raise RunExistsError(f"--resume {resume} continues the run in {out}, which --overwrite would move aside: "
                             "give one of them")
    if found is None or continues:
        remove_killed_writes(out)
        return resume, {}
    what, short = found
    if not overwrite:
        if resume is not None:
            raise RunExistsError(f"{out} already holds {what}; resuming {resume} there would replace it: give "
                                 "another --out, or --overwrite to move the earlier run aside first")
        if not (out / "latest.pt").is_file():  # nothing to continue from
            raise RunExistsError(f"{out} already holds {what}: start over with --overwrite (which moves it into "
                                 f"{out / 'replaced-<time>'}), or give another --out")
        raise RunExistsError(f"{out} already holds {what}: continue it with --resume {out / 'latest.pt'}, or start "
                             f"over with --overwrite (which moves it into {out / 'replaced-<time>'})")
    aside = out / time.strftime("replaced-%Y%m%d-%H%M%S")
    while aside.exists():  # two overwrites within a second
        aside = aside.with_name(aside.name + "+")
    moved = run_files(out)
    aside.mkdir()
    for path in moved:
        shutil.move(str(path), str(aside / path.name))
    print(f"attngan-fast: --overwrite: moved the earlier {short} to {aside}", file=sys.stderr)
    if resume is not None and resume.resolve().parent == out.resolve() and resume.name in {p.name for p in moved}:
        resume = aside / resume.name
    return resume, {"started": True, "replaced": str(aside)}
