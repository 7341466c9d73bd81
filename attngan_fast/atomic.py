"""Atomic file writes: write a temporary file beside the target, flush it to disk, rename it over the
target. A crash or a full disk never leaves a half-written checkpoint or cache behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True):
    """Yields a temporary path in the target's folder; on success it replaces ``path``. Temporary files
    of this target that a killed write left behind (``.NAME.*.tmp``) are removed first: one writer per
    target (rank 0; a second run into the folder is refused, see ``train.run_folder``). ``durable``:
    flushed to disk before the rename (checkpoints, caches); without it a killed process still never
    leaves a half-written file, only a power cut might (pictures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the file gets what a plain write would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
