"""Checkpoints that lose nothing: written to a temporary file and renamed (a crash never leaves half a
file), read back with ``torch.load(weights_only=True)`` (no code runs on load), with the RNG states
that make a resumed run continue exactly as an uninterrupted one."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import torch

from ..atomic import atomic_path


def save_atomic(obj, path: str | Path) -> Path:
    # Through a file object: a full disk then reaches atomic_path as the file's OSError (as the context
    # of torch's RuntimeError), where a path would give torch's bare "unexpected pos" message.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or is of another kind than the command needs."""


def load_checkpoint(path: str | Path, expected_format: str | None = None) -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (a run's checkpoint is its latest.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        # Whatever torch's unpickler trips over (a text file gives KeyError, IndexError or
        # UnpicklingError), and its message suggests weights_only=False: an untrusted file must never get that.
        raise CheckpointError(f"{path} is not a readable checkpoint (expected a torch.save file of tensors and "
                              "plain data, as attngan-fast writes)") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path} is not an attngan-fast checkpoint")
    if expected_format is not None and ckpt["format"] != expected_format:
        kind = {"attngan-fast/damsm/1": "a DAMSM", "attngan-fast/gan/1": "a generator"}
        raise CheckpointError(f"{path} is {kind.get(ckpt['format'], repr(ckpt['format']))} checkpoint; this needs "
                              f"{kind.get(expected_format, repr(expected_format))} checkpoint")
    return ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


@contextlib.contextmanager
def rng_neutral():
    """Run evaluation or pictures without moving the training RNG streams, so a run that evaluates at
    different points (a resumed one) keeps the same dropout masks."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
