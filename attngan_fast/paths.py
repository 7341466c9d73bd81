"""Output paths checked before any work starts: a run that writes into a folder must not find a file
there (it would fail midway, after minutes of training), and a report file must not be a folder."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


class NotAFolderError(ValueError):
    """An output path names an existing file where a folder is needed, or the reverse."""


def check_folder(path: str | Path, what: str = "the output folder") -> Path:
    """``path`` as a Path, unless it names an existing file or lies under one (no folder can be made
    there)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAFolderError(f"{what} {path} is a file, not a folder: give another --out")
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if not path.exists() and above is not None and not above.is_dir():
        raise NotAFolderError(f"{what} {path} cannot be made: {above} is a file, not a folder")
    return path


def check_file(path: str | Path, what: str = "the output file") -> Path:
    """``path`` as a Path, unless it names an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise NotAFolderError(f"{what} {path} is a folder, not a file: give a file name, e.g. {path / 'report.json'}")
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise NotAFolderError(f"{what} {path} cannot be made: {above} is a file, not a folder")
    return path


def private_temp_folder(prefix: str) -> Path:
    """A new temporary folder only this user can read (mkdtemp: 0700), removed when the process exits
    (also on SIGTERM, which the command line turns into an exit)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
