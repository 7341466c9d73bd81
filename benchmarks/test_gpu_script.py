"""The GPU benchmark script runs end to end (CPU self-check mode) and writes both results files, so a
GPU session can run it as is."""

from __future__ import annotations

import json

from attngan_fast import kernels
from benchmarks import gpu
from benchmarks.cases import ATTENTION_ONLY

# inductor on the 2-core CPU takes ~20 s a graph; the self-check is of the script, not of inductor
FAST = ["--device", "cpu", "--quick", "--compile-backend", "aot_eager"]


def test_gpu_script_self_check_writes_results(tmp_path, capsys):
    assert gpu.main([*FAST, "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert report["environment"]["torch"] and set(report["commands"]) == {"damsm", "attention", "train"}
    assert all(c.startswith("python -m benchmarks.gpu") for c in report["commands"].values())
    providers = {(r["op"], r["provider"]) for r in report["kernels"]}
    baselines = ("released", "reference", "reference-compiled", "fused")
    assert providers == {(op, p) for op in ("damsm", "attention") for p in baselines} | {
        ("attention", p) for p in ATTENTION_ONLY}
    # Each row has a time or says why its provider does not take the case: on CPU SDPA's CUDA backends
    # and FlexAttention's backward.
    assert all("ms" in r for r in report["kernels"] if r["provider"] in baselines), [
        r for r in report["kernels"] if "error" in r]
    refused = {(r["provider"], r["mode"]) for r in report["kernels"] if "not_applicable" in r}
    assert refused == {(p, m) for p in ("sdpa-efficient", "sdpa-cudnn") for m in ("fwd", "fwd+bwd")} | {
        ("flex-compiled", "fwd+bwd")}, refused
    assert all("ms" in r for r in report["kernels"] if (r["provider"], r["mode"]) not in refused)
    fused = [r for r in report["kernels"] if r["provider"] == "fused"]
    assert all(set(r["speedup_vs"]) == {"released", "reference", "reference-compiled"} for r in fused if r["op"] == "damsm")
    assert all(set(r["speedup_vs"]) == {"released", "reference", "reference-compiled", "sdpa-math", "sdpa-flash",
                                        "sdpa-flash-key-channel", "flex-compiled"} - ({"flex-compiled"} if r["mode"] ==
                                        "fwd+bwd" else set()) for r in fused if r["op"] == "attention")
    # Which kernels each fused row launched, by the names kernels.chosen_configs() gives them: the
    # forward's are among the fwd+bwd row's, which adds the backward's; the two ops share none; every
    # kernel ran in some row.
    launched = {(r["op"], r["mode"]): set(r["launch"]) for r in fused}
    assert all(len({frozenset(r["launch"]) for r in fused if (r["op"], r["mode"]) == key}) == 1 for key in launched)
    for op in ("damsm", "attention"):
        assert launched[op, "fwd"] and launched[op, "fwd"] < launched[op, "fwd+bwd"], launched
    assert not launched["damsm", "fwd+bwd"] & launched["attention", "fwd+bwd"]
    assert launched["damsm", "fwd+bwd"] | launched["attention", "fwd+bwd"] == set(kernels.chosen_configs())
    for r in fused:  # what the kernels execute beside the useful work, at least the useful work
        assert r["executed_gflop"] >= r["useful_gflop"] > 0 and r["executed_mb"] > 0 and r["executed_at"] == "default launch"
    assert [r["variant"] for r in report["train"]] == ["released-fp32-eager", "ours-fp32-eager", "ours-bf16", "ours-fp16",
                                                       "ours-bf16-compile-fused"]
    assert all("ms" in r for r in report["train"]), report["train"]
    md = json_path.with_suffix(".md").read_text()
    assert "DAMSM word scores" in md and "One training step" in md


def test_parts_run_separately_add_up_in_one_results_file(tmp_path, capsys):
    assert gpu.main([*FAST, "--only", "attention", "--out", str(tmp_path)]) == 0
    assert gpu.main([*FAST, "--only", "damsm", "--out", str(tmp_path)]) == 0
    assert gpu.main([*FAST, "--only", "damsm", "--out", str(tmp_path)]) == 0  # a rerun replaces
    (json_path,) = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert set(report["commands"]) == {"attention", "damsm"} and report["train"] == []
    assert "--only damsm" in report["commands"]["damsm"]
    rows = [(r["op"], r["case"], r["dtype"], r["mode"], r["provider"]) for r in report["kernels"]]
    assert len(rows) == len(set(rows)) and {r[0] for r in rows} == {"attention", "damsm"}
    assert "F_attn word attention" in json_path.with_suffix(".md").read_text()


def test_roofline_floor_takes_the_larger_term_and_names_it():
    limits = {"copy_gbps": 4000.0, "fp32_tflops": 50.0, "tf32_tflops": 400.0, "bf16_tflops": 800.0}
    row = {"dtype": "fp32", "ms": 1.0}
    gpu._floor(row, flops=20e9, moved=1e9, limits=limits)  # 0.4 ms of fp32 arithmetic, 0.25 ms of bytes
    assert row["bound"] == "compute" and abs(row["floor_ms"] - 0.4) < 1e-9 and row["of_floor"] == 0.4
    row = {"dtype": "bf16", "ms": 1.0}
    gpu._floor(row, flops=20e9, moved=1e9, limits=limits)  # bf16 inputs run tf32 dots: 0.05 ms < 0.25 ms
    assert row["bound"] == "memory" and abs(row["floor_ms"] - 0.25) < 1e-9
    row = {"dtype": "fp32", "ms": 1.0}
    gpu._floor(row, flops=1.0, moved=1.0, limits=None)  # no ceilings (CPU): nothing claimed
    assert "floor_ms" not in row
    report = {"date": "2026-01-01", "environment": {"device": "x", "torch": "t", "triton": "t", "python": "p"},
              "commands": {"damsm": "python -m benchmarks.gpu --only damsm"}, "seconds": {"damsm": 1.0},
              "ceilings": limits, "kernels": [], "train": []}
    assert "copy 4000 GB/s" in gpu.markdown(report)


def test_model_sizes_on_cpu_time_the_baselines_only(tmp_path, capsys, monkeypatch):
    """--sizes model on CPU: the model's cases (stood in for here by small ones), no fused rows (the
    interpreter is no speed), a baseline table with the ratios, and a results file apart from the
    self-check's."""
    from benchmarks.cases import CPU_ATTENTION

    monkeypatch.setattr(gpu, "GPU_ATTENTION", CPU_ATTENTION)
    assert gpu.main([*FAST, "--sizes", "model", "--only", "attention", "--out", str(tmp_path)]) == 0
    assert gpu.main([*FAST, "--only", "attention", "--out", str(tmp_path)]) == 0
    model, small = sorted(tmp_path.glob("*.json"), key=lambda p: p.name.endswith("-small.json"))
    assert small.name.endswith("-small.json") and not model.name.endswith("-small.json")
    report = json.loads(model.read_text())
    assert report["sizes"] == "model"
    assert {r["provider"] for r in report["kernels"]} == {"released", "reference", "reference-compiled", *ATTENTION_ONLY}
    for r in report["kernels"]:
        if r["provider"] == "reference":
            assert set(r["speedup_vs"]) == {"released"} and r["speedup_vs"]["released"] > 0
    md = model.with_suffix(".md").read_text()
    assert "reference vs released" in md and "fused" not in md.split("## F_attn")[1].split("\n")[2]
    assert "nan" not in md
