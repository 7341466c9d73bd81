"""The GPU evidence in one call of at most 8 minutes, most important first (issue 16; DESIGN.md §6):

    scripts/gpu_quick.sh                                   # on the GPU machine: OUT=... set by the device tool
    python -m benchmarks.gpu_quick --out DIR               # the same without the wrapper
    python -m benchmarks.gpu_quick --unpack DIR            # here: DIR (what came back) -> benchmarks/results/
    python -m benchmarks.gpu_quick --device cpu --out DIR  # the self-check at toy sizes (CPU, interpreter)

Parts a-e (``benchmarks.quick_parts``) run one after another, each in its own time box; a part that
ends early leaves its time to part e, and every box is sized so that they add up to the budget
(``BOXES``; the reasons are beside each number). At the start a pool of warm-up workers, one per
spare core (``benchmarks.quick_warm``), compiles what the later parts need; it works inside part a's
box and is killed before the first timing. Every result is appended to ``DIR/quick.jsonl`` the moment
it exists; ``DIR/quick.md`` is rewritten after every part; the end prints what was not reached and
why. The part runner is a process of its own, killed at its part's box (plus a grace of a few
seconds) if it overruns, and a fresh one takes the next part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.quick_rows import RowLog, not_reached
from benchmarks.quick_warm import ROOT, WarmPool, pytest_tasks, python_env, warm_tasks

# Seconds per part on a fresh H200 (16 cores). Sum 435 + 5 graces of 3 s + ~5 s of start = 455 s,
# under the orchestrator's BUDGET of 465 s; the wrapper's wheel install and nvidia-smi fit the rest of
# the 8 minutes. What each box holds, from compile counts x seconds per compile:
# - a (180): the warm-up pool and the checks. Triton compiles one kernel in 2.5-7 s (measured cold on
#   the 2-core CPU here for sm_90, `kernel_resources --defaults`: DAMSM 2.5-7 s, F_attn 1-3 s); part a
#   needs ~36 compiling tasks (~300 worker-s), part b ~20 inductor graphs (~25 s each, ~60 s with
#   max-autotune: ~780 worker-s), part c's compiled step one chain of ~6 graphs (~180 s, the longest
#   single task), part d 80 candidate tasks (~780 worker-s), part e's tests ~600 worker-s: ~2,600
#   worker-s on 15 workers is ~175 s. The checks themselves (103 of them, ~0.3 s each once compiled)
#   start as soon as part a's own tasks are compiled (~30 s) and run beside the pool.
# - b (105): 45 rows; with the caches warm a compiled row is a trace plus cache hits (~3-6 s), a timed
#   one ~0.5 s (do_bench 25 ms warm-up + 50 ms): ~60 s, the rest margin. Cold caches cut it short:
#   the max-autotune rows go last in each group.
# - c (60): three variants, each built (~5 s) and warmed up; the compiled one traces ~6 graphs against
#   warm caches (~30 s).
# - d (45): six rows; tuning times 9-10 candidates per kernel at ~0.15 s each once compiled (~5 s a
#   row), then a timing and a float64 check.
# - e (45 + whatever a-d leave): the GPU tests the pool did not finish, then the real loop (needs
#   LOOP_MIN_SECONDS and nltk).
BOXES = {"a": 180.0, "b": 105.0, "c": 60.0, "d": 45.0, "e": 45.0}
BUDGET = 465.0
GRACE = 3.0
A_CHECKS_RESERVE = {"model": 60.0, "tiny": 25.0}  # of part a's box, kept for the checks after the warm-up
TINY_BOXES = {"a": 60.0, "b": 60.0, "c": 60.0, "d": 20.0, "e": 60.0}  # CPU self-check: interpreter, aot_eager
GPU_TEST_FILES = ["tests/test_gpu.py", "tests/test_gpu_training.py"]
# What part a already checks at the same sizes (the default launches against float64): not rerun in e.
PART_A_TESTS = "not compiled_kernels_match_float64"


class Runner:
    """The process that runs the parts (``python -m benchmarks.quick_parts --serve``), started early
    so its imports and CUDA start overlap the warm-up, and replaced after a kill."""

    def __init__(self, cfg: dict, env: dict):
        self.cfg, self.env, self.proc = cfg, env, None

    def ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.quick_parts", "--serve", json.dumps(self.cfg)],
                                         stdin=subprocess.PIPE, cwd=ROOT, env=self.env, text=True, start_new_session=True)

    def run(self, part: str, deadline: float, log: RowLog) -> str:
        """'done' (its own status), or why it stopped: killed at the box, or the process exited."""
        self.ensure()
        try:
            self.proc.stdin.write(f"run {part} {deadline}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return "died before it started"
        while True:
            end = next((r for r in log.read() if r["kind"] == "part_end" and r["part"] == part), None)
            if end is not None:
                return end["status"]
            if self.proc.poll() is not None:
                return f"died: its process exited with code {self.proc.returncode}"
            if time.time() > deadline + GRACE:
                self.kill()
                return "killed"
            time.sleep(0.25)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


def collect_gpu_tests(env: dict) -> tuple[list[str], str]:
    """(node ids of the GPU tests part e stands for, error text)."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               *GPU_TEST_FILES, "-k", PART_A_TESTS]
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return [], "collection took over 120 s"
    nodes = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if not nodes and proc.returncode not in (0, 5):
        return [], (proc.stdout + proc.stderr)[-800:]
    return nodes, ""


def deadlines(parts: list[str], boxes: dict, now: float, end: float) -> dict:
    """Each part's deadline if it started ``now``: its box, but never so late that the parts after it
    lose theirs; the last part takes everything left."""
    out = {}
    for i, part in enumerate(parts):
        later = parts[i + 1:]
        reserved = sum(boxes[q] + GRACE for q in later)
        out[part] = end - GRACE if not later else min(now + boxes[part], end - reserved)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_quick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-quick-out"), help="folder for the results ($OUT)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if there is one")
    parser.add_argument("--budget", type=float, default=None, help=f"seconds in all (default {BUDGET:.0f}; CPU: 300)")
    parser.add_argument("--box", action="append", default=[], metavar="PART=SECONDS", help="change one part's time box")
    parser.add_argument("--parts", default="abcde", help="which parts, in order (default abcde)")
    parser.add_argument("--workers", type=int, default=None, help="warm-up processes (default: CPU cores - 1; CPU: 1)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; CPU: aot_eager)")
    parser.add_argument("--unpack", metavar="DIR", help="write what a run left in DIR into --results, then stop")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where --unpack writes")
    args = parser.parse_args(argv)
    if args.unpack:
        return unpack(Path(args.unpack), Path(args.results))

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the self-check)")
    sizes = "model" if device == "cuda" else "tiny"
    boxes = dict(BOXES if sizes == "model" else TINY_BOXES)
    for item in args.box:
        part, _, seconds = item.partition("=")
        if part not in boxes or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--box: expected PART=SECONDS with PART in {''.join(boxes)}, got {item!r}")
        boxes[part] = float(seconds)
    parts = [p for p in args.parts if p in boxes]
    if not parts or len(parts) != len(args.parts):
        parser.error(f"--parts: letters of 'abcde', got {args.parts!r}")
    budget = args.budget or (BUDGET if sizes == "model" else 300.0)
    workers = args.workers or (max(1, (os.cpu_count() or 2) - 1) if sizes == "model" else 1)
    out = Path(args.out)
    rows_path = out / "quick.jsonl"
    if rows_path.exists() and rows_path.stat().st_size:
        parser.error(f"{rows_path} already holds a run: give another --out (nothing is overwritten)")
    started = time.time()
    end = started + budget
    log = RowLog(rows_path)
    cfg = dict(device=device, sizes=sizes, rows=str(rows_path), out=str(out), started=started,
               compile_backend=args.compile_backend or ("inductor" if sizes == "model" else "aot_eager"))
    command = "python -m benchmarks.gpu_quick " + " ".join(sys.argv[1:] if argv is None else argv)
    log.write("start", command=command, budget=budget, boxes=boxes, parts=parts, workers=workers, **cfg)
    print(f"gpu_quick: {device}, {sizes} sizes, budget {budget:.0f} s, boxes {boxes}, {workers} warm-up workers", flush=True)

    from benchmarks.launches import max_candidates
    from benchmarks.quick_parts import plan

    for part in parts:
        if part != "e":
            log.write("plan", part=part, ids=plan(part, sizes))
    env = python_env(device)
    runner = Runner(cfg, env)
    runner.ensure()
    pool = WarmPool(cfg, workers, out / "warm.log") if "a" in parts else None
    collected = threading.Event()

    def collect():
        nodes, error = collect_gpu_tests(env) if "e" in parts else ([], "")
        if "e" in parts:
            log.write("plan", part="e", ids=[f"e|pytest|{n}" for n in nodes] + plan("e", sizes))
            if error:
                log.write("row", part="e", id="e|collection", status="error", error=error)
        if pool is not None and nodes:
            pool.submit(pytest_tasks(nodes, tiny=sizes == "tiny"))
        collected.set()

    if pool is not None:
        pool.start(env)
        pool.submit(warm_tasks(sizes, max_candidates(), tiny=sizes == "tiny"))
    threading.Thread(target=collect, daemon=True).start()

    try:
        for part in parts:
            now = time.time()
            deadline = deadlines(parts[parts.index(part):], boxes, now, end)[part]
            if part == "a" and pool is not None:
                _wait(lambda: not pool.pending(log.read(), "a"), until=deadline - A_CHECKS_RESERVE[sizes])
            log.write("box", part=part, start=time.time(), deadline=deadline, box=boxes[part])
            print(f"=== part {part}: {deadline - time.time():.0f} s (box {boxes[part]:.0f} s) ===", flush=True)
            status = runner.run(part, deadline, log) if deadline > time.time() + 1 else "no time left"
            if status == "killed":
                log.write("killed", part=part, reason=f"killed at the end of part {part}'s time box "
                                                      f"({boxes[part]:.0f} s): the row in flight and the rest")
            elif status.startswith("died") or status == "no time left":
                log.write("killed", part=part, reason=f"part {part}: {status}")
            if part == "a" and pool is not None:
                _wait(lambda: collected.is_set() and not pool.pending(log.read()), until=deadline)
                unfinished = pool.pending(log.read())
                pool.kill()
                log.write("warm_end", finished=len(pool.submitted) - len(unfinished), unfinished=unfinished)
                print(f"warm-up: {len(pool.submitted) - len(unfinished)} of {len(pool.submitted)} tasks done", flush=True)
            write_markdown(log.read(), out / "quick.md")
    finally:
        if pool is not None:
            pool.kill()
        runner.close()
    records = log.read()
    missing = not_reached(records)
    log.write("end", seconds=round(time.time() - started, 1), not_reached=[f"{i}: {why}" for i, why in missing])
    records = log.read()
    write_markdown(records, out / "quick.md")
    print(summary(records), flush=True)
    return 0


def _wait(done, until: float) -> None:
    while time.time() < until and not done():
        time.sleep(0.5)


# --- what comes back: summary, markdown, unpack -------------------------------------------------------

def _rows(records: list[dict], part: str) -> list[dict]:
    return [r for r in records if r["kind"] == "row" and r.get("part") == part]


def report(records: list[dict]) -> dict:
    """The rows of parts b-d as a ``benchmarks.gpu`` report (its markdown and results-file format)."""
    start = next(r for r in records if r["kind"] == "start")
    env = next((r["environment"] for r in records if r["kind"] == "env"), {"device": "unknown", "torch": "?",
                                                                            "triton": "?", "python": "?"})
    ceilings = next((r.get("ceilings") for r in _rows(records, "b") if r["id"] == "b|ceilings"), None)
    bookkeeping = {"kind", "t", "part", "id", "status", "reason"}
    kernels = [{k: v for k, v in r.items() if k not in bookkeeping} for part in ("b", "d") for r in _rows(records, part)
               if "provider" in r]
    train = [{k: v for k, v in r.items() if k not in bookkeeping} for r in _rows(records, "c") if "variant" in r]
    seconds = {r["part"]: r.get("seconds") for r in records if r["kind"] == "part_end"}
    return {"date": datetime.date.fromtimestamp(start["t"]).isoformat(), "environment": env,
            "sizes": "model" if start["sizes"] == "model" else "small", "commands": {"quick": start["command"]},
            "seconds": {"quick": round(sum(s for s in seconds.values() if s), 1)}, "kernels": kernels, "train": train,
            "ceilings": ceilings, "quick_seconds": seconds}


def _check_table(rows: list[dict]) -> list[str]:
    lines = ["| op | case | dtype | layout | precision | output | rel. error | tolerance | result | kernels |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "output" not in r:
            continue
        err = f"{r['rel_err']:.2e}" if r.get("rel_err") is not None else r.get("problem") or r.get("error", "")
        lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['variant'] or 'nchw'} | {r['precision']} | "
                     f"{r['output']} | {err} | {r['tol']:.0e} | {'pass' if r['status'] == 'ok' else '**FAIL**'} | "
                     f"{', '.join(r.get('kernels', []))} |")
    errors = [r for r in rows if r["status"] == "error"]
    lines += [f"- error: `{r['id']}`: {r.get('error', '')}" for r in errors]
    return lines + [""]


def _counts(rows: list[dict]) -> str:
    statuses = [r.get("status") for r in rows]
    return ", ".join(f"{statuses.count(s)} {s}" for s in ("ok", "failed", "error", "skipped") if s in statuses) or "none"


def write_markdown(records: list[dict], path: Path) -> None:
    """quick.md: per part what ran, the correctness checks, the benchmark tables, the tests, the warm-up
    and what was not reached (written atomically)."""
    from benchmarks.gpu import _add_ratios, _add_train_ratios, markdown

    start = next((r for r in records if r["kind"] == "start"), None)
    if start is None:
        return
    rep = report(records)
    _add_ratios(rep["kernels"])
    _add_train_ratios(rep["train"])
    ends = {r["part"]: r for r in records if r["kind"] == "part_end"}
    lines = [f"# Quick GPU evidence: {rep['environment'].get('device')} ({rep['date']})", "",
             f"Command: `{start['command']}`; budget {start['budget']:.0f} s; boxes "
             + ", ".join(f"{p} {s:.0f} s" for p, s in start["boxes"].items()) + ".", "",
             "| part | status | seconds | rows |", "| --- | --- | --- | --- |"]
    killed = {r["part"]: r["reason"] for r in records if r["kind"] == "killed"}
    for part in start["parts"]:
        end = ends.get(part, {})
        lines.append(f"| {part} | {killed.get(part) or end.get('status', 'not started')} | {end.get('seconds', '-')} | "
                     f"{_counts(_rows(records, part))} |")
    lines += ["", "## a. Default launches against float64", ""] + _check_table(_rows(records, "a"))
    kernels_row = next((r for r in _rows(records, "a") if r["id"] == "a|kernels"), None)
    if kernels_row:
        lines += ["Kernels launched: " + ", ".join(f"{k} ({v})" for k, v in sorted(kernels_row["launched"].items()))
                  + f"; never launched: {kernels_row['never_launched'] or 'none'}.", ""]
    lines += ["## b-d. Kernel tables and training step", "", markdown(rep).split("\n", 2)[2]]
    tuned = [r for r in _rows(records, "d") if "check" in r]
    if tuned:
        lines += ["Autotuned rows against float64: " + "; ".join(
            f"{r['op']} {r['case']} {r['dtype']} (tuned at {r['tuned_at']}): "
            + ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in r["check"].items())
            + (" pass" if r["status"] == "ok" else " **FAIL**") for r in tuned), ""]
    tests = [r for r in _rows(records, "e") if "nodeid" in r]
    lines += ["## e. GPU tests and the real loop", "", "| test | outcome | seconds | where |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r['nodeid']}` | {r['outcome']}{' (' + r['phase'] + ')' if r['phase'] != 'call' else ''} | "
              f"{r['seconds']} | {r['where']} |" for r in tests]
    loop = [r for r in _rows(records, "e") if r["id"].startswith("e|loop|") and r["status"] != "skipped"]
    lines += [""] + [f"- loop `{r['variant']}`: " + (f"{r['steps_per_s']:.2f} steps/s, peak {r.get('peak_memory_mb')} MB"
                                                    if "steps_per_s" in r else r.get("error", "")) for r in loop]
    warm = _rows(records, "warm")
    if warm:
        lines += ["", f"## Warm-up workers: {len(warm)} tasks finished, {sum(r['seconds'] for r in warm):.0f} "
                  "worker-seconds", ""]
        lines += [f"- {r['id']}: {r['status']} {r['seconds']} s {r.get('error', '')}" for r in warm]
    missing = not_reached(records)
    lines += ["", f"## Not reached ({len(missing)})", ""] + [f"- `{i}`: {why}" for i, why in missing]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def summary(records: list[dict]) -> str:
    """The end of the output (what the device tool brings back first): per part its rows, failures,
    the headline times, and what was not reached."""
    lines = ["", "=" * 100, "gpu_quick summary (details: quick.md, quick.jsonl)"]
    killed = {r["part"]: r["reason"] for r in records if r["kind"] == "killed"}
    ends = {r["part"]: r for r in records if r["kind"] == "part_end"}
    start = next(r for r in records if r["kind"] == "start")
    for part in start["parts"]:
        rows = _rows(records, part)
        lines.append(f"part {part}: {_counts(rows)}; {killed.get(part) or ends.get(part, {}).get('status', 'not started')}"
                     f" ({ends.get(part, {}).get('seconds', '-')} s)")
        for r in rows:
            if r["status"] in ("failed", "error"):
                detail = r.get("error") or r.get("message") or (f"rel {r.get('rel_err')} > tol {r.get('tol')}"
                                                               if "rel_err" in r else r.get("check", ""))
                lines.append(f"  {r['status'].upper()} {r['id']}: {str(detail)[:300]}")
    for r in _rows(records, "b") + _rows(records, "d") + _rows(records, "c"):
        if "ms" in r:
            what = r.get("provider") or r.get("variant")
            lines.append(f"  {r['part']} {r['op']:10s} {r['case']:24s} {r.get('dtype', ''):4s} {what:32s} {r['ms']:10.3f} ms")
    warm_end = next((r for r in records if r["kind"] == "warm_end"), None)
    if warm_end:
        lines.append(f"warm-up: {warm_end['finished']} tasks done, {len(warm_end['unfinished'])} unfinished")
    missing = not_reached(records)
    lines.append(f"NOT REACHED ({len(missing)}):")
    lines += [f"  {i}: {why}" for i, why in missing]
    end = next((r for r in records if r["kind"] == "end"), None)
    if end:
        lines.append(f"total {end['seconds']} s")
    return "\n".join(lines)


def unpack(folder: Path, results: Path) -> int:
    """Writes a run's results into ``results``: ``<device>-<date>.json/.md`` (the ``benchmarks.gpu``
    format: parts b-d), ``<device>-<date>-quick.md`` and ``-quick.jsonl`` (everything, part a's checks and
    part e's tests included) and the loop's ``-train-loop`` files when part e ran it. Refuses to
    overwrite a file that is already there."""
    from benchmarks.gpu import _add_ratios, _add_train_ratios, _results_stem, markdown

    rows_path = folder / "quick.jsonl"
    if not rows_path.exists():
        print(f"--unpack: {rows_path} does not exist (give the folder the run's files came back in)", file=sys.stderr)
        return 2
    records = RowLog(rows_path).read()
    rep = report(records)
    _add_ratios(rep["kernels"])
    _add_train_ratios(rep["train"])
    stem = _results_stem(rep)
    loop = sorted((folder / "loop").glob("*-train-loop.*"))
    targets = {results / f"{stem}.json": json.dumps(rep, indent=2), results / f"{stem}.md": markdown(rep)}
    copies = {results / f"{stem}-quick.jsonl": rows_path, **{results / p.name: p for p in loop}}
    quick_md = folder / "quick.md"
    if not quick_md.exists():
        write_markdown(records, quick_md) if os.access(folder, os.W_OK) else None
    if quick_md.exists():
        copies[results / f"{stem}-quick.md"] = quick_md
    clash = [str(p) for p in [*targets, *copies] if p.exists()]
    if clash:
        print(f"--unpack: would overwrite {', '.join(clash)}; move them away first", file=sys.stderr)
        return 2
    results.mkdir(parents=True, exist_ok=True)
    for path, text in targets.items():
        path.write_text(text)
    for path, source in copies.items():
        shutil.copyfile(source, path)
    for path in [*targets, *copies]:
        print(f"wrote {path}")
    print(summary(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
