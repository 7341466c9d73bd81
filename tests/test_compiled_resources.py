"""The kernels compiled for real GPUs, without one: Triton's compiler and ptxas run on this machine for
Hopper (sm_90), A100 (sm_80) and the ~100 KB-shared-memory consumer GPUs (sm_86), and what comes out is
checked.

The interpreter runs the kernels' arithmetic but never compiles them, so it cannot see a kernel that
fails to build, needs more shared memory than a GPU has (it then fails to launch with autotuning off,
where the fixed defaults run), or spills its registers to local memory, least of all inside its hot
loops. This test runs
``python -m benchmarks.kernel_resources --defaults`` in a process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
# The Triton versions the spill checks hold strictly: the GPU image's (3.6) and the one CI installs
# (constraints.txt). On another version they report what they find instead of failing: a compiler may
# place a few spills differently (Triton 3.9 keeps 3 spill instructions in the fp32, C = 48 F_attn
# backward's tile loop, benchmarks/results/kernel-resources-triton3.9.0-defaults.md). Whether each
# default fits the GPU is checked on every version, and the launchers fall back at run time anyway.
TESTED_TRITON = ("3.6.0", "3.8.0")


# Bytes of stack (spill space) per thread a default launch may use, per op. What matters more is where
# they sit (the next test: never inside an innermost loop); these bounds catch a default that starts
# spilling wholesale. The largest today are the bf16x3 (fp32 inputs) defaults, whose operands are
# held as (hi, lo) pairs: ~1.2 KB in the DAMSM gradient kernel, outside its loops over regions and
# features, and ~180 B in the F_attn backward.
STACK_LIMITS = {"damsm": 2048, "word_attention": 256}
KERNELS = {"damsm_fwd", "damsm_bwd_context", "damsm_bwd_grad", "word_attention_fwd", "word_attention_bwd"}


def _survey(out: Path, *flags: str) -> dict:
    """``python -m benchmarks.kernel_resources --defaults FLAGS`` in a process of its own, as JSON."""
    # Without TRITON_DEFAULT_FP_FUSION, a Triton that changes that default warns about every kernel that
    # leaves it unpinned (see attngan_fast.kernels._tuning.COMPILE_OPTIONS).
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    env["TRITON_CACHE_DIR"] = str(out.parent / "triton-cache")  # from scratch; the user's cache is left alone
    run = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources", "--defaults", *flags, "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (result,) = out.glob("kernel-resources-*.json")
    return dict(json.loads(result.read_text()), stderr=run.stderr)


@pytest.fixture(scope="module")
def default_launches(tmp_path_factory):
    return _survey(tmp_path_factory.mktemp("resources") / "all", "--arch", "90", "86", "80", "--inputs", "fp32", "bf16",
                   "fp16")


def _spill_check(failures: list[str]) -> None:
    """Fails on a tested Triton version; on another, reports the findings as a warning."""
    if not failures:
        return
    if triton.__version__ in TESTED_TRITON:
        pytest.fail("\n".join(failures))
    warnings.warn(f"Triton {triton.__version__} is not among the tested versions {TESTED_TRITON}; its compiled "
                  f"defaults spill: " + "; ".join(failures))


def test_every_default_launch_compiles_and_fits_hopper_and_small_gpus(default_launches):
    rows = default_launches["rows"]
    assert {row["kernel"] for row in rows} == KERNELS
    assert {row["case"].split()[0] for row in rows} == {"fp32", "bf16", "fp16"}
    assert {row["arch"] for row in rows} == {"sm_90", "sm_86", "sm_80"}
    for row in rows:
        where = f"{row['kernel']} {row['case']} {row['config']} on {row['arch']}"
        assert "error" not in row, f"{where}: {row.get('error')}"
        assert row["fits"] and row["programs_per_sm"] >= 1, f"{where}: {row['shared_bytes']} B of shared memory"
        assert 0 < row["registers"] <= 255, where
        # The launcher's own check (attngan_fast.kernels._fit: the cubin's register count, Triton's shared
        # memory) agrees with cuobjdump and keeps the default.
        assert row["registers_cubin"] == row["registers"], where
        assert row["launch"] == row["config"], where


def test_a_default_too_big_for_the_device_falls_back_to_a_candidate_that_fits(tmp_path):
    """On a Hopper GPU with only an RTX 30xx's shared memory (99 KB), the bf16 DAMSM defaults (112-128 KB)
    do not fit: the launchers pick the next candidates that do."""
    limit = 101376
    survey = _survey(tmp_path / "small", "--arch", "90", "--only", "damsm", "--inputs", "bf16", "--max-shared",
                     str(limit))
    moved = [row for row in survey["rows"] if row["launch"] != row["config"]]
    assert {row["kernel"] for row in moved} == {"damsm_fwd", "damsm_bwd_context", "damsm_bwd_grad"}
    for row in moved:
        assert row["shared_bytes"] > limit and not row["fits"]


def test_defaults_keep_their_registers_out_of_local_memory(default_launches):
    failures = []
    for row in default_launches["rows"]:
        (limit,) = [limit for op, limit in STACK_LIMITS.items() if row["kernel"].startswith(op)]
        if row["stack_bytes"] > limit:
            failures.append(f"{row['kernel']} {row['case']} {row['config']} on {row['arch']} spills: "
                            f"{row['stack_bytes']} B of stack per thread, {row['local_stores']} STL / "
                            f"{row['local_loads']} LDL")
    _spill_check(failures)


def test_no_default_spills_inside_its_innermost_loops(default_launches):
    # The chunk loops of the products run every step of every tile: a spill there is paid thousands of
    # times per program, one outside them once per tile, pair or program.
    _spill_check([f"{row['kernel']} {row['case']} {row['config']} on {row['arch']}: {row['local_in_inner_loops']} "
                  f"spill instructions inside innermost loops (by loop depth: {row['local_by_loop_depth']})"
                  for row in default_launches["rows"] if row["local_in_inner_loops"]])


def test_the_tested_versions_are_ci_s_and_their_committed_surveys_hold():
    """CI installs a tested Triton, and the committed survey of every tested version shows what the
    tests above require: every default of the default precisions fits, as it is, with no spill inside an
    innermost loop."""
    pinned = [line.split("==")[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line.startswith("triton==")]
    assert pinned and pinned[0] in TESTED_TRITON, (pinned, TESTED_TRITON)
    for version in TESTED_TRITON:
        survey = json.loads((ROOT / "benchmarks" / "results" / f"kernel-resources-triton{version}-defaults.json").read_text())
        assert survey["environment"]["triton"] == version
        rows = [r for r in survey["rows"] if r["case"].split()[0] in ("fp32", "bf16", "fp16")]
        assert {r["arch"] for r in rows} == {"sm_90", "sm_86", "sm_80"} and len(rows) == 63  # 7 launches x 3 dtypes x 3 GPUs
        for r in rows:
            assert r["fits"] and r["launch"] == r["config"] and r["local_in_inner_loops"] == 0, (version, r)


def test_the_products_run_on_hopper_tensor_cores(default_launches):
    """On sm_90 every default kernel's products take wgmma (HGMMA) for bf16/fp16 inputs, and fp32
    inputs at the default precision (bf16x3) run on tensor cores too (HGMMA or mma.sync's HMMA)."""
    for row in default_launches["rows"]:
        if row["arch"] != "sm_90":
            continue
        where = f"{row['kernel']} {row['case']} {row['config']}"
        if row["case"].startswith(("bf16", "fp16")):
            assert row["hgmma"] > 0, f"{where}: no HGMMA (HMMA {row['hmma']}, FFMA {row['ffma']})"
        else:
            assert "(bf16x3)" in row["case"], where
            assert row["hgmma"] + row["hmma"] > 0, f"{where}: no tensor-core instruction"


def test_the_word_attention_backward_keeps_two_programs_per_sm(default_launches):
    """The memory-bound F_attn backward needs programs in flight: at least 2 per SM on Hopper."""
    rows = [r for r in default_launches["rows"] if r["kernel"] == "word_attention_bwd" and r["arch"] == "sm_90"]
    assert len(rows) == 6  # fp32, bf16, fp16 at C = 32 and 48
    for row in rows:
        assert row["programs_per_sm"] >= 2, f"{row['case']} {row['config']}: {row['programs_per_sm']} per SM"


# cuobjdump -sass layout: an outer loop 0x20-0x60 around an inner one 0x30-0x50, a forward branch, and
# the branch-to-self after EXIT that pads every function.
SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
                                                                            /* 0x000e620000000800 */
        /*0010*/                   STL [R1+0x10], R2 ;                      /* 0x0000100201007387 */
        /*0020*/                   LDL R3, [R1+0x10] ;                      /* 0x0000100001037983 */
        /*0030*/                   FFMA R4, R4, R4, R4 ;                    /* 0x0000000404047223 */
        /*0040*/               @P0 LDL.LU R5, [R1+0x14] ;                   /* 0x0000140001050983 */
        /*0050*/              @!P0 BRA 0x30 ;                               /* 0xfffffffc00f48947 */
        /*0058*/               @P1 BRA 0x70 ;                               /* 0x0000000c00041947 */
        /*0060*/                   BRA 0x20 ;                               /* 0xfffffff800ec7947 */
        /*0070*/                   EXIT ;                                   /* 0x000000000000794d */
        /*0080*/                   BRA 0x80;                                /* 0xfffffffc00fc7947 */
"""


def test_spill_instructions_are_placed_in_their_loops():
    from benchmarks.offline_compile import local_memory_by_loop, sass_instructions, sass_loops

    instructions = sass_instructions(SASS)
    assert [op for _, op, _ in instructions] == ["LDC", "STL", "LDL", "FFMA", "LDL", "BRA", "BRA", "BRA", "EXIT", "BRA"]
    assert sass_loops(instructions) == [(0x20, 0x60), (0x30, 0x50)]
    assert local_memory_by_loop(SASS) == dict(local_by_loop_depth=[1, 1, 1], local_in_inner_loops=1)
    assert local_memory_by_loop("") == dict(local_by_loop_depth=[0], local_in_inner_loops=0)


def test_math_instructions_are_counted_by_opcode():
    from benchmarks.offline_compile import math_instructions, sass_instructions

    sass = SASS + """
        /*0090*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*00a0*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*00b0*/              @!P0 HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
"""
    opcodes = [op for _, op, _ in sass_instructions(sass)]
    assert math_instructions(opcodes) == {"hgmma": 2, "hmma": 1, "ffma": 1}


def test_the_report_names_what_was_compiled(default_launches):
    env = default_launches["environment"]
    assert env["triton"] and env["torch"]
    assert default_launches["archs"] == {"sm_90": "H100/H200", "sm_86": "RTX 30xx, A10", "sm_80": "A100"}
    assert all(row["default"] for row in default_launches["rows"])


def test_every_launch_pins_its_floating_point_contraction(default_launches):
    # Triton 3.9 warns once per process when a kernel compiles with FP fusion left to its default.
    assert "TRITON_DEFAULT_FP_FUSION" not in default_launches["stderr"], default_launches["stderr"][-2000:]


def test_ctrl_c_during_the_survey_is_one_line_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    code = ("import sys, benchmarks.kernel_resources as k\n"
            "def interrupted(*a, **kw):\n    raise KeyboardInterrupt\n"
            "k.survey = interrupted\n"
            f"sys.exit(k.main(['--defaults', '--arch', '90', '--out', {str(tmp_path)!r}]))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip().startswith("benchmarks.kernel_resources: interrupted, nothing written")
    assert "Traceback" not in run.stderr and not list(tmp_path.iterdir())


def test_a_nonsense_shared_memory_size_is_refused_before_compiling(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    run = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources", "--max-shared", "-5", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 2 and "--max-shared must be a positive number of bytes, got -5" in run.stderr
    assert not list(tmp_path.iterdir())
