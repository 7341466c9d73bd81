"""Images per second of the two training loaders, side by side in one run: the PIL path (decode, box
crop, resize, random crop, flip and pyramid per image, on one CPU core) and ``data.on_device``
(decoded once; each batch a gather and two resizes on the device): ``python -m benchmarks.gpu --only
loader [--data DIR]``. On a GPU, the on-device rate is what the step can take without any CPU core; the
PIL rate per core says how many cores the step would need.
"""

from __future__ import annotations

import itertools
import os
import time

import torch

from attngan_fast.data.dataset import EpochSampler, TextImageDataset, collate
from attngan_fast.data.on_device import OnDeviceDataset


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
