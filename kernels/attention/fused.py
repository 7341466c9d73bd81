"""Fused Triton kernels for the generator's word attention F_attn (DESIGN.md §2.3): forward and backward.

A small-key attention: T <= ~32 words, C = 32 or 48 channels, HW = 64² or 128² pixels. It is
memory-bound, so each program takes one sample's (C, T) context once and a tile of BLOCK_Q pixels:
the forward reads ``query`` once and writes ``ctx`` once; the (B, HW, T) attention is written only
when asked for. The backward recomputes β from ``query`` (cheaper than storing it), writes
``d_query`` and per-tile partial sums of ``d_context`` that are added afterwards (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._runtime import alloc_like_query, alloc_output, kernel_is_interpreted, next_block, poison_
from .._tuning import LaunchConfig, TunedKernel


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
def _attention_tile(query_ptr, context_ptr, mask_ptr, b, offs_q, B, C, HW, T,
                    stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt, stride_mb, stride_mt,
                    HAS_MASK: tl.constexpr, LEGACY_MASK: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):
    """Loads a pixel tile q (BLOCK_C, BLOCK_Q) and the sample's context k (BLOCK_C, BLOCK_T), and returns
    them with the attention β (BLOCK_Q, BLOCK_T) in fp32."""
    offs_c = tl.arange(0, BLOCK_C)
    offs_t = tl.arange(0, BLOCK_T)
    c_valid = offs_c < C
    valid, load_cols = _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                                      HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
    k = tl.load(context_ptr + b * stride_kb + offs_c[:, None] * stride_kc + offs_t[None, :] * stride_kt,
                mask=c_valid[:, None] & load_cols[None, :], other=0.0).to(tl.float32)
    q = tl.load(query_ptr + b * stride_qb + offs_c[:, None] * stride_qc + offs_q[None, :] * stride_qp,
                mask=c_valid[:, None] & (offs_q[None, :] < HW), other=0.0).to(tl.float32)
    s = tl.dot(tl.trans(q), k, input_precision=PRECISION)
    s = tl.where(valid, s, float("-inf"))
    m = tl.max(s, axis=1)  # finite: every sample keeps at least one word
    p = tl.exp(s - m[:, None])
    beta = p / tl.sum(p, axis=1)[:, None]
    return q, k, beta


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
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    _, k, beta = _attention_tile(query_ptr, context_ptr, mask_ptr, b, offs_q, B, C, HW, T,
                                 stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt,
                                 stride_mb, stride_mt, HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_C, BLOCK_T, PRECISION)
    out = tl.dot(beta, tl.trans(k), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_C)
    offs_c = tl.arange(0, BLOCK_C)
    q_valid = offs_q < HW
    tl.store(out_ptr + b * stride_ob + offs_c[None, :] * stride_oc + offs_q[:, None] * stride_op,
             out.to(out_ptr.dtype.element_ty), mask=q_valid[:, None] & (offs_c[None, :] < C))
    if RETURN_ATTN:
        offs_t = tl.arange(0, BLOCK_T)
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
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (b, chunk) covers pixels chunk·CHUNK .. +CHUNK in tiles of BLOCK_Q: it writes their
    d_query and one partial sum of d_context. CHUNK is fixed by the launcher, not by the tile size, so
    the partial buffer has the same shape whatever BLOCK_Q the autotuner picks."""
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    offs_t = tl.arange(0, BLOCK_T)
    c_valid = offs_c < C
    d_k = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    for q0 in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, HW), BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        q_valid = offs_q < HW
        q, k, beta = _attention_tile(query_ptr, context_ptr, mask_ptr, b, offs_q, B, C, HW, T,
                                     stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt,
                                     stride_mb, stride_mt, HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_C, BLOCK_T, PRECISION)
        g = tl.load(grad_ptr + b * stride_gb + offs_c[:, None] * stride_gc + offs_q[None, :] * stride_gp,
                    mask=c_valid[:, None] & q_valid[None, :], other=0.0).to(tl.float32)  # (BLOCK_C, BLOCK_Q)
        d_beta = tl.dot(tl.trans(g), k, input_precision=PRECISION)  # (BLOCK_Q, BLOCK_T)
        d_s = beta * (d_beta - tl.sum(beta * d_beta, axis=1)[:, None])
        d_q = tl.dot(d_s, tl.trans(k), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_C)
        tl.store(dquery_ptr + b * stride_db + offs_c[None, :] * stride_dc + offs_q[:, None] * stride_dp,
                 d_q.to(dquery_ptr.dtype.element_ty), mask=q_valid[:, None] & c_valid[None, :])
        # Rows past HW carry g = 0 and q = 0, so they add nothing to the context gradient.
        d_k += tl.dot(g, beta, input_precision=PRECISION) + tl.dot(q, d_s, input_precision=PRECISION)
    tl.store(partial_ptr + b * stride_pb + chunk * stride_pq + offs_c[:, None] * stride_pc + offs_t[None, :] * stride_pt,
             d_k, mask=c_valid[:, None] & (offs_t[None, :] < T))


# --------------------------------------------------------------------------------------------------
# launchers

INTERPRETED = kernel_is_interpreted(_word_attn_fwd_kernel)

# Pixels per backward program: the partial sums of d_context are per chunk, so their buffer does not
# depend on the tuned tile size. It must be a multiple of every backward BLOCK_Q below (a test checks).
PIXELS_PER_PROGRAM = 128

# A memory-bound kernel: the candidates trade pixels per program (bytes in flight) against registers.
# The forward has no loop, so its pipeline stages do not matter.
FORWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=1, BLOCK_Q=q) for q, w in (
    (32, 2), (64, 4), (128, 4), (128, 8), (256, 8))]
BACKWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_Q=q) for q, w, s in (
    (32, 2, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3), (128, 4, 1), (128, 8, 1))]


def _prune(candidates, args):
    """Pixel tiles wider than the (power-of-two-covered) image only repeat a smaller one."""
    widest = next_block(args["HW"])
    kept = [c for c in candidates if dict(c.meta)["BLOCK_Q"] <= widest]
    return kept or candidates[:1]


# stride_qp tells NCHW (1) from channels_last (C): the two access patterns tune differently.
_FWD = TunedKernel(_word_attn_fwd_kernel, FORWARD_CANDIDATES, key=["C", "HW", "T", "stride_qp", "PRECISION", "RETURN_ATTN"],
                   prune=_prune, interpreted=INTERPRETED)
_BWD = TunedKernel(_word_attn_bwd_kernel, BACKWARD_CANDIDATES, key=["C", "HW", "T", "stride_qp", "PRECISION"],
                   prune=_prune, interpreted=INTERPRETED)
FORWARD_DEFAULT = LaunchConfig.of(num_warps=4, num_stages=1, BLOCK_Q=64)
BACKWARD_DEFAULT = LaunchConfig.of(num_warps=4, num_stages=2, BLOCK_Q=64)


def _whole_tiles(C: int, T: int) -> dict:
    """Channels and words are whole in every program; only the pixel tile is tuned."""
    return dict(BLOCK_C=next_block(C), BLOCK_T=next_block(T))


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
    _FWD.launch(
        lambda meta: (B, triton.cdiv(HW, meta["BLOCK_Q"])),
        q, context, mask, out, attn,
        B, C, HW, T,
        *_flat_strides(q), *context.stride(), *mask_strides, *_flat_strides(out), *attn_strides,
        default=FORWARD_DEFAULT, config=config,
        HAS_MASK=word_mask is not None, LEGACY_MASK=legacy_mask, RETURN_ATTN=return_attn,
        PRECISION=precision, **_whole_tiles(C, T),
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
    chunks = triton.cdiv(HW, PIXELS_PER_PROGRAM)
    partial = alloc_output((B, chunks, C, T), query.device, torch.float32)
    mask, mask_strides = _mask_args(query, word_mask)
    _BWD.launch(
        (B, chunks),
        q, context, mask, g, d_query, partial,
        B, C, HW, T,
        *_flat_strides(q), *context.stride(), *mask_strides, *_flat_strides(g), *_flat_strides(d_query),
        *partial.stride(),
        default=BACKWARD_DEFAULT, config=config,
        HAS_MASK=word_mask is not None, LEGACY_MASK=legacy_mask, CHUNK=PIXELS_PER_PROGRAM, PRECISION=precision,
        **_whole_tiles(C, T),
    )
    return d_query, partial.sum(1).to(context.dtype)


def _mergeable(x: torch.Tensor) -> bool:
    """True when the H and W axes of (B, C, H, W) ``x`` can be addressed as one pixel axis."""
    return x.shape[3] == 1 or x.stride(2) == x.stride(3) * x.shape[3]


def chosen_configs() -> dict:
    """The launch configuration each kernel last ran with (after autotuning, the tuned one)."""
    return {name: (str(k.last_config) if k.last_config else None) for name, k in
            (("word_attention_fwd", _FWD), ("word_attention_bwd", _BWD))}
