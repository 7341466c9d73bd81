"""F_attn word attention: every path (reference, Triton, SDPA; FlexAttention's forward) against float64,
gradients, masks (own and legacy), layouts, compile, autocast, errors."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
import attngan_fast.kernels.attention.op as attention_op
from attngan_fast.kernels import testing, word_attention, word_attention_ref
from attngan_fast.kernels.attention import word_attention_ref_backward
from attngan_fast.kernels.attention.flex import word_attention_flex
from attngan_fast.kernels.attention.sdpa import word_attention_sdpa_key_channel
from torch.nn.attention import SDPBackend, sdpa_kernel
from numerics import DTYPES, TOLERANCE, assert_rel, loss_and_grads, needs_interpreter, quantize
from numerics import IMPLS as SHARED_IMPLS

# The paths both ops have, plus F_attn's own: PyTorch's scaled_dot_product_attention.
IMPLS = [*SHARED_IMPLS, "sdpa"]

# name: (B, C, H, W, T, scale, mask, layout)
CASES = {
    "basic": (2, 32, 8, 8, 7, 1.0, "lengths", "nchw"),
    "48-channels": (2, 48, 4, 4, 5, 1.0, "lengths", "nchw"),
    "one-word-no-mask": (2, 20, 3, 5, 1, 1.0, None, "nchw"),
    "odd-pixels": (3, 20, 5, 7, 6, 1.0, "lengths", "nchw"),
    "two-backward-chunks": (2, 12, 13, 11, 5, 1.0, "lengths", "nchw"),  # 143 pixels: a partial last chunk
    "channels-last": (2, 16, 6, 6, 9, 1.0, "lengths", "channels_last"),
    "non-contiguous": (2, 24, 5, 6, 6, 1.0, "lengths", "transposed"),
    "saturated-softmax": (2, 20, 5, 5, 6, 6.0, "lengths", "nchw"),
    "legacy-mask": (3, 8, 4, 5, 6, 1.0, "legacy", "nchw"),
}
# Scale 6 puts the scores at |s| ~ 150-600 and saturates the softmax: ctx stays exact, but d_query all
# but vanishes (~1e-7 against d_context ~30) and what is left is the softmax backward's cancellation
# noise, of fp32's size in any implementation. There the gradients are judged against their natural
# scale ‖g‖·max_t‖k_t‖² (d_query) and ‖g‖·max_q‖h_q‖ (d_context), which still fails any real bug, and
# against fp32's rounding of the scores, 4·2^-24·max|s| (docs/numerics.md): d_context does not vanish,
# and over 1,500 seeds the reference, SDPA's flash backend and the key-channel form each exceeded 1e-5
# on 2-4 (up to 1.3e-5; ATTNGAN_TEST_SEED=1529226171 was one).
SATURATED = {"saturated-softmax"}
# With one word the softmax is constant and d_query is exactly 0; a path that forms Σ_t β·dβ as
# rowsum(dO ∘ O) (FlashAttention's Δ, SDPA's fused backends) leaves fp32 rounding there, judged
# against the same natural scale of d_query.
D_QUERY_VANISHES = SATURATED | {"one-word-no-mask"}


# query (B, C, H, W), context (B, C, T), word_mask (B, T) with lengths 1..T (or None).
make_inputs = testing.attention_inputs


def released_legacy_attention(query, context, word_mask):
    """The released code's F_attn, transcribed step for step: flattened (B·HW, T) scores masked with
    ``mask.repeat(HW, 1)``, softmax, then the weighted sum of the (unzeroed) context."""
    B, C, H, W = query.shape
    T = context.shape[2]
    target = query.reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
    scores = torch.bmm(target, context).reshape(B * H * W, T)
    scores = scores.masked_fill(word_mask.repeat(H * W, 1), float("-inf"))
    attn = torch.softmax(scores, dim=1).reshape(B, H * W, T).transpose(1, 2)  # (B, T, HW)
    ctx = torch.bmm(context, attn).reshape(B, C, H, W)
    return ctx, attn.reshape(B, T, H, W)


def own_mask_attention(query, context, word_mask):
    """One sample at a time, each with its own valid words only."""
    outs, maps = [], []
    for b in range(query.shape[0]):
        keep = ~word_mask[b] if word_mask is not None else torch.ones(context.shape[2], dtype=torch.bool)
        k = context[b][:, keep]  # (C, T_b)
        q = query[b].flatten(1)  # (C, HW)
        beta = torch.softmax(q.t() @ k, dim=1)  # (HW, T_b)
        outs.append((k @ beta.t()).reshape(query.shape[1:]))
        full = torch.zeros(query.shape[2] * query.shape[3], context.shape[2], dtype=beta.dtype)
        full[:, keep] = beta
        maps.append(full.t().reshape(-1, *query.shape[2:]))
    return torch.stack(outs), torch.stack(maps)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][6] != "legacy"])
def test_reference_equals_per_sample_loop(case):
    query, context, word_mask = make_inputs(*CASES[case])
    q64, k64 = query.double(), context.double()
    ctx, attn = word_attention_ref(q64, k64, word_mask, return_attn=True)
    loop_ctx, loop_attn = own_mask_attention(q64, k64, word_mask)
    assert_rel(ctx, loop_ctx, 1e-12, "ctx")
    assert_rel(attn, loop_attn, 1e-12, "attn")


def test_legacy_reference_equals_released_transcription():
    query, context, word_mask = make_inputs(*CASES["legacy-mask"])
    q64, k64 = query.double(), context.double()
    ctx, attn = word_attention_ref(q64, k64, word_mask, return_attn=True, legacy_mask=True)
    rel_ctx, rel_attn = released_legacy_attention(q64, k64, word_mask)
    assert_rel(ctx, rel_ctx, 1e-12, "legacy ctx")
    assert_rel(attn, rel_attn, 1e-12, "legacy attn")


def test_released_algorithm_module_equals_legacy_reference():
    """kernels.attention.released (the benchmarks' baseline a) is the legacy-mask reference."""
    from attngan_fast.kernels.attention import word_attention_released

    query, context, word_mask = make_inputs(*CASES["legacy-mask"])
    ctx, attn = word_attention_released(query.double(), context.double(), word_mask, return_attn=True)
    ref_ctx, ref_attn = word_attention_ref(query.double(), context.double(), word_mask, return_attn=True, legacy_mask=True)
    assert_rel(ctx, ref_ctx, 1e-12, "ctx")
    assert_rel(attn, ref_attn, 1e-12, "attn")


@pytest.mark.parametrize("impl", IMPLS)
def test_released_mask_bug_only_with_legacy_mask(impl):
    """The released mask layout really differs from per-sample masking, and only legacy_mask reproduces it."""
    query, context, _ = make_inputs(3, 8, 4, 5, 6)
    word_mask = torch.arange(6)[None, :] >= torch.tensor([6, 2, 4])[:, None]
    own = word_attention(query, context, word_mask, return_attn=True, impl=impl)
    legacy = word_attention(query, context, word_mask, return_attn=True, legacy_mask=True, impl=impl)
    released = released_legacy_attention(query.double(), context.double(), word_mask)
    assert_rel(legacy[0], released[0], 1e-5, "legacy ctx")
    assert_rel(legacy[1], released[1], 1e-5, "legacy attn")
    # Sample 1 has 2 words; under the released layout many of its pixels attend to words 2..5.
    assert own[1][1, 2:].abs().max() == 0
    assert legacy[1][1, 2:].abs().max() > 0.01
    assert (own[0] - legacy[0]).abs().max() > 1e-3


def _operand_pairs(monkeypatch, impl, dtype):
    """Where the test runs fp32's default (bf16x3) operand pairs through the interpreter, with fp16
    parts (its bf16 dots are wrong, its fp16 ones right): the pairs' plumbing, not bf16's accuracy,
    which the GPU tests check. fp16's range costs the small lo parts bits, hence 1e-4."""
    import triton.language as tl

    import attngan_fast.kernels._mma as mma

    if impl == "triton-pairs":
        monkeypatch.setattr(mma, "INTERPRETER_SPLIT_DTYPE", tl.float16)
        return "triton", max(TOLERANCE[dtype], 1e-4)
    return impl, TOLERANCE[dtype]


def _dtype_impl_params():
    """(dtype, impl) for every dtype and impl, keeping the impls' marks, plus fp32's operand pairs."""
    params = []
    for dtype in DTYPES:
        for impl in IMPLS:
            values, marks = (impl.values, impl.marks) if hasattr(impl, "marks") else ((impl,), ())
            params.append(pytest.param(dtype, *values, marks=marks))
    return params + [pytest.param("fp32", "triton-pairs", marks=needs_interpreter)]


def check_against_float64(case, dtype, attention, tol, what, gradients=True, similarities_of_order_one=False):
    """``attention(query, context, word_mask, legacy) -> (ctx, attn or None)`` on CASES[case] in ``dtype``
    against the float64 reference on the same rounded inputs: ctx (and attn when it returns maps) and,
    with ``gradients``, d_query and d_context of a random linear loss. ``similarities_of_order_one``
    scales the inputs by C^(-1/4), as trained features are and as tests/test_gpu.py does, for paths that
    compute in 16 bits: at C = 48 unit-variance scores (std ~7) peak the softmax, and d_query's
    cancellation (ds = β(dβ − Σβdβ)) of 16-bit dS then measures the conditioning, not the path."""
    # Kept beside the shared testing.assert_attention_matches_float64 it ends in: CASES' inputs and the
    # saturated cases' judgement (floors, fp32 score rounding) are this file's, not the shared helper's.
    query, context, word_mask = make_inputs(*CASES[case])
    if similarities_of_order_one:
        query, context = query * CASES[case][1] ** -0.25, context * CASES[case][1] ** -0.25
    legacy = CASES[case][6] == "legacy"
    query, query64 = quantize(query, DTYPES[dtype])
    context, context64 = quantize(context, DTYPES[dtype])

    # The natural scales of vanishing gradients, for a unit-variance loss gradient of ‖g‖ ≈ √numel.
    g_norm = query.numel() ** 0.5
    floors, grad_tol = {}, tol
    if case in SATURATED and DTYPES[dtype] == torch.float32:
        scores = torch.einsum("bchw,bct->bhwt", query64, context64).abs().max().item()
        grad_tol = max(tol, 4 * 2.0 ** -24 * scores)
    if case in D_QUERY_VANISHES:
        floors["query"] = g_norm * float(torch.linalg.vector_norm(context64, dim=1).max() ** 2)
    if case in SATURATED:
        floors["context"] = g_norm * float(torch.linalg.vector_norm(query64.flatten(2), dim=1).max())
    testing.assert_attention_matches_float64(lambda q, k, m: attention(q, k, m, legacy), query, context, word_mask,
                                             tol, f"{what}, {dtype}", legacy=legacy, gradients=gradients,
                                             grad_tol=grad_tol, floors=floors)


@pytest.mark.parametrize("dtype, impl", _dtype_impl_params())
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_gradients_match_float64(case, dtype, impl, monkeypatch):
    impl, tol = _operand_pairs(monkeypatch, impl, dtype)

    def attention(query, context, word_mask, legacy):
        ctx, attn = word_attention(query, context, word_mask, return_attn=True, legacy_mask=legacy, impl=impl)
        assert attn is not None
        return ctx, attn

    # SDPA's own pick for 16-bit inputs on CPU is its fused kernel, which keeps P and dS in 16 bits (as
    # the pinned-backend test below says): judged at similarities of order one like it. Unit-variance
    # scores at C = 48 failed d_query's 2e-2 on 7 of 300 seeds (up to 2.9e-2).
    check_against_float64(case, dtype, attention, tol, impl,
                          similarities_of_order_one=impl == "sdpa" and dtype != "fp32")


CPU_SDPA_BACKENDS = [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]  # the two SDPA backends PyTorch has on CPU


@pytest.mark.parametrize("backend", CPU_SDPA_BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_each_cpu_sdpa_backend_matches_float64(case, dtype, backend):
    """impl="sdpa" with SDPA pinned to each backend PyTorch has on CPU (PyTorch's own pick is one of
    them); the fused one takes channels_last queries only (unit stride on the channels)."""
    def attention(query, context, word_mask, legacy):
        if backend != SDPBackend.MATH:
            query = query.contiguous(memory_format=torch.channels_last)
        with sdpa_kernel([backend]):
            return word_attention(query, context, word_mask, return_attn=True, legacy_mask=legacy, impl="sdpa")

    check_against_float64(case, dtype, attention, TOLERANCE[dtype], f"sdpa {backend.name}",
                          similarities_of_order_one=_computes_in_16_bits(backend, dtype))


def _computes_in_16_bits(backend, dtype: str) -> bool:
    """CPU's fused SDPA kernel keeps 16-bit inputs in 16 bits between its products (P, dS); the math
    backend and the interpreter compute 16-bit inputs in fp32."""
    return backend == SDPBackend.FLASH_ATTENTION and dtype != "fp32"


@pytest.mark.parametrize("backend", CPU_SDPA_BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][6] != "legacy"])
def test_maskless_key_channel_form_matches_float64(case, dtype, backend):
    """FlashAttention's exact reformulation (no mask: a key channel of 0 / −inf against a query channel
    of 1), forward and gradients, on both CPU backends."""
    def attention(query, context, word_mask, legacy):
        with sdpa_kernel([backend]):
            return word_attention_sdpa_key_channel(query.contiguous(memory_format=torch.channels_last), context,
                                                   word_mask), None

    check_against_float64(case, dtype, attention, TOLERANCE[dtype], f"key channel {backend.name}",
                          similarities_of_order_one=_computes_in_16_bits(backend, dtype))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_flex_attention_forward_matches_float64(case, dtype):
    """FlexAttention with the padding (own or legacy) as a BlockMask, eager (its unfused form) on CPU,
    where torch 2.14 has no FlexAttention backward: the gradients are the GPU tests'."""
    def attention(query, context, word_mask, legacy):
        return word_attention_flex(query, context, word_mask, legacy), None

    check_against_float64(case, dtype, attention, TOLERANCE[dtype], "flex", gradients=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["odd-pixels", "one-word-no-mask", "legacy-mask"])
def test_compiled_flex_attention_forward_matches_float64(case):
    """The kernel torch.compile generates for FlexAttention on CPU (C++), mask built inside the graph."""
    torch._dynamo.reset()
    compiled = torch.compile(word_attention_flex, fullgraph=True, dynamic=False)

    def attention(query, context, word_mask, legacy):
        return compiled(query, context, word_mask, legacy), None

    try:
        check_against_float64(case, "fp32", attention, TOLERANCE["fp32"], "flex compiled", gradients=False)
    except Exception as err:  # keys = values = e': torch 2.11's CPU lowering refuses that, 2.14's takes it
        if "are the same buffer" not in str(err):
            raise
        pytest.skip(f"torch {torch.__version__}'s CPU FlexAttention refuses one buffer as keys and values")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("poison", [float("nan"), 1e30])
def test_padding_words_never_take_part_in_flex_or_key_channel_forms(poison):
    query, context, word_mask = make_inputs(3, 16, 4, 4, 6, layout="channels_last")
    poisoned = context.clone()
    poisoned[word_mask.unsqueeze(1).expand_as(poisoned)] = poison
    clean = word_attention_flex(query, context, word_mask)
    assert torch.equal(word_attention_flex(query, poisoned, word_mask), clean)
    poisoned.requires_grad_()
    ctx = word_attention_sdpa_key_channel(query, poisoned, word_mask)
    assert torch.equal(ctx, word_attention_sdpa_key_channel(query, context, word_mask))
    ctx.sum().backward()
    assert torch.all(poisoned.grad.transpose(1, 2)[word_mask] == 0) and torch.isfinite(poisoned.grad).all()


def test_auto_on_cpu_is_the_measured_path_and_sdpa_leaves_damsm_on_auto(monkeypatch):
    """impl="auto" on CPU tensors runs CPU_AUTO for the query's layout (float64: the reference); the
    DAMSM op takes a run's impl="sdpa" as "auto"."""
    query, context, word_mask = make_inputs(2, 8, 3, 3, 4)
    last = query.contiguous(memory_format=torch.channels_last)
    assert attention_op.which_path("auto", query, context) == attention_op.CPU_AUTO["nchw"]
    assert attention_op.which_path("auto", last, context) == attention_op.CPU_AUTO["channels_last"]
    assert attention_op.which_path("auto", last.double(), context) == "reference"
    assert attention_op.which_path("sdpa", query.double(), context) == "sdpa"
    calls = []
    monkeypatch.setattr(attention_op, "word_attention_sdpa", lambda *a: calls.append("sdpa") or (a[0], None))
    monkeypatch.setattr(attention_op, "word_attention_ref", lambda *a: calls.append("reference") or (a[0], None))
    for q in (query, last, last.double()):
        word_attention(q, context.to(q.dtype), word_mask)
    assert calls == [attention_op.CPU_AUTO["nchw"], attention_op.CPU_AUTO["channels_last"], "reference"]
    words, regions = torch.randn(2, 8, 4), torch.randn(2, 8, 3, 3)
    lengths = torch.tensor([4, 2])
    torch.testing.assert_close(kernels.damsm_word_scores(words, lengths, regions, impl="sdpa"),
                               kernels.damsm_word_scores(words, lengths, regions, impl="auto"))


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last_stays_channels_last(impl):
    query, context, word_mask = make_inputs(*CASES["channels-last"])
    query.requires_grad_()
    ctx, _ = word_attention(query, context, word_mask, impl=impl)
    if impl != "reference":
        assert ctx.is_contiguous(memory_format=torch.channels_last)
    ctx.sum().backward()
    assert query.grad.shape == query.shape


@pytest.mark.parametrize("poison", [float("nan"), 1e30])
@pytest.mark.parametrize("impl", IMPLS)
def test_padding_words_never_take_part(impl, poison):
    query, context, word_mask = make_inputs(3, 16, 4, 4, 6)
    clean, _ = word_attention(query, context, word_mask, impl=impl)
    poisoned = context.clone()
    poisoned[word_mask.unsqueeze(1).expand_as(poisoned)] = poison
    poisoned.requires_grad_()
    ctx, attn = word_attention(query, poisoned, word_mask, return_attn=True, impl=impl)
    assert torch.equal(ctx, clean)
    assert torch.all(attn.permute(0, 2, 3, 1)[word_mask.unsqueeze(1).unsqueeze(1).expand(-1, 4, 4, -1)] == 0)
    ctx.sum().backward()
    assert torch.all(poisoned.grad.transpose(1, 2)[word_mask] == 0)
    assert torch.isfinite(poisoned.grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_maps_only_on_request(impl):
    query, context, word_mask = make_inputs(2, 16, 4, 4, 5)
    ctx, attn = word_attention(query, context, word_mask, impl=impl)
    assert attn is None
    ctx2, attn2 = word_attention(query, context, word_mask, return_attn=True, impl=impl)
    assert torch.equal(ctx, ctx2)
    torch.testing.assert_close(attn2.sum(1), torch.ones(2, 4, 4))


def test_analytic_backward_equals_autograd():
    for legacy in (False, True):
        query, context, word_mask = make_inputs(3, 12, 4, 5, 6)
        q = query.double().requires_grad_()
        k = context.double().requires_grad_()
        grad = torch.randn(3, 12, 4, 5, dtype=torch.float64)
        (word_attention_ref(q, k, word_mask, legacy_mask=legacy)[0] * grad).sum().backward()
        d_q, d_k = word_attention_ref_backward(grad, q.detach(), k.detach(), word_mask, legacy)
        assert_rel(d_q, q.grad, 1e-12, f"analytic d_query legacy={legacy}")
        assert_rel(d_k, k.grad, 1e-12, f"analytic d_context legacy={legacy}")


@needs_interpreter
@pytest.mark.parametrize("mask", ["none", "own", "legacy"])
def test_opcheck_fused_op(mask):
    query, context, word_mask = make_inputs(2, 16, 4, 4, 5, mask=None if mask == "none" else "lengths")
    for return_attn in (False, True):
        torch.library.opcheck(
            torch.ops.attngan_fast.word_attention.default,
            (query.requires_grad_(), context.requires_grad_(), word_mask, return_attn, mask == "legacy", "ieee"),
        )


def test_opcheck_reference_kernels(monkeypatch):
    monkeypatch.setattr(attention_op, "_fused_ok", lambda *tensors: False)
    query, context, word_mask = make_inputs(2, 16, 4, 4, 5, layout="channels_last")
    for return_attn in (False, True):
        torch.library.opcheck(
            torch.ops.attngan_fast.word_attention.default,
            (query.requires_grad_(), context.requires_grad_(), word_mask, return_attn, False, "ieee"),
        )


def _loss_fn(impl, word_mask):
    def loss(query, context):
        ctx, _ = word_attention(query, context, word_mask, impl=impl)
        # Both terms are positive: a loss whose terms cancel (a signed sum) turns fp32 rounding of its
        # parts into a large relative error of the whole, and the comparison would measure that.
        ctx = ctx.float()
        return (ctx**2).mean() + (0.1 * ctx).exp().mean()

    return loss


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_compile_fullgraph_matches_eager(impl):
    torch._dynamo.reset()
    query, context, word_mask = make_inputs(2, 16, 6, 6, 5)
    eager = loss_and_grads(_loss_fn(impl, word_mask), query, context)
    compiled = loss_and_grads(torch.compile(_loss_fn(impl, word_mask), fullgraph=True), query, context)
    for what, a, b in zip(("loss", "d_query", "d_context"), eager, compiled):
        assert_rel(b, a, 1e-5, f"compiled {what}")


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_bf16_eager_and_compiled_agree(impl):
    """As for the DAMSM op: fp32 inside on every path; the compiled backward of the reference and of
    SDPA (plain aten ops, re-autocast to bf16 otherwise) needs ``backward_pass_autocast="off"``
    (pytorch#153044), the fused op does not."""
    torch._dynamo.reset()
    query, context, word_mask = make_inputs(2, 16, 6, 6, 5)
    plain = loss_and_grads(_loss_fn(impl, word_mask), query, context)
    eager = loss_and_grads(_loss_fn(impl, word_mask), query, context, autocast=True)
    backward_autocast = "off" if impl in ("reference", "sdpa") else "same_as_forward"
    with torch._functorch.config.patch(backward_pass_autocast=backward_autocast):
        compiled = loss_and_grads(torch.compile(_loss_fn(impl, word_mask), fullgraph=True), query, context, autocast=True)
    for what, a, b, c in zip(("loss", "d_query", "d_context"), plain, eager, compiled):
        assert_rel(b, a, 1e-6, f"autocast eager {what}")
        assert_rel(c, a, 1e-5, f"autocast compiled {what}")


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_activations_with_fp32_context(impl):
    """Under AMP the image features arrive in bf16 while the projected words may be fp32."""
    query, context, word_mask = make_inputs(2, 16, 4, 4, 5)
    query, query64 = quantize(query, torch.bfloat16)
    ctx, _ = word_attention(query, context, word_mask, impl=impl)
    assert ctx.dtype == torch.float32
    ref, _ = word_attention_ref(query64, context.double(), word_mask)
    assert_rel(ctx, ref, 1e-5, "mixed-dtype ctx")


def test_cpu_auto_follows_the_measured_results_file():
    """CPU_AUTO names, per layout, the path that spends less of a training step in F_attn (forward +
    backward over the generator's image sides) in most (dtype, C) groups of the latest CPU measurement
    at the model's sizes (``python -m benchmarks.gpu --device cpu --sizes model --only auto``)."""
    import json
    from pathlib import Path

    from benchmarks.report import per_step

    measured = []
    for path in Path(__file__).resolve().parents[1].glob("benchmarks/results/cpu-*.json"):
        report = json.loads(path.read_text())
        rows = [r for r in report.get("rows", []) if "reference_ms" in r and "sdpa_ms" in r]
        if rows and report.get("sizes") != "small":
            measured.append((report["date"], path.name, rows))
    assert measured, "no CPU measurement of F_attn's paths: run python -m benchmarks.gpu --device cpu --sizes model --only auto"
    _, name, rows = max(measured)
    steps = per_step(rows)
    for layout, path in attention_op.CPU_AUTO.items():
        mine = [g for g in steps if g["layout"] == layout]
        assert mine, f"{name} has no {layout} rows"
        assert 2 * sum(g["faster"] == path for g in mine) > len(mine), (layout, path, name, mine)


# ---------------------------------------------------------------------------------------------- errors

def _good():
    return torch.randn(2, 8, 3, 3), torch.randn(2, 8, 4), torch.tensor([[False] * 4, [False, False, True, True]])


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, m: (q[0], k, m), ValueError, "query must have 4 dimensions"),
        (lambda q, k, m: (q, k[0], m), ValueError, "context must have 3 dimensions"),
        (lambda q, k, m: (q, torch.randn(2, 6, 4), m), ValueError, "context has 6 channels but query has 8"),
        (lambda q, k, m: (q, torch.randn(3, 8, 4), m), ValueError, "context has batch 3 but query has batch 2"),
        (lambda q, k, m: (q, k, m[:, :3]), ValueError, r"word_mask must have shape \(B, T\) = \(2, 4\)"),
        (lambda q, k, m: (q, k, m.long()), TypeError, "word_mask must be a bool tensor"),
        (lambda q, k, m: (q, k, torch.ones(2, 4, dtype=torch.bool)), ValueError, "masks every word of sample 0"),
        (lambda q, k, m: (q.int(), k, m), TypeError, "query must be a floating tensor"),
        (lambda q, k, m: (q, k.to("meta"), m), ValueError, "context is on meta but query is on cpu"),
        (lambda q, k, m: (q, k, m.to("meta")), ValueError, "word_mask is on meta"),
        (lambda q, k, m: (q, k, m.tolist()), TypeError, "word_mask must be a bool tensor .* got list"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, error, match):
    query, context, word_mask = mutate(*_good())
    with pytest.raises(error, match=match):
        word_attention(query, context, word_mask)


@pytest.mark.parametrize("impl", IMPLS)
def test_precision_is_checked_on_every_path(impl):
    """A misspelt precision is an error whichever path runs, not ignored where it does not apply."""
    with pytest.raises(ValueError, match="precision must be one of"):
        word_attention(*_good(), impl=impl, precision="fp8")


@pytest.mark.parametrize("impl", IMPLS)
def test_the_maps_are_not_differentiable_on_any_path(impl):
    """The maps are for pictures: a loss on them raises on every path (the Triton op once marked them
    differentiable, and their gradient was silently zero)."""
    query, context, word_mask = _good()
    query.requires_grad_()
    ctx, attn = word_attention(query, context, word_mask, return_attn=True, impl=impl)
    assert ctx.requires_grad and not attn.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(attn.square().sum(), query)


def test_value_checks_can_be_turned_off_for_a_block():
    query, context, _ = _good()
    everything_masked = torch.ones(2, 4, dtype=torch.bool)
    with kernels.value_checks(False):
        ctx, _ = word_attention(query, context, everything_masked, impl="reference")
        assert ctx.shape == query.shape
        with pytest.raises(ValueError, match=r"word_mask must have shape"):
            word_attention(query, context, everything_masked[:, :3])
    with pytest.raises(ValueError, match="masks every word of sample 0"):
        word_attention(query, context, everything_masked)


@pytest.mark.parametrize("impl", IMPLS)
def test_saturated_gradients_stay_within_fp32s_conditioning(impl):
    """At |s| ~ 1e4 the softmaxes are (nearly) one-hot and fp32's rounding of the scores is ~1e-3: every
    path's d_context stays within 4 · 2^-24 · max|s| of float64 (docs/numerics.md; the worst of 60 seeds
    was 0.8 · 2^-24 · max|s|). A real bug is O(1)."""
    query, context, word_mask = make_inputs(2, 20, 5, 5, 6, 30.0, "lengths", "nchw")
    grad = torch.randn(query.shape)  # the test's fresh seed (ATTNGAN_TEST_SEED)
    context64 = context.double().requires_grad_()
    ctx64, _ = word_attention_ref(query.double(), context64, word_mask)
    (ctx64 * grad.double()).sum().backward()
    context.requires_grad_()
    ctx, _ = word_attention(query, context, word_mask, impl=impl)
    (ctx * grad).sum().backward()
    scores = torch.einsum("bchw,bct->bhwt", query.double(), context64.detach()).abs().max().item()
    assert scores > 5e3, scores  # the case really saturates
    assert_rel(context.grad, context64.grad, 4 * 2.0 ** -24 * scores, f"d_context ({impl}, saturated softmax)")
