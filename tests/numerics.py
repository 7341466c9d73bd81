"""The kernel tests' pytest helpers. Tolerances, relative errors and random inputs live in one
importable module, ``attngan_fast.kernels.testing``, which the GPU benchmark uses too; they are
re-exported here for the tests' imports."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
from attngan_fast.kernels.testing import DTYPES, TOLERANCE, assert_rel, quantize, rel_err

__all__ = ["DTYPES", "IMPLS", "TOLERANCE", "assert_rel", "loss_and_grads", "needs_interpreter", "quantize", "rel_err"]

needs_interpreter = pytest.mark.skipif(
    not kernels.interpreter_active(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (set without CUDA)"
)
IMPLS = ["reference", pytest.param("triton", marks=needs_interpreter)]


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
