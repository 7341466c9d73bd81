"""Atomic file writes: write a temporary file beside the target, flush it to disk, rename it over the
target. A crash or a full disk never leaves a half-written checkpoint or cache behind."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class NoSpaceError(OSError):
    """A write that ran out of disk space or quota (``errno`` says which). ``filename`` is the file that
    was being written; an atomic write leaves its previous contents as they were."""

    def __init__(self, message: str, filename: str | Path | None = None, code: int = errno.ENOSPC):
        super().__init__(message)  # one argument: str() is the message, and the error pickles
        self.errno, self.filename = code, None if filename is None else str(filename)

    def __str__(self) -> str:
        return self.args[0]


def no_space_error(err: BaseException | None) -> OSError | None:
    """The full disk (ENOSPC, or EDQUOT: a quota) in ``err`` or the errors it was raised from, or None.
    torch.save reports one as a RuntimeError ("unexpected pos 576 vs 534") whose context is the file's
    OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def no_space_words(code: int | None) -> str:
    return "the disk quota is exceeded" if code == errno.EDQUOT else "no space left on the device"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True, clean: bool = True):
    """Yields a temporary path in the target's folder; on success it replaces ``path``, and a full disk
    raises ``NoSpaceError`` (the target unchanged, the temporary file removed). With ``clean``,
    temporary files of this target that a killed write left behind (``.NAME.*.tmp``) are removed first
    (a scan of the folder: pictures, thousands to a folder, skip it; a run folder's leftovers go when a
    run takes it over, ``train.run_folder``): one writer per target (rank 0; a second run into the
    folder is refused). ``durable``: flushed to disk before the rename (checkpoints, caches); without it
    a killed process still never leaves a half-written file, only a power cut might (pictures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        # mkstemp makes it 0600: the file keeps the mode of the one it replaces, or gets a plain write's
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except Exception as err:
        full = no_space_error(err)
        if full is None:
            raise
        kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
        raise NoSpaceError(f"{no_space_words(full.errno)} ({path.parent}) to write {path.name}{kept}", path,
                           full.errno) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
