"""The GPU benchmark set of DESIGN.md §6 in one command (within 10 minutes on an H200-class GPU):

    python -m benchmarks.gpu                 # all: kernels and training steps
    python -m benchmarks.gpu --only kernels  # or: --only train
    python -m benchmarks.gpu --device cpu --quick --out /tmp/x   # self-check of this script (CI)

Times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up first, so autotuning and
compilation are done before timing); peak extra memory is ``max_memory_allocated`` above what the
inputs hold; achieved TFLOP/s and GB/s use the counted work of ``benchmarks.cases``; ratios compare the
fused kernels with every baseline measured in the same run. Writes
``<out>/<device>-<date>.json`` and ``.md`` with the device, versions, sizes and this command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Without CUDA this script can only self-check at CPU sizes, with the fused kernels in the Triton
    # interpreter, which must be chosen before `kernels` is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.cases import (CPU_ATTENTION, CPU_DAMSM, GPU_ATTENTION, GPU_DAMSM, PROVIDERS, attention_inputs,
                              attention_provider, attention_work, damsm_inputs, damsm_provider, damsm_work,
                              forward_backward)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timer(device: torch.device, quick: bool):
    """fn -> median milliseconds."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=25 if quick else 100, rep=50 if quick else 300,
                                                        return_mode="median"))

    def cpu(fn):
        fn()
        times = []
        for _ in range(1 if quick else 5):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return cpu


def peak_extra_mb(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _kernel_rows(op: str, cases, inputs_fn, provider_fn, work_fn, device, measure, quick, log) -> list[dict]:
    rows = []
    for case in cases:
        for dtype_name, dtype in DTYPES.items():
            for mode in ("fwd", "fwd+bwd"):
                for provider in PROVIDERS:
                    inputs = inputs_fn(case, device, dtype)
                    fn = provider_fn(provider)
                    if mode == "fwd":
                        run = (lambda f, i: lambda: f(*i))(fn, inputs)
                    else:
                        grads = tuple(x.requires_grad_() for x in (inputs[0], inputs[2] if op == "damsm" else inputs[1]))
                        run = forward_backward(fn, inputs, grads)
                    row = {"op": op, "case": case.label, "dtype": dtype_name, "mode": mode, "provider": provider}
                    try:
                        row["ms"] = measure(run)
                        row["peak_extra_mb"] = peak_extra_mb(run, device)
                        flops, moved = work_fn(case, torch.finfo(dtype).bits // 8, mode == "fwd+bwd")
                        row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
                        row["gbps"] = moved / (row["ms"] * 1e-3) / 1e9
                    except Exception as err:  # a baseline that cannot run (memory, compiler) is recorded, not fatal
                        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                    rows.append(row)
                    log(row)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    """speedup of the fused kernels over each baseline, per (case, dtype, mode)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["op"], row["case"], row["dtype"], row["mode"]), {})[row["provider"]] = row
    for group in groups.values():
        fused = group.get("fused")
        if not fused or "ms" not in fused:
            continue
        fused["speedup_vs"] = {name: round(r["ms"] / fused["ms"], 2) for name, r in group.items()
                               if name != "fused" and "ms" in r}


def _train_rows(device, measure, quick, log) -> list[dict]:
    from benchmarks.train_step import VARIANTS, bird_config, build_step, random_batch, tiny_config

    rows = []
    for variant in VARIANTS:
        cfg = tiny_config() if device.type != "cuda" else bird_config()
        row = {"op": "train_step", "case": f"{'bird' if device.type == 'cuda' else 'tiny'} B={cfg.gan.batch_size} "
                                           f"{cfg.gan.image_size}px", "variant": variant}
        try:
            torch._dynamo.reset()
            step, context = build_step(cfg, variant, device)
            batch = random_batch(cfg)
            with context():
                step(batch)  # compile / warm up
                run = lambda: step(batch)  # noqa: E731
                row["ms"] = measure(run)
                row["peak_extra_mb"] = peak_extra_mb(run, device)
            row["steps_per_s"] = 1e3 / row["ms"]
            row["images_per_s"] = cfg.gan.batch_size * row["steps_per_s"]
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        log(row)
    base = next((r for r in rows if r["variant"] == "released-fp32-eager" and "ms" in r), None)
    if base:
        for r in rows:
            if "ms" in r:
                r["speedup_vs_released"] = round(base["ms"] / r["ms"], 2)
                if base.get("peak_extra_mb") and r.get("peak_extra_mb"):
                    r["memory_vs_released"] = round(r["peak_extra_mb"] / base["peak_extra_mb"], 2)
    return rows


def environment(device: torch.device) -> dict:
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(sms=props.multi_processor_count, memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Benchmarks on {env['device']} ({report['date']})", "",
             f"torch {env['torch']}, triton {env['triton']}, python {env['python']}. Command: `{report['command']}`",
             "", "Median times (ms); speedup = baseline time / fused time in the same run.", ""]
    for op in ("damsm", "attention"):
        rows = [r for r in report["kernels"] if r["op"] == op]
        if not rows:
            continue
        lines += [f"## {'DAMSM word scores' if op == 'damsm' else 'F_attn word attention'}", "",
                  "| case | dtype | mode | released | reference | ref. compiled | fused | fused TFLOP/s | fused GB/s | "
                  "fused peak MB | speedup vs released / reference / compiled |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["provider"]] = r
        for (case, dtype, mode), g in groups.items():
            cell = lambda p: f"{g[p]['ms']:.3f}" if p in g and "ms" in g[p] else "err"  # noqa: E731
            fused = g.get("fused", {})
            sp = fused.get("speedup_vs", {})
            peak = fused.get("peak_extra_mb")
            lines.append(
                f"| {case} | {dtype} | {mode} | {cell('released')} | {cell('reference')} | {cell('reference-compiled')} | "
                f"{cell('fused')} | {fused.get('tflops', float('nan')):.2f} | {fused.get('gbps', float('nan')):.0f} | "
                f"{'-' if peak is None else f'{peak:.1f}'} | "
                f"{sp.get('released', '-')}x / {sp.get('reference', '-')}x / {sp.get('reference-compiled', '-')}x |")
        lines.append("")
    if report["train"]:
        lines += ["## One training step (D steps + G step with the DAMSM loss)", "",
                  "| case | variant | ms | steps/s | images/s | peak MB | speedup vs released | memory vs released |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["train"]:
            if "ms" not in r:
                lines.append(f"| {r['case']} | {r['variant']} | error: {r['error']} | | | | | |")
                continue
            peak = r.get("peak_extra_mb")
            lines.append(f"| {r['case']} | {r['variant']} | {r['ms']:.1f} | {r['steps_per_s']:.2f} | "
                         f"{r['images_per_s']:.1f} | {'-' if peak is None else f'{peak:.0f}'} | "
                         f"{r.get('speedup_vs_released', '-')}x | {r.get('memory_vs_released', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a self-check at CPU sizes)")
    parser.add_argument("--only", choices=["kernels", "train"], help="run one part only")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results files")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device; use --device cpu for a self-check", file=sys.stderr)
        return 2
    measure = timer(device, args.quick)
    started = time.time()

    def log(row):
        what = row.get("provider") or row.get("variant")
        value = f"{row['ms']:.3f} ms" if "ms" in row else row.get("error")
        print(f"[{time.time() - started:6.1f}s] {row['op']:10s} {row['case']:32s} {row.get('dtype', ''):4s} "
              f"{row.get('mode', ''):7s} {what:24s} {value}", flush=True)

    gpu = device.type == "cuda"
    report = {"date": datetime.date.today().isoformat(), "command": "python -m benchmarks.gpu " + " ".join(argv or sys.argv[1:]),
              "environment": environment(device), "kernels": [], "train": []}
    if args.only in (None, "kernels"):
        report["kernels"] += _kernel_rows("damsm", GPU_DAMSM if gpu else CPU_DAMSM, damsm_inputs, damsm_provider,
                                          damsm_work, device, measure, args.quick, log)
        report["kernels"] += _kernel_rows("attention", GPU_ATTENTION if gpu else CPU_ATTENTION, attention_inputs,
                                          attention_provider, attention_work, device, measure, args.quick, log)
    if args.only in (None, "train"):
        report["train"] = _train_rows(device, measure, args.quick, log)
    report["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", report["environment"]["device"]).strip("-").lower() + "-" + report["date"]
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / stem}.json and .md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
