"""Input validation at the public boundary of the ops: every error names the argument at fault.

Shape, dtype and device checks are free. Checks of *values* (caption lengths, fully masked captions)
need one host sync each on a GPU; they run in eager mode and are skipped while ``torch.compile``
traces, where a sync would break the graph, and inside ``value_checks(False)``, which a training loop
whose data pipeline already guarantees those values uses so that its step never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# exp(gamma1 * s_bar) with s_bar in [0, 1] is summed over at most a few thousand regions without a
# running max; gamma1 <= 80 keeps that sum far from float32 overflow (exp(88.7)).
MAX_GAMMA1 = 80.0


_VALUE_CHECKS = contextvars.ContextVar("attngan_fast_value_checks", default=True)


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turns the ops' checks of input *values* on or off inside the block (on by default): caption
    lengths in [1, T] and no caption whose words are all masked. Each reads the device once, a host
    sync that empties the GPU's queue; turn them off only where the inputs are known to be valid (a
    wrong length then gives wrong numbers, not an error). Shape, dtype and device checks always run."""
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def _skip_value_checks() -> bool:
    return torch.compiler.is_compiling() or not _VALUE_CHECKS.get()


def check_features(name: str, x, ranks: Sequence[int], layout: str) -> None:
    """``x`` must be a floating tensor of one of ``ranks`` dimensions, with no empty dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp16, bf16, fp32 or fp64), got {x.dtype}")
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have {want} dimensions {layout}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    items = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor)]  # the type checks name the rest
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; all inputs must share a device"
            )


def as_cap_lens(cap_lens, batch: int, device: torch.device) -> torch.Tensor:
    """Caption lengths as an integer tensor of shape (batch,) on ``device``.

    Accepts a tensor, a numpy array or a sequence of ints.
    """
    if not isinstance(cap_lens, torch.Tensor):
        try:
            cap_lens = torch.as_tensor(cap_lens, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"cap_lens must be an integer tensor or sequence of ints: {err}") from None
    if cap_lens.dtype.is_floating_point or cap_lens.dtype.is_complex or cap_lens.dtype == torch.bool:
        raise TypeError(f"cap_lens must hold integers, got {cap_lens.dtype}")
    if cap_lens.dim() != 1 or cap_lens.shape[0] != batch:
        raise ValueError(
            f"cap_lens must have shape ({batch},) (one length per caption in words), got {tuple(cap_lens.shape)}"
        )
    if cap_lens.device != device:
        raise ValueError(f"cap_lens is on {cap_lens.device} but words is on {device}; all inputs must share a device")
    return cap_lens


def check_cap_lens_values(cap_lens: torch.Tensor, max_len: int) -> None:
    """Every length must lie in [1, T]: a caption has at least one word and at most the padded length."""
    if _skip_value_checks():
        return
    bad = (cap_lens < 1) | (cap_lens > max_len)
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"cap_lens must lie in [1, T={max_len}] (T = words.shape[2]); cap_lens[{idx}] = {int(cap_lens[idx])}"
        )


def check_gamma(name: str, value: float, upper: float = math.inf) -> float:
    # float() would take "4" and a tensor that needs a gradient (which the ops treat as a constant)
    if isinstance(value, (str, bytes, bool)) or (isinstance(value, torch.Tensor) and value.requires_grad):
        kind = "a tensor that requires grad (γ is a constant here)" if isinstance(value, torch.Tensor) else repr(value)
        raise TypeError(f"{name} must be a number, got {kind}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    # Comparisons only (NaN fails them): under torch.compile a gamma that changed between calls is a
    # symbolic float, which math.isfinite does not take; a comparison becomes a guard.
    if not (0.0 < value <= upper and value < math.inf):
        bound = f"(0, {upper:g}]" if math.isfinite(upper) else "(0, inf)"
        raise ValueError(f"{name} must be finite and in {bound}, got {value}")
    return value


def check_word_mask(word_mask, batch: int, length: int) -> None:
    if not isinstance(word_mask, torch.Tensor):
        raise TypeError(f"word_mask must be a bool tensor (B, T) or None, got {type(word_mask).__name__}")
    if word_mask.dtype != torch.bool:
        raise TypeError(f"word_mask must be a bool tensor (True = padding word), got {word_mask.dtype}")
    if tuple(word_mask.shape) != (batch, length):
        raise ValueError(
            f"word_mask must have shape (B, T) = ({batch}, {length}) to match context, got {tuple(word_mask.shape)}"
        )
    if _skip_value_checks():
        return
    empty = word_mask.all(dim=1)
    if bool(empty.any()):
        idx = int(empty.nonzero()[0, 0])
        raise ValueError(f"word_mask masks every word of sample {idx}; each sample needs at least one word")
