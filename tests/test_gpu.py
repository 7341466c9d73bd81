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

from attngan_fast import kernels
from attngan_fast.kernels import damsm_word_scores, damsm_word_scores_ref, word_attention, word_attention_ref
from attngan_fast.kernels._tuning import LaunchConfig
from attngan_fast.kernels.attention import word_attention_ref_backward
from attngan_fast.kernels.damsm import damsm_word_scores_ref_backward
from attngan_fast.kernels import testing
from numerics import TOLERANCE, assert_rel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]



@pytest.fixture(autouse=True)
def pinned_launch_configs():
    """The sweeps below run the default launch configurations (autotuning every dtype and shape would
    take minutes); every candidate is checked on its own, and the autotuned path in one test."""
    with kernels.autotuning(False):
        yield


def _damsm_inputs(b_img, b_cap, dim, max_len, side, dtype):
    """words (B_cap, D, T), lengths, regions (B_img, D, side, side), scaled by D^-1/4."""
    return testing.damsm_inputs(b_img, b_cap, dim, max_len, side * side, scale=dim ** -0.25, layout="4d", dtype=dtype,
                                device="cuda")


def _attention_inputs(batch, channels, side, max_len, dtype, channels_last=False):
    return testing.attention_inputs(batch, channels, side, side, max_len, scale=channels ** -0.25,
                                    layout="channels_last" if channels_last else "nchw", dtype=dtype, device="cuda")


@pytest.mark.parametrize("check, precision", testing.checks("model"), ids=lambda x: getattr(x, "label", x))
def test_compiled_kernels_match_float64_at_the_models_sizes(check, precision):
    """Every default launch at the model's sizes, forward and every gradient, every dtype and precision,
    against float64: the same checks as ``python -m benchmarks.gpu``'s first part."""
    seed = int(torch.seed() % 2**31)
    tol = testing.tolerance(check.dtype, precision)
    for name, (err, problem) in testing.compare_with_float64(check, torch.device("cuda"), seed, precision).items():
        assert not problem and err <= tol, f"{check.label} {precision} {name}: {problem or f'{err:.2e} > {tol:.0e}'}"


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


def _fits_or_skipped(run, config, skipped: list):
    """Runs ``run()``; a candidate that does not fit this GPU (Triton's OutOfResources, which the
    autotuner also skips) is noted instead of failing."""
    import triton.runtime.errors as errors

    does_not_fit = tuple(getattr(errors, name) for name in ("OutOfResources", "PTXASError") if hasattr(errors, name))
    try:
        return run()
    except does_not_fit:
        skipped.append(str(config))
        return None


@pytest.mark.parametrize("label, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_every_damsm_candidate_config_compiles_and_matches_float64(label, dtype):
    from attngan_fast.kernels.damsm import fused, plan

    words, cap_lens, regions = _damsm_inputs(12, 12, 256, 18, 17, dtype)
    regions = regions.flatten(2)
    grad = torch.randn(12, 12, device="cuda")
    ref = damsm_word_scores_ref(words.double(), cap_lens, regions.double(), return_attn=True)
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    precision = kernels._runtime.resolve_precision("auto", words)
    skipped: list = []
    for config in plan.FORWARD_CANDIDATES:
        out = _fits_or_skipped(lambda: fused.damsm_forward(words, cap_lens, regions, 4.0, 5.0, True, precision,
                                                           config=config), config, skipped)
        if out is not None:
            assert_rel(out[0], ref[0], TOLERANCE[label], f"R {config}")
            assert_rel(out[1], ref[1], TOLERANCE[label], f"maps {config}")
        grads = _fits_or_skipped(lambda: fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, precision,
                                                              context_config=config), config, skipped)
        if grads is not None:
            assert_rel(grads[0], ref_w, TOLERANCE[label], f"d_words {config} (context)")
            assert_rel(grads[1], ref_r, TOLERANCE[label], f"d_regions {config} (context)")
    for config in plan.GRAD_CANDIDATES:
        grads = _fits_or_skipped(lambda: fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, precision,
                                                              grad_config=config), config, skipped)
        if grads is not None:
            assert_rel(grads[0], ref_w, TOLERANCE[label], f"d_words {config}")
            assert_rel(grads[1], ref_r, TOLERANCE[label], f"d_regions {config}")
    split = precision != "native"
    for default in (plan.default_config(18, 256, 289, 90, wide=split),
                    plan.default_config(18, 256, 289, 90, grad=True, wide=split)):
        assert str(default) not in skipped, "the default launch must fit"
    assert len(skipped) < len(plan.FORWARD_CANDIDATES) + len(plan.GRAD_CANDIDATES), skipped


@pytest.mark.parametrize("label, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("channels, side, channels_last", [(32, 64, False), (48, 37, True)])
def test_every_word_attention_candidate_config_compiles_and_matches_float64(label, dtype, channels, side, channels_last):
    from attngan_fast.kernels.attention import fused, plan

    query, context, word_mask = _attention_inputs(6, channels, side, 18, dtype, channels_last)
    grad = torch.randn_like(query)
    ref_ctx, ref_attn = word_attention_ref(query.double(), context.double(), word_mask, return_attn=True)
    ref_q, ref_k = word_attention_ref_backward(grad.double(), query.double(), context.double(), word_mask)
    precision = kernels._runtime.resolve_precision("auto", query)
    skipped: list = []
    for config in plan.FORWARD_CANDIDATES:
        out = _fits_or_skipped(lambda: fused.word_attention_forward(query, context, word_mask, True, False, precision,
                                                                    config=config), config, skipped)
        if out is not None:
            assert_rel(out[0], ref_ctx, TOLERANCE[label], f"ctx {config}")
            assert_rel(out[1], ref_attn, TOLERANCE[label], f"maps {config}")
    for config in plan.BACKWARD_CANDIDATES:
        grads = _fits_or_skipped(lambda: fused.word_attention_backward(grad, query, context, word_mask, False,
                                                                       precision, config=config), config, skipped)
        if grads is not None:
            assert_rel(grads[0], ref_q, TOLERANCE[label], f"d_query {config}")
            assert_rel(grads[1], ref_k, TOLERANCE[label], f"d_context {config}")
    assert str(plan.FORWARD_DEFAULT) not in skipped
    assert str(plan.BACKWARD_DEFAULT) not in skipped


def test_autotuned_launches_match_float64_and_repeat_exactly():
    """With autotuning on: the first call tunes, later calls reuse the choice (bitwise equal results),
    and the chosen configurations are candidates."""
    from attngan_fast.kernels.attention import fused as attention_fused, plan as attention_plan
    from attngan_fast.kernels.damsm import fused as damsm_fused, plan as damsm_plan

    words, cap_lens, regions = _damsm_inputs(20, 20, 256, 18, 17, torch.float32)
    query, context, word_mask = _attention_inputs(20, 32, 64, 18, torch.float32)
    leaves = [t.requires_grad_() for t in (words, regions, query, context)]
    results = []
    with kernels.autotuning(True):
        for _ in range(2):
            for t in leaves:
                t.grad = None
            scores = damsm_word_scores(words, cap_lens, regions, impl="triton", precision="ieee")
            ctx, _ = word_attention(query, context, word_mask, impl="triton", precision="ieee")
            (scores.square().sum() + ctx.square().sum()).backward()
            results.append([scores.detach(), ctx.detach()] + [t.grad.clone() for t in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b), "a tuned launch must repeat exactly"
    w64, r64, q64, k64 = (t.detach().double().requires_grad_() for t in leaves)
    ref_scores = damsm_word_scores_ref(w64, cap_lens, r64.flatten(2))
    ref_ctx, _ = word_attention_ref(q64, k64, word_mask)
    (ref_scores.square().sum() + ref_ctx.square().sum()).backward()
    for got, ref, what in zip(results[0], [ref_scores, ref_ctx, w64.grad, r64.grad, q64.grad, k64.grad],
                              ["R", "ctx", "d_words", "d_regions", "d_query", "d_context"]):
        assert_rel(got, ref, TOLERANCE["fp32"], f"{what} (autotuned)")
    for kernel, candidates in ((damsm_fused._FWD, damsm_plan.FORWARD_CANDIDATES),
                               (damsm_fused._CONTEXT, damsm_plan.FORWARD_CANDIDATES),
                               (damsm_fused._GRAD, damsm_plan.GRAD_CANDIDATES),
                               (attention_fused._FWD, attention_plan.FORWARD_CANDIDATES),
                               (attention_fused._BWD, attention_plan.BACKWARD_CANDIDATES)):
        assert isinstance(kernel.last_config, LaunchConfig) and kernel.last_config in candidates
