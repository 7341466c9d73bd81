"""The compiled Triton kernels on a CUDA device, at the model's real sizes, against float64.

Skipped without CUDA. Run them with ``pytest -m gpu`` on a GPU machine (the interpreter is then off,
see conftest.py) and record the result in tests/GPU_RESULTS.md.

Inputs are scaled by D^(-1/4) so that similarities are O(1), as they are for trained encoders: with
unit-variance inputs at D = 256 the tf32 rounding of the operands alone (2^-11) would move the
similarities by ~1e-2 and the tf32 cases would measure the conditioning, not the kernels.
"""

from __future__ import annotations

import pytest
import torch

from kernels import damsm_word_scores, damsm_word_scores_ref, word_attention, word_attention_ref
from numerics import TOLERANCE, assert_rel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# (label, input dtype, tl.dot precision for fp32 operands)
PRECISIONS = [
    ("fp32", torch.float32, "ieee"),
    ("tf32", torch.float32, "tf32"),
    ("bf16", torch.bfloat16, "auto"),
    ("fp16", torch.float16, "auto"),
]


def _damsm_inputs(b_img, b_cap, dim, max_len, side, dtype):
    """words (B_cap, D, T), lengths, regions (B_img, D, side, side)."""
    scale = dim ** -0.25
    words = (torch.randn(b_cap, dim, max_len, device="cuda") * scale).to(dtype)
    regions = (torch.randn(b_img, dim, side, side, device="cuda") * scale).to(dtype)
    cap_lens = torch.randint(1, max_len + 1, (b_cap,), device="cuda")
    cap_lens[0], cap_lens[-1] = max_len, 1
    return words, cap_lens, regions


@pytest.mark.parametrize("label, dtype, precision", PRECISIONS)
@pytest.mark.parametrize("b_img, b_cap", [(48, 48), (20, 7)])
def test_damsm_compiled_kernels_match_float64(label, dtype, precision, b_img, b_cap):
    words, cap_lens, regions = _damsm_inputs(b_img, b_cap, 256, 18, 17, dtype)
    w64 = words.double().requires_grad_()
    r64 = regions.double().requires_grad_()
    words.requires_grad_(), regions.requires_grad_()
    ref = damsm_word_scores_ref(w64, cap_lens, r64.flatten(2))
    out = damsm_word_scores(words, cap_lens, regions, impl="triton", precision=precision)
    assert_rel(out, ref, TOLERANCE[label], f"R {label}")
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (out * grad.float()).sum().backward()
    assert_rel(words.grad, w64.grad, TOLERANCE[label], f"d_words {label}")
    assert_rel(regions.grad, r64.grad, TOLERANCE[label], f"d_regions {label}")


def test_damsm_attention_maps_and_determinism():
    words, cap_lens, regions = _damsm_inputs(20, 20, 256, 18, 17, torch.float32)
    s1, a1 = damsm_word_scores(words, cap_lens, regions, return_attn=True, impl="triton", precision="ieee")
    s2, a2 = damsm_word_scores(words, cap_lens, regions, return_attn=True, impl="triton", precision="ieee")
    assert torch.equal(s1, s2) and torch.equal(a1, a2), "the fused kernels must be deterministic"
    _, ref = damsm_word_scores_ref(words.double(), cap_lens, regions.double().flatten(2), return_attn=True)
    assert_rel(a1, ref, TOLERANCE["fp32"], "maps")
    regions.requires_grad_()
    g = []
    for _ in range(2):
        regions.grad = None
        damsm_word_scores(words, cap_lens, regions, impl="triton").sum().backward()
        g.append(regions.grad.clone())
    assert torch.equal(g[0], g[1]), "the backward must be deterministic (no atomics)"


def _attention_inputs(batch, channels, side, max_len, dtype, channels_last=False):
    scale = channels ** -0.25
    query = (torch.randn(batch, channels, side, side, device="cuda") * scale).to(dtype)
    if channels_last:
        query = query.contiguous(memory_format=torch.channels_last)
    context = (torch.randn(batch, channels, max_len, device="cuda") * scale).to(dtype)
    lengths = torch.randint(1, max_len + 1, (batch,), device="cuda")
    lengths[0], lengths[-1] = max_len, 1
    word_mask = torch.arange(max_len, device="cuda")[None, :] >= lengths[:, None]
    return query, context, word_mask


@pytest.mark.parametrize("label, dtype, precision", PRECISIONS)
@pytest.mark.parametrize("channels, side, legacy, channels_last",
                         [(32, 64, False, False), (32, 128, False, True), (48, 64, True, False)])
def test_word_attention_compiled_kernels_match_float64(label, dtype, precision, channels, side, legacy, channels_last):
    query, context, word_mask = _attention_inputs(20, channels, side, 18, dtype, channels_last)
    q64 = query.double().requires_grad_()
    k64 = context.double().requires_grad_()
    query.requires_grad_(), context.requires_grad_()
    ref_ctx, ref_attn = word_attention_ref(q64, k64, word_mask, return_attn=True, legacy_mask=legacy)
    ctx, attn = word_attention(query, context, word_mask, return_attn=True, legacy_mask=legacy, impl="triton",
                               precision=precision)
    assert_rel(ctx, ref_ctx, TOLERANCE[label], f"ctx {label}")
    assert_rel(attn, ref_attn, TOLERANCE[label], f"attn {label}")
    grad = torch.randn_like(ref_ctx)
    (ref_ctx * grad).sum().backward()
    (ctx * grad.to(ctx.dtype)).sum().backward()
    assert_rel(query.grad, q64.grad, TOLERANCE[label], f"d_query {label}")
    assert_rel(context.grad, k64.grad, TOLERANCE[label], f"d_context {label}")


def test_word_attention_allocates_no_attention_tensor_unless_asked():
    query, context, word_mask = _attention_inputs(20, 32, 128, 18, torch.bfloat16)
    word_attention(query, context, word_mask, impl="triton")  # compile first
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ctx, _ = word_attention(query, context, word_mask, impl="triton")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    maps_bytes = 20 * 128 * 128 * 18 * 4
    assert extra < ctx.numel() * ctx.element_size() + maps_bytes // 8, f"forward allocated {extra} bytes"


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_compile_and_cuda_autocast_agree_with_eager(impl):
    torch._dynamo.reset()
    words, cap_lens, regions = _damsm_inputs(8, 8, 256, 18, 17, torch.float32)
    query, context, word_mask = _attention_inputs(8, 32, 64, 18, torch.float32)

    def loss(w, r, q, k):
        scores = damsm_word_scores(w, cap_lens, r, impl=impl, precision="ieee")
        ctx, _ = word_attention(q, k, word_mask, impl=impl, precision="ieee")
        return torch.nn.functional.cross_entropy(10 * scores, torch.arange(8, device="cuda")) + ctx.float().square().mean()

    def run(fn, autocast):
        ins = [t.clone().requires_grad_() for t in (words, regions, query, context)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            value = fn(*ins)
        value.backward()
        return [value.detach()] + [t.grad for t in ins]

    eager = run(loss, False)
    with torch._functorch.config.patch(backward_pass_autocast="off"):
        compiled = run(torch.compile(loss, fullgraph=True), False)
        compiled_amp = run(torch.compile(loss, fullgraph=True), True)
    eager_amp = run(loss, True)
    for a, b, c, d in zip(eager, compiled, eager_amp, compiled_amp):
        assert_rel(b, a, 1e-5, "compiled")
        assert_rel(c, a, 1e-5, "eager autocast")
        assert_rel(d, a, 1e-5, "compiled autocast")


def test_opcheck_on_cuda():
    words, cap_lens, regions = _damsm_inputs(4, 4, 64, 6, 17, torch.float32)
    torch.library.opcheck(torch.ops.attngan_fast.damsm_word_scores.default,
                          (words.requires_grad_(), cap_lens, regions.flatten(2).detach().requires_grad_(), 4.0, 5.0,
                           True, "ieee"))
    query, context, word_mask = _attention_inputs(2, 32, 16, 6, torch.float32)
    torch.library.opcheck(torch.ops.attngan_fast.word_attention.default,
                          (query.requires_grad_(), context.requires_grad_(), word_mask, True, False, "ieee"))
