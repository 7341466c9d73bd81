"""The fused kernels on shapes that hypothesis draws, against float64: the fixed cases in
test_damsm_word_scores.py and test_word_attention.py pick the awkward shapes we thought of; these draw
the rest (tile edges of every axis — regions, pixels, channels, features, words, the backward's
128-pixel chunks — crossed at random, with every mask and memory layout).

fp32 inputs only: in the interpreter the dots are exact fp32 whatever the precision, so other dtypes
would only repeat the fixed cases' rounding checks. Lengths are uniform in 1..T (``both_ends=False``):
the fixed cases force a full and a one-word caption; here any mix is drawn."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attngan_fast.kernels import damsm_word_scores, damsm_word_scores_ref, testing, word_attention
from numerics import assert_gradients, assert_rel, needs_interpreter

pytestmark = needs_interpreter
FP32 = testing.tolerance("fp32")


@settings(max_examples=12, deadline=None)
@given(b_img=st.integers(1, 3), b_cap=st.integers(1, 3), dim=st.integers(1, 70), max_len=st.integers(1, 40),
       n_regions=st.integers(1, 300), transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_damsm_fused_matches_float64_on_any_shape(b_img, b_cap, dim, max_len, n_regions, transposed, seed):
    gen = torch.Generator().manual_seed(seed)
    # Similarities O(1), as from trained encoders; "transposed": (B, T, D) and (B, N, D) storage.
    words, cap_lens, regions = testing.damsm_inputs(b_img, b_cap, dim, max_len, n_regions, scale=dim ** -0.25,
                                                    layout="transposed" if transposed else "contiguous",
                                                    generator=gen, both_ends=False)
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
    # Where the exact gradient vanishes (D = 1, where every cosine is ±1; a caption parallel to its
    # region context) only rounding is left, so the error is judged against the gradient's natural
    # scale instead of against ~0: γ2·‖grad‖/‖feature‖ (the cosine's gradient is 1/‖e‖ or 1/‖c‖ in
    # size). A wrong element still errs by that whole scale, 1e5 times the tolerance.
    valid = torch.arange(max_len)[None, :] < cap_lens[:, None]  # (B_cap, T)
    word_norms = torch.linalg.vector_norm(words64.detach(), dim=1)[valid]
    region_norms = torch.linalg.vector_norm(regions64.detach(), dim=1)
    gamma2 = 5.0
    floors = {"words": gamma2 * float(grad.norm() / word_norms.min()),
              "regions": gamma2 * float(grad.norm() / region_norms.min())}
    assert_gradients(scores, scores64, {"words": (words, words64), "regions": (regions, regions64)}, FP32, "fp32",
                     floors, grad)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 50), height=st.integers(1, 20), width=st.integers(1, 20),
       max_len=st.integers(1, 40), mask=st.sampled_from([None, "own", "legacy"]),
       layout=st.sampled_from(["nchw", "channels_last", "transposed"]), seed=st.integers(0, 2**31 - 1))
def test_word_attention_fused_matches_float64_on_any_shape(batch, channels, height, width, max_len, mask, layout,
                                                           seed):
    gen = torch.Generator().manual_seed(seed)
    # "transposed": the query's H and W swapped in memory, the context stored (B, T, C).
    query, context, word_mask = testing.attention_inputs(batch, channels, height, width, max_len,
                                                         scale=channels ** -0.25, layout=layout, generator=gen,
                                                         mask=None if mask is None else "lengths", both_ends=False)
    legacy = mask == "legacy"  # pixels take another sample's mask (the release's layout)
    grad = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)

    def fused(query, context, word_mask):
        ctx, attn = word_attention(query, context, word_mask, return_attn=True, legacy_mask=legacy, impl="triton")
        assert attn is not None
        return ctx, attn

    testing.assert_attention_matches_float64(fused, query, context, word_mask, FP32, "fp32", legacy=legacy, grad=grad)
