"""What every fused kernel costs a GPU in registers, spills and shared memory, found without a GPU.

    python -m benchmarks.kernel_resources                       # all candidates, sm_90/80/86, -> benchmarks/results
    python -m benchmarks.kernel_resources --defaults --arch 90 86 --out /tmp/x   # what CI checks

The launches are taken from the real launchers at the bird sizes (DAMSM: B = 20, T = 18, N = 289,
D = 256; F_attn: B = 20, C = 32 and 48, 128², T = 18, with a word mask), fp32 inputs (``ieee`` dots) and
bf16 inputs (``tf32`` dots). Each is compiled with every autotuning candidate (or only the fixed
default) for each architecture through ``benchmarks.offline_compile``, and reported with registers per
thread, spill space and instructions, shared memory, resident warps per SM and whether it fits at all. A candidate
that does not fit is skipped by the autotuner on that GPU; a *default* that does not fit would fail
there with autotuning off, which is what the CI test guards.

Writes ``<out>/kernel-resources-triton<version>[-<options>].json`` and ``.md``. Runs in a process of its own,
without ``TRITON_INTERPRET`` (it sets up a stand-in driver; see ``benchmarks.offline_compile``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("benchmarks.kernel_resources compiles the kernels: run it without TRITON_INTERPRET")

import torch
import triton

from benchmarks.offline_compile import ARCHS, compile_for, occupancy, register_usage, use_offline_target
from attngan_fast.kernels._fit import registers_per_thread
from attngan_fast.kernels._runtime import resolve_precision
from attngan_fast.kernels._tuning import TunedKernel
from attngan_fast.kernels.attention import fused as attention_fused
from attngan_fast.kernels.damsm import fused as damsm_fused

KERNELS = {
    "damsm_fwd": (damsm_fused, "_FWD"),
    "damsm_bwd_context": (damsm_fused, "_CONTEXT"),
    "damsm_bwd_grad": (damsm_fused, "_GRAD"),
    "word_attention_fwd": (attention_fused, "_FWD"),
    "word_attention_bwd": (attention_fused, "_BWD"),
}
# Input dtype and the precision the ops run it with: "auto" is what a user gets by default
# (``attngan_fast.kernels._runtime.resolve_precision``: bf16x3 for fp32, native MMAs for bf16/fp16); fp32 with
# "tf32" or "ieee" (FMA only) are the options.
INPUTS = {"fp32": (torch.float32, "auto"), "bf16": (torch.bfloat16, "auto"), "fp16": (torch.float16, "auto"),
          "fp32-ieee": (torch.float32, "ieee"), "fp32-tf32": (torch.float32, "tf32")}
DEFAULT_INPUTS = ("fp32", "bf16", "fp16")
ARCH_DEFAULT = [90, 80, 86]


@contextmanager
def _recording(calls: list):
    """Runs the real launchers but records each ``TunedKernel.launch`` instead of launching it."""
    names = {id(getattr(module, attr)): name for name, (module, attr) in KERNELS.items()}

    def record(self, grid, *args, default, config=None, **kwargs):
        calls.append(dict(kernel=names[id(self)], args=args, kwargs=kwargs, default=default))

    with mock.patch.object(TunedKernel, "launch", record):
        yield


def bird_launches(dtype_name: str, capability: int) -> list[dict]:
    """Every kernel launch of the bird configuration's ops on a GPU of ``capability``, with the
    arguments the launchers pass (and the default launch configuration they pick for that GPU)."""
    dtype, asked = INPUTS[dtype_name]
    calls: list[dict] = []
    B, D, T, N = 20, 256, 18, 289
    precision = resolve_precision(asked, torch.empty(0, dtype=dtype))

    def label(case: str) -> None:
        for call in calls:
            call.setdefault("label", f"{dtype_name} {case} ({precision})")

    with _recording(calls), mock.patch.object(damsm_fused, "_capability", lambda device: capability), \
            mock.patch.object(attention_fused, "_capability", lambda device: capability):
        words, regions = torch.empty(B, D, T, dtype=dtype), torch.empty(B, D, N, dtype=dtype)
        cap_lens = torch.full((B,), T, dtype=torch.int64)
        damsm_fused.damsm_forward(words, cap_lens, regions, 4.0, 5.0, False, precision)
        damsm_fused.damsm_backward(torch.empty(B, B), words, cap_lens, regions, 4.0, 5.0, precision)
        label(f"D={D}")
        for C in (32, 48):
            query, context = torch.empty(B, C, 128, 128, dtype=dtype), torch.empty(B, C, T, dtype=dtype)
            mask = torch.zeros(B, T, dtype=torch.bool)
            attention_fused.word_attention_forward(query, context, mask, False, False, precision)
            attention_fused.word_attention_backward(torch.empty_like(query), query, context, mask, False, precision)
            label(f"C={C}")
    return calls


def _compile_one(job: tuple) -> dict:
    kernel_name, args, kwargs, config, capability, is_default, max_shared = job
    module, attr = KERNELS[kernel_name]
    tuned = getattr(module, attr)
    started = time.perf_counter()
    try:
        use_offline_target(capability, max_shared)
        compiled = compile_for(tuned.kernel, args, kwargs, config.launch_kwargs(), capability)
        usage = register_usage(compiled)
        usage["registers_cubin"] = registers_per_thread(compiled.asm["cubin"])  # what the launchers read
        usage.update(occupancy(usage, config.num_warps, capability, max_shared))
        if is_default:  # what the launcher runs on this GPU with autotuning off: the default if it fits
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                usage["launch"] = str(tuned.fitting(args, kwargs, config))
    except Exception as error:  # reported per row: one config that fails to build must not hide the rest
        usage = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}", fits=False)
    usage["compile_s"] = round(time.perf_counter() - started, 2)
    return usage


def survey(archs: list[int], defaults_only: bool, dtypes: list[str], workers: int, only: str = "",
           log=print, max_shared: int | None = None) -> list[dict]:
    jobs, rows = [], []
    for dtype_name in dtypes:
        for capability in archs:
            for call in bird_launches(dtype_name, capability):
                if not call["kernel"].startswith(only):
                    continue
                module, attr = KERNELS[call["kernel"]]
                tuned = getattr(module, attr)
                configs = [call["default"]] if defaults_only else list(dict.fromkeys([call["default"], *tuned.candidates]))
                for config in configs:
                    rows.append(dict(kernel=call["kernel"], case=call["label"], config=str(config),
                                     default=config == call["default"], arch=f"sm_{capability}"))
                    jobs.append((call["kernel"], call["args"], call["kwargs"], config, capability,
                                 config == call["default"], max_shared))
    log(f"compiling {len(jobs)} kernels with {workers} worker(s)")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for n, (row, usage) in enumerate(zip(rows, pool.map(_compile_one, jobs)), 1):
            row.update(usage)
            log(f"[{n}/{len(jobs)}] {_row_line(row)}")
    return rows


def _row_line(row: dict) -> str:
    head = f"{row['kernel']:<20} {row['case']:<18} {row['config']:<30} {row['arch']:<6}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    return (f"{head} regs={row['registers']:<3} stack={row['stack_bytes']:>5}B STL/LDL={row['local_stores']:>4}/{row['local_loads']:<4} "
            f"by-depth={_by_depth(row):<14} inner={row['local_in_inner_loops']:<3} "
            f"HGMMA/HMMA/FFMA={row['hgmma']}/{row['hmma']}/{row['ffma']:<5} "
            f"smem={row['shared_bytes'] // 1024:>3}KB warps/SM={row['warps_per_sm']:<2} fits={row['fits']}"
            + (f" -> the launcher runs {row['launch']}" if row.get("launch", row["config"]) != row["config"] else ""))


def _by_depth(row: dict) -> str:
    return "/".join(str(n) for n in row["local_by_loop_depth"])


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Fused kernels compiled offline — triton {env['triton']}, torch {env['torch']}",
        "",
        f"Command: `{result['command']}` (on {env['machine']}, no GPU: Triton's compiler with a stand-in driver, "
        "the bundled `cuobjdump` on Triton's own cubin for registers and spills). Sizes: DAMSM B=20 T=18 N=289 D=256; F_attn B=20, 128², T=18, "
        "with a word mask. Stack = spill space in bytes per thread; STL/LDL = local-memory store/load "
        "instructions in the machine code (spill traffic, counted statically); *by loop depth* splits them "
        "by how many loops enclose them (0/1/2/3: outside every loop / DAMSM backward: per image-caption "
        "pair, per region tile, per feature chunk), *inner* counts those inside innermost loops (the "
        "hot ones: a spill there is paid every step); warps/SM is what registers, shared memory and the "
        "block limit allow; HGMMA / HMMA / FFMA count the machine code's wgmma (Hopper's warpgroup MMA), "
        "mma.sync (warp-level tensor-core MMA) and fp32 fused multiply-add instructions (static counts); "
        "**bold** = the fixed default (what runs with autotuning off); *launcher runs* = the configuration the "
        "launcher's fit check picks instead, where the default does not fit.",
        "",
        "| kernel | inputs | config | arch | regs | stack B | STL/LDL | by loop depth | inner | HGMMA | HMMA | FFMA | "
        "smem KB | programs/SM | warps/SM | fits | launcher runs |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in result["rows"]:
        config = f"**{row['config']}**" if row["default"] else row["config"]
        if "error" in row:
            lines.append(f"| {row['kernel']} | {row['case']} | {config} | {row['arch']} | | | | | | | | | | | | "
                         f"error: {row['error'][:80]} | |")
            continue
        lines.append(f"| {row['kernel']} | {row['case']} | {config} | {row['arch']} | {row['registers']} | "
                     f"{row['stack_bytes']} | {row['local_stores']}/{row['local_loads']} | {_by_depth(row)} | "
                     f"{row['local_in_inner_loops']} | {row['hgmma']} | {row['hmma']} | {row['ffma']} | "
                     f"{row['shared_bytes'] / 1024:.0f} | {row['programs_per_sm']} | "
                     f"{row['warps_per_sm']} | {'yes' if row['fits'] else '**no**'} | "
                     f"{row['launch'] if row.get('launch', row['config']) != row['config'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=ARCH_DEFAULT, choices=sorted(ARCHS),
                        help="compute capabilities to compile for")
    parser.add_argument("--defaults", action="store_true", help="only the fixed default launch configurations")
    parser.add_argument("--inputs", nargs="+", choices=list(INPUTS),
                        help="input dtypes (fp32, bf16, fp16 at the default precision; fp32-ieee / fp32-tf32: fp32 at "
                             "that precision); default: all of them with --defaults, else the first three")
    parser.add_argument("--only", choices=["damsm", "word_attention"], default="", help="one op's kernels")
    parser.add_argument("--max-shared", type=int, metavar="BYTES",
                        help="a GPU with this much shared memory per block instead of the architecture's "
                             "(shows the launchers' fallback to a candidate that fits)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.max_shared is not None and args.max_shared < 1:
        parser.error(f"--max-shared must be a positive number of bytes, got {args.max_shared}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out must be a folder, {args.out} is a file")  # before minutes of compiling

    default_inputs = list(INPUTS) if args.defaults else list(DEFAULT_INPUTS)
    inputs = args.inputs or default_inputs
    started = time.perf_counter()
    try:
        rows = survey(args.arch, args.defaults, inputs, args.workers, args.only, max_shared=args.max_shared)
    except KeyboardInterrupt:
        print("benchmarks.kernel_resources: interrupted, nothing written (every candidate for three GPUs takes "
              "minutes; --defaults, --arch 90 and --only damsm narrow the survey)", file=sys.stderr)
        return 130
    result = dict(
        command="python -m benchmarks.kernel_resources " + " ".join(argv if argv is not None else sys.argv[1:]),
        environment=dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                         machine=f"{platform.machine()} CPU"),
        archs={f"sm_{c}": ARCHS[c].gpus for c in args.arch},
        seconds=round(time.perf_counter() - started, 1),
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # Every option that narrows or changes the survey is in the name: a narrower run never overwrites the
    # recorded full one (benchmarks/results/ holds those, cited by the docs and read by the tests).
    parts = [f"triton{triton.__version__}", args.only, "defaults" if args.defaults else "",
             "" if sorted(args.arch) == sorted(ARCH_DEFAULT) else "sm" + "-".join(map(str, args.arch)),
             "" if inputs == default_inputs else "-".join(inputs),
             f"maxshared{args.max_shared}" if args.max_shared else ""]
    stem = "-".join(["kernel-resources", *filter(None, parts)])  # "3.6.0" has dots: no with_suffix
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {args.out / stem}.json and .md ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
