"""pytest plugin of ``benchmarks.gpu_quick``: appends one row per test to the quick results file
(``ATTNGAN_QUICK_ROWS``) as soon as the test's outcome is known, so a pytest run stopped at a time box
keeps every result it had (``pytest -q`` would leave only dots). Used as ``-p benchmarks.quick_pytest``."""

from __future__ import annotations

import os

from benchmarks.quick_rows import RowLog


def _log() -> RowLog | None:
    path = os.environ.get("ATTNGAN_QUICK_ROWS")
    return RowLog(path) if path else None


def pytest_runtest_logreport(report):
    """The call phase's outcome, or the setup's when the test never got to its call (skipped, or an
    error in a fixture), or a teardown error."""
    log = _log()
    if log is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed) or (
            report.when == "teardown" and report.failed):
        outcome = report.outcome if report.when == "call" else "error" if report.failed else report.outcome
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.failed:
            message = str(report.longrepr)[-1500:]
        status = {"passed": "ok", "skipped": "ok", "failed": "failed", "error": "failed"}[outcome]
        log.write("row", part="e", id=f"e|pytest|{report.nodeid}", status=status, nodeid=report.nodeid,
                  outcome=outcome, phase=report.when, seconds=round(report.duration, 2), message=message,
                  where=os.environ.get("ATTNGAN_QUICK_WHERE", ""))
