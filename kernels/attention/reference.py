"""The generator's word attention F_attn in plain PyTorch: the specification in code (docs/design.md §2.3).

For every pixel q of sample b: β[q, t] = softmax_t(h_q · e'_t) over that sample's valid words and
c_q = Σ_t β[q, t] e'_t. It materializes the (B, HW, T) attention; the fused kernels do not.

``legacy_mask=True`` reproduces the released code, which expanded the (B, T) mask with
``mask.repeat(HW, 1)``: row ``b·HW + q`` of the flattened scores took the mask of sample
``(b·HW + q) mod B``. In that mode padded words are not zeroed either (another sample's rows may
attend to them), exactly as released.

Both functions take validated inputs (``attngan_fast.kernels.word_attention`` validates).
"""

from __future__ import annotations

import torch

from .._runtime import compute_dtype


def score_mask(word_mask, batch: int, pixels: int, legacy_mask: bool):
    """The mask applied to the (B, HW, T) scores, broadcastable; None when nothing is masked."""
    if word_mask is None:
        return None
    if legacy_mask:
        rows = torch.arange(batch * pixels, device=word_mask.device) % batch
        return word_mask[rows].view(batch, pixels, -1)
    return word_mask[:, None, :]


def own_words(context, word_mask, legacy_mask: bool):
    """context (B, C, T) with each sample's padding words zeroed (legacy mode: as it is, since other
    samples' rows may attend to them). Zeroed, garbage there (even NaN, which a zero attention weight
    would keep: 0 · NaN = NaN) cannot leak in, and the padding words' gradient is 0."""
    if word_mask is None or legacy_mask:
        return context
    return context.masked_fill(word_mask[:, None, :], 0.0)


def _prepare(query, context, word_mask, legacy_mask):
    dtype = compute_dtype(query, context)
    q = query.to(dtype).flatten(2)  # (B, C, HW)
    k = own_words(context.to(dtype), word_mask, legacy_mask)  # (B, C, T)
    scores = torch.einsum("bcq,bct->bqt", q, k)
    mask = score_mask(word_mask, q.shape[0], q.shape[2], legacy_mask)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    beta = torch.softmax(scores, dim=2)  # (B, HW, T)
    return q, k, beta


def word_attention_ref(
    query: torch.Tensor,
    context: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    return_attn: bool = False,
    legacy_mask: bool = False,
):
    """query: (B, C, H, W) image features; context: (B, C, T) projected words; word_mask: (B, T) bool,
    True = padding. Returns (ctx (B, C, H, W) in the promoted input dtype, attn (B, T, H, W) float32
    (float64 for float64 inputs) or None). ``attn`` is not differentiable."""
    B, C, H, W = query.shape
    out_dtype = torch.promote_types(query.dtype, context.dtype)
    with torch.autocast(device_type=query.device.type, enabled=False):
        _, k, beta = _prepare(query, context, word_mask, legacy_mask)
        ctx = torch.einsum("bqt,bct->bcq", beta, k).reshape(B, C, H, W).to(out_dtype)
    return ctx, (_maps(beta, query.shape) if return_attn else None)


def _maps(beta, shape):
    """β (B, HW, T) as the maps (B, T, H, W), detached."""
    B, _, H, W = shape
    return beta.transpose(1, 2).reshape(B, -1, H, W).contiguous().detach()


def word_attention_maps(query, context, word_mask=None, legacy_mask: bool = False) -> torch.Tensor:
    """The attention maps β (B, T, H, W) alone, float32 (float64 for float64 inputs), not differentiable:
    for the paths whose kernels never form β (``sdpa``, ``flex``) when a caller asks for the maps."""
    with torch.no_grad(), torch.autocast(device_type=query.device.type, enabled=False):
        return _maps(_prepare(query, context, word_mask, legacy_mask)[2], query.shape)


def word_attention_ref_backward(
    grad_ctx: torch.Tensor,
    query: torch.Tensor,
    context: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    legacy_mask: bool = False,
):
    """Analytic gradient of ``word_attention_ref``'s ctx. grad_ctx: (B, C, H, W).
    Returns (d_query (B, C, H, W), d_context (B, C, T)) in the inputs' dtypes."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        q, k, beta = _prepare(query, context, word_mask, legacy_mask)
        g = grad_ctx.to(q.dtype).flatten(2)  # (B, C, HW)
        d_beta = torch.einsum("bcq,bct->bqt", g, k)
        d_scores = beta * (d_beta - (beta * d_beta).sum(dim=2, keepdim=True))
        d_query = torch.einsum("bqt,bct->bcq", d_scores, k).reshape(query.shape)
        d_context = torch.einsum("bcq,bqt->bct", g, beta) + torch.einsum("bcq,bqt->bct", q, d_scores)
        if word_mask is not None and not legacy_mask:
            d_context = d_context.masked_fill(word_mask[:, None, :], 0.0)
    return d_query.to(query.dtype), d_context.to(context.dtype)
