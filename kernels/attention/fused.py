"""Fused Triton kernels for the generator's word attention F_attn (DESIGN.md §2.3): forward and backward.

A small-key attention: T <= ~32 words, C = 32 or 48 channels, HW = 64² or 128² pixels. It is
memory-bound, so each program takes one sample's (C, T) context once and a tile of BLOCK_Q pixels:
the forward reads ``query`` once and writes ``ctx`` once; the (B, HW, T) attention is written only
when asked for. The backward recomputes β from ``query`` (cheaper than storing it), writes
``d_query`` and per-chunk partial sums of ``d_context`` that are added afterwards (deterministic).

Why every product runs over BLOCK_K channels at a time: with fp32 inputs and ``ieee`` dots, Triton
multiplies on the FMA units with each thread holding its rows and columns of both operands for the
whole contraction; whole 64-channel tiles (C = 48 padded) made the compiled kernels spill 5-8 KB per
thread and the backward outgrow the shared memory of ~100 KB GPUs (``python -m
benchmarks.kernel_resources``). So s = qᵀ·k and dβ = gᵀ·k are accumulated chunk by chunk, and
ctx = β·kᵀ, d_query = ds·kᵀ and d_context = g·β + q·ds are produced chunk by chunk; the second pass
re-reads the tile's chunks of q and g, which are still in L1/L2. No padding to a power of two is paid
on the channels either (48 = 3 chunks of 16).
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
def _load_channels(ptr, b, offs_c, C, offs_x, x_valid, stride_b, stride_c, stride_x):
    """Channels offs_c (BLOCK_K,) of sample b's (C, X) features at columns offs_x, (BLOCK_K, len(offs_x))
    fp32; channels past C and columns not in ``x_valid`` load as zero."""
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
def _scores(query_ptr, context_ptr, b, offs_q, q_valid, load_cols, C,
            stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt,
            BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """s = qᵀ·k on a pixel tile, (BLOCK_Q, BLOCK_T), contracted over the channels in chunks of BLOCK_K."""
    offs_t = tl.arange(0, BLOCK_T)
    s = tl.zeros((BLOCK_Q, BLOCK_T), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        q = _load_channels(query_ptr, b, offs_c, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp)
        k = _load_channels(context_ptr, b, offs_c, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt)
        s += tl.dot(tl.trans(q), k, input_precision=PRECISION)
    return s


@triton.jit
def _scores_and_d_beta(query_ptr, context_ptr, grad_ptr, b, offs_q, q_valid, load_cols, C,
                       stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt,
                       stride_gb, stride_gc, stride_gp,
                       BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """s = qᵀ·k and dβ = gᵀ·k on a pixel tile, (BLOCK_Q, BLOCK_T) each, sharing each chunk of k."""
    offs_t = tl.arange(0, BLOCK_T)
    s = tl.zeros((BLOCK_Q, BLOCK_T), dtype=tl.float32)
    d_beta = tl.zeros((BLOCK_Q, BLOCK_T), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        k = _load_channels(context_ptr, b, offs_c, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt)
        q = _load_channels(query_ptr, b, offs_c, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp)
        g = _load_channels(grad_ptr, b, offs_c, C, offs_q, q_valid, stride_gb, stride_gc, stride_gp)
        s += tl.dot(tl.trans(q), k, input_precision=PRECISION)
        d_beta += tl.dot(tl.trans(g), k, input_precision=PRECISION)
    return s, d_beta


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
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_t = tl.arange(0, BLOCK_T)
    q_valid = offs_q < HW
    valid, load_cols = _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                                      HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
    s = _scores(query_ptr, context_ptr, b, offs_q, q_valid, load_cols, C, stride_qb, stride_qc, stride_qp,
                stride_kb, stride_kc, stride_kt, BLOCK_Q, BLOCK_T, BLOCK_K, PRECISION)
    beta = _word_softmax(s, valid)
    # ctx = β·kᵀ, one chunk of output channels at a time (the context chunk is re-read from L1).
    for c0 in range(0, C, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        k = _load_channels(context_ptr, b, offs_c, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt)
        out = tl.dot(beta, tl.trans(k), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_K)
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
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (b, chunk) covers pixels chunk·CHUNK .. +CHUNK in tiles of BLOCK_Q: it writes their
    d_query and one partial sum of d_context. CHUNK is fixed by the launcher, not by the tile size, so
    the partial buffer has the same shape whatever BLOCK_Q the autotuner picks. The partial sum is
    accumulated in place in its (C, T) slot, which only this program touches: a register accumulator
    would have to span all channels, while every product here is taken BLOCK_K channels at a time."""
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    t_store = offs_t < T
    first = chunk * CHUNK
    partial = partial_ptr + b * stride_pb + chunk * stride_pq
    for q0 in range(first, tl.minimum(first + CHUNK, HW), BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        q_valid = offs_q < HW
        valid, load_cols = _word_validity(mask_ptr, b, offs_q, B, HW, T, stride_mb, stride_mt,
                                          HAS_MASK, LEGACY_MASK, BLOCK_Q, BLOCK_T)
        s, d_beta = _scores_and_d_beta(query_ptr, context_ptr, grad_ptr, b, offs_q, q_valid, load_cols, C,
                                       stride_qb, stride_qc, stride_qp, stride_kb, stride_kc, stride_kt,
                                       stride_gb, stride_gc, stride_gp, BLOCK_Q, BLOCK_T, BLOCK_K, PRECISION)
        beta = _word_softmax(s, valid)
        d_s = beta * (d_beta - tl.sum(beta * d_beta, axis=1)[:, None])
        # Whether this is a later tile of this program, as a block, as in the DAMSM regions kernel (the
        # interpreter mistypes a scalar condition and-ed into a block mask).
        not_first = tl.full((BLOCK_T,), q0, tl.int32) > first
        for c0 in range(0, C, BLOCK_K):
            offs_c = c0 + tl.arange(0, BLOCK_K)
            c_valid = offs_c < C
            k = _load_channels(context_ptr, b, offs_c, C, offs_t, load_cols, stride_kb, stride_kc, stride_kt)
            d_q = tl.dot(d_s, tl.trans(k), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_K)
            tl.store(dquery_ptr + b * stride_db + offs_c[None, :] * stride_dc + offs_q[:, None] * stride_dp,
                     d_q.to(dquery_ptr.dtype.element_ty), mask=q_valid[:, None] & c_valid[None, :])
            # Pixels past HW load g = 0 and q = 0, so they add nothing to the context gradient.
            q = _load_channels(query_ptr, b, offs_c, C, offs_q, q_valid, stride_qb, stride_qc, stride_qp)
            g = _load_channels(grad_ptr, b, offs_c, C, offs_q, q_valid, stride_gb, stride_gc, stride_gp)
            slot = partial + offs_c[:, None] * stride_pc + offs_t[None, :] * stride_pt
            slot_mask = c_valid[:, None] & t_store[None, :]
            # The first tile starts the sum (the buffer is uninitialised), later tiles add to it. The
            # barrier keeps every thread's read of the slot ahead of any thread's write to it (layouts
            # may replicate an element across threads).
            d_k = tl.load(slot, mask=slot_mask & not_first[None, :], other=0.0)
            tl.debug_barrier()
            d_k += tl.dot(g, beta, input_precision=PRECISION) + tl.dot(q, d_s, input_precision=PRECISION)
            tl.store(slot, d_k, mask=slot_mask)
        # The next tile reads the slots back in whatever layout its load gets: other threads' stores
        # must have landed first.
        tl.debug_barrier()


# --------------------------------------------------------------------------------------------------
# launchers

INTERPRETED = kernel_is_interpreted(_word_attn_fwd_kernel)

# Pixels per backward program: the partial sums of d_context are per chunk, so their buffer does not
# depend on the tuned tile size. It must be a multiple of every backward BLOCK_Q below (a test checks).
PIXELS_PER_PROGRAM = 128

# A memory-bound kernel: the candidates trade pixels per program (bytes in flight) against registers,
# and chunks of channels per product (BLOCK_K) against loop trips. Every one compiles without spills for
# fp32 (ieee) and bf16 (tf32) inputs on sm_90 and sm_86, within 8 bytes (``python -m
# benchmarks.kernel_resources --only word_attention``); wider chunks (64) and pipelined backward loops
# spilled kilobytes and are left out.
FORWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_Q=q, BLOCK_K=k) for q, k, w, s in (
    (32, 16, 4, 1), (64, 16, 4, 1), (64, 16, 4, 2), (64, 32, 8, 2), (128, 16, 4, 1),
    (128, 16, 8, 1), (128, 16, 8, 2), (128, 32, 8, 1), (256, 16, 8, 1), (256, 32, 8, 1))]
BACKWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_Q=q, BLOCK_K=k) for q, k, w, s in (
    (16, 16, 4, 1), (32, 16, 4, 1), (32, 32, 4, 2), (32, 16, 8, 1), (64, 16, 4, 1),
    (64, 16, 8, 1), (64, 16, 8, 2), (64, 32, 8, 1), (128, 16, 8, 1), (128, 32, 8, 1))]


def _prune(candidates, args):
    """Pixel tiles wider than the (power-of-two-covered) image, or channel chunks wider than the
    channels, only repeat a smaller candidate's work with more masked lanes."""
    widest_q, widest_k = next_block(args["HW"]), next_block(args["C"])
    kept = [c for c in candidates if dict(c.meta)["BLOCK_Q"] <= widest_q and dict(c.meta)["BLOCK_K"] <= widest_k]
    return kept or candidates[:1]


# stride_qp tells NCHW (1) from channels_last (C): the two access patterns tune differently.
_FWD = TunedKernel(_word_attn_fwd_kernel, FORWARD_CANDIDATES, key=["C", "HW", "T", "stride_qp", "PRECISION", "RETURN_ATTN"],
                   prune=_prune, interpreted=INTERPRETED)
_BWD = TunedKernel(_word_attn_bwd_kernel, BACKWARD_CANDIDATES, key=["C", "HW", "T", "stride_qp", "PRECISION"],
                   prune=_prune, interpreted=INTERPRETED)
FORWARD_DEFAULT = LaunchConfig.of(num_warps=4, num_stages=1, BLOCK_Q=64, BLOCK_K=16)
BACKWARD_DEFAULT = LaunchConfig.of(num_warps=8, num_stages=1, BLOCK_Q=64, BLOCK_K=16)


def _whole_tiles(C: int, T: int) -> dict:
    """The words are whole in every program; pixels and channels are tiled."""
    return dict(BLOCK_T=next_block(T))


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
