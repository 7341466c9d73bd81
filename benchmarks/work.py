"""Useful work and the work the fused kernels really execute, side by side (docs/design.md §6).

*Useful* work is what the math needs at the true sizes: for the DAMSM word scores the products per
(image, caption) pair over T words, N regions and D features — 2 in the forward (s = eᵀv, c = αvᵀ) and
4 more in the backward (dα = dc·v, d_regions = dcᵀα + eᵀds, d_words = ds·vᵀ); for F_attn 2 products per
pixel in the forward and 4 in the backward. Bytes: every input read once and every output written once.

*Executed* work is what the kernels run at their launch configuration: every product over its padded
tiles (the word axis covered by a power-of-two tile, the region or pixel axis by whole tiles, the
feature axis by whole chunks), every product a kernel recomputes, and the bytes every program loads and
stores (re-reads of a tile that L2 serves included). Each product counts once whatever its precision
mode (bf16x3 runs three MMAs for one product: that is a cost of precision, not of the design).

The counts follow the kernels' code; ``tests/test_benchmark_work.py`` checks that they use the configurations
the launchers launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from attngan_fast.kernels._runtime import next_block


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one call (forward, or forward + backward); ``detail`` names the parts."""

    flops: float
    bytes: float
    detail: dict = field(default_factory=dict, compare=False)


def _padded(n: int, block: int) -> int:
    return ceil(n / block) * block


def damsm_useful(batch: int, words: int, regions: int, dim: int, element_bytes: int, backward: bool) -> Work:
    """The products of §2.1 for every (image, caption) pair of a B x B batch, at the true sizes."""
    pairs = batch * batch
    product = 2 * words * regions * dim
    inputs = batch * dim * (words + regions) * element_bytes
    scores = pairs * 4
    if backward:  # read the inputs and the score gradient, write both input gradients
        return Work(pairs * 6 * product, 2 * inputs + 2 * scores + inputs)
    return Work(pairs * 2 * product, inputs + scores)


def attention_useful(batch: int, channels: int, pixels: int, words: int, element_bytes: int, backward: bool) -> Work:
    """F_attn: s = qᵀk and ctx = βkᵀ per pixel (forward), dβ, d_query, and the two d_context products
    (backward); bytes: query and context map once, plus the gradient, d_query and d_context."""
    product = 2 * pixels * words * channels * batch
    big = batch * channels * pixels * element_bytes
    small = batch * channels * words * element_bytes
    if backward:
        return Work(6 * product, 5 * big + 3 * small)
    return Work(2 * product, 2 * big + small)


def _replication(rows: int, cols: int, warps: int, capability: int) -> int:
    """How many times a product whose result feeds another product is computed over. Triton gives all
    warps of such a product to one axis: with wgmma (Hopper, M a multiple of 64) to M, 16 rows a warp,
    so a tile of fewer rows is duplicated; with mma.sync to the longer axis (16 rows or 8 columns a
    warp)."""
    if capability >= 90 and rows % 64 == 0:
        return max(1, 16 * warps // rows)
    return max(1, 16 * warps // rows) if rows >= cols else max(1, 8 * warps // cols)


def _damsm_kernel(name: str, products: dict, config, pair_groups: int, n_pad: int, width: int, block_d: int,
                  bytes_: float, capability: int) -> dict:
    """One DAMSM kernel's row: ``products`` maps each product to whether its result feeds another
    product (so the compiler may replicate it); each is 2·n_pad·width·block_d FLOPs per pair-group."""
    copies = _replication(dict(config.meta)["BLOCK_N"], width, config.num_warps, capability)
    per_product = 2 * n_pad * width * block_d * pair_groups
    flops = sum(per_product * (copies if chained else 1) for chained in products.values())
    return dict(kernel=name, config=str(config), products=list(products), replicated=copies,
                flops=flops, bytes=bytes_)


def damsm_executed(batch: int, words: int, regions: int, dim: int, element_bytes: int, backward: bool,
                   capability: int = 90) -> Work:
    """What the fused DAMSM kernels run for a B x B batch at their default launch configurations on a
    GPU of ``capability`` and the default precision of inputs of ``element_bytes`` (4: fp32 as bf16
    pairs; 2: bf16/fp16 straight in). Counted: the word rows of each caption group (BLOCK_W, of which
    GROUP·T are words), the region tiles padded to BLOCK_N, the features to BLOCK_D, pass A done again
    by the backward's context kernel, products computed over by the compiler's warp layout; bytes:
    every load and store of every program (L2 serves the re-reads), and the launchers' copies."""
    from attngan_fast.kernels.damsm import plan

    split = element_bytes == 4
    shape = plan.shape_meta(words, dim, narrow=split and capability < 90)
    width, block_d = shape["BLOCK_W"], shape["BLOCK_D"]
    groups = ceil(batch / shape["GROUP"])
    pair_groups = batch * groups
    operand = 4 if split else element_bytes  # a bf16 pair or one 16-bit value per element
    words_row = width * block_d * (4 if split else element_bytes)  # the packed group, as loaded
    region_bytes = regions * dim * operand  # one pass over an image's regions
    fwd_cfg = plan.default_config(words, dim, regions, capability, wide=split)
    grad_cfg = plan.default_config(words, dim, regions, capability, grad=True, wide=split)
    launch = batch * regions * dim * (element_bytes + operand)  # features-last copy (and the split)
    parts = {"forward": _damsm_kernel(
        "damsm_fwd", {"s": True, "c": False}, fwd_cfg, pair_groups, _padded(regions, dict(fwd_cfg.meta)["BLOCK_N"]),
        width, block_d, launch + pair_groups * (region_bytes + 2 * words_row + 4 * shape["GROUP"]), capability)}
    if backward:
        dc_row = width * block_d * operand
        parts["context"] = _damsm_kernel(
            "damsm_bwd_context", {"s": True, "c": False}, fwd_cfg, pair_groups,
            _padded(regions, dict(fwd_cfg.meta)["BLOCK_N"]), width, block_d,
            launch + pair_groups * (region_bytes + 2 * words_row + dc_row + width * block_d * 4 + width * 4), capability)
        grad_n = dict(grad_cfg.meta)["BLOCK_N"]
        tiles = ceil(regions / grad_n)
        # Per pair-group: the words (whole, then in chunks each tile), the regions (whole for s and dα,
        # in chunks again for d_words), dc/z (whole and in chunks each tile), the d_words running sum
        # read-modify-written each tile, the d_regions slot read-modify-written once per group, and
        # d_words' partial slot once per pair-group.
        per_group = (words_row * (1 + tiles) + 2 * region_bytes + 2 * tiles * dc_row
                     + width * block_d * 4 * (2 * tiles + 1) + 2 * regions * dim * 4
                     + 2 * shape["GROUP"] * words * dim * 4)
        parts["grad"] = _damsm_kernel(
            "damsm_bwd_grad", {"s": True, "dα": True, "dv (u·dc)": False, "dv (ds·e)": False, "d_words": False},
            grad_cfg, pair_groups, _padded(regions, grad_n), width, block_d, pair_groups * per_group, capability)
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()), parts)


def attention_executed(batch: int, channels: int, pixels: int, words: int, element_bytes: int, backward: bool) -> Work:
    """What the fused F_attn kernels run at their default launch configurations and the default
    precision (``attngan_fast.kernels.attention.fused``): pixels padded to BLOCK_Q, words to BLOCK_T, channels to
    BLOCK_C; every tile's loads and stores."""
    from attngan_fast.kernels.attention import plan

    split = element_bytes == 4
    block_t, block_c = next_block(words), next_block(channels)

    def product(config):
        return 2 * batch * _padded(pixels, dict(config.meta)["BLOCK_Q"]) * block_t * block_c

    big = batch * channels * pixels * element_bytes
    context = channels * words * element_bytes
    precision = "bf16x3" if split else "native"
    fwd_cfg = plan.default_config(90, precision, backward=False)
    bwd_cfg = plan.default_config(90, precision, backward=True)
    fwd_programs = batch * ceil(pixels / dict(fwd_cfg.meta)["BLOCK_Q"])
    # Forward: the query once, the context once per program, the map written once.
    parts = {"forward": dict(kernel="word_attention_fwd", config=str(fwd_cfg), products=["s", "ctx"],
                             flops=2 * product(fwd_cfg), bytes=2 * big + fwd_programs * context)}
    if backward:
        bwd_programs = batch * ceil(pixels / plan.PIXELS_PER_PROGRAM)
        # Backward: the query and the incoming gradient once, d_query written once, the context once
        # per program, one (C, T) fp32 partial sum of d_context per program, summed afterwards.
        parts["backward"] = dict(kernel="word_attention_bwd", config=str(bwd_cfg),
                                 products=["s", "dβ", "d_query", "d_context (g·β)", "d_context (q·ds)"],
                                 flops=5 * product(bwd_cfg),
                                 bytes=3 * big + bwd_programs * (context + 2 * channels * words * 4),
                                 programs=bwd_programs)
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()), parts)


# ------------------------------------------------------------------------------------------------------
# F_attn's providers at the bird sizes: what each executes and moves (docs/attention-providers.md)

# Providers whose work is counted op by op: eager PyTorch, every ATen kernel reading its inputs and writing
# its outputs (an upper bound of the HBM traffic: L2 may serve a re-read), FLOPs by FlopCounterMode.
COUNTED_EAGER = ("released", "reference", "sdpa-math")
# Providers whose work follows from their kernels' design (tile sizes, grids, what each pass reads and
# writes), as read in the sources of torch 2.14 (the numbers below) and of this project.
MODELLED = ("reference-compiled", "sdpa-efficient", "sdpa-flash-key-channel", "flex-compiled", "fused")
# Not counted: cuDNN's kernels are closed; FlashAttention takes no mask (its exact form is the key-channel row).
NOT_COUNTED = {"sdpa-cudnn": "closed source: the GPU run's time is all there is",
               "sdpa-flash": "takes no mask on CUDA: see sdpa-flash-key-channel"}

# torch 2.14's kernels at head dims <= 64 (CUDA sources; inductor's heuristics for FlexAttention on sm_90):
EFFICIENT_KEYS_PER_BLOCK = 64  # mem-efficient attention: keys per tile, forward and backward
FLASH_KEYS_PER_BLOCK = 128  # FlashAttention-2, head dim 64 template
FLASH_HEAD_DIMS = (32, 64, 96, 128, 160, 192, 224, 256)  # FlashAttention-2's compiled head dims
FLEX_BLOCK_N = 64  # FlexAttention forward and its dQ programs (BLOCK_N, BLOCK_N2)
FLEX_BLOCK_N1 = {2: 64, 4: 16}  # its dK/dV programs' key tile, by element bytes (bf16 / fp32)
KEY_CHANNELS = 8  # the key-channel form's added channels (attngan_fast.kernels.attention.sdpa)


def _eager_work(provider: str, batch: int, channels: int, pixels: int, words: int, element_bytes: int,
                backward: bool) -> Work:
    """``provider`` run on fake (shape-only) channels_last tensors at the true sizes, counted kernel by
    kernel by the step budget's ``StepCounter`` (bytes of every tensor input and output, views and
    allocations free; FLOPs by torch's formulas). The loss gradient is made outside the count."""
    from benchmarks.cases import attention_provider
    from benchmarks.step_budget import StepCounter

    side = int(round(pixels ** 0.5))
    if side * side != pixels:
        raise ValueError(f"pixels must be a square (an image side squared), got {pixels}")
    dtype = {2: torch.bfloat16, 4: torch.float32}[element_bytes]
    fake = FakeTensorMode()
    with fake:
        query = torch.empty(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        context = torch.empty(batch, channels, words, dtype=dtype)
        word_mask = torch.zeros(batch, words, dtype=torch.bool)
        query.requires_grad_(backward), context.requires_grad_(backward)
    fn = attention_provider(provider)

    def counted(run):
        with fake, StepCounter({}) as counter:
            out = run()
        row = counter.rows["losses and glue"]  # the default region: nothing here is a labelled module
        return out, dict(kernels=row["launches"], bytes=row["bytes"], flops=row["flops"])

    ctx, forward = counted(lambda: fn(query, context, word_mask))
    parts = {"forward": forward}
    if backward:
        with fake:
            grad = torch.empty_like(ctx)
        parts["backward"] = counted(lambda: torch.autograd.grad(ctx, (query, context), grad))[1]
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()),
                dict(parts, how="counted: ATen kernels on fake tensors"))


def _flash_head_dim(channels: int) -> int:
    return next(d for d in FLASH_HEAD_DIMS if d >= channels)


def _modelled_work(provider: str, batch: int, channels: int, pixels: int, words: int, element_bytes: int,
                   backward: bool) -> Work:
    """The design count of a fused attention kernel (or, for the compiled reference, of the schedule
    "library matmuls, everything between them fused"). rows = B·HW; big = one pass over a (B, HW, C)
    map; row = one fp32 per pixel (logsumexp, Δ = rowsum(dO∘O))."""
    rows, e = batch * pixels, element_bytes
    big, row, small = rows * channels * e, rows * 4, batch * channels * words * e

    def product(keys: int, dim: int = channels) -> int:
        return 2 * rows * keys * dim

    if provider == "fused":
        return attention_executed(batch, channels, pixels, words, element_bytes, backward)
    # Every program of a forward kernel loads the sample's keys and values (L2 serves all but the first).
    def keys_values(programs: int, dim: int = channels) -> float:
        return programs * 2 * words * dim * e

    if provider == "sdpa-efficient":
        keys = _padded(words, EFFICIENT_KEYS_PER_BLOCK)
        parts = {"forward": dict(passes="q read, out written, logsumexp written (with backward); k, v, mask "
                                        "bias per program (L2)", flops=2 * product(keys),
                                 bytes=2 * big + (row if backward else 0) + keys_values(batch * ceil(pixels / 64)))}
        if backward:
            parts["backward"] = dict(
                passes="Δ from out and dO; then B programs (num_splits_key = ceil(T / 64) = 1), each over all "
                       "its HW queries: q, dO, logsumexp, Δ read, dq written; dk, dv",
                flops=5 * product(keys), bytes=2 * big + row + 2 * big + 2 * row + big + 3 * small,
                programs=batch)
        return _work(parts)
    if provider == "sdpa-flash-key-channel":
        if e != 2:
            raise ValueError("FlashAttention takes fp16/bf16 only")
        wide, dim = rows * (channels + KEY_CHANNELS) * e, _flash_head_dim(channels + KEY_CHANNELS)
        keys = _padded(words, FLASH_KEYS_PER_BLOCK)
        parts = {"forward": dict(passes="q copied into q' (C + 8 channels); q' read, o' written (ctx a view), "
                                        "logsumexp (with backward)", flops=2 * product(keys, dim),
                                 bytes=big + wide + wide + wide + (row if backward else 0)
                                 + keys_values(batch * ceil(pixels / 128), channels + KEY_CHANNELS))}
        if backward:
            accum = rows * dim * 4
            parts["backward"] = dict(
                passes="dO padded into dO'; Δ from o', dO' and dq_accum zeroed; B programs (one key block) "
                       "over all queries: q', dO', logsumexp, Δ read, dq_accum added (fp32 atomics); dq' "
                       "converted", flops=5 * product(keys, dim),
                bytes=(big + wide) + (2 * wide + row + accum) + (2 * wide + 2 * row + 2 * accum) + (accum + wide),
                programs=batch)
        return _work(parts)
    if provider == "flex-compiled":
        dim = next_block(channels)
        parts = {"forward": dict(passes="q read, out written, logsumexp (with backward); block mask built "
                                        "per call (B·HW/128 ints)", flops=2 * product(_padded(words, FLEX_BLOCK_N), dim),
                                 bytes=2 * big + (row if backward else 0) + keys_values(batch * ceil(pixels / 64)))}
        if backward:
            block_n1 = FLEX_BLOCK_N1[e]
            parts["backward"] = dict(
                passes="Δ from out and dO; dQ programs (HW / 64 per sample): q, dO, logsumexp, Δ read, dq "
                       f"written; dK/dV programs (ceil(T / {block_n1}) per sample), each over all its HW "
                       "queries: q, dO, logsumexp, Δ read again",
                flops=3 * product(_padded(words, FLEX_BLOCK_N), dim) + 4 * product(_padded(words, block_n1), dim),
                bytes=(2 * big + row) + (2 * big + 2 * row + big) + (2 * big + 2 * row),
                programs=batch * ceil(words / block_n1))
        return _work(parts)
    if provider == "reference-compiled":
        f32, scores = rows * channels * 4, rows * words * 4
        cast = (big + f32) if e != 4 else 0  # a 16-bit map to fp32 (or back) for the fp32 matmuls
        parts = {"forward": dict(passes="[q to fp32]; bmm s = qᵀk; softmax (mask fused); bmm ctx = βkᵀ; [ctx "
                                        "to the input dtype]", flops=2 * product(words),
                                 bytes=cast + (f32 + scores) + 2 * scores + (scores + f32) + cast)}
        if backward:
            parts["backward"] = dict(
                passes="[g to fp32]; bmm dβ = gᵀk; ds (fused, β saved); bmm d_query = ds·k [and its cast]; "
                       "bmm d_context = g·β + q·ds (g, β, q, ds read)",
                flops=4 * product(words),
                bytes=cast + (f32 + scores) + 3 * scores + (scores + f32) + cast + (2 * f32 + 2 * scores))
        return _work(parts)
    raise ValueError(f"no design count for provider {provider!r}")


MODELLED_HOW = "modelled from the kernels' design"


def _work(parts: dict) -> Work:
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()),
                dict(parts, how=MODELLED_HOW))


def attention_provider_work(provider: str, batch: int, channels: int, pixels: int, words: int, element_bytes: int,
                            backward: bool) -> Work | None:
    """What one F_attn call of ``provider`` (``benchmarks.cases.PROVIDERS["attention"]``) executes and
    moves at these sizes: FLOPs with the kernels' padding, bytes to and from memory; ``detail`` has a
    part per pass (forward, backward), how it was counted and, for backward kernels with few programs,
    how many there are. None for the providers not counted (``NOT_COUNTED``)."""
    if provider in NOT_COUNTED:
        return None
    if provider in COUNTED_EAGER:
        return _eager_work(provider, batch, channels, pixels, words, element_bytes, backward)
    return _modelled_work(provider, batch, channels, pixels, words, element_bytes, backward)


PROVIDER_ORDER = ("released", "reference", "reference-compiled", "sdpa-math", "sdpa-efficient", "sdpa-cudnn",
                  "sdpa-flash", "sdpa-flash-key-channel", "flex-compiled", "fused")


def provider_work(batch: int, channels: int, pixels: int, words: int) -> list[dict]:
    """The useful work and what every F_attn provider executes and moves at these sizes, fp32 and bf16:
    rows of GFLOP and MB for the forward and for forward + backward, backward programs, how counted."""
    rows = []
    for element_bytes, dtype in ((4, "fp32"), (2, "bf16")):
        useful = [attention_useful(batch, channels, pixels, words, element_bytes, b) for b in (False, True)]
        for provider in ("useful", *PROVIDER_ORDER):
            row = {"provider": provider, "dtype": dtype}
            try:
                fwd, both = useful if provider == "useful" else (
                    attention_provider_work(provider, batch, channels, pixels, words, element_bytes, b)
                    for b in (False, True))
            except ValueError as err:  # FlashAttention in fp32
                fwd = both = None
                row["counted"] = str(err)
            if provider in NOT_COUNTED:
                row["counted"] = NOT_COUNTED[provider]
            elif fwd is not None:
                row.update(fwd_gflop=fwd.flops / 1e9, fwd_mb=fwd.bytes / 1e6, gflop=both.flops / 1e9,
                           mb=both.bytes / 1e6, fwd_x_useful=fwd.bytes / useful[0].bytes,
                           x_useful=both.bytes / useful[1].bytes,
                           programs=both.detail.get("backward", {}).get("programs"),
                           counted="the math" if provider == "useful" else both.detail.get("how", MODELLED_HOW))
            rows.append(row)
    return rows
