"""The kernel tests' pytest helpers. Tolerances, relative errors, random inputs and the float64
comparisons live in one importable module, ``attngan_fast.kernels.testing``, which the GPU benchmark
uses too; they are re-exported here for the tests' imports."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
from attngan_fast.kernels.testing import DTYPES, TOLERANCE, assert_gradients, assert_rel, quantize, rel_err

__all__ = ["DTYPES", "IMPLS", "INCEPTION_SCORE_FLOOR", "TOLERANCE", "assert_gradients", "assert_rel", "loss_and_grads", "needs_interpreter",
           "quantize", "rel_err"]

needs_interpreter = pytest.mark.skipif(
    not kernels.interpreter_active(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (set without CUDA)"
)
IMPLS = ["reference", pytest.param("triton", marks=needs_interpreter)]
# An Inception Score is exp(mean KL) >= 1, but torch-fidelity's float64 log_softmax against log(softmax)
# rounds a split whose KL is 0 (one image, or identical ones) to as little as 1 - 3e-16.
INCEPTION_SCORE_FLOOR = 1.0 - 1e-12


def loss_and_grads(fn, *leaves: torch.Tensor, autocast: bool = False) -> list[torch.Tensor]:
    """[fn(*x), *x.grad] on fresh copies x of ``leaves`` that require grad. With ``autocast`` the forward
    runs under CPU bf16 autocast and the backward outside it, as PyTorch's AMP recipe prescribes."""
    xs = [t.clone().requires_grad_() for t in leaves]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = fn(*xs)
    value.backward()
    return [value.detach(), *(x.grad for x in xs)]
