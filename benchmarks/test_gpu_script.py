"""The GPU benchmark script runs end to end (CPU self-check mode) and writes both results files, so a
GPU session can run it as is."""

from __future__ import annotations

import json

from benchmarks import gpu


def test_gpu_script_self_check_writes_results(tmp_path, capsys):
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert report["environment"]["torch"] and report["command"].startswith("python -m benchmarks.gpu")
    providers = {(r["op"], r["provider"]) for r in report["kernels"]}
    assert providers == {(op, p) for op in ("damsm", "attention")
                         for p in ("released", "reference", "reference-compiled", "fused")}
    assert all("ms" in r for r in report["kernels"]), [r for r in report["kernels"] if "error" in r]
    fused = [r for r in report["kernels"] if r["provider"] == "fused"]
    assert all(set(r["speedup_vs"]) == {"released", "reference", "reference-compiled"} for r in fused)
    assert [r["variant"] for r in report["train"]] == ["released-fp32-eager", "ours-fp32-eager", "ours-bf16",
                                                       "ours-bf16-compile-fused"]
    assert all("ms" in r for r in report["train"]), report["train"]
    md = json_path.with_suffix(".md").read_text()
    assert "DAMSM word scores" in md and "One training step" in md
