"""The five parts of ``benchmarks.gpu_quick``, most important evidence first, and the process that runs
them (started by the orchestrator; it reads ``run <part> <deadline>`` lines on stdin):

  a. compiled correctness of every kernel's default launch at the model's sizes against float64,
     forward and every gradient, fp32 (every precision) / bf16 / fp16, one line per check;
  b. the DAMSM (B = 48, then 20) and F_attn (B = 20, C = 32, 128², then 64²) fwd+bwd tables against
     every baseline (released, reference, compiled, compiled max-autotune, compiled TF32 for bf16),
     fused untuned, fp32 and bf16;
  c. one bird-preset training step: released fp32 eager, ours bf16, ours bf16 + compile + fused
     (the fused kernels at their default launch: autotuning is part d's);
  d. the autotuned fused rows (DAMSM tuned at B = 20, timed and checked against float64 at B = 48;
     F_attn tuned, timed and checked at each size);
  e. the rest of ``pytest -m gpu`` (what the warm-up workers did not already run) and a short real
     training loop (needs nltk: carried as a wheel, else skipped with that reason).

Every row is written to the results file the moment it exists (``benchmarks.quick_rows``); a part
whose deadline passes writes its remaining rows as skipped ("time box") and ends; one that overruns
its box is killed by the orchestrator, losing the row in flight only. The planned ids of every part
are known before it runs (``plan``), so what was not reached can be listed at the end.

Test hooks, for the CPU test of the time boxes only: ``ATTNGAN_QUICK_TEST="expire_after=c:1;stall=d"``
makes part c's box expire after its first row and part d hang after its first row (so that it is
killed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.cases import AttentionCase, DamsmCase, applies, compile_backend  # noqa: E402
from benchmarks.quick_rows import RowLog, done_ids  # noqa: E402

# The size sets: "model" on the GPU; "tiny" for the CPU self-check (Triton interpreter).
SIZES = {
    "model": dict(
        damsm=[DamsmCase(48), DamsmCase(20)],
        attention=[AttentionCase(20, 32, 128), AttentionCase(20, 32, 64), AttentionCase(20, 48, 128), AttentionCase(20, 48, 64)],
        # the layouts the model also launches: channels_last activations, the released masking, maps
        variants=[("attention", AttentionCase(20, 32, 128), "channels_last"), ("attention", AttentionCase(20, 48, 64), "legacy"),
                  ("damsm", DamsmCase(20), "maps"), ("attention", AttentionCase(20, 32, 64), "maps")],
        tables=[("damsm", DamsmCase(48)), ("damsm", DamsmCase(20)), ("attention", AttentionCase(20, 32, 128)),
                ("attention", AttentionCase(20, 32, 64))],
        tuned=[("damsm", DamsmCase(20), DamsmCase(48)), ("attention", AttentionCase(20, 32, 128), AttentionCase(20, 32, 128)),
               ("attention", AttentionCase(20, 32, 64), AttentionCase(20, 32, 64))],
    ),
    "tiny": dict(
        damsm=[DamsmCase(3, dim=16, words=5, side=3)],
        attention=[AttentionCase(2, 16, 4, words=5)],
        variants=[("attention", AttentionCase(2, 16, 4, words=5), "channels_last"),
                  ("damsm", DamsmCase(3, dim=16, words=5, side=3), "maps")],
        tables=[("damsm", DamsmCase(3, dim=16, words=5, side=3)), ("attention", AttentionCase(2, 16, 4, words=5))],
        tuned=[("damsm", DamsmCase(2, dim=16, words=5, side=3), DamsmCase(3, dim=16, words=5, side=3))],
    ),
}
TABLE_DTYPES = ("fp32", "bf16")
# Per table group, the order rows are measured in: the fused row and the baselines the targets name
# first, the variants that cost most to compile (max-autotune times its own templates) last.
TABLE_PROVIDERS = ("fused-untuned", "released", "reference", "reference-compiled", "reference-compiled-tf32",
                   "reference-compiled-max-autotune")
TRAIN_VARIANTS = ("released-fp32-eager", "ours-bf16", "ours-bf16-compile-fused")
LOOP_VARIANTS = ("off", "bf16-compile")
PARTS = ("a", "b", "c", "d", "e")


def correctness_checks(sizes: str):
    """Part a's checks, in order: plain layouts at every case and dtype, then the other layouts."""
    from benchmarks.quick_checks import DTYPES, Check

    s = SIZES[sizes]
    checks = [Check(op, case, dtype) for op in ("damsm", "attention") for case in s[op] for dtype in DTYPES]
    checks += [Check(op, case, dtype, variant) for op, case, variant in s["variants"] for dtype in DTYPES]
    return checks


def check_precisions(check) -> list[tuple[str, str]]:
    """Every precision for fp32 inputs in plain layouts; the default elsewhere (the layouts are what those
    checks are about)."""
    from benchmarks.quick_checks import precisions_for

    return precisions_for(check.dtype) if not check.variant else precisions_for(check.dtype)[:1]


def plan(part: str, sizes: str) -> list[str]:
    """The row ids ``part`` will write, in order (part e's pytest rows come from a collection: see
    ``benchmarks.gpu_quick``)."""
    s = SIZES[sizes]
    if part == "a":
        ids = [f"a|{check.label()}|{label}|{output}" for check in correctness_checks(sizes)
               for _, label in check_precisions(check) for output in check.outputs]
        return ids + ["a|kernels"]
    if part == "b":
        return ["b|ceilings"] + [f"b|{op}|{case.label}|{dtype}|fwd+bwd|{provider}" for op, case in s["tables"]
                                 for dtype in TABLE_DTYPES for provider in TABLE_PROVIDERS
                                 if applies(provider, _dtype(dtype))]
    if part == "c":
        return [f"c|train_step|{variant}" for variant in TRAIN_VARIANTS]
    if part == "d":
        return [f"d|{op}|{timed.label}|{dtype}|fwd+bwd|fused" for op, _, timed in s["tuned"] for dtype in TABLE_DTYPES]
    if part == "e":
        return [f"e|loop|{variant}" for variant in LOOP_VARIANTS]
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Context:
    """What a part needs: the config, the results file, its deadline, the device and the timer."""

    def __init__(self, cfg: dict, log: RowLog, part: str, deadline: float):
        self.cfg, self.log, self.part, self.deadline = cfg, log, part, deadline
        self.device = torch.device(cfg["device"])
        self.rows_written = 0
        hooks = dict(item.split("=", 1) for item in os.environ.get("ATTNGAN_QUICK_TEST", "").split(";") if "=" in item)
        self._expire_after = int(hooks["expire_after"].split(":")[1]) if hooks.get("expire_after", "").startswith(part + ":") else None
        self._stall = hooks.get("stall") == part

    def measure(self, fn) -> float:
        from benchmarks.gpu import timer

        return timer(self.device, quick=True)(fn)

    def expired(self) -> bool:
        """True once the part's time box is (nearly) over: a row is not started in its last second."""
        if self._expire_after is not None and self.rows_written >= self._expire_after:
            return True
        return time.time() > self.deadline - 1.0

    def row(self, row_id: str, status: str = "ok", **fields) -> dict:
        record = self.log.write("row", part=self.part, id=row_id, status=status, **fields)
        self.rows_written += 1
        if self._stall and self.rows_written == 1:
            print(f"[test hook] part {self.part} stalls after its first row", flush=True)
            time.sleep(3600)
        return record

    def skip(self, row_ids, reason: str = "time box") -> None:
        for row_id in row_ids:
            self.log.write("row", part=self.part, id=row_id, status="skipped", reason=reason)

    def say(self, text: str) -> None:
        print(f"[{self.part} {time.time() - self.cfg['started']:6.1f}s] {text}", flush=True)


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


@contextlib.contextmanager
def _poisoned_outputs():
    """Kernel outputs start as NaN inside the block (tests' switch), so an unwritten element fails."""
    import attngan_fast.kernels._runtime as runtime

    previous = getattr(runtime, "POISON_OUTPUTS", None)
    runtime.POISON_OUTPUTS = True
    try:
        yield
    finally:
        runtime.POISON_OUTPUTS = previous


def part_a(ctx: Context) -> None:
    """Every kernel's default launch (autotuning off) against float64, one row per output/gradient."""
    from attngan_fast import kernels
    from benchmarks.quick_checks import rel_err, run, tolerance

    seen: dict[str, str] = {}
    with _poisoned_outputs(), kernels.autotuning(False):
        for check in correctness_checks(ctx.cfg["sizes"]):
            precisions = check_precisions(check)
            ids = [(f"a|{check.label()}|{label}|{output}", precision, label, output)
                   for precision, label in precisions for output in check.outputs]
            if ctx.expired():
                ctx.skip(i for i, *_ in ids)
                continue
            seed = _seed()
            try:
                from benchmarks.quick_checks import make_inputs

                inputs = make_inputs(check, ctx.device, seed)
                reference, _ = run(check, inputs, seed, reference=True)
            except Exception as err:
                for row_id, *_ in ids:
                    ctx.row(row_id, "error", error=f"reference: {type(err).__name__}: {str(err)[:300]}")
                continue
            for precision, label in precisions:
                group = [entry for entry in ids if entry[1] == precision]
                if ctx.expired():
                    ctx.skip(i for i, *_ in group)
                    continue
                try:
                    got, ran = run(check, inputs, seed, reference=False, precision=precision)
                except Exception as err:
                    _raise_if_fatal(err)
                    for row_id, *_ in group:
                        ctx.row(row_id, "error", error=f"{type(err).__name__}: {str(err)[:300]}")
                        ctx.say(f"{row_id}  ERROR {type(err).__name__}: {str(err)[:200]}")
                    continue
                for kind in ran.values():
                    seen.update(kind)
                tol = tolerance(check.dtype, precision)
                for row_id, _, _, output in group:
                    err, problem = rel_err(got[output], reference[output])
                    ok = not problem and err <= tol
                    launched = ran["forward" if output in ("R", "ctx", "attn") else "backward"]
                    ctx.row(row_id, "ok" if ok else "failed", op=check.op, case=check.case.label, dtype=check.dtype,
                            variant=check.variant, precision=label, output=output, rel_err=err, tol=tol,
                            problem=problem, seed=seed, kernels=sorted(launched))
                    shown = f"{err:.2e}" if err is not None else problem
                    ctx.say(f"{check.op:9s} {check.case.label:24s} {check.dtype:4s} {check.variant or 'nchw':13s} "
                            f"{label:12s} {output:9s} rel {shown:>9s} tol {tol:.0e}  {'PASS' if ok else 'FAIL'}  "
                            f"[{', '.join(sorted(launched))}]")
    never = sorted(set(kernels.chosen_configs()) - set(seen))
    ctx.row("a|kernels", "ok" if not never else "failed", launched=seen, never_launched=never)
    ctx.say(f"kernels launched: {', '.join(f'{k} ({v})' for k, v in sorted(seen.items()))}; never launched: {never or 'none'}")


def _raise_if_fatal(err: Exception) -> None:
    """A CUDA error that poisons the process (illegal address, launch failure) ends this runner; the
    orchestrator starts a fresh one for the next part."""
    text = f"{type(err).__name__}: {err}"
    if "AcceleratorError" in text or "illegal memory access" in text or "unspecified launch failure" in text:
        raise SystemExit(3)


def part_b(ctx: Context) -> None:
    """The fwd+bwd kernel tables: ceilings first, then each group's providers in TABLE_PROVIDERS order."""
    from benchmarks.gpu import ceilings, kernel_row

    if ctx.expired():
        ctx.skip(plan("b", ctx.cfg["sizes"]))
        return
    limits = ceilings(ctx.device, ctx.measure)
    ctx.row("b|ceilings", ceilings=limits)
    ctx.say(f"ceilings: {limits}")
    for op, case in SIZES[ctx.cfg["sizes"]]["tables"]:
        for dtype in TABLE_DTYPES:
            for provider in TABLE_PROVIDERS:
                if not applies(provider, _dtype(dtype)):
                    continue
                row_id = f"b|{op}|{case.label}|{dtype}|fwd+bwd|{provider}"
                if ctx.expired():
                    ctx.skip([row_id])
                    continue
                row = kernel_row(op, case, dtype, "fwd+bwd", provider, ctx.device, ctx.measure, limits)
                _raise_if_fatal(Exception(row.get("error", "")))
                ctx.row(row_id, "error" if "error" in row else "ok", **row)
                ctx.say(_kernel_line(row))


def _kernel_line(row: dict) -> str:
    value = f"{row['ms']:9.3f} ms" if "ms" in row else f"ERROR {row['error']}"
    return f"{row['op']:9s} {row['case']:24s} {row['dtype']:4s} {row['mode']:7s} {row['provider']:32s} {value}"


def part_c(ctx: Context) -> None:
    """One training step per variant; the fused kernels at their default launch (autotuning off)."""
    from attngan_fast import kernels
    from benchmarks.gpu import train_row

    with kernels.autotuning(False):
        for variant in TRAIN_VARIANTS:
            row_id = f"c|train_step|{variant}"
            if ctx.expired():
                ctx.skip([row_id])
                continue
            row = train_row(variant, ctx.device, ctx.measure)
            _raise_if_fatal(Exception(row.get("error", "")))
            ctx.row(row_id, "error" if "error" in row else "ok", autotune=False, **row)
            value = f"{row['ms']:.1f} ms ({row['steps_per_s']:.2f} steps/s)" if "ms" in row else f"ERROR {row['error']}"
            ctx.say(f"train step {row['case']} {variant:26s} {value}")


def part_d(ctx: Context) -> None:
    """Autotuned fused rows: tune at the tuning case, time at the timed case, then check the tuned
    launch against float64 there."""
    from attngan_fast import kernels
    from benchmarks.gpu import kernel_row
    from benchmarks.launches import launched
    from benchmarks.quick_checks import Check, make_inputs, rel_err, run, tolerance

    for op, tune_case, timed_case in SIZES[ctx.cfg["sizes"]]["tuned"]:
        for dtype in TABLE_DTYPES:
            row_id = f"d|{op}|{timed_case.label}|{dtype}|fwd+bwd|fused"
            if ctx.expired():
                ctx.skip([row_id])
                continue
            try:
                with kernels.autotuning(True):
                    tuned_at = {}
                    if tune_case != timed_case:  # the tuning key has no batch: tune here, reuse at the timed size
                        tuning = Check(op, tune_case, dtype)
                        seed = _seed()
                        _, tuned_at = launched(lambda: run(tuning, make_inputs(tuning, ctx.device, seed), seed,
                                                           reference=False))
                    row = kernel_row(op, timed_case, dtype, "fwd+bwd", "fused", ctx.device, ctx.measure)
                    check = Check(op, timed_case, dtype)
                    seed = _seed()
                    inputs = make_inputs(check, ctx.device, seed)
                    reference, _ = run(check, inputs, seed, reference=True)
                    with _poisoned_outputs():
                        got, _ = run(check, inputs, seed, reference=False)
                tol = tolerance(dtype, "auto")
                errors = {name: rel_err(got[name], reference[name]) for name in check.outputs}
                ok = all(not problem and err <= tol for err, problem in errors.values())
                status = "error" if "error" in row else "ok" if ok else "failed"
                ctx.row(row_id, status, tuned_at=tune_case.label, tuned_launch=tuned_at, tol=tol,
                        check={name: (err if not problem else problem) for name, (err, problem) in errors.items()}, **row)
                ctx.say(f"{_kernel_line(row)}  tuned at {tune_case.label}; vs float64: "
                        + ", ".join(f"{n} {e:.1e}" if e is not None else f"{n} {p}" for n, (e, p) in errors.items())
                        + f"  {'PASS' if ok else 'FAIL'}")
            except Exception as err:
                _raise_if_fatal(err)
                ctx.row(row_id, "error", error=f"{type(err).__name__}: {str(err)[:300]}")
                ctx.say(f"{row_id} ERROR {type(err).__name__}: {str(err)[:200]}")


def pytest_command(nodes: list[str]) -> list[str]:
    """The GPU tests, verbose, each result appended to the results file by ``benchmarks.quick_pytest``."""
    return [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "benchmarks.quick_pytest",
            "-m", "gpu", *nodes]


def loop_arguments(cfg: dict, seconds: float) -> list[str]:
    """Arguments of ``python -m benchmarks.train_loop`` for part e: a short bird-preset loop on the GPU,
    a toy one for the CPU self-check."""
    out = str(Path(cfg["out"]) / "loop")
    work = str(Path(cfg.get("loop_work") or Path(tempfile.gettempdir()) / "attngan-quick-loop"))  # data: not sent back
    common = ["--timeout", str(int(seconds)), "--work", work, "--out", out, "--variants", ",".join(LOOP_VARIANTS)]
    if cfg["sizes"] == "model":
        return ["--steps", "120", "--log-every", "40", "--images", "400", *common]
    tiny = ["gan.stages=2", "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4", "gan.r_num=1", "gan.batch_size=8",
            "text_encoder.hidden_dim=16", "data.image_size=32", "damsm.batch_size=8", "runtime.eval_batches=1",
            "data.workers=0"]
    return ["--device", "cpu", "--config", "synthetic", "--steps", "3", "--log-every", "1", "--images", "16",
            "--size", "32", "--damsm-steps", "1", *common, *[x for kv in tiny for x in ("--set", kv)]]


LOOP_MIN_SECONDS = {"model": 150, "tiny": 60}  # synthetic data + 20 DAMSM steps + two variants' start-up and steps


def loop_rows(out: Path) -> list[dict]:
    """The variants of the loop's results file (``<device>-<date>-train-loop.json`` under ``out``)."""
    found = sorted(Path(out).glob("*-train-loop.json"))
    return json.loads(found[-1].read_text())["variants"] if found else []


def _nltk_missing() -> str | None:
    try:
        importlib.import_module("nltk.tokenize")
    except ImportError as err:
        return f"nltk is not importable ({err}); carry its wheel in .whl/ (scripts/gpu_quick.sh installs it)"
    return None


def part_e(ctx: Context) -> None:
    """The GPU tests not yet run by the warm-up workers, then the real loop if nltk and time allow."""
    records = ctx.log.read()
    planned = [i for r in records if r["kind"] == "plan" and r["part"] == "e" for i in r["ids"]]
    done = done_ids(records)
    nodes = [i.split("|", 2)[2] for i in planned if i.startswith("e|pytest|") and i not in done]
    env = {**os.environ, "ATTNGAN_QUICK_ROWS": str(ctx.log.path), "ATTNGAN_QUICK_WHERE": "part e"}
    if nodes and not ctx.expired():
        ctx.say(f"pytest -m gpu: {len(nodes)} tests not run in the background")
        try:
            subprocess.run(pytest_command(nodes), cwd=ROOT, env=env, timeout=max(1.0, ctx.deadline - time.time() - 1))
        except subprocess.TimeoutExpired:
            ctx.say("pytest stopped at the time box")
    elif not nodes:
        ctx.say("every collected GPU test already ran in the background")
    remaining = [i.split("|", 2)[2] for i in planned if i.startswith("e|pytest|") and i not in done_ids(ctx.log.read())]
    ctx.skip([f"e|pytest|{n}" for n in remaining], "not run: pytest stopped at the time box or never reported it")
    loop_ids = [f"e|loop|{v}" for v in LOOP_VARIANTS]
    missing = _nltk_missing()
    seconds = ctx.deadline - time.time() - 2
    if missing:
        ctx.skip(loop_ids, missing)
        ctx.say(f"loop skipped: {missing}")
        return
    if seconds < LOOP_MIN_SECONDS[ctx.cfg["sizes"]]:
        ctx.skip(loop_ids, f"time box: {seconds:.0f} s left, the loop needs ~{LOOP_MIN_SECONDS[ctx.cfg['sizes']]} s")
        ctx.say(f"loop skipped: {seconds:.0f} s left")
        return
    try:
        subprocess.run([sys.executable, "-m", "benchmarks.train_loop", *loop_arguments(ctx.cfg, seconds - 5)], cwd=ROOT,
                       timeout=seconds)
    except subprocess.TimeoutExpired:
        ctx.say("loop stopped at the time box")
    by_variant = {v["variant"]: v for v in loop_rows(Path(ctx.cfg["out"]) / "loop")}
    for variant, row_id in zip(LOOP_VARIANTS, loop_ids):
        row = by_variant.get(variant)
        if row is None:
            ctx.skip([row_id], "time box (the loop stopped before this variant)")
        else:
            ctx.row(row_id, "error" if "error" in row else "ok", **row)
            ctx.say(f"loop {variant}: {row.get('steps_per_s', row.get('error'))}")


PART_FUNCTIONS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}


def serve(cfg: dict) -> int:
    """Runs the parts named on stdin, one ``run <part> <deadline>`` line each, until stdin closes."""
    from benchmarks.gpu import environment

    log = RowLog(cfg["rows"])
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.init()
    log.write("env", environment=environment(device), pid=os.getpid())
    for line in sys.stdin:
        words = line.split()
        if len(words) != 3 or words[0] != "run" or words[1] not in PART_FUNCTIONS:
            print(f"quick_parts: ignoring {line!r}", file=sys.stderr)
            continue
        part, deadline = words[1], float(words[2])
        ctx = Context(cfg, log, part, deadline)
        started = time.time()
        status = "done"
        try:
            with compile_backend(cfg["compile_backend"]):
                PART_FUNCTIONS[part](ctx)
        except SystemExit:
            log.write("part_end", part=part, status="fatal CUDA error: a fresh process runs the next part",
                      seconds=round(time.time() - started, 1))
            return 3
        except Exception as err:  # a part that breaks must not take the later parts with it
            status = f"error: {type(err).__name__}: {str(err)[:300]}"
            ctx.say(status)
        log.write("part_end", part=part, status=status, seconds=round(time.time() - started, 1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quick_parts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", required=True, help="the orchestrator's configuration (JSON)")
    args = parser.parse_args(argv)
    return serve(json.loads(args.serve))


if __name__ == "__main__":
    raise SystemExit(main())
