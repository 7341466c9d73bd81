"""Sizes, inputs, the four providers of DESIGN.md §6 and the counted work of each op.

Providers: (a) ``released`` — the release's algorithm (a Python loop over captions with host syncs
for the DAMSM score; flatten/bmm/repeated mask for F_attn); (b) ``reference`` — our vectorized
plain-PyTorch reference, eager; (c) ``reference-compiled`` — (b) under ``torch.compile``; (d)
``fused`` — the Triton kernels, autotuned on CUDA; and ``fused-untuned``, the same kernels with their
fixed default launch configurations, which shows what autotuning buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from kernels import autotuning, damsm_word_scores, damsm_word_scores_loop, damsm_word_scores_ref, word_attention, word_attention_ref
from kernels.attention import word_attention_released

PROVIDERS = ("released", "reference", "reference-compiled", "fused", "fused-untuned")


@dataclass(frozen=True)
class DamsmCase:
    batch: int
    dim: int = 256
    words: int = 18
    side: int = 17  # regions: side x side

    @property
    def label(self) -> str:
        return f"B={self.batch} T={self.words} N={self.side ** 2} D={self.dim}"


@dataclass(frozen=True)
class AttentionCase:
    batch: int
    channels: int
    side: int
    words: int = 18

    @property
    def label(self) -> str:
        return f"B={self.batch} C={self.channels} {self.side}x{self.side} T={self.words}"


GPU_DAMSM = [DamsmCase(20), DamsmCase(48), DamsmCase(100)]
GPU_ATTENTION = [AttentionCase(20, 32, 64), AttentionCase(20, 32, 128), AttentionCase(20, 48, 64), AttentionCase(20, 48, 128)]
CPU_DAMSM = [DamsmCase(4, dim=32, words=6, side=5)]
CPU_ATTENTION = [AttentionCase(2, 16, 8, words=6)]


def damsm_inputs(case: DamsmCase, device, dtype=torch.float32, seed: int = 0):
    """words (B, D, T), cap_lens (B,) in [1, T] with the full length present, regions (B, D, s, s);
    scaled by D^-1/4 so similarities are O(1), as for trained encoders."""
    gen = torch.Generator().manual_seed(seed)
    scale = case.dim ** -0.25
    words = (torch.randn(case.batch, case.dim, case.words, generator=gen) * scale).to(device, dtype)
    regions = (torch.randn(case.batch, case.dim, case.side, case.side, generator=gen) * scale).to(device, dtype)
    cap_lens = torch.randint(1, case.words + 1, (case.batch,), generator=gen)
    cap_lens[0] = case.words
    return words, cap_lens.to(device), regions


def attention_inputs(case: AttentionCase, device, dtype=torch.float32, seed: int = 0):
    """query (B, C, s, s), context (B, C, T), word_mask (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    scale = case.channels ** -0.25
    query = (torch.randn(case.batch, case.channels, case.side, case.side, generator=gen) * scale).to(device, dtype)
    context = (torch.randn(case.batch, case.channels, case.words, generator=gen) * scale).to(device, dtype)
    lengths = torch.randint(1, case.words + 1, (case.batch,), generator=gen)
    lengths[0] = case.words
    return query, context, (torch.arange(case.words)[None, :] >= lengths[:, None]).to(device)


@lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn)


def _untuned(fn):
    """fn with the kernels' fixed default launch configurations (the backward runs inside too)."""
    def run(*args):
        with autotuning(False):
            return fn(*args)

    return run


def _damsm_fused(words, cap_lens, regions):
    return damsm_word_scores(words, cap_lens, regions, impl="triton")


def _attention_fused(query, context, word_mask):
    return word_attention(query, context, word_mask, impl="triton")[0]


def _damsm_released(words, cap_lens, regions):
    return damsm_word_scores_loop(words, cap_lens, regions.flatten(2))


def _damsm_reference(words, cap_lens, regions):
    return damsm_word_scores_ref(words, cap_lens, regions.flatten(2))


def damsm_provider(name: str):
    """f(words, cap_lens, regions) -> R (B, B)."""
    return {
        "released": _damsm_released,
        "reference": _damsm_reference,
        "reference-compiled": _compiled(_damsm_reference),
        "fused": _damsm_fused,
        "fused-untuned": _untuned(_damsm_fused),
    }[name]


def _attention_reference(query, context, word_mask):
    return word_attention_ref(query, context, word_mask)[0]


def attention_provider(name: str):
    """f(query, context, word_mask) -> ctx (B, C, H, W). The released algorithm uses its own masking."""
    return {
        "released": lambda q, k, m: word_attention_released(q, k, m)[0],
        "reference": _attention_reference,
        "reference-compiled": _compiled(_attention_reference),
        "fused": _attention_fused,
        "fused-untuned": _untuned(_attention_fused),
    }[name]


def forward_backward(fn, inputs: tuple, grad_inputs: tuple):
    """A callable running fn(*inputs) and the gradient w.r.t. ``grad_inputs`` (no .grad accumulation)."""
    def run():
        out = fn(*inputs)
        return torch.autograd.grad(out, grad_inputs, torch.ones_like(out))

    return run


def damsm_work(case: DamsmCase, element_bytes: int, backward: bool) -> tuple[float, float]:
    """(FLOPs, bytes): the two matmuls per pair (s = eᵀv, c = αvᵀ), 2·T·N·D each, for every (image,
    caption) pair; bytes = the inputs read once and R written once (plus the gradients for fwd+bwd,
    counted as 3x the forward FLOPs by the usual convention).

    What the fused kernels really execute is more, by design (recomputation instead of O(B²·T·N)
    memory): the forward does the 2 counted products on BLOCK_T = 32 rows for T = 18 words (x1.8);
    each backward kernel redoes the forward's 2 and adds 3 (d_words) or 4 (d_regions), so fwd+bwd runs
    13 products per pair against 6 counted. Expect the fused fwd+bwd to reach at most ~25 % of a
    compute-bound floor; the fraction of floor in the results is against the counted work."""
    n = case.side ** 2
    flops = case.batch * case.batch * 2 * (2 * case.words * n * case.dim)
    bytes_in = case.batch * case.dim * (case.words + n) * element_bytes
    moved = bytes_in + case.batch * case.batch * 4
    if backward:
        return 3 * flops, 2 * bytes_in + moved
    return flops, moved


def attention_work(case: AttentionCase, element_bytes: int, backward: bool) -> tuple[float, float]:
    """(FLOPs, bytes). Bytes floor: forward reads the query and writes the context map (2 passes over
    B·C·HW); the backward reads the query and the incoming gradient and writes d_query (3 more)."""
    pixels = case.side**2
    flops = case.batch * pixels * case.words * case.channels * 2 * 2
    big = case.batch * case.channels * pixels * element_bytes
    if backward:
        return 3 * flops, 5 * big
    return flops, 2 * big
