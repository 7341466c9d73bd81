"""Useful work and the work the fused kernels really execute, side by side (DESIGN.md §6).

*Useful* work is what the math needs at the true sizes: for the DAMSM word scores the products per
(image, caption) pair over T words, N regions and D features — 2 in the forward (s = eᵀv, c = αvᵀ) and
4 more in the backward (dα = dc·v, d_regions = dcᵀα + eᵀds, d_words = ds·vᵀ); for F_attn 2 products per
pixel in the forward and 4 in the backward. Bytes: every input read once and every output written once.

*Executed* work is what the kernels run at their launch configuration: every product over its padded
tiles (the word axis covered by a power-of-two tile, the region or pixel axis by whole tiles, the
feature axis by whole chunks), every product a kernel recomputes, and the bytes every program loads and
stores (re-reads of a tile that L2 serves included). Each product counts once whatever its precision
mode (tf32x3 runs three MMAs for one product: that is a cost of precision, not of the design).

The counts follow the kernels' code; ``tests/test_work_counts.py`` ties them to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from kernels._runtime import next_block


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


def damsm_executed(batch: int, words: int, regions: int, dim: int, element_bytes: int, backward: bool) -> Work:
    """What the fused DAMSM kernels run at their default launch configuration (``kernels.damsm.fused``)."""
    from kernels.damsm import fused

    config = dict(fused.default_config(words, dim, regions).meta)
    block_t, block_n, block_k = next_block(words), config["BLOCK_N"], config["BLOCK_K"]
    pairs = batch * batch
    product = 2 * block_t * _padded(regions, block_n) * _padded(dim, block_k)
    tiles = ceil(regions / block_n)
    # Per pair and pass over the regions: the caption chunk for each tile, the regions twice (as the
    # chunks of s and whole for c), the whole caption once after the pass.
    pass_bytes = (tiles * words * dim + 2 * dim * regions + words * dim) * element_bytes
    forward = dict(products=2 * pairs, flops=pairs * 2 * product, bytes=pairs * pass_bytes + pairs * 4)
    if not backward:
        return Work(forward["flops"], forward["bytes"], {"forward": forward})
    # Each backward kernel redoes pass A, then its pass B: d_words 3 products (s, dα, ds·vᵀ), d_regions 4.
    words_kernel = dict(products=5 * pairs, flops=pairs * 5 * product, bytes=pairs * 2 * pass_bytes)
    regions_kernel = dict(products=6 * pairs, flops=pairs * 6 * product,
                          bytes=pairs * (2 * pass_bytes + 2 * dim * regions * 4))  # dv read-modify-write per tile
    parts = {"forward": forward, "bwd_words": words_kernel, "bwd_regions": regions_kernel}
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()), parts)


def attention_executed(batch: int, channels: int, pixels: int, words: int, element_bytes: int, backward: bool) -> Work:
    """What the fused F_attn kernels run at their default launch configurations (``kernels.attention.fused``)."""
    from kernels.attention import fused

    fwd_cfg, bwd_cfg = dict(fused.FORWARD_DEFAULT.meta), dict(fused.BACKWARD_DEFAULT.meta)
    block_t = next_block(words)

    def product(cfg):
        return 2 * batch * _padded(pixels, cfg["BLOCK_Q"]) * block_t * _padded(channels, cfg["BLOCK_K"])

    big = batch * channels * pixels * element_bytes
    context_per_tile = channels * words * element_bytes
    fwd_tiles = batch * ceil(pixels / fwd_cfg["BLOCK_Q"])
    # Forward: the query once, the context twice per tile (for s and for ctx), the map written once.
    forward = dict(products=2, flops=2 * product(fwd_cfg), bytes=2 * big + fwd_tiles * 2 * context_per_tile)
    if not backward:
        return Work(forward["flops"], forward["bytes"], {"forward": forward})
    bwd_tiles = batch * ceil(pixels / bwd_cfg["BLOCK_Q"])
    slot = channels * words * 4
    # Backward: s and dβ (query, gradient, context), then per chunk d_query and d_context, re-reading the
    # query and the gradient and read-modify-writing the d_context partial slot every tile.
    backward_part = dict(products=5, flops=5 * product(bwd_cfg),
                         bytes=4 * big + big + bwd_tiles * (2 * context_per_tile + 2 * slot))
    parts = {"forward": forward, "backward": backward_part}
    return Work(sum(p["flops"] for p in parts.values()), sum(p["bytes"] for p in parts.values()), parts)
