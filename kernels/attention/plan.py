"""Launch planning of the fused F_attn kernels (``fused.py``): the autotuning candidates, the pixels
per backward program, the default launch per GPU generation and precision, and the whole word and
channel tiles. Nothing here launches.
"""

from __future__ import annotations

from .._runtime import next_block
from .._tuning import LaunchConfig

# Pixels per backward program: the partial sums of d_context are per chunk, so their buffer does not
# depend on the tuned tile size. It must be a multiple of every backward BLOCK_Q below (a test checks).
PIXELS_PER_PROGRAM = 128

# A memory-bound kernel: the candidates trade pixels per program (bytes in flight) against registers;
# every default of ``default_config`` is among them (a launch that does not fit falls back to its
# neighbours). The pixel tile is the M axis of products whose result feeds another product, to which
# Triton gives every warp: BLOCK_Q >= 16 x warps, or the tile is computed several times over.
FORWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_Q=q) for q, w, s in (
    (64, 4, 1), (64, 4, 2), (64, 8, 1), (128, 4, 1), (128, 8, 1), (128, 8, 2), (256, 8, 1))]
BACKWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_Q=q) for q, w, s in (
    (32, 4, 1), (64, 4, 1), (64, 4, 2), (64, 8, 1), (128, 8, 1), (128, 8, 2))]


def prune(candidates, args):
    """Pixel tiles wider than the (power-of-two-covered) image only repeat a smaller candidate's work
    with more masked lanes."""
    widest = next_block(args["HW"])
    kept = [c for c in candidates if dict(c.meta)["BLOCK_Q"] <= widest]
    return kept or candidates[:1]


# 4 warps on 64 pixels: the tile fills one warpgroup's M, and two or more programs fit an SM.
FORWARD_DEFAULT = LaunchConfig.of(num_warps=4, num_stages=1, BLOCK_Q=64)
BACKWARD_DEFAULT = LaunchConfig.of(num_warps=4, num_stages=1, BLOCK_Q=64)


def default_config(capability: int | None, precision: str, backward: bool) -> LaunchConfig:
    """What runs without autotuning, per GPU generation and resolved ``precision`` (``python -m
    benchmarks.kernel_resources`` shows what each compiles to; a test keeps the defaults of the default
    precisions free of spills inside their loops on sm_90, sm_80 and sm_86)."""
    if precision == "ieee":
        # FMA products hold whole operand rows in registers: at 4 warps the C=48 forward spills
        # kilobytes, and the backward's five products fit only on 32-pixel tiles.
        return (LaunchConfig.of(num_warps=4, num_stages=1, BLOCK_Q=32) if backward
                else LaunchConfig.of(num_warps=8, num_stages=1, BLOCK_Q=64))
    if backward and precision in ("bf16x3", "tf32") and capability is not None and capability < 90:
        # mma.sync keeps its fp32 accumulators in registers: 64-pixel tiles at 4 warps spill inside
        # the tile loop (C=48). bf16x3: one 128-pixel tile per program on 8 warps spills a few values
        # once; tf32, whose fp32 operands take twice the shared memory, 64 pixels on 8 warps (its
        # 128-pixel tile needed 128 KB at C=48 with Triton 3.8, more than ~100 KB GPUs have).
        return LaunchConfig.of(num_warps=8, num_stages=1, BLOCK_Q=128 if precision == "bf16x3" else 64)
    return BACKWARD_DEFAULT if backward else FORWARD_DEFAULT


def whole_tiles(C: int, T: int) -> dict:
    """The words and the channels are whole in every program (T <= ~32, C <= 64 in the model); the
    pixels are tiled."""
    return dict(BLOCK_T=next_block(T), BLOCK_C=next_block(C))
