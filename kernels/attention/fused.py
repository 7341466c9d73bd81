"""Fused Triton kernels for the generator's word attention F_attn (docs/design.md §2.3): forward and backward.

A small-key attention: T <= ~32 words, C = 32 or 48 channels, HW = 64² or 128² pixels. It is
memory-bound, so each program takes one sample's (C, T) context once and a tile of BLOCK_Q pixels:
the forward reads ``query`` once and writes ``ctx`` once; the (B, HW, T) attention is written only
when asked for. The backward recomputes β from ``query`` (cheaper than storing it), writes
``d_query`` and per-chunk partial sums of ``d_context`` that are added afterwards (deterministic).

How it meets the tensor cores: the pixels are the M axis of every product but one (s = qᵀ·k,
ctx = β·kᵀ, dβ = gᵀ·k, d_query = ds·kᵀ: 64 pixels fill a warpgroup's wgmma), the words (32 with
padding) and the channels (whole: C <= 64) the small axes; d_context = g·β + q·ds has the channels on
M and sums over the pixels of a chunk in registers (8-16 per thread), written once per program.
Operands follow ``attngan_fast.kernels._mma``: bf16/fp16 straight in, fp32 as bf16 (hi, lo) pairs split in
registers (these tiles are small enough for that), or fp32 dots at an explicit precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._runtime import alloc_like_query, alloc_output, kernel_is_interpreted, poison_
from .._runtime import device_capability as _capability  # benchmarks.kernel_resources replaces it
from .._mma import dot_operands, mma, operand_parts
from .._tuning import LaunchConfig, TunedKernel
from . import plan


@triton.jit
def _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                   HAS_MASK: tl.constexpr, LEGACY_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr):
    """Which words each pixel row may attend to, (BLOCK_Q, BLOCK_T), and which of the sample's own
    context columns to load, (BLOCK_T,) (padding columns load as zero, except in legacy mode)."""
    offs_t = tl.arange(0, BLOCK_T)
    in_range = offs_t < T
    load_cols = in_range
    if HAS_MASK:
        if LEGACY_MASK:
            # The released code's mask.repeat(HW, 1): flattened row b·HW + q took sample (b·HW + q) mod B.
            rows = (b * HW + offs_q) % B
            m = tl.load(mask_ptr + rows[:, None] * stride_mb + offs_t[None, :] * stride_mt,
                        mask=in_range[None, :], other=1)
            valid = (m == 0) & in_range[None, :]
        else:
            m = tl.load(mask_ptr + b * stride_mb + offs_t * stride_mt, mask=in_range, other=1)
            load_cols = (m == 0) & in_range
            valid = tl.broadcast_to(load_cols[None, :], (BLOCK_Q, BLOCK_T))
    else:
        valid = tl.broadcast_to(in_range[None, :], (BLOCK_Q, BLOCK_T))
    return valid, load_cols


@triton.jit
def _load_tile(ptr, b, C, offs_x, x_valid, stride_b, stride_c, stride_x, BLOCK_C: tl.constexpr):
    """Sample b's (C, X) features at columns offs_x as a (BLOCK_C, len(offs_x)) fp32 tile; channels past
    C and columns not in ``x_valid`` load as zero."""
    offs_c = tl.arange(0, BLOCK_C)
    ptrs = ptr + b * stride_b + offs_c[:, None] * stride_c + offs_x[None, :] * stride_x
    return tl.load(ptrs, mask=(offs_c[:, None] < C) & x_valid[None, :], other=0.0).to(tl.float32)


@triton.jit
def _word_softmax(s, valid):
    """β = softmax over the valid words of each pixel row of s, (BLOCK_Q, BLOCK_T)."""
    s = tl.where(valid, s, float("-inf"))
    m = tl.max(s, axis=1)  # finite: every sample keeps at least one word
    p = tl.exp(s - m[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _word_attn_fwd_kernel(
    query_ptr, context_ptr, mask_ptr, out_ptr, attn_ptr,
    B, C, HW, T,
    stride_qb, stride_qc, stride_qp,
    stride_kb, stride_kc, stride_kt,
    stride_mb, stride_mt,
    stride_ob, stride_oc, stride_op,
    stride_ab, stride_at, stride_ap,
    HAS_MASK: tl.constexpr, LEGACY_MASK: tl.constexpr, RETURN_ATTN: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (b, tile): BLOCK_Q pixels of sample b. The pixels are the M axis of both products
    (s = qᵀ·k, ctx = β·kᵀ), the words and the channels (whole: C <= 64) are small; the query tile is
    read once and the context map written once."""
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_t = tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_C)
    q_valid = offs_q < HW
    valid, load_cols = _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                                      HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
    q, q_lo = operand_parts(_load_tile(query_ptr, b, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp, BLOCK_C),
                            DOT_DTYPE, SPLIT)
    k, k_lo = operand_parts(_load_tile(context_ptr, b, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt,
                                       BLOCK_C), DOT_DTYPE, SPLIT)
    s = mma(tl.trans(q), tl.trans(q_lo), k, k_lo, tl.zeros((BLOCK_Q, BLOCK_T), dtype=tl.float32), SPLIT, PRECISION)
    beta = _word_softmax(s, valid)
    b_hi, b_lo = operand_parts(beta, DOT_DTYPE, SPLIT)
    out = mma(b_hi, b_lo, tl.trans(k), tl.trans(k_lo), tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32), SPLIT,
              PRECISION)
    tl.store(out_ptr + b * stride_ob + offs_c[None, :] * stride_oc + offs_q[:, None] * stride_op,
             out.to(out_ptr.dtype.element_ty), mask=q_valid[:, None] & (offs_c[None, :] < C))
    if RETURN_ATTN:
        tl.store(attn_ptr + b * stride_ab + offs_t[None, :] * stride_at + offs_q[:, None] * stride_ap,
                 beta, mask=q_valid[:, None] & (offs_t[None, :] < T))


@triton.jit
def _word_attn_bwd_kernel(
    query_ptr, context_ptr, mask_ptr, grad_ptr, dquery_ptr, partial_ptr,
    B, C, HW, T,
    stride_qb, stride_qc, stride_qp,
    stride_kb, stride_kc, stride_kt,
    stride_mb, stride_mt,
    stride_gb, stride_gc, stride_gp,
    stride_db, stride_dc, stride_dp,
    stride_pb, stride_pq, stride_pc, stride_pt,
    HAS_MASK: tl.constexpr, LEGACY_MASK: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (b, chunk) covers pixels chunk·CHUNK .. +CHUNK in tiles of BLOCK_Q: it writes their
    d_query and one partial sum of d_context, (C, T) in registers for the whole chunk (the channels
    are whole, C <= 64, so the accumulator is 8-16 registers per thread). CHUNK is fixed by the
    launcher, not by the tile size, so the partial buffer has the same shape whatever BLOCK_Q the
    autotuner picks."""
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_C)
    c_valid = offs_c < C
    # The words are the same for every tile of the sample: the context's operands are loaded once.
    _all_rows, load_cols = _word_validity(mask_ptr, b, tl.arange(0, BLOCK_Q), B, HW, T, stride_mb, stride_mt,
                                  HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
    k, k_lo = operand_parts(_load_tile(context_ptr, b, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt,
                                       BLOCK_C), DOT_DTYPE, SPLIT)
    d_k = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    first = chunk * CHUNK
    for q0 in range(first, tl.minimum(first + CHUNK, HW), BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        q_valid = offs_q < HW
        valid, _tile_cols = _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                                           HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
        # Pixels past HW load q = 0 and g = 0, so they add nothing to the context gradient.
        zeros = tl.zeros((BLOCK_Q, BLOCK_T), dtype=tl.float32)
        q, q_lo = operand_parts(_load_tile(query_ptr, b, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp,
                                           BLOCK_C), DOT_DTYPE, SPLIT)
        beta = _word_softmax(mma(tl.trans(q), tl.trans(q_lo), k, k_lo, zeros, SPLIT, PRECISION), valid)
        g, g_lo = operand_parts(_load_tile(grad_ptr, b, C, offs_q, q_valid, stride_gb, stride_gc, stride_gp,
                                           BLOCK_C), DOT_DTYPE, SPLIT)
        d_beta = mma(tl.trans(g), tl.trans(g_lo), k, k_lo, zeros, SPLIT, PRECISION)
        d_s = beta * (d_beta - tl.sum(beta * d_beta, axis=1)[:, None])
        ds, ds_lo = operand_parts(d_s, DOT_DTYPE, SPLIT)
        d_q = mma(ds, ds_lo, tl.trans(k), tl.trans(k_lo), tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32), SPLIT,
                  PRECISION)
        tl.store(dquery_ptr + b * stride_db + offs_c[None, :] * stride_dc + offs_q[:, None] * stride_dp,
                 d_q.to(dquery_ptr.dtype.element_ty), mask=q_valid[:, None] & c_valid[None, :])
        # d_context += g·β + q·ds, the channels on M, contracted over the tile's pixels.
        be, be_lo = operand_parts(beta, DOT_DTYPE, SPLIT)
        if SPLIT:
            # The gradient tile once more, from L1/L2, for the same reason as the query tile below: kept
            # alive (hi, lo) through d_query's product it spilled inside this loop at C = 48 (Triton 3.8).
            g, g_lo = operand_parts(_load_tile(grad_ptr, b, C, offs_q, q_valid, stride_gb, stride_gc, stride_gp,
                                               BLOCK_C), DOT_DTYPE, SPLIT)
        d_k = mma(g, g_lo, be, be_lo, d_k, SPLIT, PRECISION)
        if SPLIT:
            # The query tile once more (from L1/L2; the store above keeps the two loads apart): its
            # three copies (fp32, hi, lo) kept alive from s to here spilled the tile loop on 4 warps.
            q, q_lo = operand_parts(_load_tile(query_ptr, b, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp,
                                               BLOCK_C), DOT_DTYPE, SPLIT)
        d_k = mma(q, q_lo, ds, ds_lo, d_k, SPLIT, PRECISION)
    tl.store(partial_ptr + b * stride_pb + chunk * stride_pq + offs_c[:, None] * stride_pc + offs_t[None, :] * stride_pt,
             d_k, mask=c_valid[:, None] & (offs_t[None, :] < T))


# --------------------------------------------------------------------------------------------------
# launchers

INTERPRETED = kernel_is_interpreted(_word_attn_fwd_kernel)

# stride_qp tells NCHW (1) from channels_last (C): the two access patterns tune differently.
_FWD = TunedKernel(_word_attn_fwd_kernel, plan.FORWARD_CANDIDATES,
                   key=["C", "HW", "T", "stride_qp", "PRECISION", "DOT_DTYPE", "SPLIT", "RETURN_ATTN"],
                   prune=plan.prune, interpreted=INTERPRETED)
_BWD = TunedKernel(_word_attn_bwd_kernel, plan.BACKWARD_CANDIDATES,
                   key=["C", "HW", "T", "stride_qp", "PRECISION", "DOT_DTYPE", "SPLIT"],
                   prune=plan.prune, interpreted=INTERPRETED)
def _check_fused_dtypes(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"the fused word-attention kernels take fp16, bf16 or fp32 features, got {t.dtype}")


def _mask_args(query, word_mask):
    if word_mask is None:
        return query, (0, 0)  # never read: HAS_MASK is False
    mask = word_mask.to(torch.uint8)
    return mask, mask.stride()


def _flat_strides(x: torch.Tensor):
    """(stride_b, stride_c, stride_pixel) of a (B, C, H, W) tensor whose H, W merge into one axis."""
    return x.flatten(2).stride()


def word_attention_forward(query, context, word_mask, return_attn: bool, legacy_mask: bool, precision: str,
                           config: LaunchConfig | None = None):
    """query (B, C, H, W), context (B, C, T), word_mask (B, T) bool or None ->
    ctx (B, C, H, W) in the promoted dtype, attn (B, T, H, W) fp32 (empty unless ``return_attn``).
    ``config`` forces a launch configuration."""
    _check_fused_dtypes(query, context)
    B, C, H, W = query.shape
    T = context.shape[2]
    HW = H * W
    q = query if _mergeable(query) else query.contiguous()
    out = poison_(alloc_like_query(q, torch.promote_types(query.dtype, context.dtype)))
    if return_attn:
        attn = alloc_output((B, T, H, W), query.device, torch.float32)
        attn_strides = attn.flatten(2).stride()
    else:
        attn = torch.empty(0, device=query.device, dtype=torch.float32)
        attn_strides = (0, 0, 0)
    mask, mask_strides = _mask_args(query, word_mask)
    dots = dot_operands(query, context, precision, INTERPRETED)
    _FWD.launch(
        lambda meta: (B, triton.cdiv(HW, meta["BLOCK_Q"])),
        q, context, mask, out, attn,
        B, C, HW, T,
        *_flat_strides(q), *context.stride(), *mask_strides, *_flat_strides(out), *attn_strides,
        default=plan.default_config(_capability(query.device), precision, backward=False), config=config,
        HAS_MASK=word_mask is not None, LEGACY_MASK=legacy_mask, RETURN_ATTN=return_attn,
        **dots, **plan.whole_tiles(C, T),
    )
    return out, attn


def word_attention_backward(grad_ctx, query, context, word_mask, legacy_mask: bool, precision: str,
                            config: LaunchConfig | None = None):
    """Gradients (d_query (B, C, H, W), d_context (B, C, T)) in the inputs' dtypes. ``config`` forces
    a launch configuration."""
    _check_fused_dtypes(query, context)
    B, C, H, W = query.shape
    T = context.shape[2]
    HW = H * W
    q = query if _mergeable(query) else query.contiguous()
    g = grad_ctx if _mergeable(grad_ctx) else grad_ctx.contiguous()
    d_query = poison_(alloc_like_query(q, query.dtype))
    chunks = triton.cdiv(HW, plan.PIXELS_PER_PROGRAM)
    partial = alloc_output((B, chunks, C, T), query.device, torch.float32)
    mask, mask_strides = _mask_args(query, word_mask)
    dots = dot_operands(query, context, precision, INTERPRETED)
    _BWD.launch(
        (B, chunks),
        q, context, mask, g, d_query, partial,
        B, C, HW, T,
        *_flat_strides(q), *context.stride(), *mask_strides, *_flat_strides(g), *_flat_strides(d_query),
        *partial.stride(),
        default=plan.default_config(_capability(query.device), precision, backward=True), config=config,
        HAS_MASK=word_mask is not None, LEGACY_MASK=legacy_mask, CHUNK=plan.PIXELS_PER_PROGRAM,
        **dots, **plan.whole_tiles(C, T),
    )
    return d_query, partial.sum(1).to(context.dtype)


def _mergeable(x: torch.Tensor) -> bool:
    """True when the H and W axes of (B, C, H, W) ``x`` can be addressed as one pixel axis."""
    return x.shape[3] == 1 or x.stride(2) == x.stride(3) * x.shape[3]


def chosen_configs() -> dict:
    """The launch configuration each kernel last ran with (after autotuning, the tuned one)."""
    return {name: (str(k.last_config) if k.last_config else None) for name, k in
            (("word_attention_fwd", _FWD), ("word_attention_bwd", _BWD))}
