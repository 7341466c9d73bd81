"""Peak extra memory of a block of CPU code, counted from the tensors its operations create.

CPU tensors have no allocator statistics, so ``PeakExtraBytes`` counts bytes itself: every storage an
operation inside the block creates (not a view of, or an in-place write to, a tensor it was given) is
live from then until PyTorch frees it (a weak reference on the storage object, which PyTorch keeps
one-to-one with the storage), and the peak of their sum is what the block needed beyond its inputs.
Backward passes count too: autograd runs CPU backward passes on the calling thread, inside the mode.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakExtraBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in ("aten", "prim", "prims"):
            out = func(*args, **kwargs)
        else:
            # A custom op (ours) would run with this mode switched off, hiding every buffer it makes
            # inside: run its CPU kernel directly, with the mode on.
            with self:
                out = func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in given or key in self._tracked:
                continue
            self._tracked.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out
