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
                                 bytes=3 * big + bwd_programs * (context + 2 * channels * words * 4))
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()), parts)
