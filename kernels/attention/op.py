"""The public op ``word_attention`` (F_attn), its ``torch.library`` registration, and which path a
call takes (``impl``).

Same arrangement as ``attngan_fast.kernels.damsm.op``: ``attngan_fast::word_attention`` runs the Triton kernels on
CUDA (and on CPU through the interpreter when ``TRITON_INTERPRET=1``), the reference math otherwise;
a fake kernel for ``torch.compile``; an analytic backward op. The context comes out in the promoted
input dtype (bf16 under AMP), the attention maps in fp32; accumulation is fp32 (the Triton kernels'
operands are as ``precision`` says, ``attngan_fast.kernels._mma``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from .._runtime import (TRITON_AVAILABLE, alloc_like_query, choose_impl, compute_dtype, fused_runnable, is_channels_last,
                        resolve_precision)
from .reference import word_attention_ref, word_attention_ref_backward
from .sdpa import word_attention_sdpa

if TRITON_AVAILABLE:
    from . import fused

    _INTERPRETED = fused.INTERPRETED
else:  # pragma: no cover
    fused = None
    _INTERPRETED = False

# What impl="auto" runs on CPU tensors, per layout of the image features: the faster of the reference
# and SDPA at the training shapes, measured side by side (python -m benchmarks.gpu --device cpu --sizes
# model --only auto; the results file is named in docs/attention-providers.md). channels_last: SDPA (its
# fused CPU kernel takes the (B, HW, C) view as it is); NCHW: the reference (SDPA's two layout copies
# eat its gain). On a GPU "auto" stays the fused kernels until a GPU run measures them against SDPA and
# FlexAttention.
CPU_AUTO = {"channels_last": "sdpa", "nchw": "reference"}


def _fused_ok(*tensors: torch.Tensor) -> bool:
    return fused_runnable(fused, _INTERPRETED, *tensors)


def which_path(impl: str, query: torch.Tensor, context: torch.Tensor) -> str:
    """The path ``word_attention`` takes: "triton", "reference" or "sdpa" (float64 stays on the
    reference under "auto": it is the checking precision)."""
    if impl == "sdpa":
        return "sdpa"
    which = choose_impl(impl, _INTERPRETED, query, context)
    if impl == "auto" and query.device.type == "cpu" and compute_dtype(query, context) != torch.float64:
        return CPU_AUTO["channels_last" if is_channels_last(query) else "nchw"]
    return which


def _attn_shape(query, context, return_attn):
    B, _, H, W = query.shape
    return (B, context.shape[2], H, W) if return_attn else (0,)


@torch.library.custom_op("attngan_fast::word_attention", mutates_args=())
def _word_attention_op(
    query: torch.Tensor,
    context: torch.Tensor,
    word_mask: Optional[torch.Tensor],
    return_attn: bool,
    legacy_mask: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _fused_ok(query, context):
        return fused.word_attention_forward(query, context, word_mask, return_attn, legacy_mask, precision)
    with torch.no_grad():
        ctx, attn = word_attention_ref(query, context, word_mask, return_attn, legacy_mask)
    # Same memory format as the fake kernel promises (channels_last in, channels_last out).
    out = alloc_like_query(query, ctx.dtype).copy_(ctx)
    return out, (attn if return_attn else query.new_empty((0,), dtype=ctx.dtype))


@_word_attention_op.register_fake
def _word_attention_fake(query, context, word_mask, return_attn, legacy_mask, precision):
    out = alloc_like_query(query, torch.promote_types(query.dtype, context.dtype))
    return out, query.new_empty(_attn_shape(query, context, return_attn), dtype=compute_dtype(query, context))


@torch.library.custom_op("attngan_fast::word_attention_backward", mutates_args=())
def _word_attention_backward_op(
    grad_ctx: torch.Tensor,
    query: torch.Tensor,
    context: torch.Tensor,
    word_mask: Optional[torch.Tensor],
    legacy_mask: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _fused_ok(query, context):
        return fused.word_attention_backward(grad_ctx, query, context, word_mask, legacy_mask, precision)
    d_query, d_context = word_attention_ref_backward(grad_ctx, query, context, word_mask, legacy_mask)
    return alloc_like_query(query, d_query.dtype).copy_(d_query), d_context


@_word_attention_backward_op.register_fake
def _word_attention_backward_fake(grad_ctx, query, context, word_mask, legacy_mask, precision):
    return alloc_like_query(query, query.dtype), torch.empty_like(context, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    query, context, word_mask, _return_attn, legacy_mask, precision = inputs
    ctx.mark_non_differentiable(output[1])  # the maps: a backward through them raises, as on the reference path
    ctx.save_for_backward(query, context, word_mask)
    ctx.legacy_mask, ctx.precision = legacy_mask, precision


def _backward(ctx, grad_ctx, _grad_attn):
    # The attention maps are for pictures and are not differentiable: their gradient is ignored.
    query, context, word_mask = ctx.saved_tensors
    d_query, d_context = _word_attention_backward_op(grad_ctx, query, context, word_mask, ctx.legacy_mask, ctx.precision)
    return d_query, d_context, None, None, None, None


_word_attention_op.register_autograd(_backward, setup_context=_setup_context)


def word_attention(
    query: torch.Tensor,
    context: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    *,
    return_attn: bool = False,
    legacy_mask: bool = False,
    impl: str = "auto",
    precision: str = "auto",
):
    """The generator's word attention F_attn (docs/design.md §2.3).

    query: (B, C, H, W) image features h (NCHW or channels_last).
    context: (B, C, T) word features already projected to C channels (e' = U e).
    word_mask: (B, T) bool, True = padding word; each sample keeps at least one word. None = all valid.
    return_attn: also return the attention maps β (B, T, H, W), fp32, not differentiable.
    legacy_mask: reproduce the released code's mask layout (row b·HW + q of the flattened scores takes
        the mask of sample (b·HW + q) mod B), for generators trained with the released code.
    impl: "auto" (Triton on CUDA; on CPU whichever of SDPA and the reference measured faster for the
        query's layout, see ``CPU_AUTO``; float64 on the reference), "triton", "reference" or "sdpa" (PyTorch's
        scaled_dot_product_attention with the padding as a boolean mask, ``attention.sdpa``; the maps,
        when asked for, by the reference's math).
    precision: how the Triton path multiplies: "auto" (bf16/fp16 inputs straight into the tensor
        cores; fp32 inputs as bf16 hi/lo pairs, "bf16x3", fp32 accuracy on tensor cores), "bf16x3",
        "tf32" or "ieee" (FMA only); see ``attngan_fast.kernels._runtime.resolve_precision``.

    Returns (ctx (B, C, H, W) in the promoted input dtype, attn (B, T, H, W) or None).
    """
    _checks.check_features("query", query, (4,), "(B, C, H, W)")
    _checks.check_features("context", context, (3,), "(B, C, T)")
    _checks.check_same_device(query=query, context=context, word_mask=word_mask)
    batch, channels = query.shape[:2]
    if context.shape[0] != batch:
        raise ValueError(f"context has batch {context.shape[0]} but query has batch {batch}")
    if context.shape[1] != channels:
        raise ValueError(
            f"context has {context.shape[1]} channels but query has {channels}; project the words to the "
            "query's channels first (context = U·words)"
        )
    if word_mask is not None:
        _checks.check_word_mask(word_mask, batch, context.shape[2])

    precision = resolve_precision(precision, query, context)  # checked on every path, used on Triton's
    path = which_path(impl, query, context)
    if path == "reference":
        return word_attention_ref(query, context, word_mask, bool(return_attn), bool(legacy_mask))
    if path == "sdpa":
        return word_attention_sdpa(query, context, word_mask, bool(return_attn), bool(legacy_mask))
    out, attn = _word_attention_op(
        query, context, word_mask, bool(return_attn), bool(legacy_mask), precision
    )
    return out, (attn if return_attn else None)
