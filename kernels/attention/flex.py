"""F_attn through PyTorch's FlexAttention (``torch.nn.attention.flex_attention``): the attention of
``sdpa.py`` (queries h as (B, 1, HW, C), keys = values e' as (B, 1, T, C), scale 1) with the padding
as a ``mask_mod`` in a ``BlockMask``, which a training step builds once per batch and image size.

FlexAttention is a kernel generator: under ``torch.compile`` it emits one fused Triton kernel (CUDA)
or C++ kernel (CPU) with the mask inlined; called eagerly it runs an unfused version that forms the
scores. In torch 2.14 it has no backward on CPU (it raises NotImplementedError when an input requires
grad), so on CPU it serves forward passes only.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from .sdpa import context_map, query_key_value


def padding_block_mask(word_mask: torch.Tensor | None, pixels: int, legacy_mask: bool = False) -> BlockMask | None:
    """The BlockMask of (B, 1, HW, T) in which pixel q of sample b may attend to word t: word t of its
    own sample is valid (legacy: of sample (b·HW + q) mod B, the released layout). word_mask: (B, T),
    True = padding; None -> None (every word is valid)."""
    if word_mask is None:
        return None
    batch, words = word_mask.shape
    if legacy_mask:
        def keep(b, h, q, t):
            return ~word_mask[(b * pixels + q) % batch, t]
    else:
        def keep(b, h, q, t):
            return ~word_mask[b, t]
    return create_block_mask(keep, batch, None, pixels, words, device=word_mask.device)


def word_attention_flex(query: torch.Tensor, context: torch.Tensor, word_mask: torch.Tensor | None = None,
                        legacy_mask: bool = False, block_mask: BlockMask | None = None) -> torch.Tensor:
    """query (B, C, H, W), context (B, C, T), word_mask (B, T) bool (True = padding) or None ->
    ctx (B, C, H, W) in the promoted input dtype and the query's memory format (no maps).
    ``block_mask``: one made by ``padding_block_mask`` for this batch and HW, else it is made here.
    Padding words' features are zeroed first (a zero weight keeps NaN: 0 · NaN = NaN), except in legacy
    mode, where other samples' rows attend to them."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        # The queries go in as the (B, 1, HW, C) view even for NCHW h (FlexAttention lays them out
        # itself): compiled for CPU by torch 2.14, it gives wrong results when they are a contiguous copy
        # of that view made inside the graph (tests/test_word_attention.py compiles an NCHW case).
        q, kv = query_key_value(query, context, word_mask, legacy_mask, unit_stride=False)
        if block_mask is None:
            block_mask = padding_block_mask(word_mask, q.shape[2], legacy_mask)
        return context_map(flex_attention(q, kv, kv, block_mask=block_mask, scale=1.0), query)
