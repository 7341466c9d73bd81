"""The one benchmark command for anyone with a GPU (docs/benchmarks.md):

    python -m benchmarks.gpu                              # everything, most important first
    python -m benchmarks.gpu --budget 480                 # stop cleanly after 8 minutes
    python -m benchmarks.gpu --only checks attention      # some parts
    python -m benchmarks.gpu --device cpu --sizes small --budget 120   # the whole path on CPU, toy sizes

Parts, in this order: ``checks`` (every kernel's default launch compiled at the model's sizes against
float64, forward and gradients, every dtype and precision: the checks of ``pytest -m gpu``),
``damsm`` and ``attention`` (fwd and fwd+bwd against every baseline of ``benchmarks.cases``),
``train`` (the step's counted budget, ``benchmarks.step_budget``, then one training step per variant),
``tuned`` (the autotuned fused rows, checked against float64 again), ``loader`` (images/s of the PIL
and on-device loaders, ``benchmarks.loader_speed``) and ``loop`` (the real training loop,
``benchmarks.train_loop``; needs nltk). Every row is written to ``<out>/<device>-<date>.json`` and
``.md`` the moment it exists; ``--budget`` stops the run at that many seconds (a row in flight is
cut) and the results list what was not reached. Times are medians of ``triton.testing.do_bench``
(CUDA events, after warm-up, so compilation and autotuning are not timed); peak extra memory is
``max_memory_allocated`` above the inputs; rates and floors are of the *useful* work
(``benchmarks.work``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Without CUDA the fused kernels run only through the Triton interpreter, which must be chosen
    # before attngan_fast.kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attngan_fast import kernels  # noqa: E402
from attngan_fast.kernels.testing import DTYPES, Check, checks, compare_with_float64, tolerance  # noqa: E402
from benchmarks.cases import (CASES, PROVIDERS, NotApplicable, applies, attention_inputs,  # noqa: E402
                              attention_provider, attention_work, compile_backend, damsm_inputs, damsm_provider,
                              damsm_work, forward_backward, not_applicable)
from benchmarks.environment import environment, results_stem  # noqa: E402
from benchmarks.work import attention_provider_work  # noqa: E402

PARTS = ("checks", "damsm", "attention", "train", "tuned", "loader", "loop")

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


def launched(run):
    """(run(), {kernel: launch configuration}) for the fused kernels ``run`` launched."""
    from attngan_fast.kernels.attention import fused as attention_fused
    from attngan_fast.kernels.damsm import fused as damsm_fused

    for tuned in [*damsm_fused.KERNELS.values(), attention_fused._FWD, attention_fused._BWD]:
        tuned.last_config = None
    result = run()
    return result, {name: config for name, config in kernels.chosen_configs().items() if config}


# --------------------------------------------------------------------------------------------------
# rows

def check_rows(sizes: str) -> list[tuple[str, Check, str]]:
    """(row id, check, precision) of every correctness check (``attngan_fast.kernels.testing.checks``)."""
    return [(f"check {check.label} {precision}", check, precision) for check, precision in checks(sizes)]


def check_row(check: Check, precision: str, device: torch.device) -> dict:
    seed = int.from_bytes(os.urandom(4), "little")
    with kernels.autotuning(False):
        found, launch = launched(lambda: compare_with_float64(check, device, seed, precision))
    tol = tolerance(check.dtype, precision)
    errors = {name: (err if not problem else problem) for name, (err, problem) in found.items()}
    ok = all(not problem and err <= tol for err, problem in found.values())
    return {"op": check.op, "check": check.label, "precision": precision, "seed": seed, "tol": tol, "errors": errors,
            "status": "pass" if ok else "FAIL", "launch": launch}


def kernel_row(op: str, case, dtype_name: str, mode: str, provider: str, device: torch.device, measure,
               limits: dict | None = None) -> dict:
    """One timed row: ``provider`` on ``case`` in ``mode`` ("fwd" or "fwd+bwd"). A provider that does not
    apply says why; one that cannot run (memory, compiler) gets an ``error`` instead of a time."""
    dtype = DTYPES[dtype_name]
    row = {"op": op, "case": case.label, "dtype": dtype_name, "mode": mode, "provider": provider}
    reason = not_applicable(op, provider, dtype, device)
    if reason:
        return {**row, "not_applicable": reason}
    inputs_fn, provider_fn, work_fn, grad_at = (
        (damsm_inputs, damsm_provider, damsm_work, (0, 2)) if op == "damsm" else
        (attention_inputs, attention_provider, attention_work, (0, 1)))
    try:
        inputs = inputs_fn(case, device, dtype)
        fn = provider_fn(provider)
        if mode == "fwd":
            run = (lambda f, i: lambda: f(*i))(fn, inputs)
        else:
            run = forward_backward(fn, inputs, tuple(inputs[i].requires_grad_() for i in grad_at))
        _, launch = launched(run)  # the first call compiles (and on CUDA autotunes) outside the timing
        row["ms"] = measure(run)
        row["peak_extra_mb"] = peak_extra_mb(run, device)
        useful, executed = work_fn(case, torch.finfo(dtype).bits // 8, mode == "fwd+bwd")
        row.update(useful_gflop=useful.flops / 1e9, useful_mb=useful.bytes / 1e6,
                   tflops=useful.flops / (row["ms"] * 1e-3) / 1e12, gbps=useful.bytes / (row["ms"] * 1e-3) / 1e9)
        _floor(row, useful.flops, useful.bytes, limits)
        if provider.startswith("fused"):
            row["launch"] = launch
        else:  # what a baseline executes and moves, where benchmarks.work counts it (F_attn's providers)
            executed = _provider_work(op, provider, case, dtype, mode)
        if executed is not None:
            row.update(executed_gflop=executed.flops / 1e9, executed_mb=executed.bytes / 1e6)
    except (BudgetExceeded, KeyboardInterrupt):
        raise
    except NotApplicable as err:  # a backend that refuses the case (SDPA's, FlexAttention's backward on CPU)
        row["not_applicable"] = str(err)
    except Exception as err:  # a baseline that cannot run is recorded, not fatal
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _provider_work(op: str, provider: str, case, dtype: torch.dtype, mode: str):
    if op != "attention":
        return None
    try:
        return attention_provider_work(provider, case.batch, case.channels, case.side ** 2, case.words,
                                       torch.finfo(dtype).bits // 8, mode == "fwd+bwd")
    except (KeyError, ValueError):  # not counted (FlashAttention in fp32, the compiled variants)
        return None


def tuned_row(op: str, case, dtype_name: str, device: torch.device, measure, limits) -> dict:
    """The autotuned fused row, then its tuned launch against float64 at the same size."""
    with kernels.autotuning(True):
        row = kernel_row(op, case, dtype_name, "fwd+bwd", "fused", device, measure, limits)
        shape = (case.batch, case.batch, case.dim, case.words, case.side ** 2) if op == "damsm" else (
            case.batch, case.channels, case.side, case.words)
        row["check"] = check_row(Check(op, shape, dtype_name), "auto", device)["errors"]
    row["provider"] = "fused-tuned"
    return row


def train_row(variant: str, device: torch.device, measure) -> dict:
    """One training step of ``variant`` (the bird preset on CUDA, a tiny config elsewhere), warmed up
    first, and (where ``benchmarks.step_budget`` exists) the step's counted budget beside it."""
    from benchmarks.train_step import bird_config, build_step, random_batch, tiny_config

    from benchmarks.train_step import VARIANTS

    cfg = tiny_config() if device.type != "cuda" else bird_config()
    row = {"op": "train_step", "case": f"{'bird' if device.type == 'cuda' else 'tiny'} B={cfg.gan.batch_size} "
                                       f"{cfg.gan.image_size}px", "variant": variant}
    if VARIANTS[variant].get("cuda_graphs") and device.type != "cuda":
        return {**row, "not_applicable": "CUDA graphs need a CUDA device"}
    try:
        torch._dynamo.reset()
        step, context = build_step(cfg, variant, device)
        batch = random_batch(cfg)
        with context(), kernels.autotuning(False):
            step(batch)  # compile / warm up
            run = lambda: step(batch)  # noqa: E731
            row["ms"] = measure(run)
            row["peak_extra_mb"] = peak_extra_mb(run, device)
        row["steps_per_s"] = 1e3 / row["ms"]
    except BudgetExceeded:
        raise
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def budget_row(device: torch.device) -> dict:
    """The counted budget of one step (FLOPs, bytes, ops, launches) and the device's floors for it:
    bf16 AMP at the bird preset on CUDA (and its compiled launches), the tiny config elsewhere."""
    from benchmarks.step_budget import step_budget
    from benchmarks.train_step import bird_config, tiny_config

    cfg = bird_config() if device.type == "cuda" else tiny_config()
    cfg.runtime.amp = "bf16"
    budget = step_budget(cfg, device, compiled=device.type == "cuda")
    return {"op": "step_budget", "case": f"{cfg.preset} B={cfg.gan.batch_size} {cfg.gan.image_size}px bf16",
            **{k: budget[k] for k in ("total", "compiled", "ceilings", "floors") if k in budget}}


def loader_row(device: torch.device, out: Path) -> dict:
    """Images/s of the PIL loader (one core) and of data.on_device, on synthetic birds at 256 px (64 on CPU)."""
    from attngan_fast.data.synthetic import synthesize
    from benchmarks.loader_speed import loader_rates

    size, images = (256, 240) if device.type == "cuda" else (64, 48)
    root = out / f"loader-birds-{size}"
    if not (root / "CUB_200_2011" / "images.txt").exists():
        synthesize(root, images=images, size=size, seed=0, progress=False)
    rates = loader_rates(root, device=device, image_size=size, batches=5 if device.type == "cuda" else 1, rounds=2)
    return {"op": "loader", "case": f"synthetic birds {size}px", **rates}


def loop_row(device: torch.device, out: Path, seconds: float) -> dict:
    """The real training loop (``benchmarks.train_loop``) in a process of its own, within ``seconds``."""
    try:
        import nltk  # noqa: F401
    except ImportError as err:
        return {"op": "train_loop", "not_applicable": f"nltk is not importable ({err})"}
    args = ["--out", str(out / "loop"), "--timeout", str(int(seconds))]
    if device.type != "cuda":
        args += ["--device", "cpu", "--tiny", "--variants", "off"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_loop", *args], capture_output=True, text=True)
    found = sorted((out / "loop").glob("*-train-loop.json"))
    if done.returncode or not found:
        return {"op": "train_loop", "error": (done.stdout + done.stderr)[-500:]}
    return {"op": "train_loop", "variants": json.loads(found[-1].read_text())["variants"]}


def ceilings(device: torch.device, measure) -> dict | None:
    """The device's two ceilings, measured here: device-to-device copy bandwidth (bytes read + written)
    and the matrix rate of the units each precision uses (fp32 FMA, tf32 and bf16 tensor cores)."""
    if device.type != "cuda":
        return None
    n = 1 << 28  # 1 GiB of fp32: many times the L2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_ms = measure(lambda: dst.copy_(src))
    src = dst = None  # free the 2 GiB before the matmuls
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
    """The roofline floor of a row (the larger of its useful FLOPs over the matrix rate and its useful
    bytes over the copy bandwidth), what bounds it, and the fraction achieved."""
    if not limits:
        return
    rate = limits["fp32_tflops"] if row["dtype"] == "fp32" else limits["bf16_tflops"]
    compute_ms = flops / (rate * 1e12) * 1e3
    memory_ms = moved / (limits["copy_gbps"] * 1e9) * 1e3
    row["floor_ms"] = max(compute_ms, memory_ms)
    row["bound"] = "compute" if compute_ms >= memory_ms else "memory"
    row["of_floor"] = round(row["floor_ms"] / row["ms"], 3)


# --------------------------------------------------------------------------------------------------
# the run: a plan of rows in priority order, a budget, results written row by row

def untuned(fn, *args):
    """fn(*args) with the fused kernels at their fixed default launch (the tables' "fused" rows)."""
    with kernels.autotuning(False):
        return fn(*args)


class BudgetExceeded(Exception):
    """Raised inside a row when ``--budget`` runs out."""


def plan(parts, sizes: str, device: torch.device, measure, out: Path, report: dict) -> list[tuple[str, str, object]]:
    """(part, row id, thunk) of every row the run will measure, in order."""
    rows = []
    for part in parts:
        if part == "checks":
            rows += [("checks", row_id, (lambda c, p: lambda: check_row(c, p, device))(check, precision))
                     for row_id, check, precision in check_rows(sizes)]
        elif part in ("damsm", "attention"):
            for case in CASES[sizes][part]:
                for dtype in ("fp32", "bf16"):
                    for mode in ("fwd", "fwd+bwd"):
                        for provider in PROVIDERS[part]:
                            if applies(provider, DTYPES[dtype]):
                                rows.append((part, f"{part} {case.label} {dtype} {mode} {provider}",
                                             (lambda *a: lambda: untuned(kernel_row, *a, device, measure,
                                                                         report["ceilings"]))(
                                                 part, case, dtype, mode, provider)))
        elif part == "train":
            from benchmarks.train_step import VARIANTS

            rows.append(("train", "train step budget", lambda: budget_row(device)))
            rows += [("train", f"train {v}", (lambda v: lambda: train_row(v, device, measure))(v)) for v in VARIANTS]
        elif part == "tuned":
            for op in ("damsm", "attention"):
                for dtype in ("fp32", "bf16"):
                    case = CASES[sizes][op][0]
                    rows.append(("tuned", f"tuned {op} {case.label} {dtype}",
                                 (lambda *a: lambda: tuned_row(*a, device, measure, report["ceilings"]))(op, case, dtype)))
        elif part == "loader":
            rows.append(("loader", "loader", lambda: loader_row(device, out)))
        elif part == "loop":
            rows.append(("loop", "loop", lambda: loop_row(device, out, max(60.0, report["left_s"]))))
    return rows


def run(parts, sizes: str, device: torch.device, measure, out: Path, report: dict, budget: float | None,
        log=print) -> None:
    """Measures the planned rows into ``report`` (saved after each), within ``budget`` seconds."""
    started = time.time()
    deadline = started + budget if budget else float("inf")
    fired = []  # the timer fired: a row that caught the exception somewhere inside is cut all the same

    def expired(*_):
        fired.append(True)
        raise BudgetExceeded

    previous = signal.signal(signal.SIGALRM, expired) if budget else None
    if budget:
        signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        if any(p in parts for p in ("damsm", "attention", "tuned")) and report.get("ceilings") is None:
            report["ceilings"] = ceilings(device, measure)
        rows = plan(parts, sizes, device, measure, out, report)
        for n, (part, row_id, thunk) in enumerate(rows):
            report["left_s"] = deadline - time.time()
            try:
                row = thunk()
            except BudgetExceeded:
                fired.append(True)
            except Exception as err:  # a row that breaks must not take the later rows with it
                row = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            if fired or time.time() > deadline:
                report["not_reached"] = [f"{row_id} (cut by the budget)"] + [i for _, i, _ in rows[n + 1:]]
                break
            report["rows"].append({"part": part, "id": row_id, **row})
            log(f"[{time.time() - started:7.1f}s] {_row_line(report['rows'][-1])}")
            save(report, out)
    except BudgetExceeded:  # during the ceilings or the plan
        report["not_reached"] = [f"{p} (the budget ran out before its rows)" for p in parts]
    finally:
        if budget:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    report.pop("left_s", None)
    report["seconds"] = round(time.time() - started, 1)
    save(report, out)


def _row_line(row: dict) -> str:
    if "not_applicable" in row:
        return f"{row['id']}: not applicable ({row['not_applicable']})"
    if "error" in row:
        return f"{row['id']}: ERROR {row['error']}"
    if row["part"] == "checks":
        return f"{row['id']}: {row['status']} " + " ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in row["errors"].items())
    if "ms" in row:
        return f"{row['id']}: {row['ms']:.3f} ms"
    return f"{row['id']}: done"


# --------------------------------------------------------------------------------------------------
# results files

def save(report: dict, out: Path) -> Path:
    """The JSON (atomically) and the markdown tables."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / results_stem(report)
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(markdown(report))
    return stem


def _ms(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['ms']:.3f}" if "ms" in row else "n/a" if "not_applicable" in row else "err"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Benchmarks on {env['device']} ({report['date']})", "",
             f"torch {env['torch']}, triton {env['triton']}, python {env['python']}; sizes: {report['sizes']}. "
             f"Command: `{report['command']}` ({report.get('seconds', '?')} s).", ""]
    limits = report.get("ceilings")
    if limits:
        lines += [f"Ceilings measured in this run: copy {limits['copy_gbps']:.0f} GB/s (read + write), matrix rate fp32 "
                  f"{limits['fp32_tflops']} / tf32 {limits['tf32_tflops']} / bf16 {limits['bf16_tflops']} TFLOP/s. "
                  "Floor = max(useful FLOPs / rate, useful bytes / copy bandwidth).", ""]
    rows = report["rows"]
    checks = [r for r in rows if r["part"] == "checks"]
    if checks:
        failed = [r for r in checks if r.get("status") != "pass"]
        lines += ["## Compiled correctness against float64", "",
                  f"{len(checks) - len(failed)} of {len(checks)} checks pass (every output and gradient within its "
                  "dtype's tolerance, `attngan_fast.kernels.testing`).", "",
                  "| check | precision | errors (relative) | tolerance | result |", "| --- | --- | --- | --- | --- |"]
        for r in checks:
            errors = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in r.get("errors", {}).items())
            lines.append(f"| {r.get('check', r['id'])} | {r.get('precision', '')} | {errors or r.get('error', '')} | "
                         f"{r.get('tol', '')} | {r.get('status', 'error')} |")
        lines.append("")
    for op, title in (("damsm", "DAMSM word scores"), ("attention", "F_attn word attention")):
        lines += _kernel_table([r for r in rows if r["part"] in (op, "tuned") and r.get("op") == op], op, title)
    train = [r for r in rows if r["part"] == "train" and r.get("op") == "train_step"]
    if train:
        base = next((r for r in train if r["variant"] == "released-fp32-eager" and "ms" in r), None)
        lines += ["## One training step (every D, then G with λ·DAMSM)", "",
                  "| case | variant | ms | steps/s | peak MB | speedup vs released fp32 eager |", "| --- | --- | --- | --- | --- | --- |"]
        for r in train:
            if "ms" not in r:
                lines.append(f"| {r['case']} | {r['variant']} | {r.get('error', '')} | | | |")
                continue
            peak = r.get("peak_extra_mb")
            speedup = f"{base['ms'] / r['ms']:.2f}x" if base else "-"
            lines.append(f"| {r['case']} | {r['variant']} | {r['ms']:.1f} | {r['steps_per_s']:.2f} | "
                         f"{'-' if peak is None else f'{peak:.0f}'} | {speedup} |")
        lines.append("")
    budget = next((r for r in rows if r.get("op") == "step_budget" and "total" in r), None)
    if budget:
        t = budget["total"]
        lines += [f"Step budget ({budget['case']}, `benchmarks.step_budget`): {t['flops'] / 1e9:,.0f} GFLOP, "
                  f"{t['bytes'] / 1e9:,.1f} GB read + written, {t['ops']:,} ops, {t['launches']:,} kernel launches, "
                  f"{t['host_syncs']} host syncs" + (f"; compiled: {budget['compiled']['launches']:,} launches"
                                                      if "compiled" in budget else "") + ".", ""]
        for kind, f in budget.get("floors", {}).items():
            lines.append(f"- floor of the {kind} step: compute {f['compute_ms']:.2f} ms, memory {f['memory_ms']:.2f} ms, "
                         f"launches {f['launch_ms']:.2f} ms: {f['bound']}-bound, at most {f['max_steps_per_s']:.3g} steps/s")
        lines.append("")
    loader = next((r for r in rows if r.get("op") == "loader" and "pil_images_per_s_per_core" in r), None)
    if loader:
        lines += ["## Loaders", "", f"{loader['case']}: PIL {loader['pil_images_per_s_per_core']} images/s on one core, "
                  f"data.on_device {loader['on_device_images_per_s']} images/s ({loader['on_device_vs_pil']}x; decoding "
                  f"once took {loader['decode_once_s']} s).", ""]
    if report.get("not_reached"):
        lines += ["## Not reached", "", *[f"- {i}" for i in report["not_reached"]], ""]
    return "\n".join(lines) + "\n"


def _kernel_table(rows: list[dict], op: str, title: str) -> list[str]:
    """Per (case, dtype, mode): every provider's time, the best baseline and the fused kernels' ratio
    to it, useful and executed work, the fused rate against the floor."""
    if not rows:
        return []
    providers = [p for p in (*PROVIDERS[op], "fused-tuned") if any(r["provider"] == p for r in rows)]
    lines = [f"## {title}", "", "Median ms; *best baseline* is the fastest row that is not ours-fused; ratios are "
             "its time over the fused time (untuned defaults, and autotuned where measured); work is the useful "
             "math at the true sizes and what the fused kernels execute (`benchmarks/work.py`).", "",
             "| case | dtype | mode | " + " | ".join(providers) + " | best baseline | fused / tuned vs best | "
             "useful GFLOP, MB | executed GFLOP, MB | fused % of floor |",
             "| " + " | ".join(["---"] * (8 + len(providers))) + " |"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["provider"]] = r
    for (case, dtype, mode), g in groups.items():
        baselines = {p: r for p, r in g.items() if not p.startswith("fused") and "ms" in r}
        best = min(baselines, key=lambda p: baselines[p]["ms"]) if baselines else None
        ratios = " / ".join(f"{baselines[best]['ms'] / g[p]['ms']:.2f}x" if best and "ms" in g.get(p, {}) else "-"
                            for p in ("fused", "fused-tuned"))
        fused = g.get("fused", {})
        useful = next((f"{r['useful_gflop']:.3g}, {r['useful_mb']:.3g}" for r in g.values() if "useful_gflop" in r), "-")
        executed = f"{fused['executed_gflop']:.3g}, {fused['executed_mb']:.3g}" if "executed_gflop" in fused else "-"
        floor = f"{100 * fused['of_floor']:.0f}% ({fused['bound']})" if "of_floor" in fused else "-"
        lines.append(f"| {case} | {dtype} | {mode} | " + " | ".join(_ms(g.get(p)) for p in providers) +
                     f" | {best or '-'} | {ratios} | {useful} | {executed} | {floor} |")
    reasons = sorted({f"{r['provider']}: {r['not_applicable']}" for r in rows if "not_applicable" in r})
    return lines + [""] + [f"- n/a {reason}" for reason in reasons] + ([""] if reasons else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the fused rows then run through "
                                                         "the Triton interpreter: a check of the path, not a speed)")
    parser.add_argument("--sizes", choices=["model", "small"], help="model (default on CUDA) or small (toy sizes, "
                                                                    "the default on CPU)")
    parser.add_argument("--only", nargs="+", choices=PARTS, help=f"these parts only (default: all, in the order {PARTS})")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="stop cleanly after this many seconds")
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the results files")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled rows (aot_eager for a quick CPU check of the path)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the path at toy sizes")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out must be a folder, {args.out} is a file")
    sizes = args.sizes or ("model" if device.type == "cuda" else "small")
    parts = [p for p in PARTS if p in (args.only or PARTS)]
    report = {"date": datetime.date.today().isoformat(), "environment": environment(device), "sizes": sizes,
              "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
              "parts": parts, "ceilings": None, "rows": [], "not_reached": []}
    with compile_backend(args.compile_backend):
        run(parts, sizes, device, timer(device, args.quick), args.out, report, args.budget)
    stem = save(report, args.out)
    failed = [r["id"] for r in report["rows"] if r.get("status") == "FAIL"]
    print(f"wrote {stem}.json and .md in {report['seconds']} s; {len(report['rows'])} rows"
          + (f"; not reached: {len(report['not_reached'])} (listed there)" if report["not_reached"] else "")
          + (f"; FAILED checks: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
