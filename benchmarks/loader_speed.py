"""Images per second of the two training loaders, side by side in one run: the PIL path (decode, box
crop, resize, random crop, flip and pyramid per image, on one CPU core) and ``data.on_device``
(decoded once; each batch a gather and two resizes on the device).

    python -m benchmarks.loader_speed --data DIR [--device cuda] [--out benchmarks/results]

The GPU benchmark calls ``loader_rates(root, device=...)``: on a GPU, the on-device rate is what the
step can take without any CPU core; the PIL rate per core says how many cores the step would need.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
import time

import torch

from attngan_fast.data.dataset import EpochSampler, TextImageDataset, collate
from attngan_fast.data.on_device import OnDeviceDataset
from benchmarks.environment import results_path


def _seconds(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def loader_rates(root, *, device="cpu", layout: str = "cub", image_size: int = 256, branches: int = 3,
                 captions_per_image: int = 10, batch_size: int = 20, batches: int = 10, rounds: int = 3) -> dict:
    """{"pil": images/s on one core, "on_device": images/s of the device batches (on CPU: one core),
    "decode_once_s": the on-device path's one-off decoding (all cores), ...}. The two loaders are timed
    in turn, ``rounds`` times (on a shared machine only their ratio in one run means much)."""
    device = torch.device(device)
    dataset = TextImageDataset(root, layout, "train", captions_per_image=captions_per_image, words_num=18,
                               image_size=image_size, branches=branches)
    items = list(itertools.islice(iter(EpochSampler(len(dataset), seed=0)), batch_size * batches))
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    start = time.perf_counter()
    on_device = OnDeviceDataset(dataset, device)
    decode_s = time.perf_counter() - start
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    try:
        on_device.collate([on_device[it] for it in chunks[0]])  # warm-up
        pil, dev, loads = [], [], []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            pil.append(_seconds(lambda: [collate([dataset[it] for it in c], pad_to=18) for c in chunks], device))
            dev.append(_seconds(lambda: [on_device.collate([on_device[it] for it in c]) for c in chunks], device))
    finally:
        torch.set_num_threads(threads)
    n = len(items)
    return {"device": str(device), "root": str(root), "images": len(dataset), "image_size": image_size, "branches": branches,
            "batch_size": batch_size, "timed_images": n, "rounds": rounds,
            "pil_images_per_s_per_core": round(n / min(pil), 1), "on_device_images_per_s": round(n / min(dev), 1),
            "on_device_vs_pil": round(min(pil) / min(dev), 1), "decode_once_s": round(decode_s, 1),
            "decode_once_images_per_s": round(len(dataset) / decode_s, 1), "cpus": os.cpu_count(),
            "load_1min": [round(min(loads), 2), round(max(loads), 2)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a CUB-layout root (e.g. attngan-fast data synth --size 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--out", default=None, help="folder for <device>-<date>-loader.md/.json")
    args = parser.parse_args(argv)
    rates = loader_rates(args.data, device=args.device, batches=args.batches)
    command = "python -m benchmarks.loader_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# Training loaders on {args.device} ({datetime.date.today()}, torch {torch.__version__})\n\n"
            f"Command: `{command}`\n\n| loader | images/s | note |\n| --- | ---: | --- |\n"
            f"| PIL (decode, crop, resize, flip, pyramid) | {rates['pil_images_per_s_per_core']} | one CPU core |\n"
            f"| data.on_device (gather, flip, pyramid) | {rates['on_device_images_per_s']} | "
            f"{'one CPU core' if args.device == 'cpu' else args.device}; decoding once took {rates['decode_once_s']} s "
            f"({rates['decode_once_images_per_s']} images/s on {rates['cpus']} cores) |\n\n"
            f"{rates['on_device_vs_pil']}x; data {rates['root']} ({rates['images']} training images); "
            f"{rates['timed_images']} images of {rates['image_size']} px in batches of "
            f"{rates['batch_size']}, {rates['branches']} stages, best of {rates['rounds']} interleaved rounds; "
            f"1-minute load average {rates['load_1min']}.\n")
    print(text)
    if args.out:
        stem = results_path(args.out, args.device, "loader")
        stem.with_suffix(".json").write_text(json.dumps({**rates, "command": command}, indent=2))
        stem.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
