"""The GPU benchmark set of DESIGN.md §6: one command, or one part per call where calls are limited
to 10 minutes (scripts/gpu_session.sh runs it that way):

    python -m benchmarks.gpu                 # all: DAMSM and F_attn kernels, training steps
    python -m benchmarks.gpu --only damsm    # or: --only attention, --only train, --only kernels
    python -m benchmarks.gpu --device cpu --quick --compile-backend aot_eager --out /tmp/x   # self-check (CI)
    python -m benchmarks.gpu --device cpu --sizes model --only kernels   # the baselines at the model's sizes on CPU

A lent GPU session runs ``python -m benchmarks.gpu_quick`` instead (≤ 8 minutes, most important first,
built from the same rows). Times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up
first, so autotuning and compilation are done before timing); peak extra memory is
``max_memory_allocated`` above what the inputs hold; achieved TFLOP/s and GB/s and the fraction of the
floor are of the *useful* work (``benchmarks.work``), and each fused row also carries the work its
kernels execute; ratios compare the fused kernels with every baseline measured in the same run. Writes
``<out>/<device>-<date>.json`` and ``.md`` with the device, versions, sizes and the commands; parts run
separately (``--only``, each well inside a 10-minute call) on the same day and device add up there.
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
    # interpreter, which must be chosen before `attngan_fast.kernels` is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attngan_fast import kernels
from benchmarks.cases import (ATTENTION_BASELINES, ATTENTION_PROVIDERS, CPU_ATTENTION, CPU_DAMSM, GPU_ATTENTION,
                              GPU_DAMSM, MAX_AUTOTUNE, NotApplicable, applies, attention_inputs, attention_provider,
                              attention_work, compile_backend, damsm_inputs, damsm_provider, damsm_work,
                              forward_backward)
from benchmarks.launches import launched

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


OPS = {  # op -> (inputs, provider, work, indices of the differentiable inputs)
    "damsm": (damsm_inputs, damsm_provider, damsm_work, (0, 2)),
    "attention": (attention_inputs, attention_provider, attention_work, (0, 1)),
}


def kernel_row(op: str, case, dtype_name: str, mode: str, provider: str, device: torch.device, measure,
               limits: dict | None = None) -> dict:
    """One measured row: ``provider`` on ``case`` in ``mode`` ("fwd" or "fwd+bwd"); a provider that
    cannot run (memory, compiler) gets an ``error`` instead of a time. ``measure=None`` runs it once
    and times nothing (what the warm-up processes of ``benchmarks.gpu_quick`` do)."""
    inputs_fn, provider_fn, work_fn, grad_at = OPS[op]
    dtype = DTYPES[dtype_name]
    row = {"op": op, "case": case.label, "dtype": dtype_name, "mode": mode, "provider": provider}
    try:
        inputs = inputs_fn(case, device, dtype)
        fn = provider_fn(provider)
        if mode == "fwd":
            run = (lambda f, i: lambda: f(*i))(fn, inputs)
        else:
            run = forward_backward(fn, inputs, tuple(inputs[i].requires_grad_() for i in grad_at))
        if measure is None:
            run()
            return row
        _, launch = launched(run)  # the first call compiles (and on CUDA autotunes) outside the timing
        row["ms"] = measure(run)
        row["peak_extra_mb"] = peak_extra_mb(run, device)
        useful, executed = work_fn(case, torch.finfo(dtype).bits // 8, mode == "fwd+bwd")
        row.update(useful_gflop=useful.flops / 1e9, useful_mb=useful.bytes / 1e6)
        row["tflops"] = useful.flops / (row["ms"] * 1e-3) / 1e12
        row["gbps"] = useful.bytes / (row["ms"] * 1e-3) / 1e9
        _floor(row, useful.flops, useful.bytes, limits)
        if provider.startswith("fused"):
            row["launch"] = launch
            # benchmarks.work counts the kernels at their default launch: exact for the untuned row
            row.update(executed_gflop=executed.flops / 1e9, executed_mb=executed.bytes / 1e6,
                       executed_at="default launch")
    except NotApplicable as err:  # a provider that does not take the case (SDPA backends): why
        row["not_applicable"] = str(err)
    except Exception as err:  # a baseline that cannot run (memory, compiler) is recorded, not fatal
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def provider_list(device: torch.device, model_sizes: bool) -> list[str]:
    """Providers a run times: all on CUDA; on CPU neither max-autotune (~90 s a graph on the 2-core
    CPU, for CPU kernels nobody ships) nor TF32 (a CUDA mode: the same graph as reference-compiled),
    nor fused-untuned (nothing is autotuned without a GPU), nor fused at the model's sizes (the
    interpreter takes minutes a call and is no speed)."""
    if device.type == "cuda":
        return list(ATTENTION_PROVIDERS)
    return [p for p in ATTENTION_PROVIDERS
            if p not in ("reference-compiled-max-autotune", "reference-compiled-tf32", "fused-untuned")
            and (p != "fused" or not model_sizes)]


def _kernel_rows(op: str, cases, device, measure, rows: list, log, limits: dict | None, providers) -> None:
    """Every case, dtype, mode and provider of ``op``, appended to ``rows``; ``log`` after each row."""
    for case in cases:
        for dtype_name, dtype in DTYPES.items():
            for mode in ("fwd", "fwd+bwd"):
                for provider in providers:
                    if applies(provider, dtype, op):
                        rows.append(kernel_row(op, case, dtype_name, mode, provider, device, measure, limits))
                        log(rows[-1])


def _add_ratios(rows: list[dict]) -> None:
    """Speedup of each fused row (autotuned and untuned) over every other provider, and of the reference
    over the released algorithm, per (op, case, dtype, mode)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["op"], row["case"], row["dtype"], row["mode"]), {})[row["provider"]] = row
    for group in groups.values():
        reference, released = group.get("reference", {}), group.get("released", {})
        if "ms" in reference and "ms" in released:
            reference["speedup_vs"] = {"released": round(released["ms"] / reference["ms"], 2)}
        for name in ("fused", "fused-untuned"):
            fused = group.get(name)
            if fused and "ms" in fused:
                fused["speedup_vs"] = {other: round(r["ms"] / fused["ms"], 2) for other, r in group.items()
                                       if other != name and "ms" in r}


def train_row(variant: str, device: torch.device, measure) -> dict:
    """One training step of ``variant`` (bird preset on CUDA, the tiny config elsewhere), compiled and
    warmed up first; ``measure=None`` runs the warm-up step only."""
    from benchmarks.train_step import bird_config, build_step, random_batch, tiny_config

    cfg = tiny_config() if device.type != "cuda" else bird_config()
    row = {"op": "train_step", "case": f"{'bird' if device.type == 'cuda' else 'tiny'} B={cfg.gan.batch_size} "
                                       f"{cfg.gan.image_size}px", "variant": variant}
    try:
        torch._dynamo.reset()
        step, context = build_step(cfg, variant, device)
        batch = random_batch(cfg)
        with context():
            step(batch)  # compile / warm up
            if measure is None:
                return row
            run = lambda: step(batch)  # noqa: E731
            row["ms"] = measure(run)
            row["peak_extra_mb"] = peak_extra_mb(run, device)
        row["steps_per_s"] = 1e3 / row["ms"]
        row["images_per_s"] = cfg.gan.batch_size * row["steps_per_s"]
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def _train_rows(device, measure, rows: list, log) -> None:
    """One training step per variant, appended to ``rows``; ``log`` after each."""
    from benchmarks.train_step import VARIANTS

    for variant in VARIANTS:
        rows.append(train_row(variant, device, measure))
        log(rows[-1])


def _add_train_ratios(rows: list[dict]) -> None:
    """speed and peak memory of each variant against the released algorithm in fp32, eager."""
    base = next((r for r in rows if r["variant"] == "released-fp32-eager" and "ms" in r), None)
    if base:
        for r in rows:
            if "ms" in r:
                r["speedup_vs_released"] = round(base["ms"] / r["ms"], 2)
                if base.get("peak_extra_mb") and r.get("peak_extra_mb"):
                    r["memory_vs_released"] = round(r["peak_extra_mb"] / base["peak_extra_mb"], 2)


def ceilings(device: torch.device, measure) -> dict | None:
    """The device's two ceilings, measured here rather than taken from a datasheet: device-to-device copy
    bandwidth (bytes read + written) and the matrix rate of the units each kernel precision uses (fp32
    without tensor cores for ieee dots, tf32 and bf16 tensor cores)."""
    if device.type != "cuda":
        return None
    n = 1 << 28  # 1 GiB of fp32: many times the L2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_ms = measure(lambda: dst.copy_(src))
    del src, dst
    out = {"copy_gbps": round(2 * n * 4 / (copy_ms * 1e-3) / 1e9, 1)}
    size = 8192
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = measure(lambda: a @ b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        out[f"{name}_tflops"] = round(2 * size**3 / (ms * 1e-3) / 1e12, 1)
    torch.cuda.empty_cache()
    return out


def _floor(row: dict, flops: float, moved: float, limits: dict | None) -> None:
    """Adds the roofline floor of a kernel row (the larger of its useful FLOPs over the matrix rate its
    dots use and its useful bytes over the copy bandwidth), what bounds it, and the fraction achieved."""
    if not limits:
        return
    rate = limits["fp32_tflops"] if row["dtype"] == "fp32" else limits["tf32_tflops"]  # bf16 inputs: tf32 dots
    compute_ms = flops / (rate * 1e12) * 1e3
    memory_ms = moved / (limits["copy_gbps"] * 1e9) * 1e3
    row["floor_ms"] = max(compute_ms, memory_ms)
    row["bound"] = "compute" if compute_ms >= memory_ms else "memory"
    row["of_floor"] = round(row["floor_ms"] / row["ms"], 3)


def _cpu_name() -> str:
    """'cpu (<model>, <n> cores)': the model from /proc/cpuinfo where there is one."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
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


def _of_floor(row: dict) -> str:
    return f"{100 * row['of_floor']:.0f}% ({row['bound']})" if "of_floor" in row else "-"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Benchmarks on {env['device']} ({report['date']})", "",
             f"torch {env['torch']}, triton {env['triton']}, python {env['python']}. Commands: "
             + ", ".join(f"{part}: `{c}` ({report['seconds'].get(part, '?')} s)" for part, c in report["commands"].items()),
             "", "Median times (ms); speedup = baseline time / fused time in the same run." if any(
                 r["provider"] == "fused" for r in report["kernels"]) or report["train"] else
             "Median times (ms) of the baselines, measured side by side; the fused kernels are not timed here "
             "(without a GPU only the Triton interpreter runs them)."]
    limits = report.get("ceilings")
    if limits:
        lines += [f"Ceilings measured in this run: copy {limits['copy_gbps']:.0f} GB/s (read + write), matrix rate "
                  f"fp32 {limits['fp32_tflops']} / tf32 {limits['tf32_tflops']} / bf16 {limits['bf16_tflops']} TFLOP/s. "
                  "Floor = max(useful FLOPs / the rate of the dots used (fp32 inputs: fp32; bf16 inputs: tf32), "
                  "useful bytes / copy bandwidth); '% of floor' = floor / time."]
    lines.append("")
    for op in ("damsm", "attention"):
        rows = [r for r in report["kernels"] if r["op"] == op]
        if not rows:
            continue
        lines += [f"## {'DAMSM word scores' if op == 'damsm' else 'F_attn word attention'}", ""]
        if not any(r["provider"].startswith("fused") for r in rows):
            lines += _baseline_table(rows)
            continue
        lines += _kernel_table(rows)
        tuned = sorted({f"{r['provider']} {r['dtype']}: {name}: {config}" for r in rows if r["provider"].startswith("fused")
                        for name, config in r.get("launch", {}).items()})
        if tuned:
            lines += ["Launch configurations of the fused kernels (fused: autotuned per dtype and model size on "
                      "CUDA; fused untuned: the fixed defaults):", ""]
            lines += [f"- {entry}" for entry in tuned] + [""]
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


KERNEL_COLUMNS = (("released", "released"), ("reference", "reference"), ("reference-compiled", "compiled"),
                  ("reference-compiled-max-autotune", "compiled max-autotune"), ("reference-compiled-tf32", "compiled tf32"),
                  ("sdpa-math", "SDPA math"), ("sdpa-efficient", "SDPA mem-efficient"), ("sdpa-cudnn", "SDPA cuDNN"),
                  ("sdpa-flash", "SDPA flash"), ("sdpa-flash-key-channel", "SDPA flash key-channel"),
                  ("flex-compiled", "FlexAttention compiled"), ("fused-untuned", "fused untuned"), ("fused", "fused"))
COMPILED = tuple(p for p in ATTENTION_BASELINES if p.startswith("reference-compiled"))


def _columns(rows: list[dict], providers) -> list[tuple[str, str]]:
    """The (provider, title) columns of KERNEL_COLUMNS among ``providers`` that have rows."""
    present = {r["provider"] for r in rows}
    return [(p, t) for p, t in KERNEL_COLUMNS if p in present and p in providers]


def _cell(g: dict, p: str, digits: int) -> str:
    if p not in g:
        return "-"
    return f"{g[p]['ms']:.{digits}f}" if "ms" in g[p] else "n/a" if "not_applicable" in g[p] else "err"


def _best_baseline(g: dict) -> dict:
    """The fastest baseline row of a group (with its provider), {} if none ran."""
    timed = [r for p, r in g.items() if p in ATTENTION_BASELINES and "ms" in r]
    return min(timed, key=lambda r: r["ms"], default={})


def _not_applicable_notes(rows: list[dict]) -> list[str]:
    """'n/a' cells explained: each provider's distinct reasons, once."""
    notes: dict = {}
    for r in rows:
        if "not_applicable" in r:
            where = notes.setdefault(r["provider"], {}).setdefault(r["not_applicable"], {})
            where[f"{r['dtype']} {r['mode']}"] = None
    if not notes:
        return []
    return ["Not applicable (n/a), as PyTorch says:", ""] + [
        f"- {p}: " + "; ".join(f"{reason} ({', '.join(where)})" for reason, where in reasons.items())
        for p, reasons in notes.items()] + [""]


def _ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "-"


def _kernel_table(rows: list[dict]) -> list[str]:
    """One line per (case, dtype, mode): every provider's time, the useful work and what the fused
    kernels execute, and the best fused row's rate, floor fraction, memory and speedups."""
    columns = _columns(rows, dict(KERNEL_COLUMNS))
    names = [title for _, title in columns]
    lines = ["TFLOP/s, GB/s and % of floor are of the **useful** work (the math at the true sizes, "
             "`benchmarks/work.py`); *executed* is what the fused kernels run at their default launch (padded "
             "tiles, recomputed passes) and its ratio to the useful work. Best fused = fused if it ran, else "
             "fused untuned; best compiled = the fastest compiled variant; best baseline = the fastest "
             "non-fused provider of the row (**bold**).", "",
             "| case | dtype | mode | " + " | ".join(f"{n} ms" for n in names) + " | useful GFLOP | useful MB | "
             "executed GFLOP (x useful) | executed MB (x useful) | best fused TFLOP/s | GB/s | % of floor (bound) | "
             "peak MB | best fused speedup vs released / reference / compiled / best compiled | "
             "best baseline | best fused speedup vs best baseline |",
             "| " + " | ".join(["---"] * (3 + len(names) + 11)) + " |"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["provider"]] = r
    for (case, dtype, mode), g in groups.items():
        top = _best_baseline(g)

        def cell(p):
            text = _cell(g, p, 3)
            return f"**{text}**" if top and g.get(p) is top else text

        best = next((g[p] for p in ("fused", "fused-untuned") if "ms" in g.get(p, {})), {})
        any_row = next((r for r in g.values() if "useful_gflop" in r), {})
        executed = next((g[p] for p in ("fused-untuned", "fused") if "executed_gflop" in g.get(p, {})), {})
        work = "- | -" if not executed else (
            f"{executed['executed_gflop']:.2f} ({executed['executed_gflop'] / executed['useful_gflop']:.2f}x) | "
            f"{executed['executed_mb']:.1f} ({executed['executed_mb'] / executed['useful_mb']:.2f}x)")
        sp = best.get("speedup_vs", {})
        compiled = [g[p]["ms"] for p in COMPILED if "ms" in g.get(p, {})]
        vs_best = _ratio(min(compiled) / best["ms"]) if compiled and best else "-"
        peak = best.get("peak_extra_mb")
        useful = (f"{any_row['useful_gflop']:.2f} | {any_row['useful_mb']:.1f}" if any_row else "- | -")
        rate = (f"{best['tflops']:.2f} | {best['gbps']:.0f} | {_of_floor(best)}" if best else "- | - | -")
        lines.append(f"| {case} | {dtype} | {mode} | " + " | ".join(cell(p) for p, _ in columns) +
                     f" | {useful} | {work} | {rate} | {'-' if peak is None else f'{peak:.1f}'} | "
                     f"{_ratio(sp.get('released'))} / {_ratio(sp.get('reference'))} / "
                     f"{_ratio(sp.get('reference-compiled'))} / {vs_best} | {top.get('provider', '-')} | "
                     f"{_ratio(top['ms'] / best['ms']) if top and best else '-'} |")
    return lines + [""] + _not_applicable_notes(rows)


def _baseline_table(rows: list[dict]) -> list[str]:
    """The table of a run without the fused kernels (CPU at the model's sizes): the baselines and their
    ratios."""
    columns = _columns(rows, ATTENTION_BASELINES)
    lines = ["| case | dtype | mode | " + " | ".join(f"{t} ms" for _, t in columns) + " | reference GFLOP/s (useful) | "
             "reference vs released | compiled vs reference | best baseline |",
             "| " + " | ".join(["---"] * (3 + len(columns) + 4)) + " |"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["provider"]] = r
    for (case, dtype, mode), g in groups.items():
        ms = {p: g[p]["ms"] for p in ("released", "reference", "reference-compiled") if "ms" in g.get(p, {})}
        ratio = lambda a, b: f"{ms[a] / ms[b]:.2f}x" if a in ms and b in ms else "-"  # noqa: E731
        gflops = f"{1e3 * g['reference']['tflops']:.1f}" if "reference" in ms else "-"
        lines.append(f"| {case} | {dtype} | {mode} | " + " | ".join(_cell(g, p, 1) for p, _ in columns) +
                     f" | {gflops} | {ratio('released', 'reference')} | {ratio('reference', 'reference-compiled')} | "
                     f"{_best_baseline(g).get('provider', '-')} |")
    return lines + [""] + _not_applicable_notes(rows)


PARTS = ("damsm", "attention", "train")


def _results_stem(report: dict) -> str:
    """<device>-<date>, and -small for the CPU self-check's sizes (so they never mix with real ones)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", report["environment"]["device"]).strip("-").lower() + "-" + report["date"]
    return stem + ("-small" if report.get("sizes") == "small" else "")


def _previous_report(path: Path, report: dict) -> dict | None:
    """The results file of an earlier part run today on the same device and versions, to add to."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old if old.get("environment") == report["environment"] else None


def _save(report: dict, out: Path) -> Path:
    """Writes the JSON (atomically) and the markdown table, ratios brought up to date."""
    _add_ratios(report["kernels"])
    _add_train_ratios(report["train"])
    out.mkdir(parents=True, exist_ok=True)
    stem = out / _results_stem(report)
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(markdown(report))
    return stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a self-check at CPU sizes)")
    parser.add_argument("--only", choices=["kernels", *PARTS],
                        help="run one part only (kernels = damsm + attention); parts run on the same day and "
                             "device add up in one results file")
    parser.add_argument("--sizes", choices=["auto", "small", "model"], default="auto",
                        help="kernel sizes: auto = the model's on CUDA, small ones on CPU; small = the small ones "
                             "(CPU only); model = the model's anywhere (on CPU without the fused kernels, which "
                             "only the Triton interpreter runs there: a check, not a speed)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results files")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled rows (inductor; aot_eager for a quick CPU self-check)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device; use --device cpu for a self-check", file=sys.stderr)
        return 2
    measure = timer(device, args.quick)
    started = time.time()

    gpu = device.type == "cuda"
    model_sizes = args.sizes == "model" or (gpu and args.sizes == "auto")
    providers = provider_list(device, model_sizes)
    parts = PARTS if args.only is None else ("damsm", "attention") if args.only == "kernels" else (args.only,)
    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"date": datetime.date.today().isoformat(), "environment": environment(device),
              "sizes": "model" if model_sizes else "small",
              "commands": {}, "seconds": {}, "kernels": [], "train": []}
    out = Path(args.out)
    report = _previous_report(out / f"{_results_stem(report)}.json", report) or report

    def log(row):
        """Prints the row and saves the results so far: a part that overruns its time loses one row."""
        what = row.get("provider") or row.get("variant")
        value = f"{row['ms']:.3f} ms" if "ms" in row else row.get("error") or f"n/a: {row.get('not_applicable')}"
        print(f"[{time.time() - started:6.1f}s] {row['op']:10s} {row['case']:32s} {row.get('dtype', ''):4s} "
              f"{row.get('mode', ''):7s} {what:24s} {value}", flush=True)
        _save(report, out)

    with compile_backend(args.compile_backend):
        for part in parts:
            part_start = time.time()
            report["commands"][part] = command
            if part == "train":
                report["train"] = []
                _train_rows(device, measure, report["train"], log)
            else:
                cases = (GPU_DAMSM if model_sizes else CPU_DAMSM) if part == "damsm" else (
                    GPU_ATTENTION if model_sizes else CPU_ATTENTION)
                report["kernels"] = [r for r in report["kernels"] if r["op"] != part]
                if "ceilings" not in report or report["ceilings"] is None:
                    report["ceilings"] = ceilings(device, measure)
                _kernel_rows(part, cases, device, measure, report["kernels"], log, report["ceilings"], providers)
            report["seconds"][part] = round(time.time() - part_start, 1)
            stem = _save(report, out)
    print(markdown(report))
    print(f"wrote {stem}.json and .md in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
