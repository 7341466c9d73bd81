"""The results files of ``python -m benchmarks.gpu``: the JSON report (written atomically after every
row) and its markdown tables, one section per part that has rows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.cases import PROVIDERS
from benchmarks.environment import results_stem


def per_step(rows: list[dict]) -> list[dict]:
    """What a training step spends in F_attn per path, the measure ``impl="auto"`` follows: forward +
    backward summed over the image sides measured (the bird generator attends at 64² and at 128²), per
    layout, dtype and channel count, and which path is faster. ``rows``: the ``auto`` part's."""
    groups: dict = {}
    for r in rows:
        if r["mode"] == "fwd+bwd":
            group = groups.setdefault((r["layout"], r["dtype"], r["channels"]), {"sides": []})
            group["sides"].append(r["side"])
            for key in r:
                if key.endswith("_ms"):
                    group[key] = group.get(key, 0.0) + r[key]
    return [{"layout": layout, "dtype": dtype, "channels": channels, **g,
             "faster": min((k for k in g if k.endswith("_ms")), key=g.get)[:-3]}
            for (layout, dtype, channels), g in groups.items()]


def loop_variants(rows: list[dict]) -> list[dict]:
    """Per variant of the loop part's runs (``rows``): the median steps/s over its rounds, images/s,
    the largest peak memory, and both against the ``off`` variant; or its first error."""
    variants: dict = {}
    for r in rows:
        variants.setdefault(r["variant"], []).append(r)
    out = []
    for name, runs in variants.items():
        done = [r for r in runs if "steps_per_s" in r]
        v = {"variant": name, "case": runs[0].get("case", ""), "flags": runs[0].get("flags", [])}
        if not done:
            v["error"] = next((r.get("error") or r.get("not_applicable") for r in runs), "not run")
        else:
            v.update(steps_per_s=statistics.median(r["steps_per_s"] for r in done), rounds=len(done),
                     range=f"{min(r['steps_per_s'] for r in done):.3g}–{max(r['steps_per_s'] for r in done):.3g}",
                     images_per_s=statistics.median(r["images_per_s"] for r in done),
                     peak_memory_mb=max((r.get("peak_memory_mb") or 0 for r in done), default=0) or None)
        out.append(v)
    base = next((v for v in out if v["variant"] == "off" and "steps_per_s" in v), None)
    for v in out:
        if base and "steps_per_s" in v:
            v["speed_vs_off"] = f"{v['steps_per_s'] / base['steps_per_s']:.2f}x"
            if base["peak_memory_mb"] and v["peak_memory_mb"]:
                v["memory_vs_off"] = f"{v['peak_memory_mb'] / base['peak_memory_mb']:.2f}x"
    return out


def free_stem(out: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``-3``, ... where an earlier run's files already have that name: a run
    never overwrites another's results (the same parts on the same day, a run cut short after a full one)."""
    out.mkdir(parents=True, exist_ok=True)
    n, free = 1, stem
    while True:
        if not (out / f"{free}.md").exists():
            try:  # claimed at once: two runs started together never pick the same name
                (out / f"{free}.json").open("x").close()
                return free
            except FileExistsError:
                pass
        n += 1
        free = f"{stem}-{n}"


def save(report: dict, out: Path) -> Path:
    """The JSON (atomically) and the markdown tables."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report.get("stem", results_stem(report))
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
             f"Command: `{report['command']}` ({report.get('seconds', '?')} s)."
             + (f" CPU: {env['threads']} torch threads, 1-minute load average {env['load_1min']} at the start "
                "(CPU times are medians of a few `perf_counter` calls: a loaded machine moves them)."
                if "threads" in env else ""), ""]
    limits = report.get("ceilings")
    if limits:
        rates = " / ".join(f"{k[:-7]} {v}" for k, v in limits.items() if k.endswith("_tflops"))
        lines += [f"Ceilings measured in this run: copy {limits['copy_gbps']:.0f} GB/s (read + write), matrix rate "
                  f"{rates} TFLOP/s. Floor = max(useful FLOPs / rate, useful bytes / copy bandwidth).", ""]
    rows = report["rows"]
    skipped = [r for r in rows if r["part"] in ("checks", "tuned") and "not_applicable" in r]
    if skipped:
        lines += ["## Not run on this device", "", *[f"- {r['id']}: {r['not_applicable']}" for r in skipped], ""]
    checks = [r for r in rows if r["part"] == "checks" and "not_applicable" not in r]
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
                why = r.get("error") or f"n/a: {r.get('not_applicable', '')}"
                lines.append(f"| {r['case']} | {r['variant']} | {why} | | | |")
                continue
            peak = r.get("peak_extra_mb")
            speedup = f"{base['ms'] / r['ms']:.2f}x" if base else "-"
            lines.append(f"| {r['case']} | {r['variant']} | {r['ms']:.1f} | {r['steps_per_s']:.2f} | "
                         f"{'-' if peak is None else f'{peak:.0f}'} | {speedup} |")
        lines.append("")
    budget = next((r for r in rows if r.get("op") == "step_budget" and "total" in r), None)
    if budget:
        lines += _budget_lines(budget)
    work = [r for r in rows if r.get("op") == "work"]
    if work:
        lines += _work_lines(work, (limits or {}).get("copy_gbps") if report["environment"].get("cuda") else None)
    auto = [r for r in rows if r.get("op") == "auto" and "faster" in r]
    if auto:
        lines += _auto_lines(auto)
    loader = next((r for r in rows if r.get("op") == "loader" and "pil_images_per_s_per_core" in r), None)
    if loader:
        lines += ["## Loaders", "", f"{loader['case']}: PIL {loader['pil_images_per_s_per_core']} images/s on one core, "
                  f"data.on_device {loader['on_device_images_per_s']} images/s ({loader['on_device_vs_pil']}x; decoding "
                  f"once took {loader['decode_once_s']} s; 1-minute load average {loader['load_1min']}).", ""]
    setup = next((r for r in rows if r.get("id") == "loop setup"), None)
    loop = loop_variants([r for r in rows if r.get("op") == "train_loop"])
    if setup or loop:
        kind = "`attngan-fast pretrain-damsm`" if any(r.get("kind") == "damsm" for r in rows) else "`attngan-fast train`"
        case = next((v["case"] for v in loop if v["case"]), "")
        lines += [f"## The real training loop: {kind} (`benchmarks.train_loop`)", "",
                  f"{case}: steps/s from the loop's own log (first interval left out), median over rounds (and their "
                  "range); peak memory over the run.", ""]
        if setup and ("error" in setup or "not_applicable" in setup):
            lines += [f"The setup did not run: {setup.get('error') or setup.get('not_applicable')}", ""]
        lines += ["| variant | flags | steps/s | range | rounds | images/s | peak MB | speed vs off | memory vs off |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {v['variant']} | `{' '.join(v['flags'])}` | " + (
            f"{v['steps_per_s']:.3g} | {v['range']} | {v['rounds']} | {v['images_per_s']:.1f} | "
            f"{v.get('peak_memory_mb') or '-'} | {v.get('speed_vs_off', '-')} | {v.get('memory_vs_off', '-')} |"
            if "steps_per_s" in v else f"{v['error'][:500]} | | | | | | |") for v in loop]
        lines.append("")
    if report.get("not_reached"):
        lines += ["## Not reached", "", *[f"- {i}" for i in report["not_reached"]], ""]
    return "\n".join(lines) + "\n"


def _budget_lines(b: dict) -> list[str]:
    t = b["total"]
    lines = [f"## Step budget ({b['case']})", "", "Counted per part (`benchmarks.step_budget`, "
             "docs/training-speed.md): bytes are every op's inputs and outputs, an upper bound for fused code.", "",
             "| part | GFLOP | GB read + written | of it conv/mm/optimizer GB | ops dispatched | kernels launched |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in [*b.get("regions", {}).items(), ("total", t)]:
        lines.append(f"| {name} | {r.get('flops', 0) / 1e9:,.1f} | {r.get('bytes', 0) / 1e9:,.2f} | "
                     f"{r.get('gemm_bytes', 0) / 1e9:,.2f} | {r.get('ops', 0):,} | {r.get('launches', 0):,} |")
    lines += ["", f"Host syncs in the step (reads of GPU values): {t['host_syncs']}."]
    if c := b.get("compiled"):
        lines.append(f"Under torch.compile: {c['graphs']} graphs launch {c['generated_launches']:,} kernels and the "
                     f"parts left eager {c['eager_launches']:,}: {c['launches']:,} per step "
                     f"({c['launches_with_cuda_graphs']:,} if each graph were one CUDA-graph replay).")
    lines.append("")
    for kind, f in b.get("floors", {}).items():
        lines.append(f"- floor of the {kind} step: compute {f['compute_ms']:.2f} ms, memory {f['memory_ms']:.2f} ms "
                     f"(conv/mm/optimizer alone {f['memory_gemm_only_ms']:.2f}), launches {f['launch_ms']:.2f} ms: "
                     f"{f['bound']}-bound, at most {f['max_steps_per_s']:.3g} steps/s")
    return lines + [""]


def _work_lines(rows: list[dict], copy_gbps: float | None) -> list[str]:
    gbps = copy_gbps or 3000.0
    lines = ["## What each F_attn provider executes and moves (counted)", "",
             f"`benchmarks.work`, docs/attention-providers.md. µs = the fwd+bwd bytes at {gbps / 1e3:.2g} TB/s (read + "
             "written: " + ("this GPU's copy bandwidth" if copy_gbps else "an H100's copy bandwidth") +
             "), the time no schedule of those bytes beats.", ""]
    for r in rows:
        lines += [f"{r['case']}:", "", "| provider | dtype | fwd GFLOP | fwd MB (x useful) | fwd+bwd GFLOP | "
                  "fwd+bwd MB (x useful) | fwd+bwd µs at the bytes | backward programs | counted |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for w in r["providers"]:
            if "mb" not in w:
                lines.append(f"| {w['provider']} | {w['dtype']} | - | - | - | - | - | - | {w['counted']} |")
                continue
            lines.append(f"| {w['provider']} | {w['dtype']} | {w['fwd_gflop']:.2f} | {w['fwd_mb']:.1f} "
                         f"({w['fwd_x_useful']:.2f}x) | {w['gflop']:.2f} | {w['mb']:.1f} ({w['x_useful']:.2f}x) | "
                         f"{w['mb'] * 1e6 / (gbps * 1e3):.0f} | {w['programs'] or '-'} | {w['counted'].split(':')[0]} |")
        lines.append("")
    return lines


def _auto_lines(rows: list[dict]) -> list[str]:
    paths = [k[:-3] for k in rows[0] if k.endswith("_ms")]
    lines = ["## F_attn's paths through the public op (what `impl=\"auto\"` follows)", "",
             "`word_attention(..., impl=path)` as the generator calls it; bf16-autocast = bf16 features, the call "
             "inside `torch.autocast` (backward outside), as in a bf16 training step. Median ms.", "",
             "| case | dtype | mode | " + " | ".join(f"{p} ms" for p in paths) + " | faster |",
             "| " + " | ".join(["---"] * (len(paths) + 4)) + " |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['mode']} | " +
                     " | ".join(f"{r[f'{p}_ms']:.2f}" for p in paths) + f" | {r['faster']} |")
    lines += ["", "Per training step: forward + backward summed over the image sides, per layout:", "",
              "| layout | dtype | C | sides | " + " | ".join(f"{p} ms" for p in paths) + " | faster |",
              "| " + " | ".join(["---"] * (len(paths) + 5)) + " |"]
    for g in per_step(rows):
        lines.append(f"| {g['layout']} | {g['dtype']} | {g['channels']} | {' + '.join(f'{s}²' for s in g['sides'])} | "
                     + " | ".join(f"{g[f'{p}_ms']:.1f}" for p in paths) + f" | {g['faster']} |")
    return lines + [""]


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
