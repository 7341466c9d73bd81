"""DAMSM word-level scores: both paths against float64, gradients, maps, padding, compile, autocast."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attngan_fast import kernels
import attngan_fast.kernels.damsm.op as damsm_op
from attngan_fast.kernels import damsm_word_scores, damsm_word_scores_loop, damsm_word_scores_ref, testing
from attngan_fast.kernels.damsm import damsm_word_scores_ref_backward
from numerics import DTYPES, IMPLS, TOLERANCE, assert_rel, loss_and_grads, needs_interpreter, quantize

# name: (B_img, B_cap, D, T, N, scale, layout)
CASES = {
    "basic": (3, 3, 24, 7, 20, 1.0, "contiguous"),
    "one-word": (2, 3, 16, 1, 9, 1.0, "contiguous"),
    "one-region": (3, 2, 20, 5, 1, 1.0, "contiguous"),
    "17x17-regions": (2, 2, 20, 6, 289, 1.0, "4d"),
    "more-images-than-captions": (4, 2, 36, 5, 30, 1.0, "contiguous"),
    "non-contiguous": (3, 3, 20, 6, 25, 1.0, "transposed"),
    "saturated-softmaxes": (3, 3, 20, 6, 25, 8.0, "contiguous"),
}
# Similarities of magnitude ~300 (scale 8, D = 20) saturate both softmaxes: the scores stay exact, but
# the gradients shrink ~300x below their natural scale, and what is left is cancellation noise of
# fp32's size in any implementation, the reference included (measured over 40 seeds: up to 2e-4
# relative to that tiny gradient). There the gradients are judged against their natural scale
# ‖g‖·max‖feature‖, which still fails any real bug (error ≈ ‖ref‖) by more than 100x.
SATURATED = {"saturated-softmaxes"}


# Fresh random words (B_cap, D, T), lengths in [1, T] with both ends, regions (B_img, D, N).
make_inputs = testing.damsm_inputs


@pytest.mark.parametrize("case", list(CASES))
def test_reference_equals_released_loop(case):
    """The vectorized reference is the released algorithm (an independent per-caption loop)."""
    words, cap_lens, regions = make_inputs(*CASES[case])
    words, regions = words.double(), regions.double().flatten(2)
    ref = damsm_word_scores_ref(words, cap_lens, regions)
    assert ref.dtype == torch.float64
    loop = damsm_word_scores_loop(words, cap_lens, regions)
    # The loop's log(sum(exp)) has no max shift; at these magnitudes it is still exact in float64.
    assert_rel(ref, loop, 1e-12, "reference vs released loop")


@settings(max_examples=25, deadline=None)
@given(
    b_img=st.integers(1, 4), b_cap=st.integers(1, 4), dim=st.integers(1, 24),
    max_len=st.integers(1, 8), n_regions=st.integers(1, 30), seed=st.integers(0, 2**31 - 1),
)
def test_reference_equals_released_loop_any_shape(b_img, b_cap, dim, max_len, n_regions, seed):
    torch.manual_seed(seed)
    words, cap_lens, regions = make_inputs(b_img, b_cap, dim, max_len, n_regions)
    words, regions = words.double(), regions.double()
    assert_rel(damsm_word_scores_ref(words, cap_lens, regions), damsm_word_scores_loop(words, cap_lens, regions),
               1e-12, "reference vs released loop")


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_backward_equals_autograd(case):
    words, cap_lens, regions = make_inputs(*CASES[case])
    words = words.double().requires_grad_()
    regions = regions.double().flatten(2).detach().requires_grad_()
    grad = torch.randn(regions.shape[0], words.shape[0], dtype=torch.float64)
    (damsm_word_scores_ref(words, cap_lens, regions) * grad).sum().backward()
    d_words, d_regions = damsm_word_scores_ref_backward(grad, words.detach(), cap_lens, regions.detach())
    assert_rel(d_words, words.grad, 1e-10, "analytic d_words")
    assert_rel(d_regions, regions.grad, 1e-10, "analytic d_regions")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_scores_and_gradients_match_float64(case, dtype, impl):
    words, cap_lens, regions = make_inputs(*CASES[case])
    words, words64 = quantize(words, DTYPES[dtype])
    regions, regions64 = quantize(regions, DTYPES[dtype])
    words.requires_grad_(), regions.requires_grad_(), words64.requires_grad_(), regions64.requires_grad_()

    ref = damsm_word_scores_ref(words64, cap_lens, regions64.flatten(2))
    out = damsm_word_scores(words, cap_lens, regions, impl=impl)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    tol = TOLERANCE[dtype]
    assert_rel(out, ref, tol, f"R ({impl}, {dtype})")

    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (out * grad.float()).sum().backward()
    assert words.grad.dtype == words.dtype and regions.grad.shape == regions.shape
    floor_w = floor_r = 0.0
    if case in SATURATED:
        floor_w = float(grad.norm() * torch.linalg.vector_norm(regions64.detach().flatten(2), dim=1).max())
        floor_r = float(grad.norm() * torch.linalg.vector_norm(words64.detach(), dim=1).max())
    assert_rel(words.grad, words64.grad, tol, f"d_words ({impl}, {dtype})", floor=floor_w)
    assert_rel(regions.grad, regions64.grad, tol, f"d_regions ({impl}, {dtype})", floor=floor_r)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_words_never_take_part(impl):
    words, cap_lens, regions = make_inputs(3, 3, 20, 6, 12)
    cap_lens = torch.tensor([6, 2, 4])
    clean = damsm_word_scores(words, cap_lens, regions, impl=impl)
    poisoned = words.clone()
    for j, n in enumerate(cap_lens.tolist()):
        poisoned[j, :, n:] = float("nan") if j == 1 else 1e30
    poisoned.requires_grad_()
    scores = damsm_word_scores(poisoned, cap_lens, regions, impl=impl)
    assert torch.equal(scores, clean)
    scores.sum().backward()
    for j, n in enumerate(cap_lens.tolist()):
        assert torch.all(poisoned.grad[j, :, n:] == 0), f"padding of caption {j} got a gradient"
    assert torch.isfinite(poisoned.grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_maps_of_matching_pairs(impl):
    words, cap_lens, regions = make_inputs(3, 3, 20, 6, 289, layout="4d")
    scores, attn = damsm_word_scores(words, cap_lens, regions, return_attn=True, impl=impl)
    assert attn.shape == (3, 6, 289) and attn.dtype == torch.float32
    # Independent recomputation of the diagonal maps in float64, one pair at a time.
    for b, n in enumerate(cap_lens.tolist()):
        e = words[b, :, :n].double()
        v = regions[b].flatten(1).double()
        s_bar = torch.softmax(e.t() @ v, dim=0)
        alpha = torch.softmax(4.0 * s_bar, dim=1)
        assert_rel(attn[b, :n], alpha, 1e-5, f"map of pair {b}")
        assert torch.all(attn[b, n:] == 0), "padding words must have zero maps"
    assert_rel(scores, damsm_word_scores_ref(words.double(), cap_lens, regions.double().flatten(2)), 1e-5, "R")


@needs_interpreter
@pytest.mark.parametrize("splits, images_per_chunk", [((1, 1), None), ((2, 3), None), ((3, 2), 3), ((1, 3), 2),
                                                      ((2, 1), 1)])
def test_split_reductions_agree(splits, images_per_chunk):
    """The backward's partial sums over (image, caption-group) splits, and its chunks of images, add up
    to the same gradients: 5 images, 7 captions of 18 words in 3 groups."""
    from attngan_fast.kernels.damsm import fused

    words, cap_lens, regions = make_inputs(5, 7, 20, 18, 17)
    grad = torch.randn(5, 7)
    d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee", splits=splits,
                                              images_per_chunk=images_per_chunk)
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    assert_rel(d_words, ref_w, 1e-5, "d_words")
    assert_rel(d_regions, ref_r, 1e-5, "d_regions")


@needs_interpreter
def test_captions_are_packed_several_to_a_program():
    """T = 18: three captions share a program's 64 rows; T = 40: one caption, its own 64-row tile."""
    from attngan_fast.kernels.damsm import fused, plan

    assert plan.shape_meta(18, 256) == dict(T=18, GROUP=3, BLOCK_W=64, BLOCK_D=256)
    assert plan.shape_meta(40, 20) == dict(T=40, GROUP=1, BLOCK_W=64, BLOCK_D=32)
    assert plan.shape_meta(1, 16)["GROUP"] == plan.MAX_GROUP
    assert plan.shape_meta(18, 256, narrow=True)["GROUP"] == 1
    words, cap_lens, _ = make_inputs(1, 4, 3, 18, 1)
    for j, n in enumerate(cap_lens.tolist()):
        words[j, :, n:] = float("nan")  # padding words must come out zero, whatever memory held
    packed = fused.pack_caption_groups(words, cap_lens, torch.float32, plan.shape_meta(18, 3))
    assert packed.shape == (2, 64, 16) and torch.isfinite(packed).all()
    for j in range(4):
        g, k = divmod(j, 3)
        rows = packed[g, k * 18:(k + 1) * 18, :3]
        n = int(cap_lens[j])
        assert torch.equal(rows[:n], words[j, :, :n].t()) and torch.all(rows[n:] == 0)
    assert torch.all(packed[:, 54:] == 0) and torch.all(packed[:, :, 3:] == 0) and torch.all(packed[1, 18:] == 0)


@needs_interpreter
@pytest.mark.parametrize("case", ["basic", "17x17-regions", "more-images-than-captions", "saturated-softmaxes"])
def test_bf16x3_operand_pairs(monkeypatch, case):
    """fp32's default products hold each operand as a (hi, lo) pair of 16-bit values. The interpreter
    runs bf16 dots wrongly, so this runs the same plumbing with fp16 pairs (correct there): the
    launchers' split of the regions, the kernels' split of their own operands, the three products.
    fp16's narrower range costs the small lo parts some bits, hence 1e-4; a dropped pair or product
    fails by orders of magnitude more (the hi parts alone are ~1e-3 off)."""
    import triton.language as tl

    import attngan_fast.kernels._mma as mma

    monkeypatch.setattr(mma, "INTERPRETER_SPLIT_DTYPE", tl.float16)
    words, cap_lens, regions = make_inputs(*CASES[case])
    words64, regions64 = words.double().requires_grad_(), regions.double().flatten(2).requires_grad_()
    words, regions = words.requires_grad_(), regions.requires_grad_()
    ref = damsm_word_scores_ref(words64, cap_lens, regions64)
    out = damsm_word_scores(words, cap_lens, regions, impl="triton", precision="bf16x3")
    assert_rel(out, ref, 1e-4, "R")
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (out * grad.float()).sum().backward()
    floor_w = floor_r = 0.0
    if case in SATURATED:
        floor_w = float(grad.norm() * torch.linalg.vector_norm(regions64.detach(), dim=1).max())
        floor_r = float(grad.norm() * torch.linalg.vector_norm(words64.detach(), dim=1).max())
    assert_rel(words.grad, words64.grad, 1e-4, "d_words", floor=floor_w)
    assert_rel(regions.grad, regions64.grad.reshape(regions.shape), 1e-4, "d_regions", floor=floor_r)


@pytest.mark.parametrize("impl", IMPLS)
def test_only_needed_gradients(impl):
    """GAN training freezes the text encoder: words need no gradient, regions do."""
    words, cap_lens, regions = make_inputs(2, 2, 20, 4, 10)
    regions.requires_grad_()
    damsm_word_scores(words, cap_lens, regions, impl=impl).sum().backward()
    assert words.grad is None
    ref_r = damsm_word_scores_ref_backward(torch.ones(2, 2, dtype=torch.float64), words.double(), cap_lens,
                                           regions.detach().double())[1]
    assert_rel(regions.grad, ref_r, 1e-5, "d_regions")


@pytest.mark.parametrize("gammas", [(1.0, 1.0), (10.0, 0.5), (80.0, 20.0)])
@pytest.mark.parametrize("impl", IMPLS)
def test_other_gammas(gammas, impl):
    words, cap_lens, regions = make_inputs(2, 3, 20, 5, 15)
    out = damsm_word_scores(words, cap_lens, regions, *gammas, impl=impl)
    ref = damsm_word_scores_ref(words.double(), cap_lens, regions.double(), *gammas)
    assert_rel(out, ref, 1e-5, f"R with gammas {gammas}")


@needs_interpreter
def test_opcheck_fused_op():
    words, cap_lens, regions = make_inputs(3, 3, 20, 5, 12)
    args = (words.requires_grad_(), cap_lens, regions.requires_grad_(), 4.0, 5.0)
    for return_attn in (False, True):
        torch.library.opcheck(torch.ops.attngan_fast.damsm_word_scores.default, (*args, return_attn, "ieee"))


def test_opcheck_reference_kernels(monkeypatch):
    """The op's CPU kernel without the interpreter is the reference math: same registration checks."""
    monkeypatch.setattr(damsm_op, "_fused_ok", lambda *tensors: False)
    words, cap_lens, regions = make_inputs(3, 2, 20, 5, 12)
    args = (words.requires_grad_(), cap_lens, regions.requires_grad_(), 4.0, 5.0)
    for return_attn in (False, True):
        if return_attn:
            args = (words, cap_lens, regions[:2].detach().requires_grad_(), 4.0, 5.0)
        torch.library.opcheck(torch.ops.attngan_fast.damsm_word_scores.default, (*args, return_attn, "ieee"))


def _loss_fn(impl, cap_lens):
    def loss(words, regions):
        scores = damsm_word_scores(words, cap_lens, regions, impl=impl)
        labels = torch.arange(scores.shape[0])
        return torch.nn.functional.cross_entropy(10.0 * scores, labels) + (scores**2).mean()

    return loss


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_compile_fullgraph_matches_eager(impl):
    torch._dynamo.reset()
    words, cap_lens, regions = make_inputs(3, 3, 20, 6, 16)
    eager = loss_and_grads(_loss_fn(impl, cap_lens), words, regions)
    compiled = loss_and_grads(torch.compile(_loss_fn(impl, cap_lens), fullgraph=True), words, regions)
    for what, a, b in zip(("loss", "d_words", "d_regions"), eager, compiled):
        assert_rel(b, a, 1e-5, f"compiled {what}")


@pytest.mark.parametrize("impl", IMPLS)
def test_compile_fullgraph_takes_a_gamma_that_changes_between_calls(impl):
    """A second call with another γ1 makes it a symbolic float (dynamo's automatic dynamic): the
    argument check must not leave the graph (math.isfinite took no symbolic float), and the result is
    the eager one at each γ1."""
    torch._dynamo.reset()
    words, cap_lens, regions = make_inputs(3, 2, 16, 5, 9)

    def score(w, r, gamma1):
        return damsm_word_scores(w, cap_lens, r, gamma1=gamma1, gamma2=5.0, impl=impl)

    compiled = torch.compile(score, backend="aot_eager", fullgraph=True)
    for gamma1 in (4.0, 80.0, 7.5):
        assert_rel(compiled(words, regions, gamma1), score(words, regions, gamma1), 1e-5, f"γ1 {gamma1}")


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_bf16_eager_and_compiled_agree(impl):
    """Under CPU bf16 autocast both paths compute in fp32 inside, eagerly and compiled.

    The reference path is plain PyTorch, so its *compiled* backward follows PyTorch's
    ``backward_pass_autocast`` (default "same_as_forward" re-autocasts the backward matmuls to bf16,
    pytorch#153044); with "off" it matches eager as it does here. The fused op is one opaque node with
    its own backward op and matches eager whatever that setting is.
    """
    torch._dynamo.reset()
    words, cap_lens, regions = make_inputs(3, 3, 20, 6, 16)
    plain = loss_and_grads(_loss_fn(impl, cap_lens), words, regions)
    eager = loss_and_grads(_loss_fn(impl, cap_lens), words, regions, autocast=True)
    backward_autocast = "off" if impl == "reference" else "same_as_forward"
    with torch._functorch.config.patch(backward_pass_autocast=backward_autocast):
        compiled = loss_and_grads(torch.compile(_loss_fn(impl, cap_lens), fullgraph=True), words, regions, autocast=True)
    for what, a, b, c in zip(("loss", "d_words", "d_regions"), plain, eager, compiled):
        assert_rel(b, a, 1e-6, f"autocast eager {what}")
        assert_rel(c, a, 1e-5, f"autocast compiled {what}")


# ---------------------------------------------------------------------------------------------- errors

def _good():
    return torch.randn(2, 8, 4), torch.tensor([4, 2]), torch.randn(2, 8, 3, 3)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda w, c, r: (w[0], c, r), ValueError, "words must have 3 dimensions"),
        (lambda w, c, r: (w, c, r[0, 0]), ValueError, "regions must have 3 or 4 dimensions"),
        (lambda w, c, r: (w, c, torch.randn(2, 7, 9)), ValueError, "regions has feature size D=7"),
        (lambda w, c, r: (w, torch.tensor([0, 2]), r), ValueError, r"cap_lens must lie in \[1, T=4\].*cap_lens\[0\] = 0"),
        (lambda w, c, r: (w, torch.tensor([4, 5]), r), ValueError, r"cap_lens\[1\] = 5"),
        (lambda w, c, r: (w, torch.tensor([4, 2, 1]), r), ValueError, r"cap_lens must have shape \(2,\)"),
        (lambda w, c, r: (w, torch.tensor([4.0, 2.0]), r), TypeError, "cap_lens must hold integers"),
        (lambda w, c, r: (w.long(), c, r), TypeError, "words must be a floating tensor"),
        (lambda w, c, r: (w, c, r.int()), TypeError, "regions must be a floating tensor"),
        (lambda w, c, r: (w, c, r.to("meta")), ValueError, "regions is on meta but words is on cpu"),
        (lambda w, c, r: (w.numpy(), c, r), TypeError, "words must be a torch.Tensor"),
        (lambda w, c, r: (w[:, :, :0], c, r), ValueError, "words must not be empty"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, error, match):
    words, cap_lens, regions = mutate(*_good())
    with pytest.raises(error, match=match):
        damsm_word_scores(words, cap_lens, regions)


def test_value_checks_can_be_turned_off_for_a_block():
    # A training loop whose data guarantees the lengths turns off the check (a host sync on a GPU);
    # the checks that cost nothing stay on, and the block's end restores the default.
    words, _, regions = _good()
    with kernels.value_checks(False):
        scores = damsm_word_scores(words, torch.tensor([0, 2]), regions, impl="reference")
        assert scores.shape == (2, 2)
        with pytest.raises(ValueError, match=r"cap_lens must have shape \(2,\)"):
            damsm_word_scores(words, torch.tensor([4, 2, 1]), regions)
        with kernels.value_checks(True), pytest.raises(ValueError, match=r"cap_lens\[0\] = 0"):
            damsm_word_scores(words, torch.tensor([0, 2]), regions)
    with pytest.raises(ValueError, match=r"cap_lens\[0\] = 0"):
        damsm_word_scores(words, torch.tensor([0, 2]), regions)


def test_bad_options_name_the_argument():
    words, cap_lens, regions = _good()
    with pytest.raises(ValueError, match="gamma1 must be finite and in"):
        damsm_word_scores(words, cap_lens, regions, gamma1=200.0)
    with pytest.raises(ValueError, match="gamma2 must be finite"):
        damsm_word_scores(words, cap_lens, regions, gamma2=float("nan"))
    with pytest.raises(ValueError, match="impl must be one of"):
        damsm_word_scores(words, cap_lens, regions, impl="cuda")
    with pytest.raises(ValueError, match="B_img == B_cap"):
        damsm_word_scores(words, cap_lens, torch.randn(3, 8, 9), return_attn=True)
    for impl in IMPLS:  # checked whichever path runs, not ignored where it does not apply
        with pytest.raises(ValueError, match="precision must be one of"):
            damsm_word_scores(words, cap_lens, regions, impl=impl, precision="fp8")
    # float() would take these; γ is a constant of the op, never a parameter it differentiates
    for gamma, shown in (("4", "'4'"), (True, "True"), (torch.tensor(4.0, requires_grad=True), "requires grad")):
        with pytest.raises(TypeError, match=f"gamma1 must be a number, got .*{shown}"):
            damsm_word_scores(words, cap_lens, regions, gamma1=gamma)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_attention_is_not_differentiable_on_any_path(impl):
    """return_attn's maps are for pictures: a loss on them raises on every path (the Triton op once
    marked them differentiable, and their gradient was silently zero); the scores' gradient flows."""
    words, cap_lens, regions = _good()
    words.requires_grad_()
    scores, attn = damsm_word_scores(words, cap_lens, regions, return_attn=True, impl=impl)
    assert scores.requires_grad and not attn.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(attn.square().sum(), words)


@needs_interpreter
def test_triton_refuses_float64():
    words, cap_lens, regions = _good()
    with pytest.raises(TypeError, match="use impl='reference' for float64"):
        damsm_word_scores(words.double(), cap_lens, regions.double(), impl="triton")


def test_cap_lens_as_list_and_numpy():
    words, cap_lens, regions = _good()
    expected = damsm_word_scores(words, cap_lens, regions)
    assert torch.equal(damsm_word_scores(words, [4, 2], regions), expected)
    assert torch.equal(damsm_word_scores(words, cap_lens.numpy(), regions), expected)
