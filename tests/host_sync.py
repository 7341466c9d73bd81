"""What the training tests need beyond data: a detector of host reads in our code, and a free port for
2-process gloo runs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
OUR_PACKAGES = tuple(str(ROOT / name) + "/" for name in ("attngan_fast", "kernels"))

# Reading a device tensor's value on the host waits for the GPU to finish everything queued before it.
HOST_READS = {torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
              torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__format__,
              torch.Tensor.cpu}


class HostReads(TorchFunctionMode):
    """Records every read of a tensor's value to the host (``bool(t)``, ``float(t)``, ``t.item()``,
    ``f"{t:.2f}"``, ``t.cpu()`` ...) made directly by code of ours while active. On CPU nothing
    syncs, but a read there is a sync on a GPU; torch's own reads of host metadata (an optimizer's step
    counter, packed sequences' batch sizes) are not ours and are left out."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            caller = sys._getframe(1)  # the Python frame that made the call (the dispatch itself is C)
            if caller.f_code.co_filename.startswith(OUR_PACKAGES):
                where = Path(caller.f_code.co_filename).relative_to(ROOT)
                self.found.append(f"{func.__name__} at {where}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
