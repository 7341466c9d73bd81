"""The one benchmark command (docs/benchmarks.md):

    python -m benchmarks.gpu                              # everything, most important first
    python -m benchmarks.gpu --budget 600                 # stop cleanly after 10 minutes
    python -m benchmarks.gpu --only checks attention      # some parts
    python -m benchmarks.gpu --device cpu --sizes small --budget 120   # the whole path on CPU, toy sizes
    python -m benchmarks.gpu --device cpu --sizes model --only budget auto   # what the CPU measures at the bird sizes
    python -m benchmarks.gpu --only loop --loop-variants off,bf16,bf16-compile --loop-rounds 2   # the real loop

Parts, in this order: ``checks`` (every kernel's default launch compiled at the model's sizes against
float64, forward and gradients, every dtype and precision: the checks of ``pytest -m gpu``),
``damsm`` and ``attention`` (fwd and fwd+bwd against every baseline of ``benchmarks.cases``),
``work`` (what each F_attn provider executes and moves, counted: ``benchmarks.work``), ``budget``
(the training step's counted budget and floors: ``benchmarks.step_budget``), ``train`` (one training
step per variant), ``tuned`` (the autotuned fused rows, checked against float64 again), ``auto`` (the
public F_attn op's paths side by side: what ``impl="auto"`` should pick on this device), ``loader``
(images/s of the PIL and on-device loaders) and ``loop`` (the real training loop,
``benchmarks.train_loop``; needs nltk). Every row is written to ``<out>/<device>-<date>[-<parts>].json``
and ``.md`` the moment it exists; ``--budget`` stops the run at that many seconds (a row in flight is
cut) and the results list what was not reached. Times are medians of ``triton.testing.do_bench``
(CUDA events, after warm-up, so compilation and autotuning are not timed); peak extra memory is
``max_memory_allocated`` above the inputs; rates and floors are of the *useful* work.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Without CUDA the fused kernels run only through the Triton interpreter, which must be chosen
    # before attngan_fast.kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attngan_fast import kernels  # noqa: E402
from attngan_fast.config import ConfigError, load_config  # noqa: E402
from attngan_fast.kernels.testing import DTYPES, Check, checks, compare_with_float64, tolerance  # noqa: E402
from benchmarks.cases import (CASES, INTERPRETER_AT_MODEL_SIZES, PROVIDERS, AttentionCase,  # noqa: E402
                              NotApplicable, applies, attention_inputs, attention_provider, attention_work,
                              compile_backend, damsm_inputs, damsm_provider, damsm_work, forward_backward,
                              not_applicable)
from benchmarks.environment import environment, results_stem  # noqa: E402
from benchmarks.report import free_stem, save  # noqa: E402
from benchmarks.train_loop import VARIANTS as LOOP_VARIANTS, Loop  # noqa: E402
from benchmarks.work import attention_provider_work, provider_work  # noqa: E402

PARTS = ("checks", "damsm", "attention", "work", "budget", "train", "tuned", "auto", "loader", "loop")
WORK = Path(tempfile.gettempdir()) / "attngan-fast-benchmarks"  # the loader's and the loop's data, not results

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
    reason = not_applicable(op, provider, dtype, device, case)
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
    """One training step of ``variant`` (the bird preset on CUDA, a tiny config elsewhere), warmed up first."""
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


def budget_row(device: torch.device, sizes: str, limits: dict | None) -> dict:
    """The counted budget of one bf16-AMP step (FLOPs, bytes, ops, launches; compiled launches on CUDA)
    at the bird preset (``--sizes model``) or the tiny config, and the device's floors for it."""
    from benchmarks.step_budget import step_budget
    from benchmarks.train_step import bird_config, tiny_config

    cfg = bird_config() if sizes == "model" else tiny_config()
    cfg.runtime.amp = "bf16"
    budget = step_budget(cfg, device, compiled=device.type == "cuda", ceilings=limits)
    return {"op": "step_budget", "case": f"{cfg.preset} B={cfg.gan.batch_size} {cfg.gan.image_size}px bf16",
            **{k: budget[k] for k in ("regions", "total", "compiled", "floors") if k in budget}}


def loader_row(device: torch.device, data: Path | None) -> dict:
    """Images/s of the PIL loader (one core) and of data.on_device on ``data`` (a CUB-layout root) or
    on synthetic birds at 256 px (64 on CPU)."""
    from attngan_fast.data.synthetic import synthesize
    from benchmarks.loader_speed import loader_rates

    size = 256 if device.type == "cuda" or data else 64
    root = data or WORK / f"loader-birds-{size}"
    if not (root / "CUB_200_2011" / "images.txt").exists():
        synthesize(root, images=240 if device.type == "cuda" else 48, size=size, seed=0, progress=False)
    rates = loader_rates(root, device=device, image_size=size, batches=5 if device.type == "cuda" else 1, rounds=2)
    return {"op": "loader", "case": f"{root.name} {size}px", **rates}


def loop_rows(loop, variants: list[str], rounds: int, report: dict) -> list[tuple[str, str, object]]:
    """The loop part (``benchmarks.train_loop``): its setup, then every variant once per round, in turn."""
    from benchmarks import train_loop

    def timeout() -> float | None:  # what is left of --budget (its timer stops a run too), else no limit
        return max(1.0, report["left_s"]) if report["left_s"] != float("inf") else None

    def run(variant: str):
        def thunk():
            setup = next(r for r in report["rows"] if r["id"] == "loop setup")
            failed = [r for r in report["rows"] if r.get("variant") == variant and "error" in r]
            row = {"op": "train_loop", "kind": loop.kind, "variant": variant}
            if "error" in setup or "not_applicable" in setup or failed:
                return {**row, "not_applicable": "its first run failed" if failed else "the loop's setup did not run"}
            try:
                return train_loop.run_variant(loop, variant, timeout())
            except Exception as err:  # (BudgetExceeded and Ctrl-C are no Exception) the variant's later rounds skip
                return {**row, "error": f"{type(err).__name__}: {str(err)[-600:]}"}
        return thunk

    def setup():
        try:
            return train_loop.prepare(loop, timeout())
        except Exception as err:  # the command's own words and log come last: keep the end
            return {"op": "loop_setup", "error": f"{type(err).__name__}: {str(err)[-600:]}"}

    return [("loop", "loop setup", setup)] + [
        ("loop", f"loop {variant} round {n}", run(variant)) for n in range(1, rounds + 1) for variant in variants]


AUTO_PATHS = {"cpu": ("reference", "sdpa"), "cuda": ("reference", "sdpa", "triton")}
AUTO_DTYPES = {"fp32": torch.float32, "bf16-autocast": torch.bfloat16}


def auto_cases(sizes: str) -> list[AttentionCase]:
    """The attention part's sizes, each with NCHW image features and with channels_last ones."""
    return [AttentionCase(c.batch, c.channels, c.side, c.words, layout) for layout in ("nchw", "channels_last")
            for c in CASES[sizes]["attention"]]


def auto_row(case: AttentionCase, dtype_name: str, backward: bool, device: torch.device, measure, quick: bool) -> dict:
    """The public op ``word_attention(..., impl=path)`` as the generator calls it, for every path of
    ``AUTO_PATHS``: what ``impl="auto"`` should pick on this device. bf16-autocast: bf16 features, the
    call inside ``torch.autocast`` and its backward outside, as in a bf16 training step. On CPU the
    paths' calls alternate, so that the load of a shared machine falls on all of them alike."""
    inputs = attention_inputs(case, device, AUTO_DTYPES[dtype_name])
    grad_inputs = tuple(x.requires_grad_(backward) for x in inputs[:2])

    def call(path):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16-autocast"):
                ctx, _ = kernels.word_attention(*inputs, impl=path)
            if backward:
                torch.autograd.grad(ctx, grad_inputs, torch.ones_like(ctx))
        return run

    runs = {path: call(path) for path in AUTO_PATHS[device.type]}
    with kernels.value_checks(False):  # as the training loops call the op
        for run in runs.values():
            run()  # compile, warm up
        if device.type == "cuda":
            ms = {path: measure(run) for path, run in runs.items()}
        else:
            times: dict = {path: [] for path in runs}
            for _ in range(1 if quick else 5):
                for path, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[path].append((time.perf_counter() - start) * 1e3)
            ms = {path: statistics.median(t) for path, t in times.items()}
    row = {"op": "auto", "case": case.label, "layout": case.layout, "channels": case.channels, "side": case.side,
           "dtype": dtype_name, "mode": "fwd+bwd" if backward else "fwd"}
    row.update({f"{path}_ms": round(t, 3) for path, t in ms.items()})
    row["faster"] = min(ms, key=ms.get)
    return row


def work_row(case: AttentionCase) -> dict:
    """What every F_attn provider executes and moves at ``case`` (``benchmarks.work``), both dtypes."""
    return {"op": "work", "case": case.label,
            "providers": provider_work(case.batch, case.channels, case.side ** 2, case.words)}


def ceilings(device: torch.device, measure) -> dict:
    """The device's two ceilings, measured here: copy bandwidth (bytes read + written) and the matrix
    rate of the units each precision uses (fp32 FMA, tf32 and bf16 tensor cores on CUDA)."""
    cuda = device.type == "cuda"
    n, size = (1 << 28, 8192) if cuda else (1 << 24, 1024)  # the copy: many times the L2 (1 GiB of fp32 on CUDA)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    out = {"copy_gbps": round(2 * n * 4 / (measure(lambda: dst.copy_(src)) * 1e-3) / 1e9, 1)}
    src = dst = None  # free the copy's buffers before the matmuls
    precisions = (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False))
    for name, dtype, tf32 in precisions if cuda else (precisions[0], precisions[2]):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = measure(lambda: a @ b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        out[f"{name}_tflops"] = round(2 * size**3 / (ms * 1e-3) / 1e12, 2)
    if cuda:
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


def plan(parts, sizes: str, device: torch.device, measure, report: dict, quick: bool = False,
         data: Path | None = None, loop: tuple | None = None) -> list[tuple[str, str, object]]:
    """(part, row id, thunk) of every row the run will measure, in order."""
    rows = []
    # the fused rows' floors (on CPU they run through the interpreter: no floor is claimed)
    floors = (lambda: report["ceilings"]) if device.type == "cuda" else (lambda: None)
    for part in parts:
        if part in ("checks", "tuned") and device.type != "cuda" and sizes == "model":
            rows.append((part, part, lambda: {"not_applicable": INTERPRETER_AT_MODEL_SIZES}))
        elif part == "checks":
            rows += [("checks", row_id, (lambda c, p: lambda: check_row(c, p, device))(check, precision))
                     for row_id, check, precision in check_rows(sizes)]
        elif part in ("damsm", "attention"):
            for case in CASES[sizes][part]:
                for dtype in ("fp32", "bf16"):
                    for mode in ("fwd", "fwd+bwd"):
                        for provider in PROVIDERS[part]:
                            if applies(provider, DTYPES[dtype]):
                                rows.append((part, f"{part} {case.label} {dtype} {mode} {provider}",
                                             (lambda *a: lambda: untuned(kernel_row, *a, device, measure, floors()))(
                                                 part, case, dtype, mode, provider)))
        elif part == "work":
            rows += [("work", f"work {case.label}", (lambda c: lambda: work_row(c))(case))
                     for case in CASES[sizes]["attention"]]
        elif part == "budget":
            rows.append(("budget", "step budget", lambda: budget_row(device, sizes, report["ceilings"])))
        elif part == "train":
            from benchmarks.train_step import VARIANTS

            rows += [("train", f"train {v}", (lambda v: lambda: train_row(v, device, measure))(v)) for v in VARIANTS]
        elif part == "tuned":
            for op in ("damsm", "attention"):
                for dtype in ("fp32", "bf16"):
                    case = CASES[sizes][op][0]
                    rows.append(("tuned", f"tuned {op} {case.label} {dtype}",
                                 (lambda *a: lambda: tuned_row(*a, device, measure, floors()))(op, case, dtype)))
        elif part == "auto":
            rows += [("auto", f"auto {case.label} {dtype} {'fwd+bwd' if backward else 'fwd'}",
                      (lambda *a: lambda: auto_row(*a, device, measure, quick))(case, dtype, backward))
                     for case in auto_cases(sizes) for dtype in AUTO_DTYPES for backward in (False, True)]
        elif part == "loader":
            rows.append(("loader", "loader", lambda: loader_row(device, data)))
        elif part == "loop" and loop is not None:
            rows += loop_rows(*loop, report)
    return rows


def run(parts, sizes: str, device: torch.device, measure, out: Path, report: dict, budget: float | None,
        log=print, quick: bool = False, data: Path | None = None, loop: tuple | None = None) -> None:
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
        if any(p in parts for p in ("damsm", "attention", "tuned", "budget")) and report.get("ceilings") is None:
            report["ceilings"] = ceilings(device, measure)
        rows = plan(parts, sizes, device, measure, report, quick, data, loop)
        for n, (part, row_id, thunk) in enumerate(rows):
            report["left_s"] = deadline - time.time()
            try:
                row = thunk()
            except BudgetExceeded:
                fired.append(True)
            except KeyboardInterrupt:  # Ctrl-C: the rows so far are kept, the rest listed
                report["interrupted"] = True
                report["not_reached"] = [f"{row_id} (interrupted)"] + [i for _, i, _ in rows[n + 1:]]
                break
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
    if "steps_per_s" in row:
        return f"{row['id']}: {row['steps_per_s']:.3g} steps/s"
    if row["part"] == "auto":
        return f"{row['id']}: " + ", ".join(f"{k[:-3]} {v:.2f} ms" for k, v in row.items() if k.endswith("_ms"))
    return f"{row['id']}: done"


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
    parser.add_argument("--data", type=Path, help="the loader's and the loop's data: a CUB-layout root (default: synthetic birds)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled rows (aot_eager for a quick CPU check of the path)")
    loop_args = parser.add_argument_group("the loop part (benchmarks.train_loop; --data names its data too)")
    loop_args.add_argument("--loop-variants", help=f"comma-separated, of {list(LOOP_VARIANTS)} (default: off,bf16-compile "
                                              "on CUDA, off elsewhere)")
    loop_args.add_argument("--loop-kind", choices=["gan", "damsm"], default="gan",
                      help="time attngan-fast train (default) or pretrain-damsm")
    loop_args.add_argument("--loop-config", help="a preset or YAML file (default: bird, or synthetic at --sizes small, "
                                                 "which shrinks it to toy sizes)")
    loop_args.add_argument("--loop-steps", type=int, help="steps per run (default: 300 on CUDA, 3 elsewhere)")
    loop_args.add_argument("--loop-rounds", type=int, default=1, help="runs of every variant, interleaved (default: 1)")
    loop_args.add_argument("--damsm", type=Path, help="a DAMSM checkpoint for the AttnGAN runs (default: a brief pretraining)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the path at toy sizes")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out must be a folder, {args.out} is a file")
    if args.data and not (args.data / "CUB_200_2011" / "images.txt").is_file():
        parser.error(f"--data must be a CUB-layout root (with CUB_200_2011/images.txt), got {args.data}")
    variants = [v.strip() for v in (args.loop_variants or ("off,bf16-compile" if device.type == "cuda" else "off"))
                .split(",") if v.strip()]
    if not variants or set(variants) - set(LOOP_VARIANTS):
        parser.error(f"--loop-variants: unknown {sorted(set(variants) - set(LOOP_VARIANTS)) or 'none given'}; "
                     f"choose from {list(LOOP_VARIANTS)}")
    steps = (300 if device.type == "cuda" else 3) if args.loop_steps is None else args.loop_steps
    if steps < 2:
        parser.error(f"--loop-steps must be at least 2 (the first log interval is not timed), got {steps}")
    if args.loop_rounds < 1:
        parser.error(f"--loop-rounds must be at least 1, got {args.loop_rounds}")
    if args.damsm and not args.damsm.is_file():
        parser.error(f"--damsm: {args.damsm} is not a file")
    if args.loop_config:  # before minutes of synthetic data and a DAMSM
        try:
            load_config(args.loop_config)
        except ConfigError as err:
            parser.error(f"--loop-config: {err}")
    sizes = args.sizes or ("model" if device.type == "cuda" else "small")
    small = sizes == "small"
    loop = Loop(args.loop_kind, args.loop_config or ("synthetic" if small else "bird"), args.device, steps,
                WORK / "loop", args.data, args.damsm, small), variants, args.loop_rounds
    parts = [p for p in PARTS if p in (args.only or PARTS)]
    report = {"date": datetime.date.today().isoformat(), "environment": environment(device), "sizes": sizes,
              "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
              "parts": parts, "only": bool(args.only), "ceilings": None, "rows": [], "not_reached": []}
    report["stem"] = free_stem(args.out, results_stem(report))
    with compile_backend(args.compile_backend):
        run(parts, sizes, device, timer(device, args.quick), args.out, report, args.budget, quick=args.quick,
            data=args.data, loop=loop)
    stem = save(report, args.out)  # (its name was chosen before the first row: free_stem)
    failed = [r["id"] for r in report["rows"] if r.get("status") == "FAIL"]
    errors = sum("error" in r for r in report["rows"])  # rows that could not run (a baseline, a loop run): not fatal
    print(f"wrote {stem}.json and .md in {report['seconds']} s; {len(report['rows'])} rows"
          + (f"; {errors} with an error (listed there)" if errors else "")
          + (" (interrupted)" if report.get("interrupted") else "")
          + (f"; not reached: {len(report['not_reached'])} (listed there)" if report["not_reached"] else "")
          + (f"; FAILED checks: {failed}" if failed else ""))
    return 1 if failed else 130 if report.get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())
