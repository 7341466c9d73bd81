"""The one-call GPU script (``benchmarks.gpu_quick``) runs end to end on CPU at toy sizes, with the
packages the GPU image lacks made unimportable in every process it starts, its time boxes exercised
(a box that expires early, a part killed at its box and a fresh process for the next part, a part
skipped for a missing package), its results file well-formed and unpacked into results files."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from attngan_fast import kernels
from benchmarks import gpu_quick, quick_parts, train_loop
from benchmarks.launches import forcing_candidate, launched, tuned_kernels
from benchmarks.quick_checks import Check, make_inputs, rel_err, run
from benchmarks.quick_rows import RowLog, not_reached

ROOT = Path(__file__).resolve().parents[1]
MISSING_ON_THE_GPU = ("nltk", "torch_fidelity")  # the device image has torch, triton, pytest, numpy, ... not these


@pytest.fixture
def gpu_image(tmp_path, monkeypatch):
    """This process and every process it starts see no nltk and no torch-fidelity (a sitecustomize on
    the children's path), as on the GPU machine."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\nfor name in %r:\n    sys.modules[name] = None  # import fails: not on the GPU image\n" % (MISSING_ON_THE_GPU,))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shim), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for name in MISSING_ON_THE_GPU:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.slow
def test_the_quick_script_runs_end_to_end_on_cpu(gpu_image, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATTNGAN_QUICK_TEST", "expire_after=c:1;stall=d")
    out = tmp_path / "out"
    started = time.time()
    assert gpu_quick.main(["--device", "cpu", "--out", str(out), "--box", "d=6",
                           # part a waits for the warm-up (the background tests among it) only while
                           # it runs, so a wide box costs a fast machine nothing and keeps the
                           # background path reachable on a slow, loaded one
                           "--box", "a=180", "--budget", "420"]) == 0
    printed = capsys.readouterr().out
    lines = (out / "quick.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON record
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and "env" in kinds
    assert {r["part"] for r in records if r["kind"] == "plan"} == set("abcde")
    assert [r["part"] for r in records if r["kind"] == "box"] == list("abcde")
    rows = {r["id"]: r for r in records if r["kind"] == "row"}
    plans = {r["part"]: r["ids"] for r in records if r["kind"] == "plan"}

    # a: every planned check ran and passed, through the interpreter; every kernel launched
    checks = [rows[i] for i in plans["a"] if i != "a|kernels"]
    assert checks and all(r["status"] == "ok" and r["rel_err"] <= r["tol"] for r in checks), \
        [r for r in checks if r["status"] != "ok"]
    assert {r["output"] for r in checks} >= {"R", "d_words", "d_regions", "ctx", "d_query", "d_context", "attn"}
    assert {r["dtype"] for r in checks} == {"fp32", "bf16", "fp16"}
    assert rows["a|kernels"]["never_launched"] == [] and set(rows["a|kernels"]["launched"]) == set(kernels.chosen_configs())
    # b: every provider's row, the fused one with useful and executed work
    table = [rows[i] for i in plans["b"][1:]]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in table), [r for r in table if r["status"] != "ok"]
    assert {r["provider"] for r in table} == set(quick_parts.TABLE_PROVIDERS)
    assert all(r["executed_gflop"] >= r["useful_gflop"] > 0 for r in table if r["provider"] == "fused-untuned")
    # c: the box expired after its first row, the rest recorded as skipped for the time box
    first, *rest = plans["c"]
    assert rows[first]["status"] == "ok" and rows[first]["steps_per_s"] > 0
    assert rest and all(rows[i]["status"] == "skipped" and rows[i]["reason"] == "time box" for i in rest)
    # d: hung after its first row, killed at its box; e then ran in a fresh process
    assert any(r["kind"] == "killed" and r["part"] == "d" for r in records)
    assert rows[plans["d"][0]]["status"] == "ok" and rows[plans["d"][0]]["check"]
    envs = [r for r in records if r["kind"] == "env"]
    assert len(envs) == 2 and envs[0]["pid"] != envs[1]["pid"]
    # e: the GPU tests ran (skipped without CUDA), some in the background; the loop was skipped for nltk
    tests = [rows[i] for i in plans["e"] if i.startswith("e|pytest|")]
    assert tests and all(r.get("outcome") == "skipped" for r in tests), tests
    assert {r["where"] for r in tests} == {"background, part a's box", "part e"}
    loop = [rows[i] for i in plans["e"] if i.startswith("e|loop|")]
    assert loop and all(r["status"] == "skipped" and "nltk" in r["reason"] for r in loop)
    warm = [r for r in records if r["kind"] == "row" and r["part"] == "warm"]
    assert warm and all(r["status"] == "ok" for r in warm), warm

    # what was not reached is listed, with why, in the results file and at the end of the output
    missing = dict(not_reached(records))
    assert set(missing) == set(rest) | set(plans["d"][1:]) | {i for i in loop_ids(plans)}
    assert all("killed" in missing[i] for i in plans["d"][1:])
    assert records[-1]["not_reached"] == [f"{i}: {why}" for i, why in not_reached(records)]
    tail = printed[printed.index("gpu_quick summary"):]
    assert f"NOT REACHED ({len(missing)})" in tail and all(i in tail for i in missing)
    md = (out / "quick.md").read_text()
    for heading in ("## a. Default launches", "## b-d. Kernel tables", "DAMSM word scores", "F_attn word attention",
                    "One training step", "## e. GPU tests", "## Not reached"):
        assert heading in md
    print(f"end to end in {time.time() - started:.0f} s")

    # unpacked into results files, never over existing ones
    results = tmp_path / "results"
    assert gpu_quick.main(["--unpack", str(out), "--results", str(results)]) == 0
    (report_path,) = [p for p in results.glob("*.json")]
    report = json.loads(report_path.read_text())
    assert {r["provider"] for r in report["kernels"]} == set(quick_parts.TABLE_PROVIDERS) | {"fused"}
    assert [r["variant"] for r in report["train"]] == [first.split("|")[-1]]
    assert {p.name.split("-small")[-1] for p in results.iterdir()} == {".json", ".md", "-quick.jsonl", "-quick.md"}
    assert gpu_quick.main(["--unpack", str(out), "--results", str(results)]) == 2


def loop_ids(plans: dict) -> list[str]:
    return [i for i in plans["e"] if i.startswith("e|loop|")]


def test_a_second_run_never_overwrites_a_results_file(tmp_path, capsys):
    RowLog(tmp_path / "quick.jsonl").write("start")
    with pytest.raises(SystemExit):
        gpu_quick.main(["--device", "cpu", "--out", str(tmp_path)])
    assert "already holds a run" in capsys.readouterr().err


def test_the_boxes_fit_the_budget_and_leave_the_rest_to_the_last_part():
    assert sum(gpu_quick.BOXES.values()) + len(gpu_quick.BOXES) * gpu_quick.GRACE + 10 <= gpu_quick.BUDGET <= 480 - 10
    parts = list("abcde")
    now, end = 1000.0, 1000.0 + gpu_quick.BUDGET
    full = gpu_quick.deadlines(parts, gpu_quick.BOXES, now, end)
    assert full["a"] == now + gpu_quick.BOXES["a"] and full["e"] == end - gpu_quick.GRACE
    late = gpu_quick.deadlines(parts[1:], gpu_quick.BOXES, now + 400, end)  # part a overran: b is cut, c-e keep theirs
    assert late["b"] == end - sum(gpu_quick.BOXES[p] + gpu_quick.GRACE for p in "cde")


def test_not_reached_names_why(tmp_path):
    log = RowLog(tmp_path / "rows.jsonl")
    log.write("plan", part="a", ids=["a|1", "a|2", "a|3"])
    log.write("plan", part="b", ids=["b|1"])
    log.write("box", part="a")
    log.write("row", part="a", id="a|1", status="ok")
    log.write("row", part="a", id="a|2", status="skipped", reason="time box")
    log.write("killed", part="a", reason="killed at the box")
    with open(log.path, "a") as f:
        f.write('{"kind": "row", "id": "a|3", "sta')  # cut short by a kill: ignored
    assert not_reached(log.read()) == [("a|2", "time box"), ("a|3", "killed at the box"),
                                      ("b|1", "part b did not start (no time left, or an earlier failure)")]


@pytest.mark.parametrize("sizes", ["model", "tiny"])
def test_the_loop_arguments_are_ones_the_loop_accepts(sizes, tmp_path):
    args = train_loop.parse_arguments(quick_parts.loop_arguments({"sizes": sizes, "out": str(tmp_path)}, 200))
    assert args.variants == list(quick_parts.LOOP_VARIANTS) and args.timeout == 200
    assert Path(args.out) == tmp_path / "loop"
    assert (args.device == "cuda") == (sizes == "model")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "x-train-loop.json").write_text(json.dumps({"variants": [{"variant": "off", "steps_per_s": 2.0}]}))
    assert quick_parts.loop_rows(tmp_path / "loop") == [{"variant": "off", "steps_per_s": 2.0}]


@pytest.mark.skipif(not kernels.interpreter_active(), reason="needs the Triton interpreter (CPU)")
def test_forcing_a_candidate_launches_it_and_still_computes_the_same():
    """What the warm-up workers do for part d: every candidate of every kernel, through config=."""
    check = Check("damsm", quick_parts.DamsmCase(2, dim=32, words=5, side=4), "fp32")
    inputs = make_inputs(check, "cpu", 1)
    reference, _ = run(check, inputs, 1, reference=True)
    seen: dict[str, set] = {}
    for index in range(max(len(k.candidates) for k in tuned_kernels())):
        with forcing_candidate(index):
            got, ran = run(check, inputs, 1, reference=False)
        assert kernels.autotune_enabled() == (os.environ.get("ATTNGAN_FAST_AUTOTUNE", "1") != "0")
        for part in ran.values():
            for name, config in part.items():
                seen.setdefault(name, set()).add(config)
        for name in check.outputs:
            err, problem = rel_err(got[name], reference[name])
            assert not problem and err < 1e-5, (index, name, err, problem)
    candidates = {str(c) for k in tuned_kernels() for c in k.candidates}
    assert seen and all(len(configs) > 1 for configs in seen.values()), seen
    assert all(configs & candidates for configs in seen.values())
    _, ran = launched(lambda: run(check, inputs, 1, reference=False))
    assert ran  # outside the block the launcher is the plain one again


def test_the_wrapper_logs_into_out_and_passes_the_exit_status_on(tmp_path):
    """scripts/gpu_quick.sh is what the device tool runs: its output goes to $OUT/quick.log as well, and
    the script's exit status is the Python command's (here a bad argument: 2, named in the log)."""
    import subprocess

    env = {**os.environ, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_quick.sh"), "--parts", "xyz"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    log = (tmp_path / "out" / "quick.log").read_text()
    assert "torch" in log and "--parts: letters of 'abcde'" in log


def test_the_training_step_warm_up_task_runs_one_step(tmp_path):
    """The warm-up's longest task on the GPU (part c's compiled step), here with a variant that needs no
    compiler: it builds the step and runs its first step, and a broken variant is an error, not a hang."""
    from benchmarks.quick_warm import run_task

    cfg = {"device": "cpu", "compile_backend": "aot_eager", "rows": str(tmp_path / "rows.jsonl")}
    run_task({"kind": "train", "variant": "ours-bf16"}, cfg)
    with pytest.raises(RuntimeError, match="KeyError"):
        run_task({"kind": "train", "variant": "no-such-variant"}, cfg)


def test_a_warm_up_worker_that_dies_is_replaced_and_its_task_ends(tmp_path):
    """A native crash in a worker (the interpreter once aborted on a kernel's out-of-bounds store) must
    not leave its task pending until part a's box ends: the task gets an error row, a new worker
    takes the rest of the queue."""
    from benchmarks.quick_warm import WarmPool, python_env

    rows = tmp_path / "quick.jsonl"
    cfg = dict(device="cpu", sizes="tiny", rows=str(rows), out=str(tmp_path), started=time.time(),
               compile_backend="aot_eager")
    pool = WarmPool(cfg, 1, tmp_path / "warm.log")
    pool.start(python_env("cpu"))
    try:
        pool.submit([dict(id="warm|a|dies", tag="a", kind="die"), dict(id="warm|a|unknown", tag="a", kind="nothing")])
        deadline = time.time() + 120
        while pool.pending(RowLog(rows).read()) and time.time() < deadline:
            time.sleep(0.5)
        records = {r["id"]: r for r in RowLog(rows).read() if r["kind"] == "row"}
        assert records["warm|a|dies"]["status"] == "error"
        assert "died during this task (exit code 134)" in records["warm|a|dies"]["error"]
        # the replacement ran the next task (an unknown kind: an error row of its own)
        assert records["warm|a|unknown"]["status"] == "error" and records["warm|a|unknown"]["pid"] != \
            records["warm|a|dies"]["pid"]
        assert pool.alive()
    finally:
        pool.kill()
