"""Which fused kernels a call launched, and running every kernel with one forced candidate: the
bookkeeping the benchmark scripts need around ``attngan_fast.kernels`` without naming any of its kernels.

Kernel names come from ``attngan_fast.kernels.chosen_configs()`` (each kernel's last launch configuration); the
kernels themselves are found as the ``attngan_fast.kernels._tuning.TunedKernel`` objects held by the modules of the
imported ``attngan_fast.kernels`` package, so a kernel added, renamed or merged by a redesign is picked up as it is. Nothing here
changes what a kernel computes: ``launched`` only clears the record of the last configuration before
a call, and ``forcing_candidate`` passes a configuration through the launcher's own ``config=`` switch.
"""

from __future__ import annotations

import contextlib
import sys

from attngan_fast import kernels
try:
    from attngan_fast.kernels._tuning import TunedKernel
except ImportError:  # pragma: no cover - a kernels package without Triton's tuning layer
    TunedKernel = None

_FOUND: list | None = None


def tuned_kernels() -> list:
    """Every TunedKernel object held by a module of the imported ``attngan_fast.kernels`` package (found once)."""
    global _FOUND
    if _FOUND is None:
        found = {}
        if TunedKernel is not None:
            for name, module in list(sys.modules.items()):
                if module is not None and (name == kernels.__name__ or name.startswith(kernels.__name__ + ".")):
                    for value in vars(module).values():
                        if isinstance(value, TunedKernel):
                            found[id(value)] = value
        _FOUND = list(found.values())
    return _FOUND


def launched(run):
    """(run(), {kernel name: launch configuration}) for the kernels ``run`` launched. Each kernel's
    record of its last configuration is cleared first, so a kernel that ran in an earlier call but not
    in this one is not reported."""
    for kernel in tuned_kernels():
        if hasattr(kernel, "last_config"):
            kernel.last_config = None
    result = run()
    return result, {name: config for name, config in kernels.chosen_configs().items() if config}


def max_candidates() -> int:
    """The longest candidate list of any kernel (how many forced-candidate passes cover them all)."""
    return max((len(getattr(k, "candidates", ())) for k in tuned_kernels()), default=0)


def _named_args(kernel, args: tuple, kwargs: dict) -> dict:
    names = getattr(kernel.kernel, "arg_names", None) or []
    return {**dict(zip(names, args)), **kwargs}


@contextlib.contextmanager
def forcing_candidate(index: int):
    """Inside the block every kernel launches with its ``index``-th autotuning candidate (through
    ``config=``), when it has one and its own pruning would try it for these arguments; otherwise, or
    when that candidate does not fit the device, with its default. Compiling every candidate this way
    in parallel processes fills Triton's on-disk cache with exactly what the autotuner compiles later
    (same kernel, same arguments, same options)."""
    if TunedKernel is None:
        yield
        return
    original = TunedKernel.launch

    def launch(self, grid, *args, default, config=None, **kwargs):
        candidates = list(getattr(self, "candidates", ()))
        forced = candidates[index] if config is None and index < len(candidates) else None
        if forced is not None and self.prune is not None and forced not in self.prune(candidates, _named_args(self, args, kwargs)):
            forced = None  # the autotuner would never compile it for these arguments
        if forced is not None:
            try:
                return original(self, grid, *args, default=default, config=forced, **kwargs)
            except Exception as error:  # OutOfResources and kin: the autotuner skips it too
                if "OutOfResources" not in type(error).__name__ and "PTXAS" not in type(error).__name__.upper():
                    raise
        return original(self, grid, *args, default=default, config=config or default, **kwargs)

    TunedKernel.launch = launch
    try:
        with kernels.autotuning(False):
            yield
    finally:
        TunedKernel.launch = original
