"""The released implementation's *algorithm* for F_attn, rewritten from the math: flatten the image to
(B·HW, C)-rows, batched matmul with the projected words, mask with ``mask.repeat(HW, 1)`` (the layout
defect that ``legacy_mask`` reproduces), softmax over the words, batched matmul back, with the
transposes and contiguous copies of the release. Baseline (a) of the benchmarks (docs/design.md §6)."""

from __future__ import annotations

import torch


def word_attention_released(query: torch.Tensor, context: torch.Tensor, word_mask: torch.Tensor | None = None,
                            return_attn: bool = False):
    """query (B, C, H, W), context (B, C, T), word_mask (B, T) -> (ctx (B, C, H, W), attn (B, T, H, W) | None)."""
    batch, channels, height, width = query.shape
    pixels, length = height * width, context.shape[2]
    target = query.reshape(batch, channels, pixels).transpose(1, 2).contiguous()  # (B, HW, C)
    attn = torch.bmm(target, context).reshape(batch * pixels, length)
    if word_mask is not None:
        attn = attn.masked_fill(word_mask.repeat(pixels, 1), float("-inf"))
    attn = torch.softmax(attn, dim=1).reshape(batch, pixels, length)
    attn = attn.transpose(1, 2).contiguous()  # (B, T, HW)
    ctx = torch.bmm(context, attn).reshape(batch, channels, height, width)
    return ctx, (attn.reshape(batch, length, height, width) if return_attn else None)
