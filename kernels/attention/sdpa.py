"""F_attn through PyTorch's ``scaled_dot_product_attention`` (SDPA): the word attention of docs/design.md
§2.3 is exactly single-head attention with scale 1, queries = the image features h as (B, 1, HW, C),
keys = values = the projected words e' as (B, 1, T, C), the padding words masked.

For channels_last h the (B, 1, HW, C) queries are a free view, and so is the context map made from
SDPA's (B, 1, HW, C) output; NCHW h costs a copy into that layout (PyTorch's fused backends need unit
stride on the channels; without them it would fall back to its math backend) and one back to NCHW
for the context map. PyTorch picks the backend (math, memory-efficient, cuDNN or FlashAttention, the
ones the inputs and ``torch.nn.attention.sdpa_kernel`` allow).

Masks, as SDPA takes them (boolean, True = may attend): the sample's own valid words, (B, 1, 1, T);
with ``legacy_mask`` the released layout, an explicit (B, 1, HW, T) mask whose row q of sample b is
the mask of sample (b·HW + q) mod B (``reference.score_mask``).

``word_attention_sdpa_key_channel`` is the same attention without any mask, for kernels that take
none (FlashAttention): see its docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._runtime import is_channels_last
from .reference import own_words, score_mask, word_attention_maps

# Channels added by the maskless form: one carries the mask, the rest keep the head dimension a
# multiple of 8, which the fused kernels need (PyTorch would otherwise pad with another copy).
KEY_CHANNELS = 8


def query_key_value(query: torch.Tensor, context: torch.Tensor, word_mask: torch.Tensor | None, legacy_mask: bool,
                    unit_stride: bool = True):
    """query (B, C, H, W), context (B, C, T), word_mask (B, T) (True = padding) -> queries (B, 1, HW, C)
    and keys = values (B, 1, T, C), padding words zeroed (except in legacy mode), in the promoted dtype.
    ``unit_stride``: copy queries whose channels are strided (NCHW h) so that the channels are dense."""
    dtype = torch.promote_types(query.dtype, context.dtype)
    q = query.to(dtype).flatten(2).transpose(1, 2).unsqueeze(1)
    if unit_stride and q.stride(-1) != 1:
        # NCHW (or otherwise strided) h: one copy, without which the fused backends refuse the inputs
        # and PyTorch falls back to its math backend (slower even on CPU: benchmarks.gpu's auto part).
        q = q.contiguous()
    # (B, T, C) made dense (B·T·C elements, a few kB): the fused backends need unit stride on C.
    kv = own_words(context.to(dtype), word_mask, legacy_mask).transpose(1, 2).contiguous().unsqueeze(1)
    return q, kv


def sdpa_mask(word_mask: torch.Tensor | None, batch: int, pixels: int, legacy_mask: bool) -> torch.Tensor | None:
    """The boolean mask SDPA takes, True = may attend: (B, 1, 1, T), or the legacy layout's explicit
    (B, 1, HW, T); None without a word mask."""
    masked = score_mask(word_mask, batch, pixels, legacy_mask)  # (B, 1 or HW, T), True = padding
    return None if masked is None else ~masked.unsqueeze(1)


def context_map(out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """SDPA's output (B, 1, HW, C) as the context map (B, C, H, W) in ``query``'s memory format: a view
    for channels_last queries, one copy to NCHW otherwise."""
    height, width = query.shape[2:]
    ctx = out.squeeze(1).transpose(1, 2).unflatten(2, (height, width))
    return ctx if is_channels_last(query) else ctx.contiguous()


def word_attention_sdpa(query: torch.Tensor, context: torch.Tensor, word_mask: torch.Tensor | None = None,
                        return_attn: bool = False, legacy_mask: bool = False):
    """query (B, C, H, W), context (B, C, T), word_mask (B, T) bool (True = padding) or None ->
    (ctx (B, C, H, W) in the promoted input dtype, attn (B, T, H, W) or None).

    SDPA computes in the promoted input dtype (bf16 inputs stay bf16, with fp32 accumulation inside the
    fused backends); autocast is off inside, as on the other paths, so fp32 inputs under autocast are
    not rounded to 16 bits. SDPA never forms the attention maps: with ``return_attn`` they are computed
    apart, by the reference's math (one more (B, HW, T) product, fp32, not differentiable)."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        q, kv = query_key_value(query, context, word_mask, legacy_mask)
        keep = sdpa_mask(word_mask, query.shape[0], q.shape[2], legacy_mask)
        out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=keep, scale=1.0)
        ctx = context_map(out, query)
    return ctx, (word_attention_maps(query, context, word_mask, legacy_mask) if return_attn else None)


def key_channel_operands(q: torch.Tensor, kv: torch.Tensor, word_mask: torch.Tensor | None):
    """The maskless operands of ``word_attention_sdpa_key_channel``: (q', k', v'), each with
    KEY_CHANNELS more channels. q' = [q | 1 | 0…], k' = [k | 0 or −inf | 0…], v' = [k | 0…]."""
    batch, _, pixels, _ = q.shape
    extra_q = q.new_zeros(batch, 1, pixels, KEY_CHANNELS)
    extra_q[..., 0] = 1.0
    extra_k = kv.new_zeros(batch, 1, kv.shape[2], KEY_CHANNELS)
    if word_mask is not None:
        extra_k[:, 0, :, 0] = torch.zeros_like(word_mask, dtype=kv.dtype).masked_fill(word_mask, float("-inf"))
    return (torch.cat([q, extra_q], dim=3), torch.cat([kv, extra_k], dim=3),
            torch.cat([kv, torch.zeros_like(extra_k)], dim=3))


def word_attention_sdpa_key_channel(query: torch.Tensor, context: torch.Tensor, word_mask: torch.Tensor | None = None):
    """F_attn with no mask for SDPA's backends that take none (FlashAttention), exactly: query (B, C, H, W),
    context (B, C, T), word_mask (B, T) or None -> ctx (B, C, H, W) (the sample's own words; no maps, no
    legacy layout, whose mask differs per pixel row).

    One more query channel holds 1 and one more key channel 0 for a valid word and −inf for a padding
    word, so a padding word's score is −inf and its weight exactly 0 (each sample keeps a word, so no
    row is all −inf); the value of that channel is 0 and the padding words' values are zeroed as on the
    other paths. The cost: q' is a copy of q with KEY_CHANNELS more channels, the output a slice of a
    wider one, and every product runs on C + KEY_CHANNELS channels. In the backward the extra query
    channel's gradient is 0·(−inf) = NaN, and it is dropped with the slice: the other channels' sums
    never touch the −inf."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        q, kv = query_key_value(query, context, word_mask, legacy_mask=False)
        out = F.scaled_dot_product_attention(*key_channel_operands(q, kv, word_mask), scale=1.0)
        return context_map(out[..., :q.shape[3]], query)
