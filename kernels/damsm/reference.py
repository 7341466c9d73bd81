"""DAMSM word-level matching score in plain PyTorch: the specification in code (docs/design.md §2.1).

Vectorized over every (image i, caption j) pair at once, so it materializes (B_img, B_cap, T, N)
tensors: simple and exact, but O(B²·T·N) memory. The fused Triton kernels compute the same function
without those tensors; ``damsm_word_scores_ref_backward`` is the analytic gradient they implement.

Both functions take validated inputs (``attngan_fast.kernels.damsm_word_scores`` validates): ``regions`` already
flattened to (B_img, D, N), ``cap_lens`` an integer tensor on the same device.
"""

from __future__ import annotations

import torch

from .._runtime import compute_dtype

COS_EPS = 1e-8


def _valid_words(cap_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B_cap, T) bool, True for the first cap_lens[j] words of caption j."""
    return torch.arange(max_len, device=cap_lens.device)[None, :] < cap_lens[:, None]


def _pair_attention(e, v, valid, gamma1):
    """Steps 1-4 of §2.1 for every pair.

    e: (B_cap, D, T) with padding words zeroed; v: (B_img, D, N); valid: (B_cap, T).
    Returns s_bar (word softmax) and alpha (region softmax), both (B_img, B_cap, T, N), and the
    region-context vectors c: (B_img, B_cap, T, D).
    """
    s = torch.einsum("jdt,idn->ijtn", e, v)
    s = s.masked_fill(~valid[None, :, :, None], float("-inf"))
    s_bar = torch.softmax(s, dim=2)  # over the caption's words, per region (Eq. 8)
    alpha = torch.softmax(gamma1 * s_bar, dim=3)  # over regions, per word (Eq. 9)
    c = torch.einsum("ijtn,idn->ijtd", alpha, v)
    return s_bar, alpha, c


def _pair_cosine(c, e, valid, gamma2):
    """Steps 5-6 of §2.1. c: (B_img, B_cap, T, D); e: (B_cap, D, T).

    Returns R (B_img, B_cap) and the pieces the backward needs.
    """
    et = e.transpose(1, 2)[None]  # (1, B_cap, T, D)
    num = (c * et).sum(-1)
    c_norm = torch.linalg.vector_norm(c, dim=-1)
    e_norm = torch.linalg.vector_norm(et, dim=-1)
    prod = c_norm * e_norm
    den = prod.clamp(min=COS_EPS)
    cos = num / den
    logits = (gamma2 * cos).masked_fill(~valid[None], float("-inf"))
    scores = torch.logsumexp(logits, dim=2)
    return scores, dict(cos=cos, den=den, prod=prod, c_norm=c_norm, e_norm=e_norm, logits=logits)


def _prepare(words, cap_lens, regions):
    dtype = compute_dtype(words, regions)
    valid = _valid_words(cap_lens, words.shape[2])
    # Padding words never take part: zeroing them also keeps garbage (even NaN) out of every sum.
    e = words.to(dtype).masked_fill(~valid[:, None, :], 0.0)
    return e, regions.to(dtype), valid


def damsm_word_scores_ref(
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    return_attn: bool = False,
):
    """Word-level matching score R for every (image, caption) pair, differentiable by autograd.

    words: (B_cap, D, T) word features, caption j valid for t < cap_lens[j]
    cap_lens: (B_cap,) integer lengths in [1, T]
    regions: (B_img, D, N) region features
    Returns R: (B_img, B_cap), float32 (float64 for float64 inputs), in the released form
    ``R = log Σ_t exp(γ2·cos_t)``; with ``return_attn`` also the matching pairs' region attention
    alpha: (B, T, N) (needs B_img == B_cap; padding words are zero; not differentiable).
    """
    with torch.autocast(device_type=words.device.type, enabled=False):
        e, v, valid = _prepare(words, cap_lens, regions)
        s_bar, alpha, c = _pair_attention(e, v, valid, gamma1)
        scores, _ = _pair_cosine(c, e, valid, gamma2)
        if not return_attn:
            return scores
        idx = torch.arange(alpha.shape[0], device=alpha.device)
        attn = alpha[idx, idx].masked_fill(~valid[:, :, None], 0.0).detach()
        return scores, attn


def damsm_word_scores_ref_backward(
    grad_scores: torch.Tensor,
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
):
    """Analytic gradient of ``damsm_word_scores_ref`` (the math the Triton backward implements).

    grad_scores: (B_img, B_cap). Returns (d_words (B_cap, D, T), d_regions (B_img, D, N)) in the
    inputs' dtypes; padding words get exactly zero gradient.
    """
    with torch.autocast(device_type=words.device.type, enabled=False):
        e, v, valid = _prepare(words, cap_lens, regions)
        s_bar, alpha, c = _pair_attention(e, v, valid, gamma1)
        _, k = _pair_cosine(c, e, valid, gamma2)
        g = grad_scores.to(e.dtype)

        # R = logsumexp_t(γ2·cos_t): dcos_t = g·γ2·w_t with w the softmax of the logits (0 on padding).
        dcos = g[..., None] * gamma2 * torch.softmax(k["logits"], dim=2)
        # cos = num / max(|c||e|, eps): below eps the denominator is a constant.
        big = k["prod"] >= COS_EPS
        safe_c2 = torch.where(big, k["c_norm"] ** 2, 1.0)
        safe_e2 = torch.where(big, k["e_norm"] ** 2, 1.0)
        coef = dcos / k["den"]
        coef_c = torch.where(big, dcos * k["cos"] / safe_c2, 0.0)
        coef_e = torch.where(big, dcos * k["cos"] / safe_e2, 0.0)
        et = e.transpose(1, 2)[None]
        d_c = coef[..., None] * et - coef_c[..., None] * c  # (B_img, B_cap, T, D)
        d_e_direct = coef[..., None] * c - coef_e[..., None] * et

        # c_t = Σ_r α[t,r] v_r
        d_alpha = torch.einsum("ijtd,idn->ijtn", d_c, v)
        # Σ_r α[t,r]·dα[t,r] = dc_t · c_t, so the region-softmax backward needs no extra reduction over r.
        row_dot = (d_c * c).sum(-1, keepdim=True)
        d_sbar = gamma1 * alpha * (d_alpha - row_dot)
        d_s = s_bar * (d_sbar - (s_bar * d_sbar).sum(dim=2, keepdim=True))

        d_regions = torch.einsum("ijtd,ijtn->idn", d_c, alpha) + torch.einsum("jdt,ijtn->idn", e, d_s)
        d_words = torch.einsum("ijtn,idn->jdt", d_s, v) + d_e_direct.sum(0).transpose(1, 2)
        d_words = d_words.masked_fill(~valid[:, None, :], 0.0)
    return d_words.to(words.dtype), d_regions.to(regions.dtype)
