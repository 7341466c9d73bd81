"""Where the Triton kernels can run, and which implementation a call gets.

Triton is optional at import time: without it (or without a GPU and without the interpreter) every op
still works through its plain-PyTorch reference. The Triton interpreter runs the kernels on CPU tensors;
it is chosen by ``TRITON_INTERPRET=1``, which Triton reads when a kernel is *decorated*, so it must be
set before ``attngan_fast.kernels`` is first imported (``tests/conftest.py`` does this on machines without CUDA).
"""

from __future__ import annotations

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - Linux builds of torch ship Triton
    TRITON_AVAILABLE = False


def _mend_interpreter_loop_bounds() -> bool:
    """Triton 3.6's interpreter turns a scalar into a loop bound with ``int()`` of its one-element
    array, which NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"): every kernel loop with a runtime bound then fails on CPU. Triton 3.8 squeezes the array
    first; this gives an interpreter without that fix the same conversion. True when it mended one."""
    import inspect

    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        unmended = patch_tensor is not None and "int(self.handle.data))" in inspect.getsource(patch_tensor)
    except (OSError, TypeError):  # no source to read: leave it as it is
        unmended = False
    if not unmended:
        return False

    def patch_lang_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


INTERPRETER_MENDED = TRITON_AVAILABLE and _mend_interpreter_loop_bounds()

IMPLS = ("auto", "triton", "reference", "sdpa")
# "sdpa" (PyTorch's scaled_dot_product_attention) is F_attn's alone; an op with no such form (the DAMSM
# score: two softmaxes, over words and then over regions) runs it as "auto", so that one run-wide
# setting (runtime.impl, --impl) can name it.
# What a user may ask for; "native" is what "auto" resolves to for bf16/fp16 inputs of one dtype.
PRECISIONS = ("auto", "ieee", "tf32", "bf16x3")


def kernel_is_interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated while ``TRITON_INTERPRET=1`` (it then runs on CPU tensors)."""
    if not TRITON_AVAILABLE:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def resolve_impl(impl: str, device: torch.device, interpreted: bool) -> str:
    """Map the user's ``impl`` to ``"triton"`` or ``"reference"`` for tensors on ``device`` ("sdpa" as
    "auto": ops with an SDPA path take it before asking here).

    ``interpreted`` says whether this op's kernels were built for the Triton interpreter.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "sdpa":
        impl = "auto"
    if impl == "reference":
        return "reference"
    if impl == "auto":
        return "triton" if (device.type == "cuda" and TRITON_AVAILABLE and not interpreted) else "reference"
    # impl == "triton"
    if not TRITON_AVAILABLE:
        raise RuntimeError("impl='triton' needs the triton package, which is not installed")
    if device.type == "cuda" and interpreted:
        raise RuntimeError(
            "impl='triton' on CUDA tensors, but TRITON_INTERPRET=1 was set when the kernels were imported; "
            "unset it to run the compiled kernels"
        )
    if device.type == "cpu" and not interpreted:
        raise RuntimeError(
            "impl='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 before "
            "importing `attngan_fast.kernels`, or use impl='reference'"
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"impl='triton' supports CPU (interpreter) and CUDA tensors, not {device.type}")
    return "triton"


def choose_impl(impl: str, interpreted: bool, *tensors: torch.Tensor) -> str:
    """``resolve_impl`` for these tensors, keeping float64 on the reference path: the kernels compute
    in fp32, so "auto" falls back to the reference and an explicit "triton" is refused."""
    which = resolve_impl(impl, tensors[0].device, interpreted)
    if which == "triton" and any(t.dtype == torch.float64 for t in tensors):
        if impl == "triton":
            raise TypeError("impl='triton' computes in float32; use impl='reference' for float64 inputs")
        which = "reference"
    return which


def fused_runnable(fused_module, interpreted: bool, *tensors: torch.Tensor) -> bool:
    """Whether an op's registered kernel can run the Triton kernels of ``fused_module`` on these tensors
    in this process (else it runs the reference math)."""
    if fused_module is None or any(t.dtype not in (torch.float16, torch.bfloat16, torch.float32) for t in tensors):
        return False
    device = tensors[0].device.type
    return (device == "cpu" and interpreted) or (device == "cuda" and not interpreted)


def resolve_precision(precision: str, *tensors: torch.Tensor) -> str:
    """How the Triton kernels multiply: ``"native"`` (bf16/fp16 operands straight into the tensor
    cores, fp32 accumulation) or the ``tl.dot`` input precision of fp32 operands.

    ``"auto"``: ``"native"`` when every floating input is bf16, or every one fp16; ``"bf16x3"`` (each
    fp32 operand as a bf16 hi/lo pair, three bf16 MMAs per product: fp32 accuracy on the tensor
    cores) when any is fp32; ``"tf32"`` for a mix of bf16 and fp16, whose values tf32 holds exactly.
    ``"ieee"`` (FMA units only), ``"tf32"`` and ``"bf16x3"`` may be asked for explicitly; 16-bit
    inputs are then up-cast to fp32 first. (Triton's own "tf32x3" splits whole operand tiles in
    registers: at the DAMSM kernels' tiles it spills kilobytes and outgrows shared memory, so it is
    not offered.)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    if torch.float32 in dtypes or torch.float64 in dtypes:
        return "bf16x3"
    return "native" if len(dtypes) == 1 else "tf32"


def device_capability(device: torch.device) -> int | None:
    """10·major + minor of a CUDA device (90 for Hopper), None elsewhere: the launchers' defaults
    depend on it (wgmma tiles on Hopper, smaller ones where shared memory is ~100 KB)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def next_block(n: int, minimum: int = 16) -> int:
    """Power-of-two block covering ``n``; at least 16 because ``tl.dot`` needs every dimension >= 16
    on the GPU (the interpreter does not enforce it, so the rule is kept here for both)."""
    return max(minimum, 1 << max(0, (int(n) - 1).bit_length()))


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64 (the checking precision), float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# Tests set this so that every output buffer of a launcher starts as NaN: an element a kernel fails
# to write then fails the comparison instead of passing on whatever memory held.
POISON_OUTPUTS = False


def alloc_output(shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return poison_(torch.empty(shape, device=device, dtype=dtype))


def poison_(out: torch.Tensor) -> torch.Tensor:
    """Fills a freshly allocated output with NaN while tests ask for it; returns it."""
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def is_channels_last(query: torch.Tensor) -> bool:
    """Whether (B, C, H, W) ``query`` is laid out channels_last (and not also NCHW-contiguous, as
    tensors with C = 1 or H = W = 1 are)."""
    return query.is_contiguous(memory_format=torch.channels_last) and not query.is_contiguous()


def alloc_like_query(query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An output shaped like ``query`` (B, C, H, W) in its memory format, NCHW or channels_last, so that
    flattening H and W is always a view. Shared by the real and the fake kernels, so strides agree."""
    fmt = torch.channels_last if is_channels_last(query) else torch.contiguous_format
    return torch.empty(query.shape, device=query.device, dtype=dtype, memory_format=fmt)
