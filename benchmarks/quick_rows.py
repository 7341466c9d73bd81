"""The results file of ``benchmarks.gpu_quick``: JSON lines, one record per line, appended the moment a
result exists, by whichever process has it (the orchestrator, the part runner, the warm-up workers,
pytest). Each record is one ``write`` on a file opened with ``O_APPEND``, so records of several
processes never interleave, and a process killed mid-part loses at most the row it was measuring,
never the file.

Record kinds: ``start`` (command, budget, time boxes), ``plan`` (a part's row ids, before it runs),
``box`` (a part's start and deadline), ``row`` (a result, ``status`` "ok", "failed", "error" or
"skipped" with its ``reason``), ``part_end``, ``killed`` (a part stopped at its time box), ``end``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class RowLog:
    """Appends records to ``path`` (created if missing) and reads them back."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields) -> dict:
        record = {"kind": kind, "t": round(time.time(), 3), **fields}
        line = (json.dumps(record, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return record

    def read(self) -> list[dict]:
        """Every complete record so far (a line cut short by a kill is left out)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records


def done_ids(records: list[dict]) -> set[str]:
    """Ids of the rows that produced a result (not the skipped ones)."""
    return {r["id"] for r in records if r["kind"] == "row" and r.get("status") != "skipped"}


def not_reached(records: list[dict]) -> list[tuple[str, str]]:
    """(row id, why) for every planned row without a result, in plan order."""
    done = done_ids(records)
    skipped = {r["id"]: r.get("reason", "skipped") for r in records if r["kind"] == "row" and r.get("status") == "skipped"}
    killed = {r["part"]: r.get("reason", "killed") for r in records if r["kind"] == "killed"}
    started = {r["part"] for r in records if r["kind"] == "box"}
    missing = []
    for plan in (r for r in records if r["kind"] == "plan"):
        part = plan["part"]
        for row_id in plan["ids"]:
            if row_id in done:
                continue
            if row_id in skipped:
                why = skipped[row_id]
            elif part in killed:
                why = killed[part]
            elif part not in started:
                why = f"part {part} did not start (no time left, or an earlier failure)"
            else:
                why = f"part {part} ended without it"
            missing.append((row_id, why))
    return missing
