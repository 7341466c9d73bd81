"""What ``impl="auto"`` runs for F_attn on CPU tensors: the reference and SDPA, measured side by side.

    python -m benchmarks.cpu_attention                    # writes benchmarks/results/<cpu>-<date>-attention.*
    python -m benchmarks.cpu_attention --quick --out /tmp/x --cases "2 16 8"   # a self-check

Cases: the bird training shapes (B = 20, T = 18, C = 32 and 48, 64² and 128²) with the image features
NCHW (the default layout) and channels_last (``--channels-last``); fp32, and bf16 as a bf16-autocast
step feeds F_attn (its convolutions hand over bf16 features; the call runs inside ``torch.autocast``,
its backward outside, as PyTorch's AMP recipe has it); forward, and forward + backward. Both paths are
the public op as the generator calls it, ``word_attention(..., impl=...)``; their calls alternate, so
that the load of a shared machine falls on both alike, and each time is the median of ``--repeat``.
``attngan_fast.kernels.attention.op.CPU_AUTO`` follows the results file (a test checks it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attngan_fast.atomic import write_text_atomic
from attngan_fast.kernels import word_attention
from benchmarks.cases import AttentionCase, attention_inputs
from benchmarks.environment import environment, results_stem

PATHS = ("reference", "sdpa")
DTYPES = {"fp32": torch.float32, "bf16-autocast": torch.bfloat16}
CASES = [AttentionCase(20, c, s, layout=layout) for layout in ("nchw", "channels_last") for c in (32, 48) for s in (64, 128)]


def _call(path: str, inputs: tuple, dtype_name: str, backward: bool):
    """One training-like call of F_attn through ``path``."""
    query, context, word_mask = inputs

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_name == "bf16-autocast"):
            ctx, _ = word_attention(query, context, word_mask, impl=path)
        if backward:
            torch.autograd.grad(ctx, (query, context), torch.ones_like(ctx))

    return run


def measure(case: AttentionCase, dtype_name: str, backward: bool, repeat: int) -> dict:
    """Median milliseconds of each path on ``case``, their calls alternating after one warm-up each."""
    inputs = attention_inputs(case, "cpu", DTYPES[dtype_name])
    for x in inputs[:2]:
        x.requires_grad_(backward)
    runs = {path: _call(path, inputs, dtype_name, backward) for path in PATHS}
    times: dict = {path: [] for path in PATHS}
    for path in PATHS:
        runs[path]()
    for _ in range(repeat):
        for path in PATHS:
            start = time.perf_counter()
            runs[path]()
            times[path].append((time.perf_counter() - start) * 1e3)
    row = {"case": case.label, "layout": case.layout, "channels": case.channels, "side": case.side,
           "dtype": dtype_name, "mode": "fwd+bwd" if backward else "fwd"}
    row.update({f"{path}_ms": round(statistics.median(t), 2) for path, t in times.items()})
    row["faster"] = min(PATHS, key=lambda p: row[f"{p}_ms"])
    row["ratio"] = round(row["reference_ms"] / row["sdpa_ms"], 2)
    return row


def per_step(rows: list[dict]) -> list[dict]:
    """What a training step spends in F_attn per path, the measure ``impl="auto"`` follows: forward +
    backward summed over the image sides measured (the bird generator attends at 64² and at 128²),
    per layout, dtype and channel count, and which path is faster."""
    groups: dict = {}
    for r in rows:
        if r["mode"] == "fwd+bwd":
            group = groups.setdefault((r["layout"], r["dtype"], r["channels"]), {"sides": []})
            group["sides"].append(r["side"])
            for path in PATHS:
                group[path] = group.get(path, 0.0) + r[f"{path}_ms"]
    return [{"layout": layout, "dtype": dtype, "channels": channels, "sides": g["sides"],
             **{f"{p}_ms": round(g[p], 1) for p in PATHS}, "faster": min(PATHS, key=lambda p: g[p])}
            for (layout, dtype, channels), g in groups.items()]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# F_attn on CPU: reference vs SDPA ({env['device']}, {report['date']})", "",
             f"torch {env['torch']}, python {env['python']}, {report['threads']} threads, CPU capability "
             f"{report['cpu_capability']}. Command: `{report['command']}` ({report['seconds']} s). Median of "
             f"{report['repeat']} calls each, the two paths alternating; `word_attention(..., impl=...)` as the "
             "generator calls it; bf16-autocast = bf16 features, the call inside `torch.autocast` (backward "
             "outside), as in a bf16 training step.", "",
             "| case | dtype | mode | reference ms | sdpa ms | reference / sdpa | faster |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['mode']} | {r['reference_ms']:.1f} | {r['sdpa_ms']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['faster']} |")
    wins = {p: sum(r["faster"] == p for r in report["rows"]) for p in PATHS}
    lines += ["", "Faster in " + ", ".join(f"{n} of {len(report['rows'])} rows: {p}" for p, n in wins.items()) + ".",
              "", "Per training step (what `impl=\"auto\"` follows): forward + backward summed over the image sides "
              "(the bird generator attends at 64² and 128²), per layout:", "",
              "| layout | dtype | C | sides | reference ms | sdpa ms | faster |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in per_step(report["rows"]):
        lines.append(f"| {g['layout']} | {g['dtype']} | {g['channels']} | {' + '.join(f'{s}²' for s in g['sides'])} | "
                     f"{g['reference_ms']:.1f} | {g['sdpa_ms']:.1f} | {g['faster']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per path and row (median)")
    parser.add_argument("--quick", action="store_true", help="one timed call per path and row")
    parser.add_argument("--cases", nargs="*", metavar="'B C SIDE'",
                        help="other sizes than the bird ones, each 'B C SIDE' (both layouts)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results files")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        parser.error(f"--repeat must be at least 1, got {repeat}")
    cases = CASES
    if args.cases:
        sizes = [tuple(int(v) for v in spec.split()) for spec in args.cases]
        cases = [AttentionCase(b, c, s, layout=layout) for layout in ("nchw", "channels_last") for b, c, s in sizes]
    started = time.time()
    report = {"date": datetime.date.today().isoformat(), "environment": environment(torch.device("cpu")),
              "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "command": "python -m benchmarks.cpu_attention " + " ".join(sys.argv[1:] if argv is None else argv),
              "repeat": repeat, "rows": []}
    for case in cases:
        for dtype_name in DTYPES:
            for backward in (False, True):
                report["rows"].append(measure(case, dtype_name, backward, repeat))
                r = report["rows"][-1]
                print(f"[{time.time() - started:6.1f}s] {r['case']:38s} {r['dtype']:13s} {r['mode']:7s} "
                      f"reference {r['reference_ms']:8.1f} ms  sdpa {r['sdpa_ms']:8.1f} ms", flush=True)
    report["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results_stem(report)}-attention"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2))
    write_text_atomic(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
