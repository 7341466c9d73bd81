"""Fused Triton kernels for the DAMSM word-level score (DESIGN.md §2.1): forward and backward.

Layout of the work: one program per (image i, caption j) pair in the forward; the backward has one
kernel per gradient so that every reduction stays inside a program (deterministic, no atomics):
``d_words`` loops over images for a caption, ``d_regions`` loops over captions for an image. The
pair's (T, N) similarity never leaves registers: it is recomputed tile by tile over the regions.
Extra memory: the (B_img, B_cap) scores, and in the backward the partial sums of each gradient, one
copy per split of its reduction loop (``_split_for``: enough programs for two per SM). For d_regions
that is about 2·SMs·D·N floats whatever the batch (~85 MB on a 132-SM H200 at D = 256, N = 289),
plus a (T, D) scratch row per program. Nothing is O(B_img·B_cap·T·N), as in the reference; but at
small batches (B = 20: ~8 MB per pair-map tensor) the reference's few pair maps can take less than
these partial sums. They buy determinism (no atomics) with a full GPU.

Per pair, with e = caption j's words (T, D) and v = image i's regions (D, N):
  pass A (over region tiles):  s = e·v, s̄ = softmax_t(s), u = exp(γ1·s̄), z += Σ_r u, c += u·vᵀ
  then c /= z, cos_t, R = logsumexp_t(γ2·cos_t)
  backward pass B (over region tiles): recompute s, s̄, α = u/z, then dα, ds̄, ds and their products
  with v (d_words) or with e and dc (d_regions).

Why the products over D run in chunks of BLOCK_K: a whole (T, D) operand of a D-long product held in
registers (32 x 256 fp32 at the real size) made the compiled kernels spill kilobytes per thread with
fp32 (``ieee``) dots, and their shared memory outgrew ~100 KB GPUs (``python -m
benchmarks.kernel_resources``). Products whose contraction runs over D (s = e·v, dα = dc·v) and the
d_regions output dv = dcᵀ·α + eᵀ·ds are therefore taken BLOCK_K rows of D at a time from memory (L1/L2
resident: a caption is 18 KB); only the accumulators c (pass A) and d_words stay whole. The backward
kernels keep dc in a per-program scratch row for that purpose.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._runtime import alloc_output, kernel_is_interpreted, next_block
from .._tuning import LaunchConfig, TunedKernel

COS_EPS = tl.constexpr(1e-8)


@triton.jit
def _load_caption(words_ptr, j, cap_len, D, stride_wb, stride_wd, stride_wt, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Caption j's words as a (BLOCK_T, BLOCK_D) fp32 tile; padding words load as zero."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_valid = offs_t < cap_len
    ptrs = words_ptr + j * stride_wb + offs_t[:, None] * stride_wt + offs_d[None, :] * stride_wd
    e = tl.load(ptrs, mask=t_valid[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    return e, t_valid


@triton.jit
def _load_words_chunk(words_ptr, j, cap_len, offs_k, D, stride_wb, stride_wd, stride_wt, BLOCK_T: tl.constexpr):
    """Features offs_k (BLOCK_K,) of caption j's words, (BLOCK_T, BLOCK_K) fp32; padding loads zero."""
    offs_t = tl.arange(0, BLOCK_T)
    ptrs = words_ptr + j * stride_wb + offs_t[:, None] * stride_wt + offs_k[None, :] * stride_wd
    return tl.load(ptrs, mask=(offs_t[:, None] < cap_len) & (offs_k[None, :] < D), other=0.0).to(tl.float32)


@triton.jit
def _load_regions(regions_ptr, i, offs_d, n0, N, D, stride_rb, stride_rd, stride_rn, BLOCK_N: tl.constexpr):
    """Features offs_d of image i's regions n0 .. n0+BLOCK_N, (len(offs_d), BLOCK_N) fp32, and which
    regions exist; out-of-range loads zero."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    ptrs = regions_ptr + i * stride_rb + offs_d[:, None] * stride_rd + offs_n[None, :] * stride_rn
    v = tl.load(ptrs, mask=(offs_d[:, None] < D) & n_valid[None, :], other=0.0).to(tl.float32)
    return v, n_valid


@triton.jit
def _load_scratch(scratch, offs_k, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Columns offs_k of this program's (BLOCK_T, BLOCK_D) scratch row (masked to D, so a BLOCK_K
    wider than BLOCK_D is only wasteful, never wrong)."""
    offs_t = tl.arange(0, BLOCK_T)
    return tl.load(scratch + offs_t[:, None] * BLOCK_D + offs_k[None, :], mask=offs_k[None, :] < D, other=0.0)


@triton.jit
def _similarity(words_ptr, j, cap_len, regions_ptr, i, n0, N, D,
                stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """s = e·v on one region tile, (BLOCK_T, BLOCK_N), contracted over D in chunks of BLOCK_K."""
    s = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        e = _load_words_chunk(words_ptr, j, cap_len, offs_k, D, stride_wb, stride_wd, stride_wt, BLOCK_T)
        v, _ = _load_regions(regions_ptr, i, offs_k, n0, N, D, stride_rb, stride_rd, stride_rn, BLOCK_N)
        s += tl.dot(e, v, input_precision=PRECISION)
    return s


@triton.jit
def _similarity_and_d_alpha(words_ptr, j, cap_len, regions_ptr, i, n0, N, D, scratch,
                            stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                            BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """s = e·v and dα = dc·v on one region tile (dc from the scratch row), sharing each chunk of v."""
    s = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    d_alpha = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        v, _ = _load_regions(regions_ptr, i, offs_k, n0, N, D, stride_rb, stride_rd, stride_rn, BLOCK_N)
        e = _load_words_chunk(words_ptr, j, cap_len, offs_k, D, stride_wb, stride_wd, stride_wt, BLOCK_T)
        s += tl.dot(e, v, input_precision=PRECISION)
        d_alpha += tl.dot(_load_scratch(scratch, offs_k, D, BLOCK_T, BLOCK_D), v, input_precision=PRECISION)
    return s, d_alpha


@triton.jit
def _word_softmax(s, t_valid):
    """Softmax over the caption's words (axis 0) for every region column of s: (BLOCK_T, BLOCK_N)."""
    s = tl.where(t_valid[:, None], s, float("-inf"))
    m = tl.max(s, axis=0)  # finite: every caption has at least one word
    p = tl.exp(s - m[None, :])
    return p / tl.sum(p, axis=0)[None, :]


@triton.jit
def _region_weights(s_bar, n_valid, gamma1):
    # s̄ ∈ [0, 1], so exp(γ1·s̄) ∈ [1, e^γ1]: the region softmax needs no running max (γ1 <= 80).
    return tl.where(n_valid[None, :], tl.exp(gamma1 * s_bar), 0.0)


@triton.jit
def _pair_context(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1,
                  stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                  BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Pass A: region-context vectors c (BLOCK_T, BLOCK_D) and region-softmax sums z (BLOCK_T,)."""
    offs_d = tl.arange(0, BLOCK_D)
    c = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    z = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        s = _similarity(words_ptr, j, cap_len, regions_ptr, i, n0, N, D, stride_wb, stride_wd, stride_wt,
                        stride_rb, stride_rd, stride_rn, BLOCK_T, BLOCK_K, BLOCK_N, PRECISION)
        v, n_valid = _load_regions(regions_ptr, i, offs_d, n0, N, D, stride_rb, stride_rd, stride_rn, BLOCK_N)
        u = _region_weights(_word_softmax(s, t_valid), n_valid, gamma1)
        z += tl.sum(u, axis=1)
        c += tl.dot(u, tl.trans(v), input_precision=PRECISION)
    return c / z[:, None], z


@triton.jit
def _pair_cosine(c, e, t_valid, gamma2):
    """Steps 5-6: the pair's score R and, for the backward, cos_t, the softmax weights w_t of the
    log-sum-exp, the clamped denominator and the two norms (all (BLOCK_T,))."""
    num = tl.sum(c * e, axis=1)
    c_norm = tl.sqrt(tl.sum(c * c, axis=1))
    e_norm = tl.sqrt(tl.sum(e * e, axis=1))
    prod = c_norm * e_norm
    den = tl.maximum(prod, COS_EPS)
    cos = num / den
    logits = tl.where(t_valid, gamma2 * cos, float("-inf"))
    m = tl.max(logits, axis=0)
    w = tl.exp(logits - m)
    w_sum = tl.sum(w, axis=0)
    return m + tl.log(w_sum), cos, w / w_sum, prod, den, c_norm, e_norm


@triton.jit
def _pair_backward_setup(c, e, t_valid, g, gamma2):
    """Gradient of the pair's score g·∂R w.r.t. c (BLOCK_T, BLOCK_D), the direct gradient to the words
    through the cosine, and Σ_r α·dα = dc·c per word (BLOCK_T,)."""
    _, cos, w, prod, den, c_norm, e_norm = _pair_cosine(c, e, t_valid, gamma2)
    dcos = g * gamma2 * w  # zero on padding words
    big = prod >= COS_EPS  # below eps the clamped denominator is a constant
    coef = dcos / den
    coef_c = tl.where(big, dcos * cos / tl.where(big, c_norm * c_norm, 1.0), 0.0)
    coef_e = tl.where(big, dcos * cos / tl.where(big, e_norm * e_norm, 1.0), 0.0)
    dc = coef[:, None] * e - coef_c[:, None] * c
    de = coef[:, None] * c - coef_e[:, None] * e
    row_dot = tl.sum(dc * c, axis=1)
    return dc, de, row_dot


@triton.jit
def _pair_gradients(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1, gamma2, g, scratch,
                    stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Pass A and the cosine backward of pair (i, j): stores dc in this program's scratch row and
    returns the direct word gradient de (BLOCK_T, BLOCK_D), z and dc·c (both (BLOCK_T,))."""
    c, z = _pair_context(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1, stride_wb, stride_wd, stride_wt,
                         stride_rb, stride_rd, stride_rn, BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
    e, _ = _load_caption(words_ptr, j, cap_len, D, stride_wb, stride_wd, stride_wt, BLOCK_T, BLOCK_D)
    dc, de, row_dot = _pair_backward_setup(c, e, t_valid, g, gamma2)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(scratch + offs_t[:, None] * BLOCK_D + offs_d[None, :], dc)
    # The region loop reads dc back in chunks laid out differently across threads: make the stores
    # visible to the whole program first.
    tl.debug_barrier()
    return de, z, row_dot


@triton.jit
def _tile_gradients(s, d_alpha, t_valid, n_valid, z, row_dot, gamma1):
    """Pass B on one region tile: the region attention α and the similarity gradient ds, both (BLOCK_T, BLOCK_N)."""
    s_bar = _word_softmax(s, t_valid)
    alpha = _region_weights(s_bar, n_valid, gamma1) / z[:, None]
    d_sbar = gamma1 * alpha * (d_alpha - row_dot[:, None])
    ds = s_bar * (d_sbar - tl.sum(s_bar * d_sbar, axis=0)[None, :])
    return alpha, ds


@triton.jit
def _damsm_fwd_kernel(
    words_ptr, cap_lens_ptr, regions_ptr, scores_ptr, attn_ptr,
    T, D, N, gamma1, gamma2,
    stride_wb, stride_wd, stride_wt,
    stride_rb, stride_rd, stride_rn,
    stride_si, stride_sj,
    stride_ab, stride_at, stride_an,
    RETURN_ATTN: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    cap_len = tl.load(cap_lens_ptr + j)
    t_valid = tl.arange(0, BLOCK_T) < cap_len
    c, z = _pair_context(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1, stride_wb, stride_wd, stride_wt,
                         stride_rb, stride_rd, stride_rn, BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
    e, _ = _load_caption(words_ptr, j, cap_len, D, stride_wb, stride_wd, stride_wt, BLOCK_T, BLOCK_D)
    score, _, _, _, _, _, _ = _pair_cosine(c, e, t_valid, gamma2)
    tl.store(scores_ptr + i * stride_si + j * stride_sj, score)

    if RETURN_ATTN:
        if i == j:
            # The matching pair's maps need z, known only after pass A: recompute the tiles once more
            # (B programs out of B², cheaper than keeping (T, N) per pair).
            offs_t = tl.arange(0, BLOCK_T)
            for n0 in range(0, N, BLOCK_N):
                s = _similarity(words_ptr, j, cap_len, regions_ptr, i, n0, N, D, stride_wb, stride_wd, stride_wt,
                                stride_rb, stride_rd, stride_rn, BLOCK_T, BLOCK_K, BLOCK_N, PRECISION)
                offs_n = n0 + tl.arange(0, BLOCK_N)
                n_valid = offs_n < N
                alpha = tl.where(t_valid[:, None], _region_weights(_word_softmax(s, t_valid), n_valid, gamma1) / z[:, None], 0.0)
                ptrs = attn_ptr + i * stride_ab + offs_t[:, None] * stride_at + offs_n[None, :] * stride_an
                tl.store(ptrs, alpha, mask=(offs_t[:, None] < T) & n_valid[None, :])


@triton.jit
def _damsm_bwd_words_kernel(
    grad_ptr, words_ptr, cap_lens_ptr, regions_ptr, partial_ptr, scratch_ptr,
    B_img, T, D, N, gamma1, gamma2, SPLIT,
    stride_gi, stride_gj,
    stride_wb, stride_wd, stride_wt,
    stride_rb, stride_rd, stride_rn,
    stride_ps, stride_pb, stride_pd, stride_pt,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """d_words for caption j, summed over images i ≡ split (mod SPLIT); partial sums over splits."""
    j = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    scratch = scratch_ptr + (j * SPLIT + split) * (BLOCK_T * BLOCK_D)
    cap_len = tl.load(cap_lens_ptr + j)
    t_valid = tl.arange(0, BLOCK_T) < cap_len
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for i in range(split, B_img, SPLIT):
        g = tl.load(grad_ptr + i * stride_gi + j * stride_gj).to(tl.float32)
        de, z, row_dot = _pair_gradients(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1, gamma2, g, scratch,
                                         stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                                         BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
        acc += de
        for n0 in range(0, N, BLOCK_N):
            s, d_alpha = _similarity_and_d_alpha(words_ptr, j, cap_len, regions_ptr, i, n0, N, D, scratch,
                                                 stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                                                 BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
            v, n_valid = _load_regions(regions_ptr, i, offs_d, n0, N, D, stride_rb, stride_rd, stride_rn, BLOCK_N)
            _, ds = _tile_gradients(s, d_alpha, t_valid, n_valid, z, row_dot, gamma1)
            acc += tl.dot(ds, tl.trans(v), input_precision=PRECISION)
        # The next image overwrites the scratch row: every thread must be done reading it.
        tl.debug_barrier()
    offs_t = tl.arange(0, BLOCK_T)
    ptrs = partial_ptr + split * stride_ps + j * stride_pb + offs_t[:, None] * stride_pt + offs_d[None, :] * stride_pd
    # Rows of padding words are exactly zero (their ds, dc and direct terms vanish): store all T rows.
    tl.store(ptrs, acc, mask=(offs_t[:, None] < T) & (offs_d[None, :] < D))


@triton.jit
def _damsm_bwd_regions_kernel(
    grad_ptr, words_ptr, cap_lens_ptr, regions_ptr, partial_ptr, scratch_ptr,
    B_cap, T, D, N, gamma1, gamma2, SPLIT,
    stride_gi, stride_gj,
    stride_wb, stride_wd, stride_wt,
    stride_rb, stride_rd, stride_rn,
    stride_ps, stride_pb, stride_pd, stride_pn,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """d_regions for image i, summed over captions j ≡ split (mod SPLIT) into a partial buffer that this
    program alone owns (read-modify-write per tile, no atomics)."""
    i = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    scratch = scratch_ptr + (i * SPLIT + split) * (BLOCK_T * BLOCK_D)
    for j in range(split, B_cap, SPLIT):
        cap_len = tl.load(cap_lens_ptr + j)
        t_valid = tl.arange(0, BLOCK_T) < cap_len
        g = tl.load(grad_ptr + i * stride_gi + j * stride_gj).to(tl.float32)
        _, z, row_dot = _pair_gradients(words_ptr, j, cap_len, t_valid, regions_ptr, i, N, D, gamma1, gamma2, g, scratch,
                                        stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                                        BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
        # Whether this is a later caption of this program, as a row (the interpreter mistypes a scalar
        # condition and-ed into a block mask; a block compares correctly on both paths).
        later = tl.full((1, BLOCK_N), j, tl.int64) != split
        for n0 in range(0, N, BLOCK_N):
            s, d_alpha = _similarity_and_d_alpha(words_ptr, j, cap_len, regions_ptr, i, n0, N, D, scratch,
                                                 stride_wb, stride_wd, stride_wt, stride_rb, stride_rd, stride_rn,
                                                 BLOCK_T, BLOCK_D, BLOCK_K, BLOCK_N, PRECISION)
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_valid = offs_n < N
            alpha, ds = _tile_gradients(s, d_alpha, t_valid, n_valid, z, row_dot, gamma1)
            # dv = dcᵀ·α + eᵀ·ds, BLOCK_K features at a time (a contraction over the words only).
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                dc = _load_scratch(scratch, offs_k, D, BLOCK_T, BLOCK_D)
                e = _load_words_chunk(words_ptr, j, cap_len, offs_k, D, stride_wb, stride_wd, stride_wt, BLOCK_T)
                dv = tl.dot(tl.trans(dc), alpha, input_precision=PRECISION)
                dv += tl.dot(tl.trans(e), ds, input_precision=PRECISION)
                ptrs = partial_ptr + split * stride_ps + i * stride_pb + offs_k[:, None] * stride_pd + offs_n[None, :] * stride_pn
                tile_mask = (offs_k[:, None] < D) & n_valid[None, :]
                # The first caption stores, later ones add: the buffer needs no zeroing, so each
                # autotuning trial on it starts clean. (The launcher makes SPLIT <= B_cap: every
                # program has a caption.)
                previous = tl.load(ptrs, mask=tile_mask & later, other=0.0)
                tl.store(ptrs, previous + dv, mask=tile_mask)
        # The next caption reads these tiles back and overwrites the scratch row; the barrier makes
        # this program's global stores visible to all of its threads and its scratch reads finished,
        # whatever register layout the compiler picks for the loads.
        tl.debug_barrier()


# --------------------------------------------------------------------------------------------------
# launchers

INTERPRETED = kernel_is_interpreted(_damsm_fwd_kernel)

# (BLOCK_N, BLOCK_K, warps, stages): the region tile and the chunk of D a product takes at a time.
# The whole-D accumulators (c, d_words: 32 x 256 fp32 at the real size) want 8-16 warps to stay in
# registers; small region tiles and chunks suit GPUs with ~100 KB of shared memory.
CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_N=n, BLOCK_K=k) for n, k, w, s in (
    (16, 32, 4, 2), (32, 32, 4, 2), (16, 32, 8, 2), (32, 32, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2),
    (32, 32, 8, 3), (32, 32, 16, 2), (64, 64, 16, 2))]


def _prune(candidates, args):
    """Region tiles wider than the (power-of-two-covered) region axis, and chunks wider than the
    feature axis, only repeat a smaller candidate."""
    widest_n, widest_k = next_block(args["N"]), next_block(args["D"])
    kept = [c for c in candidates if dict(c.meta)["BLOCK_N"] <= widest_n and dict(c.meta)["BLOCK_K"] <= widest_k]
    return kept or candidates[:1]


_FWD = TunedKernel(_damsm_fwd_kernel, CANDIDATES, key=["T", "D", "N", "PRECISION", "RETURN_ATTN"],
                   prune=_prune, interpreted=INTERPRETED)
_BWD_WORDS = TunedKernel(_damsm_bwd_words_kernel, CANDIDATES, key=["T", "D", "N", "PRECISION"],
                         prune=_prune, interpreted=INTERPRETED)
_BWD_REGIONS = TunedKernel(_damsm_bwd_regions_kernel, CANDIDATES, key=["T", "D", "N", "PRECISION"],
                           prune=_prune, interpreted=INTERPRETED)


def _whole_tiles(T: int, D: int) -> dict:
    """The caption tile, never tuned: the whole-D accumulators and the scratch rows have this shape."""
    return dict(BLOCK_T=next_block(T), BLOCK_D=next_block(D))


def default_config(T: int, D: int, N: int) -> LaunchConfig:
    """What runs without autotuning (interpreter, ``ATTNGAN_FAST_AUTOTUNE=0``)."""
    block_d = next_block(D)
    block_n = min(32 if block_d <= 256 else 16, next_block(N))
    return LaunchConfig.of(num_warps=4 if block_d <= 64 else 8, num_stages=2, BLOCK_N=block_n, BLOCK_K=min(32, block_d))


def _scratch(programs: int, T: int, D: int, device: torch.device) -> torch.Tensor:
    """One (BLOCK_T, BLOCK_D) fp32 row per backward program, where it keeps dc of its current pair
    (fully written before it is read, so NaN-poisoning in tests is harmless)."""
    tiles = _whole_tiles(T, D)
    return alloc_output((programs, tiles["BLOCK_T"], tiles["BLOCK_D"]), device, torch.float32)


def _split_for(batch_programs: int, loop_len: int, device: torch.device) -> int:
    """How many programs share one reduction loop: enough programs to fill the GPU, deterministic
    partial sums added afterwards. Under the interpreter 2 (when possible) so that path is tested.
    Never more than ``loop_len``: every program must own at least one loop step."""
    if device.type != "cuda":
        return min(2, loop_len)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(loop_len, math.ceil(2 * sms / max(batch_programs, 1))))


def _check_fused_dtypes(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"the fused DAMSM kernels take fp16, bf16 or fp32 features, got {t.dtype}")


def damsm_forward(words, cap_lens, regions, gamma1: float, gamma2: float, return_attn: bool, precision: str,
                  config: LaunchConfig | None = None):
    """words (B_cap, D, T), cap_lens (B_cap,), regions (B_img, D, N) -> scores (B_img, B_cap) fp32 and
    attn (B, T, N) fp32 (empty unless ``return_attn``). ``config`` forces a launch configuration."""
    _check_fused_dtypes(words, regions)
    B_cap, D, T = words.shape
    B_img, _, N = regions.shape
    scores = alloc_output((B_img, B_cap), words.device, torch.float32)
    if return_attn:
        attn = alloc_output((B_img, T, N), words.device, torch.float32)
        attn_strides = attn.stride()
    else:
        attn = torch.empty(0, device=words.device, dtype=torch.float32)
        attn_strides = (0, 0, 0)
    _FWD.launch(
        (B_img, B_cap),
        words, cap_lens, regions, scores, attn,
        T, D, N, float(gamma1), float(gamma2),
        *words.stride(), *regions.stride(), *scores.stride(), *attn_strides,
        default=default_config(T, D, N), config=config,
        RETURN_ATTN=return_attn, PRECISION=precision, **_whole_tiles(T, D),
    )
    return scores, attn


def damsm_backward(grad_scores, words, cap_lens, regions, gamma1: float, gamma2: float, precision: str,
                   need_words: bool = True, need_regions: bool = True,
                   split_words: int | None = None, split_regions: int | None = None,
                   words_config: LaunchConfig | None = None, regions_config: LaunchConfig | None = None):
    """Gradients (d_words (B_cap, D, T), d_regions (B_img, D, N)) in the inputs' dtypes; one that is
    not needed is skipped and returned empty (GAN training needs only d_regions). The two kernels'
    launch configurations can be forced with ``words_config`` / ``regions_config``."""
    _check_fused_dtypes(words, regions)
    B_cap, D, T = words.shape
    B_img, _, N = regions.shape
    common = dict(default=default_config(T, D, N), PRECISION=precision, **_whole_tiles(T, D))

    d_words = words.new_empty((0,))
    d_regions = regions.new_empty((0,))
    if need_words:
        sw = min(split_words or _split_for(B_cap, B_img, words.device), B_img)
        partial_w = alloc_output((sw, B_cap, D, T), words.device, torch.float32)
        _BWD_WORDS.launch(
            (B_cap, sw),
            grad_scores, words, cap_lens, regions, partial_w, _scratch(B_cap * sw, T, D, words.device),
            B_img, T, D, N, float(gamma1), float(gamma2), sw,
            *grad_scores.stride(), *words.stride(), *regions.stride(), *partial_w.stride(),
            config=words_config, **common,
        )
        d_words = partial_w.sum(0).to(words.dtype)
    if need_regions:
        sr = min(split_regions or _split_for(B_img, B_cap, words.device), B_cap)
        partial_r = alloc_output((sr, B_img, D, N), words.device, torch.float32)
        _BWD_REGIONS.launch(
            (B_img, sr),
            grad_scores, words, cap_lens, regions, partial_r, _scratch(B_img * sr, T, D, words.device),
            B_cap, T, D, N, float(gamma1), float(gamma2), sr,
            *grad_scores.stride(), *words.stride(), *regions.stride(), *partial_r.stride(),
            config=regions_config, **common,
        )
        d_regions = partial_r.sum(0).to(regions.dtype)
    return d_words, d_regions


def chosen_configs() -> dict:
    """The launch configuration each kernel last ran with (after autotuning, the tuned one)."""
    return {name: (str(k.last_config) if k.last_config else None) for name, k in
            (("damsm_fwd", _FWD), ("damsm_bwd_words", _BWD_WORDS), ("damsm_bwd_regions", _BWD_REGIONS))}
