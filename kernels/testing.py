"""What checks the ops use, in one importable place (the tests, ``pytest -m gpu`` and
``python -m benchmarks.gpu`` alike): tolerances by dtype, the relative error that never lets NaN
pass, fresh random inputs of both ops, and the comparisons with float64: of a fused op at a check's
size (``compare_with_float64``, errors returned) and of any F_attn callable (asserted).

Tolerances are ‖out − ref‖ / ‖ref‖ against a float64 computation on the same (rounded) inputs
(docs/design.md §2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _runtime
from .attention import word_attention, word_attention_ref
from .damsm import damsm_word_scores, damsm_word_scores_ref

TOLERANCE = {
    "fp32": 1e-5,  # fp32 inputs at the default (bf16x3) or ieee precision, and the interpreter (fp32 numpy)
    "tf32": 2e-3,
    "bf16": 2e-2,
    "fp16": 2e-2,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tolerance(dtype: str, precision: str = "auto") -> float:
    """The tolerance for inputs of ``dtype`` ("fp32", "bf16", "fp16") at a dot ``precision`` (as the ops
    take it); fp32 inputs at a tensor-core precision other than tf32 are held to fp32's."""
    if dtype != "fp32":
        return TOLERANCE[dtype]
    return TOLERANCE["tf32"] if _runtime.resolve_precision(precision, torch.empty(0)) == "tf32" else TOLERANCE["fp32"]


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """‖out − ref‖ / max(‖ref‖, floor); raises AssertionError on a shape mismatch or a non-finite value
    in ``out``. ``floor`` is for gradients that vanish (saturated softmaxes): there the error is measured
    against the gradient's natural scale instead of against ~0."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    bad = int((~torch.isfinite(out)).sum())
    assert not bad, f"non-finite values in output: {bad} of {out.numel()}"
    scale = max(float(torch.linalg.vector_norm(ref)), floor)
    diff = float(torch.linalg.vector_norm(out - ref))
    return diff / scale if scale > 0 else diff


def assert_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str, floor: float = 0.0) -> None:
    err = rel_err(out, ref, floor)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in ``dtype``, the same values in float64): the float64 reference sees exactly the inputs the
    kernel sees, so only the kernel's own rounding is measured."""
    low = x.to(dtype)
    return low, low.to(torch.float64)


def assert_gradients(out: torch.Tensor, ref: torch.Tensor, leaves: dict, tol: float, what: str,
                     floors: dict | None = None, grad: torch.Tensor | None = None) -> None:
    """Back-propagates one random linear loss through ``out`` and through its float64 ``ref``, then
    checks each gradient: ``leaves`` maps a name to (leaf, its float64 twin); ``floors`` a name to the
    scale its error is judged against where the gradient vanishes (``rel_err``). ``grad`` is the loss's
    weights (float64, ``ref``'s shape; a standard normal draw by default), rounded to ``out``'s dtype
    on its side. Leaves keep their dtype."""
    grad = torch.randn_like(ref) if grad is None else grad
    (ref * grad).sum().backward()
    (out * grad.to(out.dtype)).sum().backward()
    for name, (leaf, leaf64) in leaves.items():
        assert leaf.grad.dtype == leaf.dtype, f"d_{name} is {leaf.grad.dtype}, its input {leaf.dtype}"
        assert_rel(leaf.grad, leaf64.grad, tol, f"d_{name} ({what})", floor=(floors or {}).get(name, 0.0))


def assert_attention_matches_float64(attention, query: torch.Tensor, context: torch.Tensor, word_mask, tol: float,
                                     what: str, *, legacy: bool = False, gradients: bool = True,
                                     grad_tol: float | None = None, floors: dict | None = None,
                                     grad: torch.Tensor | None = None) -> None:
    """Asserts ``attention(query, context, word_mask)`` (ctx, or (ctx, attn or None)) against
    ``word_attention_ref`` in float64 on the same values (``legacy``: the released masking): ctx (the
    query's dtype and shape), attn when returned (fp32), and with ``gradients`` d_query and d_context of
    one random linear loss (``assert_gradients``: ``floors``, ``grad``), judged at ``grad_tol`` (default
    ``tol``). ``query`` and ``context`` become leaves that require grad."""
    query64, context64 = (x.detach().to(torch.float64, copy=True) for x in (query, context))  # never the leaf itself
    for t in (query, query64, context, context64) if gradients else ():
        t.requires_grad_()
    ref_ctx, ref_attn = word_attention_ref(query64, context64, word_mask, return_attn=True, legacy_mask=legacy)
    out = attention(query, context, word_mask)
    ctx, attn = out if isinstance(out, tuple) else (out, None)
    assert ctx.dtype == query.dtype and ctx.shape == query.shape, f"ctx is {ctx.dtype} {tuple(ctx.shape)} ({what})"
    assert_rel(ctx, ref_ctx, tol, f"ctx ({what})")
    if attn is not None:
        assert attn.dtype == torch.float32 and attn.shape == ref_attn.shape, f"attn is {attn.dtype} ({what})"
        assert_rel(attn, ref_attn, tol, f"attn ({what})")
    if gradients:
        assert_gradients(ctx, ref_ctx, {"query": (query, query64), "context": (context, context64)},
                         tol if grad_tol is None else grad_tol, what, floors, grad)


def _lengths(batch: int, max_len: int, generator, both_ends: bool = True) -> torch.Tensor:
    """Lengths drawn uniformly from [1, T]; with ``both_ends`` both ends are present: the first caption
    has every word, the last (of two or more) one word."""
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    if both_ends:
        lengths[0] = max_len
        if batch > 1:
            lengths[-1] = 1
    return lengths


def damsm_inputs(b_img: int, b_cap: int, dim: int, max_len: int, n_regions: int, scale: float = 1.0,
                 layout: str = "contiguous", *, dtype: torch.dtype = torch.float32, device="cpu", generator=None,
                 both_ends: bool = True):
    """Fresh random words (B_cap, D, T), cap_lens (B_cap,) and regions (B_img, D, N); cap_lens in 1..T,
    the first T and the last (of two or more) 1 unless ``both_ends=False`` (then all uniform).

    layout: "contiguous"; "transposed" (non-contiguous views of (B, T, D) and (B, N, D) storage); "4d"
    (regions as (B_img, D, s, s), N = s²). ``scale`` multiplies the standard normal draws (D^-1/4 makes
    similarities O(1), as for trained encoders)."""
    def normal(*shape):
        return torch.randn(*shape, generator=generator) * scale

    if layout == "transposed":
        words, regions = normal(b_cap, max_len, dim).transpose(1, 2), normal(b_img, n_regions, dim).transpose(1, 2)
    else:
        words, regions = normal(b_cap, dim, max_len), normal(b_img, dim, n_regions)
    if layout == "4d":
        side = math.isqrt(n_regions)
        regions = regions.reshape(b_img, dim, side, side)
    lengths = _lengths(b_cap, max_len, generator, both_ends)
    return words.to(device, dtype), lengths.to(device), regions.to(device, dtype)


def attention_inputs(batch: int, channels: int, height: int, width: int, max_len: int, scale: float = 1.0,
                     mask: str | None = "lengths", layout: str = "nchw", *, dtype: torch.dtype = torch.float32,
                     device="cpu", generator=None, both_ends: bool = True):
    """Fresh random query (B, C, H, W), context (B, C, T) and word_mask (B, T) (True = padding; lengths
    1..T with both ends present, or all uniform with ``both_ends=False``; None with ``mask=None``).

    layout: "nchw"; "channels_last"; "transposed" (non-contiguous views)."""
    def normal(*shape):
        return torch.randn(*shape, generator=generator) * scale

    if layout == "transposed":
        query, context = normal(batch, channels, width, height).transpose(2, 3), normal(batch, max_len, channels).transpose(1, 2)
    else:
        query, context = normal(batch, channels, height, width), normal(batch, channels, max_len)
    query, context = query.to(device, dtype), context.to(device, dtype)
    if layout == "channels_last":
        query = query.contiguous(memory_format=torch.channels_last)
    word_mask = None
    if mask is not None:
        lengths = _lengths(batch, max_len, generator, both_ends)
        word_mask = (torch.arange(max_len)[None, :] >= lengths[:, None]).to(device)
    return query, context, word_mask


@dataclass(frozen=True)
class Check:
    """One fused op against float64 at one size: ``op`` "damsm" (sizes: B_img, B_cap, D, T, N) or
    "attention" (B, C, side, T); ``variant`` "" (plain), "maps" (with the attention maps), "channels_last" or "legacy" (the
    released F_attn masking)."""

    op: str
    sizes: tuple[int, ...]
    dtype: str
    variant: str = ""

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.op == "damsm":
            return ("R", "attn") if self.variant == "maps" else ("R", "d_words", "d_regions")
        return ("ctx", "attn") if self.variant == "maps" else ("ctx", "d_query", "d_context")

    @property
    def label(self) -> str:
        names = ("B_img", "B_cap", "D", "T", "N") if self.op == "damsm" else ("B", "C", "side", "T")
        size = " ".join(f"{n}={v}" for n, v in zip(names, self.sizes))
        return f"{self.op} {size} {self.dtype}" + (f" {self.variant}" if self.variant else "")

    def inputs(self, device, seed: int) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        dtype = DTYPES[self.dtype]
        if self.op == "damsm":
            b_img, b_cap, d, t, n = self.sizes
            layout = "4d" if math.isqrt(n) ** 2 == n else "contiguous"
            return damsm_inputs(b_img, b_cap, d, t, n, scale=d ** -0.25, layout=layout, dtype=dtype, device=device,
                                generator=gen)
        b, c, side, t = self.sizes
        layout = "channels_last" if self.variant == "channels_last" else "nchw"
        return attention_inputs(b, c, side, side, t, scale=c ** -0.25, layout=layout, dtype=dtype, device=device,
                                generator=gen)


def _call(check: Check, inputs: tuple, reference: bool, precision: str):
    """(main output, maps or None) of the op (``impl="triton"``, or the reference) on ``inputs``."""
    maps = check.variant == "maps"
    if check.op == "damsm":
        words, cap_lens, regions = inputs
        if reference:
            out = damsm_word_scores_ref(words, cap_lens, regions.flatten(2), return_attn=maps)
        else:
            out = damsm_word_scores(words, cap_lens, regions, return_attn=maps, impl="triton", precision=precision)
        return out if maps else (out, None)
    query, context, mask = inputs
    legacy = check.variant == "legacy"
    if reference:
        return word_attention_ref(query, context, mask, return_attn=maps, legacy_mask=legacy)
    return word_attention(query, context, mask, return_attn=maps, legacy_mask=legacy, impl="triton", precision=precision)


def outputs_and_gradients(check: Check, inputs: tuple, seed: int, reference: bool, precision: str = "auto") -> dict:
    """{output name: tensor} of the fused op (``reference=False``) or of the float64 reference on the same
    input values: the main output, then (except for "maps", which are not differentiable) the gradients
    for a random upstream gradient rounded as the fused op returns it (fp32 scores; F_attn's context in
    the inputs' dtype), so both sides see the same values."""
    leaves = (0, 2) if check.op == "damsm" else (0, 1)
    args = list(inputs)
    for i in leaves:
        args[i] = inputs[i].detach().to(torch.float64 if reference else inputs[i].dtype).requires_grad_()
    out, maps = _call(check, tuple(args), reference, precision)
    names = check.outputs
    if check.variant == "maps":
        return {names[0]: out.detach(), "attn": maps.detach()}
    gen = torch.Generator().manual_seed(seed + 1)
    returned = torch.float32 if check.op == "damsm" else DTYPES[check.dtype]
    grad = torch.randn(out.shape, generator=gen).to(returned).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, [args[i] for i in leaves], grad)
    return {names[0]: out.detach(), **{name: g.detach() for name, g in zip(names[1:], grads)}}


def compare_with_float64(check: Check, device, seed: int, precision: str = "auto") -> dict:
    """{output name: (relative error or None, problem)} of the fused op against float64 on fresh inputs;
    a problem (shape, non-finite values) is a failure whatever the error. Every output buffer starts as
    NaN, so an element a kernel leaves unwritten fails too."""
    inputs = check.inputs(device, seed)
    reference = outputs_and_gradients(check, inputs, seed, reference=True)
    previous = _runtime.POISON_OUTPUTS
    _runtime.POISON_OUTPUTS = True
    try:
        got = outputs_and_gradients(check, inputs, seed, reference=False, precision=precision)
    finally:
        _runtime.POISON_OUTPUTS = previous
    found = {}
    for name in check.outputs:
        try:
            found[name] = (rel_err(got[name], reference[name]), "")
        except AssertionError as problem:
            found[name] = (None, str(problem))
    return found


# The checks of the compiled kernels at the model's sizes (``pytest -m gpu``, ``python -m benchmarks.gpu``)
# and at toy sizes for the interpreter: (op, sizes, layout variants); sizes as ``Check`` takes them.
CHECK_SIZES = {
    "model": [("damsm", (48, 48, 256, 18, 289), ("", "maps")), ("damsm", (20, 7, 256, 18, 289), ("",)),
              ("attention", (20, 32, 128, 18), ("", "channels_last", "maps")),
              ("attention", (20, 48, 64, 18), ("", "legacy"))],
    "small": [("damsm", (3, 2, 16, 5, 9), ("",)), ("damsm", (3, 3, 16, 5, 9), ("maps",)), ("attention", (2, 16, 4, 5), ("", "channels_last", "legacy"))],
}
FP32_PRECISIONS = ("auto", "ieee", "tf32")  # auto = bf16x3


def checks(sizes: str) -> list[tuple[Check, str]]:
    """(check, precision) of every correctness check at ``sizes`` ("model" or "small"), in order: plain
    layouts at every dtype (fp32 at every precision), then the other layouts at the default precision."""
    found = []
    for op, shape, variants in CHECK_SIZES[sizes]:
        for variant in variants:
            for dtype in DTYPES:
                for precision in (FP32_PRECISIONS if dtype == "fp32" and not variant else ("auto",)):
                    found.append((Check(op, shape, dtype, variant), precision))
    return found
