"""Shared numerics for the kernel tests: tolerances by dtype and a relative-error check that never
lets NaN pass."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
# ‖out − ref‖ / ‖ref‖ against a float64 computation on the same (rounded) inputs.
TOLERANCE = {
    "fp32": 1e-5,  # fp32 with ieee dots (and the interpreter, which computes in fp32 numpy)
    "tf32": 2e-3,
    "bf16": 2e-2,
    "fp16": 2e-2,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

needs_interpreter = pytest.mark.skipif(
    not kernels.interpreter_active(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (set without CUDA)"
)
IMPLS = ["reference", pytest.param("triton", marks=needs_interpreter)]


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """‖out − ref‖ / max(‖ref‖, floor). ``floor`` is for gradients that vanish (saturated softmaxes):
    there the error is measured against the gradient's natural scale instead of against ~0."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"non-finite values in output: {int((~torch.isfinite(out)).sum())} of {out.numel()}"
    scale = max(float(torch.linalg.vector_norm(ref)), floor)
    diff = float(torch.linalg.vector_norm(out - ref))
    return diff / scale if scale > 0 else diff


def assert_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str, floor: float = 0.0) -> None:
    err = rel_err(out, ref, floor)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in ``dtype``, the same values in float64): the float64 reference sees exactly the inputs the
    kernel sees, so only the kernel's own rounding is measured."""
    low = x.to(dtype)
    return low, low.to(torch.float64)


def loss_and_grads(fn, *leaves: torch.Tensor, autocast: bool = False) -> list[torch.Tensor]:
    """[fn(*x), *x.grad] on fresh copies x of ``leaves`` that require grad. With ``autocast`` the forward
    runs under CPU bf16 autocast and the backward outside it, as PyTorch's AMP recipe prescribes."""
    xs = [t.clone().requires_grad_() for t in leaves]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = fn(*xs)
    value.backward()
    return [value.detach(), *(x.grad for x in xs)]


def assert_gradients(out: torch.Tensor, ref: torch.Tensor, leaves: dict, tol: float, what: str,
                     floors: dict | None = None) -> None:
    """Back-propagates one random linear loss through ``out`` and through its float64 ``ref``, then
    checks each gradient: ``leaves`` maps a name to (leaf, its float64 twin); ``floors`` a name to the
    scale its error is judged against where the gradient vanishes (``rel_err``). Leaves keep their dtype."""
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (out * grad.to(out.dtype)).sum().backward()
    for name, (leaf, leaf64) in leaves.items():
        assert leaf.grad.dtype == leaf.dtype, f"d_{name} is {leaf.grad.dtype}, its input {leaf.dtype}"
        assert_rel(leaf.grad, leaf64.grad, tol, f"d_{name} ({what})", floor=(floors or {}).get(name, 0.0))
