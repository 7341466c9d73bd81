"""Extra memory (docs/design.md §6), counted on CPU: the fused DAMSM op never holds anything of the size of
the (B_img, B_cap, T, N) pair maps that the reference materialises, and the fused F_attn never holds a
(B, HW, T) attention tensor unless the maps are asked for. The meter is checked on the way: it sees
the reference's big tensors and the fused ops' own buffers (made inside the custom ops)."""

from __future__ import annotations

import gc

import torch

from attngan_fast.kernels import damsm_word_scores, word_attention
from memory_meter import PeakExtraBytes
from numerics import needs_interpreter

pytestmark = needs_interpreter
FP32 = 4


def peak_of_forward_backward(fn, *leaves: torch.Tensor) -> int:
    """Peak bytes beyond the inputs of fn(*leaves).sum().backward(), the gradients included."""
    xs = [x.detach().clone().requires_grad_() for x in leaves]
    gc.collect()
    with PeakExtraBytes() as meter:
        fn(*xs).sum().backward()
    return meter.peak


def test_meter_counts_what_is_alive_at_once():
    with PeakExtraBytes() as meter:
        a = torch.ones(1000, 250)
        b = a * 2  # a and b alive: 2 MB
        del a
        c = b.view(-1)[:10]  # a view: nothing new
        del b
        d = torch.zeros(100)  # b's storage lives on in c
    assert meter.peak == 2 * 250_000 * FP32 and meter.live == (250_000 + 100) * FP32
    del c, d
    assert meter.live == 0


def test_damsm_fused_never_holds_pair_maps():
    batch, words_num, dim, side = 8, 32, 16, 17
    regions_num = side * side
    words = torch.randn(batch, dim, words_num)
    regions = torch.randn(batch, dim, side, side)
    cap_lens = torch.randint(1, words_num + 1, (batch,))
    pair_maps = batch * batch * words_num * regions_num * FP32  # one (B_img, B_cap, T, N) fp32 tensor

    fused = peak_of_forward_backward(lambda w, r: damsm_word_scores(w, cap_lens, r, impl="triton"), words, regions)
    reference = peak_of_forward_backward(lambda w, r: damsm_word_scores(w, cap_lens, r, impl="reference"),
                                         words, regions)
    assert reference >= 2 * pair_maps, (reference, pair_maps)  # the meter sees the reference's maps
    # The fused backward's partial sums of d_regions (2 splits under the interpreter) are seen too.
    assert fused >= 2 * batch * dim * regions_num * FP32, fused
    assert fused < pair_maps / 2, (fused, pair_maps)


def test_word_attention_fused_holds_no_attention_tensor_unless_asked():
    batch, channels, side, words_num = 2, 4, 32, 32
    query = torch.randn(batch, channels, side, side)
    context = torch.randn(batch, channels, words_num)
    word_mask = torch.arange(words_num)[None, :] >= torch.tensor([words_num, 5])[:, None]
    maps = batch * side * side * words_num * FP32  # one (B, HW, T) fp32 tensor

    def run(impl, return_attn=False):
        def fn(q, k):
            ctx, attn = word_attention(q, k, word_mask, return_attn=return_attn, impl=impl)
            return ctx.sum() + (attn.sum() if return_attn else 0)

        return peak_of_forward_backward(fn, query, context)

    assert run("reference") >= 2 * maps
    assert run("triton", return_attn=True) >= maps  # asked for: there, and seen
    assert run("triton") < maps / 2
