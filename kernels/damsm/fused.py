"""Fused Triton kernels for the DAMSM word-level score (docs/design.md §2.1): forward and backward.

How the work meets the tensor cores. Hopper's wgmma needs M >= 64 rows per warpgroup, and a caption
has T = 18 words, so no product is oriented with one caption's words on M. Instead:
- Captions are packed side by side, GROUP = BLOCK_W // T of them into BLOCK_W rows (64 rows hold 3
  captions of 18 words: 54 real words, where padding each caption to its own 32-wide tile would keep
  18 of 32). ``pack_caption_groups`` lays them out densely, features last, padding words zero.
- A program takes one image i and one caption group; the similarity of a region tile with the whole
  group is one product with the regions on M, sᵀ (BLOCK_N, BLOCK_W) = vᵀ (BLOCK_N, D) · E; the word
  softmax runs along each caption's columns of a row (segmented by caption).
- Products that build or consume per-word D-vectors have the group's words on M: c (BLOCK_W, D) +=
  uᵀ · vᵀ (the region tile staged once serves both products of every caption of the group), d_words
  (BLOCK_W, D) += dsᵀ · vᵀ; d_regions has the regions on M, dvᵀ (BLOCK_N, D) = u·(dc/z) + ds·Eᵀ.
- bf16/fp16 inputs of one dtype feed the MMA directly (fp32 accumulation; the kernels' own operands,
  u, ds and dc, are rounded to that dtype too, well inside the 2e-2 tolerance). fp32 inputs default
  to bf16 (hi, lo) pairs, three bf16 MMAs per product (``bf16x3``, ``attngan_fast.kernels._mma``): fp32 accuracy
  on the tensor cores; ``tf32`` and ``ieee`` (FMA only) are options.
- Region tiles are 128 rows on 8 warps: Triton gives all warps of a product whose result feeds
  another product to M, so a 64-row tile on 8 warps would be computed twice.

The backward needs each pair's context c before any region's gradient (dα = dc·v with dc from the
cosine of c): keeping c from the forward would cost O(B²·T·D) memory, so the backward recomputes it
once, in a kernel of its own (``_damsm_context_kernel``: pass A and the cosine backward, per image
and caption group), and a second kernel makes one more pass over the region tiles that gives both
gradients (``_damsm_grad_kernel``). Products per pair: 2 in the forward, 2 + 5 in the backward,
against 6 useful (``benchmarks.work``). The context kernel's output (dc/z, the direct word gradient,
dc·c/z: O(T·D) per pair) is kept for a chunk of images at a time, at most ``plan.CONTEXT_BYTES``, so it
never grows with the batch squared. The two gradients are reductions over different axes (d_regions
over captions, d_words over images); each program of the gradient kernel owns a slot of a partial
sum of each, summed afterwards, so the result is deterministic (no atomics); ``backward_splits``
chooses the programs to fill the GPU in as few waves as ``plan.PARTIAL_BYTES`` of partial sums allow. Extra
memory: that chunk, the partial sums S_k·B_img·N·D + S_m·B_cap·T·D floats and features-last copies
of the inputs; never anything of O(B²·T·N).

s̄ ∈ [0, 1] bounds the region softmax: u = exp(γ1·(s̄ − 1)) ∈ (0, 1] needs no running max and stays
inside fp16's range whatever γ1 (<= 80).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._runtime import alloc_output, kernel_is_interpreted
from .._runtime import device_capability as _capability
from .._mma import dot_operands as _dot_operands
from .._mma import mma, operand_parts, split_parts, torch_dtype
from .._tuning import LaunchConfig, TunedKernel
from . import plan

COS_EPS = tl.constexpr(1e-8)

@triton.jit
def _group_columns(cap_lens_ptr, group, B_cap, T: tl.constexpr, GROUP: tl.constexpr, BLOCK_W: tl.constexpr):
    """What each of the group's BLOCK_W words holds: its caption j (int64) and word t, whether it
    belongs to a caption of the batch, and ``slot``: the caption's place in the group for a real
    (unpadded) word, -1 for any other. One int vector carries both the segment and the mask: such
    per-word vectors cost 16 registers each in the tiles' layout."""
    w = tl.arange(0, BLOCK_W)
    k = w // T
    t = w - k * T
    j = group * GROUP + k
    in_group = (k < GROUP) & (j < B_cap)
    cap_len = tl.load(cap_lens_ptr + j, mask=in_group, other=0)
    return j.to(tl.int64), t, in_group, tl.where(in_group & (t < cap_len), k, -1)


@triton.jit
def _load_rows(base, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A dense (ROWS, BLOCK_D) block with rows BLOCK_D apart (the packed words, the context scratch),
    in fp32."""
    offs = tl.arange(0, ROWS)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    return tl.load(base + offs).to(tl.float32)


@triton.jit
def _load_columns(base, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The same dense block as ``_load_rows``, transposed as it is loaded: (BLOCK_D, ROWS), in the
    stored dtype. An operand wanted transposed is then staged once, not once per orientation."""
    offs = tl.arange(0, BLOCK_D)[:, None] + tl.arange(0, ROWS)[None, :] * BLOCK_D
    return tl.load(base + offs)


@triton.jit
def _load_region_tile(regions_ptr, lo_offset, i, n0, N, D, stride_rb, stride_rn, stride_rd,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
    """vᵀ: (BLOCK_N, BLOCK_D), image i's regions n0 .. n0 + BLOCK_N as rows, as MMA operands (hi, lo),
    and which of the regions exist. With SPLIT the launcher has split the regions into hi and lo
    parts, ``lo_offset`` elements apart: splitting a whole tile in registers here would spill."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    ptrs = regions_ptr + i * stride_rb + offs_n[:, None] * stride_rn + offs_d[None, :] * stride_rd
    mask = n_valid[:, None] & (offs_d[None, :] < D)
    hi = tl.load(ptrs, mask=mask, other=0.0).to(DOT_DTYPE)
    if SPLIT:
        lo = tl.load(ptrs + lo_offset, mask=mask, other=0.0).to(DOT_DTYPE)
    else:
        lo = hi
    return hi, lo, offs_n, n_valid


@triton.jit
def _segment_max(x, slot, GROUP: tl.constexpr):
    """Max of x (R, BLOCK_W) over each caption's words, broadcast back to them; -inf elsewhere."""
    out = tl.full(x.shape, float("-inf"), tl.float32)
    for caption in tl.static_range(GROUP):
        mine = (slot == caption)[None, :]
        out = tl.where(mine, tl.max(tl.where(mine, x, float("-inf")), axis=1)[:, None], out)
    return out


@triton.jit
def _segment_sum(x, slot, GROUP: tl.constexpr):
    """Sum of x (R, BLOCK_W) over each caption's words, broadcast back to them; 0 elsewhere."""
    out = tl.zeros(x.shape, tl.float32)
    for caption in tl.static_range(GROUP):
        mine = (slot == caption)[None, :]
        out = tl.where(mine, tl.sum(tl.where(mine, x, 0.0), axis=1)[:, None], out)
    return out


@triton.jit
def _word_softmax(s, slot, GROUP: tl.constexpr):
    """s̄ = softmax over each caption's real words of every region row of sᵀ (BLOCK_N, BLOCK_W); 0 on
    columns that are no word."""
    word = (slot >= 0)[None, :]
    s = tl.where(word, s, float("-inf"))
    p = tl.exp(s - tl.where(word, _segment_max(s, slot, GROUP), 0.0))  # finite: every caption has a word
    return p / tl.where(word, _segment_sum(p, slot, GROUP), 1.0)


@triton.jit
def _region_weights(s_bar, n_valid, slot, gamma1):
    # u = exp(γ1·(s̄ − 1)) = exp(γ1·s̄) / e^γ1: the same softmax over the regions, and s̄ ∈ [0, 1] puts
    # u in (0, 1], so the sum over regions needs no running max and fits fp16 for any γ1 <= 80.
    return tl.where(n_valid[:, None] & (slot >= 0)[None, :], tl.exp(gamma1 * (s_bar - 1.0)), 0.0)


@triton.jit
def _similarity(vt, vt_lo, e, e_lo, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """sᵀ = vᵀ·E: (BLOCK_N, BLOCK_W), the regions on the MMA's M axis, contracted over D; the words
    E (BLOCK_D, BLOCK_W) as ``_load_columns`` gives them."""
    acc = tl.zeros((vt.shape[0], e.shape[1]), dtype=tl.float32)
    return mma(vt, vt_lo, e, e_lo, acc, SPLIT, PRECISION)


@triton.jit
def _group_context(regions_ptr, lo_offset, i, et, et_lo, slot, N, D, gamma1, stride_rb, stride_rn, stride_rd,
                   GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """Pass A for image i and the group: the region-context vectors c (BLOCK_W, BLOCK_D), normalized,
    and the region-softmax sums z (BLOCK_W,) (1 on columns that are no word)."""
    c = tl.zeros((BLOCK_W, BLOCK_D), dtype=tl.float32)
    z = tl.zeros((BLOCK_W,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        vt, vt_lo, _, n_valid = _load_region_tile(regions_ptr, lo_offset, i, n0, N, D, stride_rb, stride_rn,
                                                  stride_rd, BLOCK_D, BLOCK_N, DOT_DTYPE, SPLIT)
        s_bar = _word_softmax(_similarity(vt, vt_lo, et, et_lo, SPLIT, PRECISION), slot, GROUP)
        u = _region_weights(s_bar, n_valid, slot, gamma1)
        z += tl.sum(u, axis=0)
        # c += uᵀ·vᵀ: the tile staged for the similarity serves this product too (64 words on M).
        u_hi, u_lo = operand_parts(tl.trans(u), DOT_DTYPE, SPLIT)
        c = mma(u_hi, u_lo, vt, vt_lo, c, SPLIT, PRECISION)
    z = tl.where(slot >= 0, z, 1.0)
    return c / z[:, None], z


@triton.jit
def _words_after_pass_a(words, z, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
    """The group's words (BLOCK_W, BLOCK_D) fp32 once more, for the cosine, from an address known only
    after pass A (0 is added: z >= 1), so that the compiler neither merges this load with the one
    before pass A nor keeps that one's registers (64 per thread) alive through the pass."""
    return _load_rows(words + (tl.min(z, axis=0) < 0).to(tl.int32), BLOCK_W, BLOCK_D)


@triton.jit
def _group_cosine(c, et, slot, gamma2, GROUP: tl.constexpr):
    """Steps 5-6 per word, from c and the words (BLOCK_W, BLOCK_D) fp32: each caption's score R
    (broadcast to its words), and for the backward cos, the log-sum-exp weights w, the clamped
    denominator and the two norms (all (BLOCK_W,))."""
    num = tl.sum(c * et, axis=1)
    c_norm = tl.sqrt(tl.sum(c * c, axis=1))
    e_norm = tl.sqrt(tl.sum(et * et, axis=1))
    prod = c_norm * e_norm
    den = tl.maximum(prod, COS_EPS)
    cos = num / den
    word = (slot >= 0)[None, :]
    logits = tl.where(word, gamma2 * cos[None, :], float("-inf"))
    m = tl.where(word, _segment_max(logits, slot, GROUP), 0.0)
    w = tl.exp(logits - m)
    safe_total = tl.where(word, _segment_sum(w, slot, GROUP), 1.0)
    score = tl.sum(m + tl.log(safe_total), axis=0)  # (1, W) -> (W,)
    weight = tl.sum(w / safe_total, axis=0)
    return score, cos, weight, prod, den, c_norm, e_norm


@triton.jit
def _cosine_backward(c, et, slot, g, gamma2, GROUP: tl.constexpr):
    """Gradient of Σ g_j·R_j with respect to c (BLOCK_W, BLOCK_D), the direct gradient to the words
    through the cosine (same shape), and Σ_r α·dα = dc·c per word (BLOCK_W,). Zero on non-words."""
    _, cos, w, prod, den, c_norm, e_norm = _group_cosine(c, et, slot, gamma2, GROUP)
    dcos = g * gamma2 * w
    big = prod >= COS_EPS  # below eps the clamped denominator is a constant
    coef = dcos / den
    coef_c = tl.where(big, dcos * cos / tl.where(big, c_norm * c_norm, 1.0), 0.0)
    coef_e = tl.where(big, dcos * cos / tl.where(big, e_norm * e_norm, 1.0), 0.0)
    dc = coef[:, None] * et - coef_c[:, None] * c
    de = coef[:, None] * c - coef_e[:, None] * et
    return dc, de, tl.sum(dc * c, axis=1)


@triton.jit
def _damsm_fwd_kernel(
    packed_ptr, cap_lens_ptr, regions_ptr, scores_ptr, attn_ptr,
    B_cap, D, N, gamma1, gamma2, lo_offset,
    stride_rb, stride_rn, stride_rd,
    stride_si, stride_sj,
    stride_ab, stride_at, stride_an,
    T: tl.constexpr, RETURN_ATTN: tl.constexpr, GROUP: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (i, group): R[i, j] for the group's captions j. packed (groups, BLOCK_W, BLOCK_D),
    regions (B_img, N, D), features last."""
    i = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    j, t, in_group, slot = _group_columns(cap_lens_ptr, group, B_cap, T, GROUP, BLOCK_W)
    words = packed_ptr + group.to(tl.int64) * (BLOCK_W * BLOCK_D)
    et, et_lo = operand_parts(_load_columns(words, BLOCK_W, BLOCK_D).to(tl.float32), DOT_DTYPE, SPLIT)
    c, z = _group_context(regions_ptr, lo_offset, i, et, et_lo, slot, N, D, gamma1, stride_rb, stride_rn,
                          stride_rd, GROUP, BLOCK_W, BLOCK_D, BLOCK_N, DOT_DTYPE, SPLIT, PRECISION)
    e32 = _words_after_pass_a(words, z, BLOCK_W, BLOCK_D)
    score, _, _, _, _, _, _ = _group_cosine(c, e32, slot, gamma2, GROUP)
    # One store per caption, from its first word (every caption has one).
    tl.store(scores_ptr + i * stride_si + j * stride_sj, score, mask=in_group & (t == 0))

    if RETURN_ATTN:
        # The matching pair's maps need z, known only after pass A: the program holding caption i
        # recomputes the tiles once more (B of the B·B/GROUP programs).
        if (i >= group * GROUP) & (i < group * GROUP + GROUP):
            mine = in_group & (j == i)
            for n0 in range(0, N, BLOCK_N):
                vt, vt_lo, offs_n, n_valid = _load_region_tile(regions_ptr, lo_offset, i, n0, N, D, stride_rb,
                                                               stride_rn, stride_rd, BLOCK_D, BLOCK_N, DOT_DTYPE, SPLIT)
                s_bar = _word_softmax(_similarity(vt, vt_lo, et, et_lo, SPLIT, PRECISION), slot, GROUP)
                alpha = _region_weights(s_bar, n_valid, slot, gamma1) / z[None, :]
                ptrs = attn_ptr + i * stride_ab + t[None, :] * stride_at + offs_n[:, None] * stride_an
                tl.store(ptrs, alpha, mask=mine[None, :] & n_valid[:, None])


@triton.jit
def _damsm_context_kernel(
    grad_ptr, packed_ptr, cap_lens_ptr, regions_ptr, dc_ptr, de_ptr, rd_ptr,
    image0, B_cap, D, N, gamma1, gamma2, GROUPS, lo_offset, dc_lo_offset,
    stride_gi, stride_gj,
    stride_rb, stride_rn, stride_rd,
    T: tl.constexpr, NEED_WORDS: tl.constexpr, GROUP: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (image image0 + p, group): pass A again, and the cosine's backward for the gradient g of
    R. Writes, densely per (image, group): dc/z (BLOCK_W, BLOCK_D) as MMA operands (its lo part
    ``dc_lo_offset`` further with SPLIT), dc·c/z (BLOCK_W,), and the direct word gradient through the
    cosine (BLOCK_W, BLOCK_D) fp32, which the gradient kernel then accumulates into. With α = u/z,
    dividing by z here leaves the gradient kernel without z: dα/z = vᵀ·(dc/z), d s̄ = γ1·u·(dα/z −
    dc·c/z), α·dc = u·(dc/z)."""
    local = tl.program_id(0)
    group = tl.program_id(1)
    i = (image0 + local).to(tl.int64)
    j, t, in_group, slot = _group_columns(cap_lens_ptr, group, B_cap, T, GROUP, BLOCK_W)
    words = packed_ptr + group.to(tl.int64) * (BLOCK_W * BLOCK_D)
    et, et_lo = operand_parts(_load_columns(words, BLOCK_W, BLOCK_D).to(tl.float32), DOT_DTYPE, SPLIT)
    c, z = _group_context(regions_ptr, lo_offset, i, et, et_lo, slot, N, D, gamma1, stride_rb, stride_rn,
                          stride_rd, GROUP, BLOCK_W, BLOCK_D, BLOCK_N, DOT_DTYPE, SPLIT, PRECISION)
    g = tl.load(grad_ptr + i * stride_gi + j * stride_gj, mask=slot >= 0, other=0.0).to(tl.float32)
    dc, d_e, row_dot = _cosine_backward(c, _words_after_pass_a(words, z, BLOCK_W, BLOCK_D), slot, g, gamma2, GROUP)
    pair = local.to(tl.int64) * GROUPS + group
    rows = tl.arange(0, BLOCK_W)
    block = pair * (BLOCK_W * BLOCK_D) + rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    dc_hi, dc_lo = operand_parts(dc / z[:, None], DOT_DTYPE, SPLIT)
    tl.store(dc_ptr + block, dc_hi)
    if SPLIT:
        tl.store(dc_ptr + dc_lo_offset + block, dc_lo)
    tl.store(rd_ptr + pair * BLOCK_W + rows, row_dot / z)
    if NEED_WORDS:
        tl.store(de_ptr + block, d_e)


@triton.jit
def _damsm_grad_kernel(
    packed_ptr, cap_lens_ptr, regions_ptr, dc_ptr, de_ptr, rd_ptr, d_regions_ptr, d_words_ptr, acc_ptr,
    image0, images, B_cap, D, N, gamma1, IMAGE_SPLITS, GROUP_SPLITS, GROUPS, lo_offset, dc_lo_offset,
    stride_rb, stride_rn, stride_rd,
    stride_vs, stride_vb, stride_vn, stride_vd,
    stride_es, stride_eb, stride_et, stride_ed,
    T: tl.constexpr, NEED_WORDS: tl.constexpr, NEED_REGIONS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):
    """Pass B for the chunk's images image0 .. image0 + images. Program (m, q) takes images
    i ≡ m (mod IMAGE_SPLITS) and caption groups ≡ q (mod GROUP_SPLITS). It owns partial-sum slot q of
    d_regions (S_k, B_img, N, D) for its images and slot m of d_words (S_m, B_cap, T, D) for its
    captions: the first caption group (the first image, in the first chunk) of the program stores its
    slot, later ones add to it, so the buffers need no zeroing and every autotuning trial on them
    starts clean. The d_words of the current (image, group) build up in the program's own fp32 row
    of ``acc``, which the first region tile starts from the context kernel's direct term: the inputs
    are only read, so a rerun gives the same result."""
    # The feature chunk never exceeds the padded feature width: the chunks' loads and stores of the
    # (BLOCK_W, BLOCK_D) buffers are unmasked, so a candidate's BLOCK_K wider than BLOCK_D (D <= 16
    # with BLOCK_K = 32) would run past each row, and past the buffer at its last row.
    CHUNK: tl.constexpr = BLOCK_K if BLOCK_K < BLOCK_D else BLOCK_D
    m = tl.program_id(0)
    q = tl.program_id(1)
    acc = acc_ptr + (m * GROUP_SPLITS + q).to(tl.int64) * (BLOCK_W * BLOCK_D)
    rows = tl.arange(0, BLOCK_W)
    offs_d = tl.arange(0, BLOCK_D)
    first = image0 + (m - image0 % IMAGE_SPLITS + IMAGE_SPLITS) % IMAGE_SPLITS  # the first i ≡ m in the chunk
    for i in range(first, image0 + images, IMAGE_SPLITS):
        # Later image / caption group of this program, as blocks: the interpreter mistypes a scalar
        # condition and-ed into a block mask, a block compares correctly on both paths.
        later_image = tl.full((BLOCK_W, 1), i, tl.int32) != m
        for group in range(q, GROUPS, GROUP_SPLITS):
            later_group = tl.full((BLOCK_N, 1), group, tl.int32) != q
            j, t, in_group, slot = _group_columns(cap_lens_ptr, group, B_cap, T, GROUP, BLOCK_W)
            # Offsets within the packed words and the context chunk fit int32: the chunk is capped at
            # plan.CONTEXT_BYTES.
            words = packed_ptr + group * (BLOCK_W * BLOCK_D)
            et, et_lo = operand_parts(_load_columns(words, BLOCK_W, BLOCK_D).to(tl.float32), DOT_DTYPE, SPLIT)
            pair = (i - image0) * GROUPS + group
            dc = dc_ptr + pair * (BLOCK_W * BLOCK_D)
            direct = de_ptr + pair * (BLOCK_W * BLOCK_D)  # the direct term through the cosine
            row_dot = tl.load(rd_ptr + pair * BLOCK_W + rows)
            dc_t = _load_columns(dc, BLOCK_W, BLOCK_D).to(DOT_DTYPE)
            if SPLIT:
                dc_t_lo = _load_columns(dc + dc_lo_offset, BLOCK_W, BLOCK_D).to(DOT_DTYPE)
            else:
                dc_t_lo = dc_t
            for n0 in range(0, N, BLOCK_N):
                first_tile = tl.full((BLOCK_W, 1), n0, tl.int32) == 0  # a block: see later_image
                vt, vt_lo, offs_n, n_valid = _load_region_tile(regions_ptr, lo_offset, i, n0, N, D, stride_rb,
                                                               stride_rn, stride_rd, BLOCK_D, BLOCK_N, DOT_DTYPE, SPLIT)
                s_bar = _word_softmax(_similarity(vt, vt_lo, et, et_lo, SPLIT, PRECISION), slot, GROUP)
                d_alpha = mma(vt, vt_lo, dc_t, dc_t_lo, tl.zeros(s_bar.shape, dtype=tl.float32), SPLIT,
                               PRECISION)  # dα/z
                u = _region_weights(s_bar, n_valid, slot, gamma1)
                d_sbar = gamma1 * u * (d_alpha - row_dot[None, :])
                ds, ds_lo = operand_parts(s_bar * (d_sbar - _segment_sum(s_bar * d_sbar, slot, GROUP)), DOT_DTYPE, SPLIT)
                u, u_lo = operand_parts(u, DOT_DTYPE, SPLIT)
                # Both gradients CHUNK features at a time: a whole (BLOCK_N, D) or (BLOCK_W, D) fp32
                # tile in registers beside this tile's attention would spill.
                for k0 in range(0, D, CHUNK):
                    offs_k = k0 + tl.arange(0, CHUNK)
                    k_valid = offs_k < D
                    chunk = rows[:, None] * BLOCK_D + offs_k[None, :]
                    if NEED_REGIONS:
                        # dvᵀ = u·(dc/z) + ds·Eᵀ: a contraction over the group's words, regions on M;
                        # the slot's running sum is the products' accumulator.
                        ptrs = (d_regions_ptr + q * stride_vs + i * stride_vb + offs_n[:, None] * stride_vn
                                + offs_k[None, :] * stride_vd)
                        tile_mask = n_valid[:, None] & k_valid[None, :]
                        dv = tl.load(ptrs, mask=tile_mask & later_group, other=0.0)
                        dc_k = tl.load(dc + chunk).to(DOT_DTYPE)
                        if SPLIT:
                            dc_k_lo = tl.load(dc + dc_lo_offset + chunk).to(DOT_DTYPE)
                        else:
                            dc_k_lo = dc_k
                        dv = mma(u, u_lo, dc_k, dc_k_lo, dv, SPLIT, PRECISION)
                        e_k, e_k_lo = operand_parts(tl.load(words + chunk).to(tl.float32), DOT_DTYPE, SPLIT)
                        dv = mma(ds, ds_lo, e_k, e_k_lo, dv, SPLIT, PRECISION)
                        tl.store(ptrs, dv, mask=tile_mask)
                    if NEED_WORDS:
                        # d_words += dsᵀ·vᵀ, the words on M; the tile's chunk is re-read from L2.
                        v_ptrs = regions_ptr + i * stride_rb + offs_n[:, None] * stride_rn + offs_k[None, :] * stride_rd
                        v_mask = n_valid[:, None] & k_valid[None, :]
                        v_k = tl.load(v_ptrs, mask=v_mask, other=0.0).to(DOT_DTYPE)
                        if SPLIT:
                            v_k_lo = tl.load(v_ptrs + lo_offset, mask=v_mask, other=0.0).to(DOT_DTYPE)
                        else:
                            v_k_lo = v_k
                        so_far = (tl.load(direct + chunk, mask=first_tile, other=0.0)
                                  + tl.load(acc + chunk, mask=~first_tile, other=0.0))
                        tl.store(acc + chunk, mma(tl.trans(ds), tl.trans(ds_lo), v_k, v_k_lo, so_far, SPLIT, PRECISION))
                # The next tile reads the running sums back in whatever layout its loads get.
                tl.debug_barrier()
            if NEED_WORDS:
                # Padding words' rows are exactly zero (their dc, ds and direct terms vanish): store every
                # row of the group's captions, so d_words needs no zeroing either.
                ptrs = (d_words_ptr + m * stride_es + j[:, None] * stride_eb + t[:, None] * stride_et
                        + offs_d[None, :] * stride_ed)
                slot_mask = in_group[:, None] & (offs_d < D)[None, :]
                previous = tl.load(ptrs, mask=slot_mask & later_image, other=0.0)
                tl.store(ptrs, previous + tl.load(acc + rows[:, None] * BLOCK_D + offs_d[None, :]), mask=slot_mask)
            # The next group reads these slots back: this program's stores must have landed first.
            tl.debug_barrier()


# --------------------------------------------------------------------------------------------------
# launchers

INTERPRETED = kernel_is_interpreted(_damsm_fwd_kernel)

_FWD = TunedKernel(_damsm_fwd_kernel, plan.FORWARD_CANDIDATES,
                   key=["T", "D", "N", "PRECISION", "DOT_DTYPE", "SPLIT", "RETURN_ATTN"],
                   prune=plan.prune, interpreted=INTERPRETED)
_CONTEXT = TunedKernel(_damsm_context_kernel, plan.FORWARD_CANDIDATES,
                       key=["T", "D", "N", "PRECISION", "DOT_DTYPE", "SPLIT", "NEED_WORDS"],
                       prune=plan.prune, interpreted=INTERPRETED)
_GRAD = TunedKernel(_damsm_grad_kernel, plan.GRAD_CANDIDATES,
                    key=["T", "D", "N", "PRECISION", "DOT_DTYPE", "SPLIT", "NEED_WORDS", "NEED_REGIONS"],
                    prune=plan.prune, interpreted=INTERPRETED)
KERNELS = {"damsm_fwd": _FWD, "damsm_bwd_context": _CONTEXT, "damsm_bwd_grad": _GRAD}

def _operands(words, cap_lens, regions, precision):
    """What every kernel reads: the packed caption groups, the regions features last (split into
    hi/lo parts with SPLIT), the offset of the lo part, the products' (DOT_DTYPE, PRECISION, SPLIT)
    and the compile-time sizes."""
    dots = _dot_operands(words, regions, precision, INTERPRETED)
    dot_dtype, split = dots["DOT_DTYPE"], dots["SPLIT"]
    wide = precision != "native"  # 4 bytes an operand element: a bf16 pair, or fp32
    narrow = wide and not plan.hopper_tiles(_capability(words.device), fma=precision == "ieee")
    shape = plan.shape_meta(words.shape[2], words.shape[1], narrow=narrow)
    packed = pack_caption_groups(words, cap_lens, torch.float32 if split else torch_dtype(dot_dtype), shape)
    regions_t = features_last(regions)
    lo_offset = 0
    if split:
        regions_t = split_parts(regions_t, dot_dtype)
        lo_offset = regions_t[1].storage_offset()
        regions_t = regions_t[0]  # the hi part's strides; the lo part is lo_offset elements on
    return packed, regions_t, lo_offset, dots, shape


def pack_caption_groups(words: torch.Tensor, cap_lens: torch.Tensor, dtype: torch.dtype, shape: dict) -> torch.Tensor:
    """words (B_cap, D, T) -> (groups, BLOCK_W, BLOCK_D) in ``dtype``: GROUP captions' words side by side
    as rows, features last and padded to BLOCK_D, padding words (and rows past the last caption)
    zero, whatever memory held there."""
    B_cap, D, T = words.shape
    group, width = shape["GROUP"], shape["BLOCK_W"]
    groups = triton.cdiv(B_cap, group)
    real = torch.arange(T, device=words.device)[None, :] < cap_lens[:, None]
    rows = torch.where(real[:, :, None], words.transpose(1, 2), 0).to(dtype)  # (B_cap, T, D)
    packed = rows.new_zeros((groups * group, T, shape["BLOCK_D"]))
    packed[:B_cap, :, :D] = rows
    packed = packed.reshape(groups, group * T, shape["BLOCK_D"])
    return torch.nn.functional.pad(packed, (0, 0, 0, width - group * T)).contiguous()


def _launch_default(T: int, D: int, N: int, device: torch.device, precision: str, grad: bool = False) -> LaunchConfig:
    """``default_config`` for a launch on ``device`` at a resolved ``precision``."""
    return plan.default_config(T, D, N, _capability(device), grad=grad, wide=precision != "native", fma=precision == "ieee")


def _check_fused_dtypes(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"the fused DAMSM kernels take fp16, bf16 or fp32 features, got {t.dtype}")


def features_last(x: torch.Tensor) -> torch.Tensor:
    """(B, D, L) -> (B, L, D) with the features contiguous: every row the kernels load is then one
    aligned run of D values (as (B, D, L) rows of L = 289 values are not, so loads would not
    vectorize). Free for channels_last region maps, a copy of the input's size otherwise."""
    return x.transpose(1, 2).contiguous()


def damsm_forward(words, cap_lens, regions, gamma1: float, gamma2: float, return_attn: bool, precision: str,
                  config: LaunchConfig | None = None):
    """words (B_cap, D, T), cap_lens (B_cap,), regions (B_img, D, N) -> scores (B_img, B_cap) fp32 and
    attn (B, T, N) fp32 (empty unless ``return_attn``). ``precision``: "native", "bf16x3", "tf32" or
    "ieee" (``attngan_fast.kernels._mma``); ``config`` forces a launch configuration."""
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
    packed, regions_t, lo_offset, dots, shape = _operands(words, cap_lens, regions, precision)
    _FWD.launch(
        (B_img, packed.shape[0]),
        packed, cap_lens, regions_t, scores, attn,
        B_cap, D, N, float(gamma1), float(gamma2), lo_offset,
        *regions_t.stride(), *scores.stride(), *attn_strides,
        default=_launch_default(T, D, N, words.device, precision), config=config,
        RETURN_ATTN=return_attn, **dots, **shape,
    )
    return scores, attn


def damsm_backward(grad_scores, words, cap_lens, regions, gamma1: float, gamma2: float, precision: str,
                   need_words: bool = True, need_regions: bool = True, splits: tuple[int, int] | None = None,
                   images_per_chunk: int | None = None, context_config: LaunchConfig | None = None,
                   grad_config: LaunchConfig | None = None):
    """Gradients (d_words (B_cap, D, T), d_regions (B_img, D, N)) in the inputs' dtypes; one that is
    not needed is skipped and returned empty (GAN training needs only d_regions). ``splits`` forces
    the gradient kernel's (image splits, caption-group splits), ``images_per_chunk`` the chunking of
    the images, ``context_config`` / ``grad_config`` the two kernels' launch configurations."""
    _check_fused_dtypes(words, regions)
    B_cap, D, T = words.shape
    B_img, _, N = regions.shape
    device = words.device
    packed, regions_t, lo_offset, dots, shape = _operands(words, cap_lens, regions, precision)
    groups = packed.shape[0]
    width, block_d = shape["BLOCK_W"], shape["BLOCK_D"]
    parts = 2 if dots["SPLIT"] else 1
    dc_dtype = torch_dtype(dots["DOT_DTYPE"])
    chunk = images_per_chunk or plan.image_chunks(B_img, groups, shape, parts * dc_dtype.itemsize, need_words)
    s_m, s_k = splits or plan.splits_for(min(chunk, B_img), groups, need_words, shape, D, N, B_img, device)
    s_m, s_k = min(s_m, chunk, B_img), min(s_k, groups)  # every program's first image and group exist
    # Partial sums, features last like the inputs; summed over the splits and put back to (B, D, L).
    partial_r = alloc_output((s_k, B_img, N, D) if need_regions else (1, 1, 1, 1), device, torch.float32)
    partial_w = alloc_output((s_m, B_cap, T, D) if need_words else (1, 1, 1, 1), device, torch.float32)
    # What the context kernel hands the gradient kernel, per (image of the chunk, caption group): dc/z
    # as MMA operands (hi, and lo with SPLIT), the direct word gradient, dc·c/z.
    dc = alloc_output((parts, chunk, groups, width, block_d), device, dc_dtype)
    de = alloc_output((chunk, groups, width, block_d) if need_words else (1,), device, torch.float32)
    rd = alloc_output((chunk, groups, width), device, torch.float32)
    dc_lo_offset = dc[1].storage_offset() if parts == 2 else 0
    # The gradient kernel's per-program running sum of d_words (written before it is read).
    acc = alloc_output((s_m * s_k if need_words else 1, width, block_d), device, torch.float32)
    common = dict(NEED_WORDS=need_words, **dots, **shape)
    for image0 in range(0, B_img, chunk):
        images = min(chunk, B_img - image0)
        _CONTEXT.launch(
            (images, groups),
            grad_scores, packed, cap_lens, regions_t, dc, de, rd,
            image0, B_cap, D, N, float(gamma1), float(gamma2), groups, lo_offset, dc_lo_offset,
            *grad_scores.stride(), *regions_t.stride(),
            default=_launch_default(T, D, N, device, precision), config=context_config,
            **common,
        )
        _GRAD.launch(
            (s_m, s_k),
            packed, cap_lens, regions_t, dc, de, rd, partial_r, partial_w, acc,
            image0, images, B_cap, D, N, float(gamma1), s_m, s_k, groups, lo_offset, dc_lo_offset,
            *regions_t.stride(), *partial_r.stride(), *partial_w.stride(),
            default=_launch_default(T, D, N, device, precision, grad=True), config=grad_config,
            NEED_REGIONS=need_regions, **common,
        )
    d_words = _reduce_splits(partial_w, words) if need_words else words.new_empty((0,))
    d_regions = _reduce_splits(partial_r, regions) if need_regions else regions.new_empty((0,))
    return d_words, d_regions


def _reduce_splits(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(S, B, L, D) partial sums -> their sum as a contiguous (B, D, L) tensor of ``like``'s dtype."""
    total = partial[0] if partial.shape[0] == 1 else partial.sum(0)
    return total.transpose(1, 2).to(like.dtype).contiguous()


def chosen_configs() -> dict:
    """The launch configuration each kernel last ran with (after autotuning, the tuned one)."""
    return {name: (str(k.last_config) if k.last_config else None) for name, k in KERNELS.items()}
