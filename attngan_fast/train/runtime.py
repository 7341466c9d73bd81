"""Device, distributed setup (torchrun), AMP and seeding shared by the training loops."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch._functorch.config  # not imported by torch itself until something compiles
import torch.distributed as dist

from attngan_fast import kernels
from ..config import ConfigError, RuntimeConfig
from .. import strict_json


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    stop: str | None = None  # the signal that asked the run to stop ("SIGINT", "SIGTERM"), if one did

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


class DeviceError(RuntimeError):
    """A device name that is not one, or a device this machine does not have."""


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a GPU this
    machine lacks, is a DeviceError in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device is available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextlib.contextmanager
def training_runtime(settings: RuntimeConfig) -> Iterator[Runtime]:
    """The process set-up of one training run (device, ``torchrun`` group, the kernels' autotuning,
    how compiled code differentiates under AMP), undone on the way out, an error included."""
    # The loops run the forward under autocast and the backward outside it (PyTorch's AMP recipe), which
    # is what "off" tells torch.compile; its default assumes the backward runs under the forward's
    # autocast too and re-autocasts the compiled backward's matmuls to 16 bits (pytorch#153044: CPU bf16
    # gradients ~3e-3 from eager's instead of 1e-7).
    with kernels.autotuning(settings.autotune), torch._functorch.config.patch(backward_pass_autocast="off"):
        rt = setup_runtime(settings.device)
        check_cuda_graphs(settings, rt.device)
        check_impl(settings, rt.device)
        try:
            with stopping_on_signals(rt):
                yield rt
        finally:
            teardown_runtime(rt)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stopping_on_signals(rt: Runtime) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM (torchrun, a job scheduler) asks the loop to stop: it saves where it is
    at its next check (``Deadline.passed``) and ends, so nothing since the last checkpoint is lost; a
    second Ctrl-C stops at once. The handlers are the previous ones again on the way out."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def ask_to_stop(signum, frame):
        # Only a flag: printing here could re-enter a write to stderr that the signal interrupted. A
        # repeated SIGTERM is ignored (schedulers and torchrun may both send one); Ctrl-C twice stops.
        if rt.stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        rt.stop = rt.stop or signal.Signals(signum).name

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def leave_the_process_group(worker_id: int) -> None:
    """A loader worker's start: a process group of its own. Ctrl-C reaches every process of the
    terminal's foreground group and torchrun signals a rank's whole group, and a worker either killed
    would end the run before the main process could save. Out of the group the signals reach the main
    process alone, while the worker keeps the default handlers, so that the loader (and Python's exit)
    can still end it with SIGTERM; it also ends when the main process dies (the loader's watchdog)."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)


def check_cuda_graphs(settings: RuntimeConfig, device: torch.device) -> None:
    if settings.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"runtime.cuda_graphs needs a CUDA device; this run is on {device.type} (set it false)")
    if settings.cuda_graphs and not settings.compile:
        raise ConfigError("runtime.cuda_graphs captures the compiled parts: it needs runtime.compile true (--compile)")


def check_impl(settings: RuntimeConfig, device: torch.device) -> None:
    """runtime.impl=triton where the kernels cannot run is a one-line error before any work (the ops
    would raise it at the first step, with the run folder made)."""
    if settings.impl != "triton":
        return
    if not kernels.TRITON_AVAILABLE:
        raise ConfigError("runtime.impl=triton (--impl triton) needs the triton package, which is not installed")
    interpreted = kernels.interpreter_active()
    if device.type == "cpu" and not interpreted:
        raise ConfigError("runtime.impl=triton (--impl triton) runs the Triton kernels on a CUDA device; this run is "
                          "on the CPU: use --impl auto (or TRITON_INTERPRET=1 for the interpreter, a slow check)")
    if device.type == "cuda" and interpreted:
        raise ConfigError("runtime.impl=triton (--impl triton) on a CUDA device, but TRITON_INTERPRET=1 is set: unset "
                          "it to run the compiled kernels")


def compile_mode(settings: RuntimeConfig) -> str | None:
    """torch.compile's mode: "reduce-overhead" (CUDA graphs) with runtime.cuda_graphs, else the default."""
    return "reduce-overhead" if settings.cuda_graphs else None


def step_begins(settings: RuntimeConfig) -> None:
    """Tells the CUDA graphs that a training step begins: the previous step's graph outputs are dead
    (their memory is reused by the next replay)."""
    if settings.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()


def setup_runtime(device_name: str) -> Runtime:
    """Single process, or one process of a ``torchrun`` group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Runtime(pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world, local_rank)


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def autocast(device: torch.device, amp: str):
    """The forward's autocast context for ``amp`` in {off, bf16, fp16}."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A gradient scaler, active only for fp16 (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite; the run stopped and the last good checkpoint was kept."""


class LossWatch:
    """A training loop's losses, kept on the device so that a step never waits for the GPU (reading a
    loss is a host sync that empties the GPU's queue): ``record`` every step, ``read`` at log steps,
    ``check`` at log steps and before every checkpoint. The first step whose losses were not all finite
    is remembered on the device with its values, so that the error names it however late it is read;
    nothing non-finite is ever saved, because a checkpoint is checked first."""

    def __init__(self, what: str, rt: Runtime, smoothing: float = 0.9):
        self.what, self.rt, self.smoothing = what, rt, smoothing
        self.names: tuple[str, ...] = ()
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=rt.device)
        self.latest = self.running = self.first_bad = None

    def record(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        """This step's losses (0-dim tensors), ``step`` counted from 1 as in the log."""
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if self.latest is None:
            self.names, self.running, self.first_bad = tuple(losses), values.clone(), torch.zeros_like(values)
        elif tuple(losses) != self.names:
            raise ValueError(f"losses changed from {self.names} to {tuple(losses)}")
        newly_bad = ~torch.isfinite(values).all() & (self.first_bad_step < 0)
        self.first_bad_step.masked_fill_(newly_bad, step)
        self.first_bad = torch.where(newly_bad, values, self.first_bad)
        self.running = torch.lerp(self.running, values, 1.0 - self.smoothing)  # NaN only after the check fires
        self.latest = values

    def read(self, *, smoothed: bool = False) -> dict[str, float]:
        """The latest (or exponentially smoothed) losses by name; one host sync."""
        values = self.running if smoothed else self.latest
        return {} if values is None else dict(zip(self.names, values.tolist()))

    def check(self, step: int, checkpoint: Path) -> None:
        """Raises TrainingDiverged if any recorded step had a non-finite loss, on any rank (a collective
        under torchrun: every rank calls it at the same steps)."""
        first = self.first_bad_step
        if self.rt.distributed:
            first = torch.where(first < 0, torch.iinfo(torch.int64).max, first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.int64).max, -1, first)
        bad_step = int(first)
        if bad_step < 0:
            return
        values = ", ".join(f"{k} {v:.4g}" for k, v in zip(self.names, self.first_bad.tolist()))
        where = f" ({values})" if int(self.first_bad_step) == bad_step else " (on another rank)"
        kept = checkpoint if checkpoint.exists() else "none (no epoch finished yet)"
        raise TrainingDiverged(f"{self.what} loss became non-finite at step {bad_step}{where}; training stopped at "
                               f"step {step}, the last good checkpoint is {kept}")


class Deadline:
    """``max_minutes`` of training (None: no limit), or a stop a signal asked for (``Runtime.stop``).
    Every rank must stop at the same step or DDP hangs, so under torchrun the ranks agree, through a
    collective every ``every`` steps; alone, each step just reads the clock and the flag."""

    def __init__(self, max_minutes: float | None, rt: Runtime, every: int):
        self.at = None if max_minutes is None else time.monotonic() + max_minutes * 60
        self.rt, self.every = rt, every
        self.said = False

    def passed(self, step: int) -> bool:
        if self.rt.stop is not None and not self.said and self.rt.is_main:
            self.said = True
            print(f"attngan-fast: {self.rt.stop}: saving and stopping" + (
                f" within {self.every} steps (the processes agree on the step)" if self.rt.distributed else "")
                  + "; Ctrl-C again stops at once, without saving", file=sys.stderr, flush=True)
        if self.rt.distributed and step % self.every:
            return False
        due = self.rt.stop is not None or (self.at is not None and time.monotonic() > self.at)
        if self.rt.distributed:
            flag = torch.tensor([float(due)], device=self.rt.device)  # NCCL reduces device tensors only
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due


class JsonlLog:
    """Appends one JSON object per line (rank 0 only); with ``tensorboard`` (a folder) every row and
    picture also goes to TensorBoard (``train.tensorboard``)."""

    def __init__(self, path: Path, enabled: bool, tensorboard: Path | None = None):
        self.path, self.enabled = path, enabled
        self.board = None
        if enabled and tensorboard is not None:
            from .tensorboard import TensorBoardWriter

            self.board = TensorBoardWriter(tensorboard)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(strict_json.dumps(record) + "\n")
            if self.board is not None:
                self.board.row(record)

    def picture(self, tag: str, path: Path | None, step: int) -> None:
        """A picture the loop saved, for TensorBoard (nothing without it)."""
        if self.board is not None and path is not None:
            self.board.picture(tag, path, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class StepMeter:
    """Training speed for the log: steps per second of the loop since the previous reading (wall clock,
    the device synchronized first, time inside ``paused()`` left out: sample grids, evaluation,
    checkpoints) and the peak device memory since the run started (CUDA only)."""

    def __init__(self, device: torch.device, step: int):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.intervals: list[tuple[int, float]] = []  # (steps, seconds) per reading
        self._restart(step)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _restart(self, step: int) -> None:
        self._sync()
        self.start, self.start_step, self.paused_s = time.perf_counter(), step, 0.0

    @contextlib.contextmanager
    def paused(self):
        self._sync()
        began = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.paused_s += time.perf_counter() - began

    def reading(self, step: int) -> dict:
        """{"steps_per_s", "peak_memory_mb"} since the previous reading (each present when known)."""
        self._sync()
        seconds = time.perf_counter() - self.start - self.paused_s
        out: dict = {}
        if step > self.start_step and seconds > 0:
            self.intervals.append((step - self.start_step, seconds))
            out["steps_per_s"] = round((step - self.start_step) / seconds, 3)
        if self.cuda:
            out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        self._restart(step)
        return out

    def summary(self) -> dict:
        """Steps per second over every reading but the first (compilation, autotuning and the first
        batches' warm-up land there), or over the first when it is the only one; peak memory."""
        steady = self.intervals[1:] or self.intervals
        out: dict = {}
        if steady:
            out["steps_per_s"] = round(sum(n for n, _ in steady) / sum(s for _, s in steady), 3)
            out["timed_steps"] = sum(n for n, _ in steady)
        if self.cuda:
            out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out
