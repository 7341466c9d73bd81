"""The GPU benchmark script runs end to end (CPU self-check mode) and writes both results files, so a
GPU session can run it as is."""

from __future__ import annotations

import json

from benchmarks import gpu


def test_gpu_script_self_check_writes_results(tmp_path, capsys):
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert report["environment"]["torch"] and set(report["commands"]) == {"damsm", "attention", "train"}
    assert all(c.startswith("python -m benchmarks.gpu") for c in report["commands"].values())
    providers = {(r["op"], r["provider"]) for r in report["kernels"]}
    assert providers == {(op, p) for op in ("damsm", "attention")
                         for p in ("released", "reference", "reference-compiled", "fused")}
    assert all("ms" in r for r in report["kernels"]), [r for r in report["kernels"] if "error" in r]
    fused = [r for r in report["kernels"] if r["provider"] == "fused"]
    assert all(set(r["speedup_vs"]) == {"released", "reference", "reference-compiled"} for r in fused)
    # Which launch configuration each fused row ran (on CPU the defaults; the backward's only in fwd+bwd).
    launched = {("damsm", "fwd"): {"damsm_fwd"},
                ("damsm", "fwd+bwd"): {"damsm_fwd", "damsm_bwd_words", "damsm_bwd_regions"},
                ("attention", "fwd"): {"word_attention_fwd"},
                ("attention", "fwd+bwd"): {"word_attention_fwd", "word_attention_bwd"}}
    for r in fused:
        assert set(r["launch"]) == launched[r["op"], r["mode"]], r["launch"]
    assert [r["variant"] for r in report["train"]] == ["released-fp32-eager", "ours-fp32-eager", "ours-bf16",
                                                       "ours-bf16-compile-fused"]
    assert all("ms" in r for r in report["train"]), report["train"]
    md = json_path.with_suffix(".md").read_text()
    assert "DAMSM word scores" in md and "One training step" in md


def test_parts_run_separately_add_up_in_one_results_file(tmp_path, capsys):
    assert gpu.main(["--device", "cpu", "--quick", "--only", "attention", "--out", str(tmp_path)]) == 0
    assert gpu.main(["--device", "cpu", "--quick", "--only", "damsm", "--out", str(tmp_path)]) == 0
    assert gpu.main(["--device", "cpu", "--quick", "--only", "damsm", "--out", str(tmp_path)]) == 0  # a rerun replaces
    (json_path,) = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert set(report["commands"]) == {"attention", "damsm"} and report["train"] == []
    assert "--only damsm" in report["commands"]["damsm"]
    rows = [(r["op"], r["case"], r["dtype"], r["mode"], r["provider"]) for r in report["kernels"]]
    assert len(rows) == len(set(rows)) and {r[0] for r in rows} == {"attention", "damsm"}
    assert "F_attn word attention" in json_path.with_suffix(".md").read_text()
