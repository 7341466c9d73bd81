"""The public op ``damsm_word_scores`` and its ``torch.library`` registration.

``attngan_fast::damsm_word_scores`` is a custom op so that ``torch.compile`` treats the fused kernels
as one opaque node (no graph break) with a fake kernel for shapes and an analytic backward op:
- CUDA kernel: the Triton kernels;
- CPU kernel: the Triton kernels through the interpreter when ``TRITON_INTERPRET=1`` was set at
  import (how the tests run them without a GPU), the reference math otherwise.
Inputs keep their dtype (fp16/bf16/fp32, mixed allowed): the reference math up-casts them, the
Triton kernels multiply them as ``precision`` says (``attngan_fast.kernels._mma``); accumulation is fp32 and the
scores and maps come out fp32. Autocast passes custom ops through untouched, and the reference
math disables autocast inside, so eager and compiled runs agree under AMP.
"""

from __future__ import annotations

import torch

from .. import _checks
from .._runtime import TRITON_AVAILABLE, compute_dtype, choose_impl, fused_runnable, resolve_precision
from .reference import damsm_word_scores_ref, damsm_word_scores_ref_backward

if TRITON_AVAILABLE:
    from . import fused

    _INTERPRETED = fused.INTERPRETED
else:  # pragma: no cover
    fused = None
    _INTERPRETED = False

def _fused_ok(*tensors: torch.Tensor) -> bool:
    return fused_runnable(fused, _INTERPRETED, *tensors)


def _empty_attn(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return words.new_empty((0,), dtype=dtype)


@torch.library.custom_op("attngan_fast::damsm_word_scores", mutates_args=())
def _damsm_op(
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float,
    gamma2: float,
    return_attn: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _fused_ok(words, regions):
        return fused.damsm_forward(words, cap_lens, regions, gamma1, gamma2, return_attn, precision)
    with torch.no_grad():
        out = damsm_word_scores_ref(words, cap_lens, regions, gamma1, gamma2, return_attn=return_attn)
    if return_attn:
        return out
    return out, _empty_attn(words, out.dtype)


@_damsm_op.register_fake
def _damsm_fake(words, cap_lens, regions, gamma1, gamma2, return_attn, precision):
    dtype = compute_dtype(words, regions)
    scores = words.new_empty((regions.shape[0], words.shape[0]), dtype=dtype)
    if return_attn:
        return scores, words.new_empty((regions.shape[0], words.shape[2], regions.shape[2]), dtype=dtype)
    return scores, _empty_attn(words, dtype)


@torch.library.custom_op("attngan_fast::damsm_word_scores_backward", mutates_args=())
def _damsm_backward_op(
    grad_scores: torch.Tensor,
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float,
    gamma2: float,
    precision: str,
    need_words: bool,
    need_regions: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (d_words, d_regions); a gradient that is not needed comes back as an empty tensor."""
    if _fused_ok(words, regions):
        return fused.damsm_backward(
            grad_scores, words, cap_lens, regions, gamma1, gamma2, precision,
            need_words=need_words, need_regions=need_regions,
        )
    d_words, d_regions = damsm_word_scores_ref_backward(grad_scores, words, cap_lens, regions, gamma1, gamma2)
    return (d_words if need_words else d_words.new_empty((0,))), (d_regions if need_regions else d_regions.new_empty((0,)))


@_damsm_backward_op.register_fake
def _damsm_backward_fake(grad_scores, words, cap_lens, regions, gamma1, gamma2, precision, need_words, need_regions):
    d_words = words.new_empty(words.shape if need_words else (0,))
    d_regions = regions.new_empty(regions.shape if need_regions else (0,))
    return d_words, d_regions


def _setup_context(ctx, inputs, output):
    words, cap_lens, regions, gamma1, gamma2, _return_attn, precision = inputs
    ctx.mark_non_differentiable(output[1])  # the maps: a backward through them raises, as on the reference path
    ctx.save_for_backward(words, cap_lens, regions)
    ctx.gamma1, ctx.gamma2, ctx.precision = gamma1, gamma2, precision


def _backward(ctx, grad_scores, _grad_attn):
    # The attention maps are for pictures and are not differentiable: their gradient is ignored.
    words, cap_lens, regions = ctx.saved_tensors
    need_words, need_regions = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    d_words, d_regions = _damsm_backward_op(
        grad_scores, words, cap_lens, regions, ctx.gamma1, ctx.gamma2, ctx.precision, need_words, need_regions
    )
    return (d_words if need_words else None), None, (d_regions if need_regions else None), None, None, None, None


_damsm_op.register_autograd(_backward, setup_context=_setup_context)


def damsm_word_scores(
    words: torch.Tensor,
    cap_lens,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    *,
    return_attn: bool = False,
    impl: str = "auto",
    precision: str = "auto",
):
    """DAMSM word-level matching score R for every (image, caption) pair (docs/design.md §2.1).

    words: (B_cap, D, T) word features; caption j's words are t < cap_lens[j], the rest is padding
        that never takes part (its gradient is zero).
    cap_lens: (B_cap,) integers in [1, T] (tensor, numpy array or sequence).
    regions: (B_img, D, N) or (B_img, D, H, W) region features (N = H·W).
    gamma1, gamma2: region-softmax sharpness γ1 in (0, 80] and word-aggregation factor γ2 > 0.
    return_attn: also return the matching pairs' region attention (B, T, N), fp32, padding words
        zero, not differentiable; needs B_img == B_cap.
    impl: "auto" (Triton on CUDA, reference elsewhere), "triton" or "reference".
    precision: how the Triton path multiplies: "auto" (bf16/fp16 inputs straight into the tensor
        cores; fp32 inputs as bf16 hi/lo pairs, "bf16x3", fp32 accuracy on tensor cores), "bf16x3",
        "tf32" or "ieee" (FMA only); see ``attngan_fast.kernels._runtime.resolve_precision``.

    Returns R: (B_img, B_cap) float32 (float64 for float64 inputs on the reference path), in the
    released form R = log Σ_t exp(γ2·cos_t); with ``return_attn`` the tuple (R, attn).
    """
    _checks.check_features("words", words, (3,), "(B_cap, D, T)")
    _checks.check_features("regions", regions, (3, 4), "(B_img, D, N) or (B_img, D, H, W)")
    _checks.check_same_device(words=words, regions=regions)
    batch_cap, dim, max_len = words.shape
    if regions.shape[1] != dim:
        raise ValueError(
            f"regions has feature size D={regions.shape[1]} but words has D={dim} "
            f"(words: (B_cap, D, T) = {tuple(words.shape)}, regions: {tuple(regions.shape)})"
        )
    cap_lens = _checks.as_cap_lens(cap_lens, batch_cap, words.device)
    gamma1 = _checks.check_gamma("gamma1", gamma1, _checks.MAX_GAMMA1)
    gamma2 = _checks.check_gamma("gamma2", gamma2)
    if return_attn and regions.shape[0] != batch_cap:
        raise ValueError(
            f"return_attn=True needs one image per caption (B_img == B_cap), got B_img={regions.shape[0]}, "
            f"B_cap={batch_cap}"
        )
    _checks.check_cap_lens_values(cap_lens, max_len)
    regions = regions.flatten(2)

    precision = resolve_precision(precision, words, regions)  # checked on every path, used on Triton's
    if choose_impl(impl, _INTERPRETED, words, regions) == "reference":
        return damsm_word_scores_ref(words, cap_lens, regions, gamma1, gamma2, return_attn=return_attn)
    scores, attn = _damsm_op(
        words, cap_lens, regions, gamma1, gamma2, bool(return_attn), precision
    )
    return (scores, attn) if return_attn else scores
