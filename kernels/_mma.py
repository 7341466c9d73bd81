"""How the fused kernels feed the tensor cores, shared by both ops: the operand format of each
``precision`` and the two @triton.jit helpers that multiply in it.

- ``"native"``: bf16/fp16 inputs of one dtype go to the MMA as they are (fp32 accumulation).
- ``"bf16x3"`` (fp32's default): every fp32 operand is held as a bf16 (hi, lo) pair, hi + lo = x to
  16 bits, and a product takes three bf16 MMAs (hi·hi + hi·lo + lo·hi; lo·lo is below fp32's
  rounding). Operands loaded in bulk are split by the launchers (``split_parts``): splitting whole
  tiles in registers, as Triton's own "tf32x3"/"bf16x3" do, spills at these tile sizes.
- ``"ieee"`` / ``"tf32"``: fp32 operands and that ``tl.dot`` input precision.

The interpreter computes bf16 dots wrongly (fp16 ones correctly), so there every product runs in
fp32, unless a test sets ``INTERPRETER_SPLIT_DTYPE = tl.float16`` to run the hi/lo plumbing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

INTERPRETER_SPLIT_DTYPE = None

DOT_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def torch_dtype(dot_dtype) -> torch.dtype:
    return {v: k for k, v in DOT_DTYPES.items()}[dot_dtype]


def dot_operands(a: torch.Tensor, b: torch.Tensor, precision: str, interpreted: bool) -> dict:
    """The constexprs DOT_DTYPE, PRECISION (``tl.dot``'s input precision) and SPLIT of the products of
    inputs ``a`` and ``b`` at a resolved ``precision`` (``attngan_fast.kernels._runtime.resolve_precision``)."""
    if precision == "native":
        if interpreted or a.dtype != b.dtype or a.dtype not in (torch.bfloat16, torch.float16):
            return dict(DOT_DTYPE=tl.float32, PRECISION="ieee", SPLIT=False)
        return dict(DOT_DTYPE=DOT_DTYPES[a.dtype], PRECISION="ieee", SPLIT=False)
    if precision == "bf16x3":
        if interpreted:
            split = INTERPRETER_SPLIT_DTYPE
            return dict(DOT_DTYPE=split or tl.float32, PRECISION="ieee", SPLIT=split is not None)
        return dict(DOT_DTYPE=tl.bfloat16, PRECISION="ieee", SPLIT=True)
    return dict(DOT_DTYPE=tl.float32, PRECISION=precision, SPLIT=False)


def split_parts(x: torch.Tensor, dot_dtype) -> torch.Tensor:
    """(2, *x.shape): x's hi and lo parts in ``dot_dtype``; x − hi is exact in fp32."""
    x = x.float()
    hi = x.to(torch_dtype(dot_dtype))
    return torch.stack([hi, (x - hi.float()).to(hi.dtype)])


@triton.jit
def operand_parts(x, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
    """fp32 x as MMA operands (hi, lo): with SPLIT two DOT_DTYPE parts; without, x in DOT_DTYPE
    twice (lo is then never used)."""
    hi = x.to(DOT_DTYPE)
    if SPLIT:
        lo = (x - hi.to(tl.float32)).to(DOT_DTYPE)
    else:
        lo = hi
    return hi, lo


@triton.jit
def mma(a_hi, a_lo, b_hi, b_lo, acc, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a·b on the tensor cores; with SPLIT, of (hi, lo) pairs, in three products (a float64
    emulation of the DAMSM math at the bird sizes: R within 2e-7, the gradients within 4e-6)."""
    acc = tl.dot(a_hi, b_hi, acc, input_precision=PRECISION)
    if SPLIT:
        acc = tl.dot(a_hi, b_lo, acc, input_precision=PRECISION)
        acc = tl.dot(a_lo, b_hi, acc, input_precision=PRECISION)
    return acc
