"""``python -m benchmarks.gpu`` runs its whole path on CPU at toy sizes (the fused kernels through the
Triton interpreter), writes every row, and stops cleanly at its budget listing what it did not reach:
so a GPU session can run it as it is."""

from __future__ import annotations

import json

import pytest

from attngan_fast import kernels
from attngan_fast.kernels import testing
from benchmarks import gpu
from benchmarks.environment import results_stem
from benchmarks.report import per_step

# inductor on the 2-core CPU takes ~20 s a graph; this checks the script, not inductor
FAST = ["--device", "cpu", "--sizes", "small", "--quick", "--compile-backend", "aot_eager"]


def _report(out) -> dict:
    (path,) = out.glob("*-small*.json")
    return json.loads(path.read_text())


@pytest.mark.skipif(not kernels.interpreter_active(), reason="needs the Triton interpreter (CPU)")
def test_every_part_runs_end_to_end_and_writes_its_rows(tmp_path, capsys):
    assert gpu.main([*FAST, "--only", *gpu.PARTS, "--out", str(tmp_path)]) == 0
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".md"}  # the loader's and loop's data live elsewhere
    report = _report(tmp_path)
    assert report["environment"]["torch"] and report["command"].startswith("python -m benchmarks.gpu")
    assert report["not_reached"] == []
    rows = report["rows"]
    assert [r["part"] for r in rows] == sorted((r["part"] for r in rows), key=gpu.PARTS.index)  # priority order

    checks = [r for r in rows if r["part"] == "checks"]
    assert checks and all(r["status"] == "pass" for r in checks), [r for r in checks if r["status"] != "pass"]
    assert {r["precision"] for r in checks if r["check"].endswith("fp32")} == \
        set(testing.FP32_PRECISIONS)
    launched = {name for r in checks for name in r["launch"]}
    assert launched == set(kernels.chosen_configs())  # every kernel was checked

    timed = [r for r in rows if r["part"] in ("damsm", "attention")]
    ours = ("released", "reference", "reference-compiled", "fused")
    assert {(r["op"], r["provider"]) for r in timed if "ms" in r} == {(op, p) for op in ("damsm", "attention")
                                                                     for p in ours} | {
        ("attention", p) for p in ("sdpa-math", "sdpa-flash", "sdpa-flash-key-channel", "flex-compiled")}
    assert not [r for r in timed if "error" in r]
    # Every other row says why it has no time: on CPU the CUDA-only compile variants, SDPA's
    # memory-efficient and cuDNN backends, FlexAttention's backward.
    refused = {(r["provider"], r["mode"]) for r in timed if "ms" not in r}
    assert all("not_applicable" in r for r in timed if "ms" not in r)
    assert {("sdpa-efficient", "fwd"), ("sdpa-cudnn", "fwd+bwd"), ("flex-compiled", "fwd+bwd")} <= refused
    assert ("flex-compiled", "fwd") not in refused
    for r in timed:
        if r["provider"] == "fused" and r["mode"] == "fwd+bwd":  # at least the useful work is executed
            assert r["executed_gflop"] >= r["useful_gflop"] > 0 and r["launch"]
    variants = __import__("benchmarks.train_step", fromlist=["VARIANTS"]).VARIANTS
    assert [r["variant"] for r in rows if r["part"] == "train" and "ms" in r] == [
        v for v in variants if not variants[v].get("cuda_graphs")]
    (budget,) = [r for r in rows if r.get("op") == "step_budget"]
    assert budget["total"]["flops"] > 0 and budget["total"]["launches"] > 0 and budget["floors"]["eager"]["bound"]
    assert budget["total"]["flops"] == sum(r.get("flops", 0) for r in budget["regions"].values())
    (work,) = [r for r in rows if r["part"] == "work"]  # one attention case at the small sizes
    counted = {(w["provider"], w["dtype"]): w for w in work["providers"]}
    for dtype in ("fp32", "bf16"):
        assert counted[("fused", dtype)]["gflop"] >= counted[("useful", dtype)]["gflop"] > 0
        assert "mb" not in counted[("sdpa-cudnn", dtype)]  # closed source: not counted, and says so
    # auto: both layouts x fp32 / bf16-autocast x fwd / fwd+bwd, the CPU's paths timed side by side
    auto = [r for r in rows if r["part"] == "auto"]
    assert len(auto) == 8 and all(r["reference_ms"] > 0 and r["sdpa_ms"] > 0 for r in auto)
    assert {g["layout"] for g in per_step(auto)} == {"nchw", "channels_last"}
    setup, loop = [r for r in rows if r["part"] == "loop"]
    assert setup["id"] == "loop setup" and (loop["id"], loop["variant"]) == ("loop off round 1", "off")
    assert loop["steps_per_s"] > 0 and loop["case"] == "synthetic B=8 32px"
    (loader,) = [r for r in rows if r["part"] == "loader"]
    assert loader["pil_images_per_s_per_core"] > 0 and loader["on_device_images_per_s"] > 0
    tuned = [r for r in rows if r["part"] == "tuned"]
    assert len(tuned) == 4 and all("ms" in r and r["check"] for r in tuned)

    md = (tmp_path / (results_stem(report) + ".md")).read_text()
    for heading in ("Compiled correctness against float64", "DAMSM word scores", "F_attn word attention",
                    "One training step", "## Step budget", "| G stage 1", "executes and moves (counted)",
                    "what `impl=\"auto\"` follows", "## Loaders", "## The real training loop"):
        assert heading in md
    assert "best baseline" in md and "n/a" in md


def test_the_budget_stops_the_run_cleanly_and_lists_what_was_not_reached(tmp_path, capsys):
    # A budget shorter than the first compiled row: rows before it are kept, the one in flight is cut,
    # the rest are listed; the files are complete JSON and markdown.
    assert gpu.main([*FAST, "--only", "damsm", "train", "--budget", "4", "--out", str(tmp_path)]) == 0
    report = _report(tmp_path)
    assert report["not_reached"] and report["seconds"] < 60
    assert any("cut by the budget" in i for i in report["not_reached"])
    assert any(i.startswith("train ") for i in report["not_reached"])
    assert results_stem(report).endswith("-small-damsm-train")  # parts in the name: other runs keep theirs
    ids = [r["id"] for r in report["rows"]]
    assert not set(ids) & {i.split(" (")[0] for i in report["not_reached"]}
    assert "## Not reached" in (tmp_path / (results_stem(report) + ".md")).read_text()


def test_ctrl_c_keeps_the_rows_measured_and_lists_the_rest(tmp_path, capsys, monkeypatch):
    """Ctrl-C during a row (here the third): the two before it are in the files, the rest are listed as
    not reached, and the exit status is 130."""
    calls = []
    real_kernel_row = gpu.kernel_row

    def interrupted_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_kernel_row(*args, **kwargs)

    monkeypatch.setattr(gpu, "kernel_row", interrupted_third)
    assert gpu.main([*FAST, "--only", "damsm", "--out", str(tmp_path)]) == 130
    report = _report(tmp_path)
    assert report["interrupted"] and len(report["rows"]) == 2
    assert report["not_reached"][0].endswith("(interrupted)") and len(report["not_reached"]) > 1
    assert "(interrupted)" in capsys.readouterr().out


def test_a_second_run_never_overwrites_the_first_and_skipped_rows_say_why(tmp_path, capsys):
    """A probe saw a run cut short replace a complete file of the same day. And rows that cannot run on
    this device are listed with their reason, not shown as failed checks."""
    for _ in range(2):
        assert gpu.main(["--device", "cpu", "--sizes", "model", "--only", "checks", "tuned", "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    stem = min(names, key=len)[: -len(".md")]
    assert names == {f"{stem}.json", f"{stem}.md", f"{stem}-2.json", f"{stem}-2.md"}, names
    md = (tmp_path / f"{stem}.md").read_text()
    assert "## Not run on this device" in md and "- tuned: the Triton interpreter would take hours" in md
    assert "checks pass" not in md
    env = json.loads((tmp_path / f"{stem}.json").read_text())["environment"]
    assert env["threads"] >= 1 and env["load_1min"] >= 0 and "torch threads" in md


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for argv, needle in ((["--budget", "0"], "--budget must be a positive"), (["--only", "nothing"], "invalid choice"),
                         (["--out", str(tmp_path / "f")], "--out must be a folder"),
                         (["--data", str(tmp_path)], "--data must be a CUB-layout root")):
        (tmp_path / "f").write_text("x")
        with pytest.raises(SystemExit) as exit_info:
            gpu.main(["--device", "cpu", *argv])
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err


def test_roofline_floor_takes_the_larger_term_and_names_it():
    limits = {"copy_gbps": 4000.0, "fp32_tflops": 50.0, "tf32_tflops": 400.0, "bf16_tflops": 800.0}
    row = {"dtype": "fp32", "ms": 1.0}
    gpu._floor(row, flops=20e9, moved=1e9, limits=limits)  # 0.4 ms of fp32 arithmetic, 0.25 ms of bytes
    assert row["bound"] == "compute" and abs(row["floor_ms"] - 0.4) < 1e-9 and row["of_floor"] == 0.4
    row = {"dtype": "bf16", "ms": 1.0}
    gpu._floor(row, flops=20e9, moved=1e9, limits=limits)  # bf16 tensor cores: 0.025 ms < 0.25 ms of bytes
    assert row["bound"] == "memory" and abs(row["floor_ms"] - 0.25) < 1e-9
    row = {"dtype": "fp32", "ms": 1.0}
    gpu._floor(row, flops=1.0, moved=1.0, limits=None)  # no ceilings (CPU): nothing claimed
    assert "floor_ms" not in row


def test_per_step_sums_the_sides_and_names_the_faster_path():
    """impl="auto" follows what a step spends: 64² + 128², forward + backward only, per layout/dtype/C."""
    def row(side, mode, reference, sdpa, layout="nchw"):
        return {"layout": layout, "dtype": "fp32", "channels": 32, "side": side, "mode": mode,
                "reference_ms": reference, "sdpa_ms": sdpa}

    rows = [row(64, "fwd+bwd", 1.0, 3.0), row(128, "fwd+bwd", 10.0, 6.0), row(128, "fwd", 0.1, 90.0),
            row(64, "fwd+bwd", 5.0, 4.0, "channels_last")]
    nchw, last = per_step(rows)
    assert (nchw["sides"], nchw["reference_ms"], nchw["sdpa_ms"], nchw["faster"]) == ([64, 128], 11.0, 9.0, "sdpa")
    assert (last["layout"], last["faster"]) == ("channels_last", "sdpa")


def test_on_cpu_the_model_sizes_skip_the_interpreted_rows_and_say_why():
    """At the model's sizes a CPU run times the baselines only: the fused rows, the checks and the tuned
    rows would run through the Triton interpreter for hours, so they say why they have no time."""
    import torch

    from benchmarks.cases import CASES, INTERPRETER_AT_MODEL_SIZES

    cpu = torch.device("cpu")
    for op in ("damsm", "attention"):
        row = gpu.kernel_row(op, CASES["model"][op][0], "fp32", "fwd+bwd", "fused", cpu, measure=None)
        assert row["not_applicable"] == INTERPRETER_AT_MODEL_SIZES
    rows = gpu.plan(["checks", "tuned"], "model", cpu, measure=None, report={})
    assert [(part, thunk()) for part, _, thunk in rows] == [
        (part, {"not_applicable": INTERPRETER_AT_MODEL_SIZES}) for part in ("checks", "tuned")]
