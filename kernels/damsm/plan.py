"""Launch planning of the fused DAMSM kernels (``fused.py``): the autotuning candidates, the default
launch per GPU generation and operand format, the caption groups' compile-time sizes, and how the
backward spreads its work (splits, chunks of images) within its memory budgets. Nothing here launches.
"""

from __future__ import annotations

import functools
import math

import torch

from .._runtime import next_block
from .._tuning import LaunchConfig

# At most this many captions share a program's rows: short test captions (T = 1) would otherwise
# unroll the per-caption loops of the segmented softmax 64 times.
MAX_GROUP = 8


# Region tiles: 128 rows fill wgmma's M for 8 warps, 64 suit 4 warps, 32 GPUs without wgmma (mma.sync
# takes M = 16) and ~100 KB of shared memory, 16 the wide (bf16x3, fp32) operands there. BLOCK_K: the
# chunk of features the gradient kernel produces both gradients in. Every default of
# ``default_config`` is a candidate, so that a launch that does not fit falls back to its neighbours.
FORWARD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_N=n) for n, w, s in (
    (16, 8, 1), (32, 4, 1), (32, 8, 1), (32, 8, 2), (64, 4, 2), (64, 8, 2), (128, 8, 1), (128, 8, 2))]
GRAD_CANDIDATES = [LaunchConfig.of(num_warps=w, num_stages=s, BLOCK_N=n, BLOCK_K=kk) for n, kk, w, s in (
    (16, 32, 8, 1), (32, 32, 4, 1), (32, 32, 8, 1), (64, 32, 4, 1), (64, 32, 8, 2), (128, 32, 8, 1),
    (128, 64, 8, 1), (128, 32, 8, 2))]


def prune(candidates, args):
    """Region tiles wider than the (power-of-two-covered) region axis only repeat a smaller candidate."""
    widest = next_block(args["N"])
    kept = [c for c in candidates if dict(c.meta)["BLOCK_N"] <= widest]
    return kept or candidates[:1]


# The context kernel's output is kept for as many images at a time as fit in this (O(T·D) per pair):
# the backward then runs the two kernels per chunk of images.
CONTEXT_BYTES = 64 * 2**20
# The gradient kernel's partial sums of both gradients: spreading the work over more programs costs
# one more d_regions slot per image each time, so the spread stops at this much memory.
PARTIAL_BYTES = 96 * 2**20


def group_width(T: int, narrow: bool = False) -> int:
    """Rows of words per program: 64 (several short captions side by side), or the caption's own tile
    (also when ``narrow``: bf16x3 operands on a GPU with ~100 KB of shared memory, where two 64-row
    pairs of hi/lo words and dc do not fit)."""
    return 64 if T <= 32 and not narrow else next_block(T)


def shape_meta(T: int, D: int, narrow: bool = False) -> dict:
    """Compile-time sizes fixed by the model and the operand format, never tuned: the buffers'
    shapes depend on them. GROUP captions share a program's BLOCK_W rows of words."""
    width = group_width(T, narrow)
    return dict(T=T, GROUP=max(1, min(width // T, MAX_GROUP)), BLOCK_W=width, BLOCK_D=next_block(D))


def hopper_tiles(capability: int | None, fma: bool) -> bool:
    """Whether launches take Hopper's wgmma-sized tiles (so does the interpreter): not on GPUs without
    wgmma, nor for the FMA-only "ieee" products, whose registers those tiles overflow."""
    return capability is None or (capability >= 90 and not fma)


def default_config(T: int, D: int, N: int, capability: int | None = None, grad: bool = False,
                   wide: bool = False, fma: bool = False) -> LaunchConfig:
    """What runs without autotuning (interpreter, ``ATTNGAN_FAST_AUTOTUNE=0``), per GPU generation and
    operand format (``python -m benchmarks.kernel_resources`` shows what each compiles to):
    - Hopper (and the interpreter), 16-bit operands ("native"): 128-region tiles, the rows wgmma
      takes for 8 warps, with a (BLOCK_W, D) fp32 accumulator at 64 registers per thread;
    - Hopper, ``wide`` operands (4 bytes an element: bf16x3 pairs, or fp32 for "tf32"/"ieee"):
      32-region tiles (64 in the gradient kernel) in a 2-stage pipeline, the largest whose operands
      fit shared memory and, for bf16x3, stay out of local memory in the region loops; the similarity
      of a 32-row tile runs as mma.sync, its 8 warps splitting the word columns;
    - other GPUs (mma.sync): 32-region tiles on 8 warps (16 for wide operands, whose words are then
      one caption per program), whose staged operands fit ~100 KB of shared memory;
    - ``fma`` (precision "ieee", FMA units only) takes those narrow tiles on Hopper too: FMA products
      hold whole operand rows in registers, and the 32-region Hopper tiles spilled thousands of
      instructions inside their region loops."""
    hopper = hopper_tiles(capability, fma)
    if hopper and wide:
        block_n, warps, stages = (64 if grad else 32), 8, 2
    elif hopper:
        block_n, warps, stages = 128, 8, 1
    else:
        block_n, warps, stages = (16 if wide else 32), 8, 1
    meta = dict(BLOCK_N=min(block_n, next_block(N)))
    if grad:
        meta["BLOCK_K"] = min(32, next_block(D))
    return LaunchConfig.of(num_warps=warps, num_stages=stages, **meta)


@functools.lru_cache(maxsize=None)
def backward_splits(images: int, groups: int, need_words: bool, programs_per_wave: int,
                    slot_floats: tuple[int, int], B_img: int) -> tuple[int, int]:
    """(image splits S_m, caption-group splits S_k) of the gradient kernel for a chunk of ``images``:
    among the splits whose partial sums fit PARTIAL_BYTES, the fewest waves of programs times the most
    (image, group) pairs one program runs, then the least memory (``slot_floats`` = floats of one
    d_regions slot per image and of one d_words slot per group); if none fits, the least memory.
    Without d_words every image of the chunk gets its own programs."""
    best = None
    for s_m in range(1, images + 1):
        if not need_words and s_m != images:
            continue
        for s_k in range(1, groups + 1):
            work = math.ceil(images / s_m) * math.ceil(groups / s_k)
            time = math.ceil(s_m * s_k / programs_per_wave) * work
            memory = s_k * B_img * slot_floats[0] + (s_m * groups * slot_floats[1] if need_words else 0)
            key = (4 * memory > PARTIAL_BYTES, time if 4 * memory <= PARTIAL_BYTES else 0, memory, s_m * s_k)
            if best is None or key < best[0]:
                best = (key, (s_m, s_k))
    return best[1]


def image_chunks(B_img: int, groups: int, shape: dict, dot_bytes: int, need_words: bool) -> int:
    """Images per chunk of the backward: as many as CONTEXT_BYTES hold, in equal chunks."""
    per_image = groups * shape["BLOCK_W"] * (shape["BLOCK_D"] * (dot_bytes + (4 if need_words else 0)) + 4)
    chunks = math.ceil(B_img / max(1, min(B_img, CONTEXT_BYTES // per_image)))
    return math.ceil(B_img / chunks)


def splits_for(images: int, groups: int, need_words: bool, shape: dict, D: int, N: int, B_img: int,
                device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        # Under the interpreter 2 x 2 where possible, so that every slot path (store, add) is tested.
        return (min(2, images) if need_words else images), min(2, groups)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return backward_splits(images, groups, need_words, sms, (D * N, D * shape["T"] * shape["GROUP"]), B_img)
