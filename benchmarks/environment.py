"""Where a measurement was made, as every results file records it, and the name the file is saved
under: ``<device>-<date>[-<what>]`` (``cpu-<model>-<n>-cores`` or the GPU's name)."""

from __future__ import annotations

import os
import platform
import re

import torch


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} cores)"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device: torch.device | str) -> dict:
    """Device, torch, Triton and Python versions (and the GPU's SMs, memory and CUDA version)."""
    device = torch.device(device)
    info = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cpu":  # what CPU timings depend on
        info.update(threads=torch.get_num_threads(), load_1min=round(os.getloadavg()[0], 2))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(sms=props.multi_processor_count, memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def results_stem(report: dict) -> str:
    """<device>-<date>[-small][-<parts>] of a report with ``environment`` and ``date``: -small for toy
    sizes (so they never mix with the model's), the parts when only some were run (so that a run of
    other parts on the same day does not overwrite them)."""
    stem = slug(report["environment"]["device"]) + "-" + report["date"]
    stem += "-small" if report.get("sizes") == "small" else ""
    return stem + ("-" + "-".join(report["parts"]) if report.get("only") else "")
