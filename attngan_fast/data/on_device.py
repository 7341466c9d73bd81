"""``data.on_device``: the training images decoded and cropped once, kept on the training device as
uint8, and every batch's random crop, flip and stage pyramid done there as batched tensor ops, so the
loader needs no CPU cores (decoding a JPEG costs ~13 ms of a core per 256 px image).

Each image is stored as the PIL path has it just before its random crop: the CUB bounding-box crop
with its shorter side resized (by PIL, bilinear) to 76/64 of the final size. A batch draws its crops
from the same per-sample random streams as ``TextImageDataset`` (same seeds, same order of draws), so
runs stay reproducible and resumable. The batches equal the PIL path's exactly on CPU; on a GPU the
smaller stages are resized in float (torch has no uint8 antialiased resize there) and come within a
grey level of PIL's.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .dataset import TextImageDataset, collate, crop_box, draw_crop, resized_size, shown_size, upright
from .layouts import DataError, image_path

# Of the device's free memory, the most the images may take: the models, activations and the
# compiler's workspace need the rest.
MAX_SHARE = 0.5


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's count; CPU: the kernel's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def stored_sizes(dataset: TextImageDataset) -> list[tuple[int, int]]:
    """(width, height) each image will have on the device, from the files' headers (nothing decoded)."""
    final, sizes = dataset.sizes[-1], []
    for key in dataset.keys:
        path = image_path(dataset.root, dataset.layout, key)
        try:
            with Image.open(path) as img:
                size = shown_size(img, upright(dataset.layout))  # as load_image will turn it
        except OSError as err:
            raise DataError(f"corrupt or unreadable image {path}: {err}") from None
        corners = crop_box(size, dataset.boxes[key]) if dataset.boxes is not None and key in dataset.boxes else None
        sizes.append(resized_size(size if corners is None else (corners[2] - corners[0], corners[3] - corners[1]), final))
    return sizes


class DeviceImages:
    """Images of different sizes, (H, W, 3) uint8 each, in one flat buffer on ``device``; where each
    one starts and its shape are kept on the host, so cropping needs no index tensors and no sync.
    ``fill(i)`` decodes image i; each is written straight into the host buffer (its shape is known from
    the file's header), so the images are never held twice in host memory."""

    def __init__(self, shapes: list[tuple[int, int, int]], fill, device: torch.device, desc: str = "decoding"):
        self.shapes = shapes
        counts = [h * w * c for h, w, c in shapes]
        self.starts = np.cumsum([0] + counts)[:-1].tolist()
        host = np.empty(sum(counts), dtype=np.uint8)

        def put(i: int) -> None:  # PIL releases the GIL while it decodes and resizes
            array = fill(i)
            if array.shape != shapes[i]:
                raise DataError(f"image {i} decoded to {array.shape}, its header said {shapes[i]}")
            host[self.starts[i] : self.starts[i] + counts[i]] = array.reshape(-1)

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(tqdm(pool.map(put, range(len(shapes))), total=len(shapes), disable=None, desc=desc, leave=False))
        self.data = torch.from_numpy(host).to(device)  # on CPU the same memory, no copy

    def crops(self, crops: list[tuple[int, int, int, int]], final: int) -> torch.Tensor:
        """(B, final, final, 3) uint8: for each (image index, left, top, flip) the ``final`` square at
        (left, top), mirrored where flip is 1: views of the buffer stacked (one copy), then one select."""
        views = []
        for index, left, top, _ in crops:
            h, w, c = self.shapes[index]
            image = self.data[self.starts[index] : self.starts[index] + h * w * c].view(h, w, c)
            views.append(image[top : top + final, left : left + final])
        out = torch.stack(views)
        flip = torch.tensor([c[3] for c in crops], dtype=torch.bool)
        if out.device.type == "cuda":
            flip = flip.pin_memory()  # a non-blocking copy from pinned memory does not wait for the GPU
        return torch.where(flip.to(out.device, non_blocking=True)[:, None, None, None], out.flip(2), out)


def pyramid(crops: torch.Tensor, sizes: list[int], integer: bool | None = None) -> list[torch.Tensor]:
    """(B, 3, s, s) float32 in [-1, 1] for each stage size, from the final size's (B, s, s, 3) uint8
    crops; the smaller stages resized as PIL's bilinear resize does (a triangle filter as wide as the
    scale). ``integer`` (default: on CPU, the only device with it) resizes the uint8 images, exactly
    PIL's; otherwise in float, rounded to whole grey levels (PIL's within one)."""
    x = crops.permute(0, 3, 1, 2)  # channels_last, the layout torch's uint8 resize is fast in
    integer = x.device.type == "cpu" if integer is None else integer
    out = []
    for s in sizes:
        if s == x.shape[-1]:
            y = x.float()
        elif integer:
            y = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True).float()
        else:
            y = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True).round_().clamp_(0, 255)
        out.append((y / 127.5 - 1.0).contiguous())
    return out


class OnDeviceDataset(Dataset):
    """A ``TextImageDataset`` whose images live on ``device``. Items carry their caption and their crop
    (index, left, top, flip), drawn as the PIL path draws them; ``collate`` makes the batch's images."""

    def __init__(self, dataset: TextImageDataset, device: torch.device):
        self.dataset, self.device, self.words_num = dataset, torch.device(device), dataset.words_num
        self.sizes = stored_sizes(dataset)
        needed, free = sum(3 * w * h for w, h in self.sizes), free_memory(self.device)
        if needed > MAX_SHARE * free:
            raise DataError(f"data.on_device: the {len(self.sizes):,} {dataset.split} images need {needed / 2**30:.2f} GiB "
                            f"on {self.device}, more than half of its {free / 2**30:.2f} GiB free; set data.on_device "
                            "false (the CPU loader) or use a device with more memory")
        final = dataset.sizes[-1]

        def decode(index: int) -> np.ndarray:
            img = dataset.load_image(index)
            return np.asarray(img.resize(resized_size(img.size, final), Image.BILINEAR))

        self.images = DeviceImages([(h, w, 3) for w, h in self.sizes], decode, self.device,
                                   desc=f"decoding {dataset.split} images for data.on_device")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item) -> dict:
        index, sample, rng = self.dataset.caption_sample(item)
        left, top, flip = draw_crop(self.sizes[index], self.dataset.sizes[-1], rng if self.dataset.train else None)
        return {**sample, "images": [], "crop": (index, left, top, int(flip))}

    def collate(self, items: list[dict]) -> dict:
        """``collate``'s batch (captions padded to words_num) with the images made on the device."""
        batch = collate(items, pad_to=self.words_num)
        crops = self.images.crops([item["crop"] for item in items], self.dataset.sizes[-1])
        batch["images"] = pyramid(crops, self.dataset.sizes)
        return batch
