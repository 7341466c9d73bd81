"""The fused kernels on shapes that hypothesis draws, against float64: the fixed cases in
test_damsm_word_scores.py and test_word_attention.py pick the awkward shapes we thought of; these draw
the rest (tile edges of every axis — regions, pixels, channels, features, words, the backward's
128-pixel chunks — crossed at random, with every mask and memory layout).

fp32 inputs only: in the interpreter the dots are exact fp32 whatever the precision, so other dtypes
would only repeat the fixed cases' rounding checks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attngan_fast.kernels import damsm_word_scores, damsm_word_scores_ref, word_attention, word_attention_ref
from numerics import TOLERANCE, assert_rel, needs_interpreter

pytestmark = needs_interpreter
FP32 = TOLERANCE["fp32"]


def _layout(x: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``x`` itself, or the same values in a tensor whose last two axes are swapped in memory."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2) if transposed else x


@settings(max_examples=12, deadline=None)
@given(b_img=st.integers(1, 3), b_cap=st.integers(1, 3), dim=st.integers(1, 70), max_len=st.integers(1, 40),
       n_regions=st.integers(1, 300), transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_damsm_fused_matches_float64_on_any_shape(b_img, b_cap, dim, max_len, n_regions, transposed, seed):
    gen = torch.Generator().manual_seed(seed)
    scale = dim ** -0.25  # similarities O(1), as from trained encoders
    words = _layout(torch.randn(b_cap, dim, max_len, generator=gen) * scale, transposed)
    regions = _layout(torch.randn(b_img, dim, n_regions, generator=gen) * scale, transposed)
    cap_lens = torch.randint(1, max_len + 1, (b_cap,), generator=gen)
    grad = torch.randn(b_img, b_cap, generator=gen, dtype=torch.float64)
    maps = b_img == b_cap

    words64, regions64 = (x.double().requires_grad_() for x in (words, regions))
    words, regions = words.requires_grad_(), regions.requires_grad_()
    ref = damsm_word_scores_ref(words64, cap_lens, regions64, return_attn=maps)
    out = damsm_word_scores(words, cap_lens, regions, return_attn=maps, impl="triton")
    scores, scores64 = (out[0], ref[0]) if maps else (out, ref)
    assert_rel(scores, scores64, FP32, "R")
    if maps:
        assert_rel(out[1], ref[1], FP32, "matching pairs' attention")
    (scores64 * grad).sum().backward()
    (scores * grad.float()).sum().backward()
    # Where the exact gradient vanishes (D = 1, where every cosine is ±1; a caption parallel to its
    # region context) only rounding is left, so the error is judged against the gradient's natural
    # scale instead of against ~0: γ2·‖grad‖/‖feature‖ (the cosine's gradient is 1/‖e‖ or 1/‖c‖ in
    # size). A wrong element still errs by that whole scale, 1e5 times the tolerance.
    valid = torch.arange(max_len)[None, :] < cap_lens[:, None]  # (B_cap, T)
    word_norms = torch.linalg.vector_norm(words64.detach(), dim=1)[valid]
    region_norms = torch.linalg.vector_norm(regions64.detach(), dim=1)
    gamma2 = 5.0
    assert_rel(words.grad, words64.grad, FP32, "d_words", floor=gamma2 * float(grad.norm() / word_norms.min()))
    assert_rel(regions.grad, regions64.grad, FP32, "d_regions",
               floor=gamma2 * float(grad.norm() / region_norms.min()))


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 50), height=st.integers(1, 20), width=st.integers(1, 20),
       max_len=st.integers(1, 40), mask=st.sampled_from([None, "own", "legacy"]),
       layout=st.sampled_from(["nchw", "channels_last", "transposed"]), seed=st.integers(0, 2**31 - 1))
def test_word_attention_fused_matches_float64_on_any_shape(batch, channels, height, width, max_len, mask, layout,
                                                           seed):
    gen = torch.Generator().manual_seed(seed)
    scale = channels ** -0.25
    query = torch.randn(batch, channels, height, width, generator=gen) * scale
    if layout == "channels_last":
        query = query.contiguous(memory_format=torch.channels_last)
    query = _layout(query, layout == "transposed")
    context = torch.randn(batch, channels, max_len, generator=gen) * scale
    word_mask = None
    if mask is not None:
        lengths = torch.randint(1, max_len + 1, (batch,), generator=gen)
        word_mask = torch.arange(max_len)[None, :] >= lengths[:, None]
    legacy = mask == "legacy"  # pixels take another sample's mask (the release's layout)
    grad = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)

    query64, context64 = (x.double().requires_grad_() for x in (query, context))
    query, context = query.requires_grad_(), context.requires_grad_()
    ref_ctx, ref_attn = word_attention_ref(query64, context64, word_mask, return_attn=True, legacy_mask=legacy)
    ctx, attn = word_attention(query, context, word_mask, return_attn=True, legacy_mask=legacy, impl="triton")
    assert_rel(ctx, ref_ctx, FP32, "ctx")
    assert_rel(attn, ref_attn, FP32, "attn")
    (ref_ctx * grad).sum().backward()
    (ctx * grad.float()).sum().backward()
    assert_rel(query.grad, query64.grad, FP32, "d_query")
    assert_rel(context.grad, context64.grad, FP32, "d_context")
