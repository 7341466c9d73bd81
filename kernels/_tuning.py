"""Launch configurations of the Triton kernels: a fixed default per kernel, and autotuning on CUDA.

Each kernel comes with a list of candidate ``LaunchConfig`` s (block sizes over the looped axis, warps,
pipeline stages) that spans small GPUs (about 100 KB of shared memory and 64K registers per SM) to
Hopper (228 KB, where the D = 256 tiles want 8-16 warps to keep the fp32 tiles out of local memory).
On CUDA, with autotuning on, Triton's autotuner times every candidate the first time it sees a key
(the model's dimensions and the precision, never the batch), keeps the fastest, and skips candidates
that do not fit the device (``OutOfResources``). Under the Triton interpreter, or with autotuning off,
a fixed default runs instead (the interpreter has no timer and ignores warps and stages).

Why autotuning can be switched off: two tile sizes add the same numbers in different orders, so two
processes that tune to different candidates agree only to rounding. ``ATTNGAN_FAST_AUTOTUNE=0`` (or
``set_autotune(False)``, or ``runtime.autotune: false`` in a training config) pins the defaults, for
runs that must repeat bit for bit across processes (resume on a GPU). Inside one process the choice
is cached, so repeated calls are deterministic either way.

Every kernel must fully overwrite its outputs, whatever the candidate: the autotuner runs each
candidate on the real output buffers, and nothing is reset between them.

A default is checked before it runs on a GPU (``TunedKernel.fitting``, ``attngan_fast.kernels._fit``): when its
compiled kernel needs more shared memory or registers than the device has, which can change from one
Triton version to the next, the next candidate that fits runs instead, with a warning.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import triton

from ._fit import device_limits, fallback_order, why_it_does_not_fit

AUTOTUNE_ENV = "ATTNGAN_FAST_AUTOTUNE"
_autotune_override: bool | None = None


def set_autotune(enabled: bool | None) -> None:
    """Turn autotuning of the fused kernels on or off for this process (``None``: back to the
    ``ATTNGAN_FAST_AUTOTUNE`` environment variable, default on)."""
    global _autotune_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _autotune_override = enabled


@contextlib.contextmanager
def autotuning(enabled: bool):
    """``set_autotune(enabled)`` inside the block, the previous setting after it."""
    global _autotune_override
    previous = _autotune_override
    set_autotune(enabled)
    try:
        yield
    finally:
        _autotune_override = previous


def autotune_enabled() -> bool:
    if _autotune_override is not None:
        return _autotune_override
    value = os.environ.get(AUTOTUNE_ENV, "1").strip().lower()
    if value in ("1", "true", "on", "yes", ""):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{AUTOTUNE_ENV} must be 1/0 (or true/false, on/off), got {value!r}")


# Compiler options every launch passes, rather than taking Triton's defaults. FP fusion (a·b + c as one
# fused multiply-add) is on in Triton <= 3.9 and announced off by default from 3.10: the tolerances
# the tests hold and the register surveys in benchmarks/results are for fused code, and an upgrade of
# Triton should not silently change the arithmetic of the kernels.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class LaunchConfig:
    """Compile-time block sizes (``meta``) plus the warps and pipeline stages of one launch."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def of(cls, num_warps: int = 4, num_stages: int = 2, **meta: int) -> "LaunchConfig":
        return cls(tuple(sorted(meta.items())), num_warps, num_stages)

    def launch_kwargs(self) -> dict:
        return dict(self.meta, num_warps=self.num_warps, num_stages=self.num_stages, **COMPILE_OPTIONS)

    def triton_config(self) -> triton.Config:
        return triton.Config(dict(self.meta), num_warps=self.num_warps, num_stages=self.num_stages)

    def __str__(self) -> str:
        return " ".join([f"{k}={v}" for k, v in self.meta] + [f"warps={self.num_warps}", f"stages={self.num_stages}"])


@dataclass
class TunedKernel:
    """A ``@triton.jit`` kernel with its candidate configs and the launch arguments its tuning is keyed on.

    ``prune(candidates, args) -> candidates`` drops candidates that cannot be best for these arguments
    (for instance a block larger than the axis it tiles); it must keep at least one.
    """

    kernel: object
    candidates: Sequence[LaunchConfig]
    key: Sequence[str]
    prune: Callable[[Sequence[LaunchConfig], dict], Sequence[LaunchConfig]] | None = None
    interpreted: bool = False
    # The autotuner's timer, ``(kernel_call, quantiles) -> [median, ...]``; None = Triton's own (CUDA
    # events). Tests give a fake one to run the whole autotuning path through the interpreter.
    do_bench: Callable | None = None
    last_config: LaunchConfig | None = field(default=None, init=False)
    _autotuner: object = field(default=None, init=False, repr=False)
    _fitting: dict = field(default_factory=dict, init=False, repr=False)

    def launch(self, grid, *args, default: LaunchConfig, config: LaunchConfig | None = None, **kwargs):
        """Runs the kernel. ``config`` forces one launch configuration (tests run every candidate this
        way); otherwise the autotuner picks on CUDA when autotuning is on, else ``default`` runs.
        ``grid`` may be a function of the launch's meta-parameters. ``last_config`` records the choice."""
        if config is None and not self.interpreted and autotune_enabled():
            tuner = self._tuner()
            tuner[grid](*args, **kwargs, **COMPILE_OPTIONS)
            chosen = tuner.best_config
            self.last_config = LaunchConfig.of(chosen.num_warps, chosen.num_stages, **chosen.kwargs)
            return
        chosen = config or (default if self.interpreted else self.fitting(args, kwargs, default))
        self.kernel[grid](*args, **kwargs, **chosen.launch_kwargs())
        self.last_config = chosen

    def fitting(self, args: tuple, kwargs: dict, default: LaunchConfig, limits: dict | None = None) -> LaunchConfig:
        """What runs in place of ``default`` for these launch arguments: ``default`` itself when its
        compiled kernel fits the device (``limits``, default: the current device's), else the first
        candidate of ``attngan_fast.kernels._fit.fallback_order`` that does, with a warning. Compiles (into Triton's
        cache, which the launch then hits) but launches nothing; the answer is kept per arguments."""
        limits = limits or device_limits()
        key = (default, _specialization(args, kwargs), tuple(sorted(limits.items())))
        if key not in self._fitting:
            named = {**dict(zip(self.kernel.arg_names, args)), **kwargs}
            candidates = self.prune(self.candidates, named) if self.prune else self.candidates
            reasons = []
            for candidate in fallback_order(default, candidates):
                compiled = self.kernel.warmup(*args, grid=(1,), **kwargs, **candidate.launch_kwargs())
                why = why_it_does_not_fit(compiled, candidate.num_warps, limits)
                if why is None:
                    break
                reasons.append(f"{candidate} {why}")
            else:
                raise RuntimeError(f"no launch configuration of {self.kernel.__name__} fits this GPU: "
                                   + "; ".join(reasons))
            if candidate != default:
                warnings.warn(f"{self.kernel.__name__}: the default launch {reasons[0]}; running {candidate} "
                              "instead", RuntimeWarning, stacklevel=2)
            self._fitting[key] = candidate
        return self._fitting[key]

    def _tuner(self):
        if self._autotuner is None:
            configs = [c.triton_config() for c in self.candidates]
            prune = None
            if self.prune is not None:
                def prune(triton_configs, named_args, **launch_kwargs):
                    mine = [LaunchConfig.of(c.num_warps, c.num_stages, **c.kwargs) for c in triton_configs]
                    kept = set(self.prune(mine, {**named_args, **launch_kwargs}))
                    return [t for t, m in zip(triton_configs, mine) if m in kept] or triton_configs[:1]
            options = {"do_bench": self.do_bench} if self.do_bench is not None else {}
            self._autotuner = triton.autotune(
                configs=configs, key=list(self.key),
                prune_configs_by={"early_config_prune": prune} if prune else None, **options,
            )(self.kernel)
        return self._autotuner


def _specialization(args: tuple, kwargs: dict) -> tuple:
    """What a compiled kernel depends on among launch arguments, as a hashable key: tensors by dtype and
    16-byte alignment (which Triton specializes on), everything else by value."""
    def one(arg):
        if isinstance(arg, torch.Tensor):
            return (arg.dtype, arg.data_ptr() % 16 == 0)
        return arg if isinstance(arg, (int, float, bool, str, type(None))) else str(arg)

    return tuple(one(a) for a in args), tuple(sorted((k, one(v)) for k, v in kwargs.items()))
