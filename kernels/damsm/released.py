"""The released implementation's *algorithm* for the word-level score, rewritten from the math.

One caption at a time in a Python loop: read its length on the host (a device sync per caption),
repeat the caption once per image, batched matmuls, two softmaxes, cosine, and ``log(sum(exp))``
without a max shift. It is baseline (a) of the benchmarks (docs/design.md §6) and, being written
independently of the vectorized reference, a cross-check of it in the tests.
"""

from __future__ import annotations

import torch

COS_EPS = 1e-8


def damsm_word_scores_loop(words, cap_lens, regions, gamma1: float = 4.0, gamma2: float = 5.0):
    """words: (B_cap, D, T); cap_lens: (B_cap,) ints; regions: (B_img, D, N) -> R (B_img, B_cap)."""
    batch_img = regions.shape[0]
    columns = []
    for j in range(words.shape[0]):
        n_words = int(cap_lens[j])  # host sync, as in the release
        word = words[j : j + 1, :, :n_words].repeat(batch_img, 1, 1)  # (B_img, D, n)
        sim = torch.bmm(regions.transpose(1, 2), word)  # (B_img, N, n)
        sim = torch.softmax(sim, dim=2)  # over the words, per region
        attn = torch.softmax(gamma1 * sim.transpose(1, 2), dim=2)  # (B_img, n, N), over regions
        context = torch.bmm(regions, attn.transpose(1, 2))  # (B_img, D, n)
        num = (word * context).sum(dim=1)
        den = (word.norm(dim=1) * context.norm(dim=1)).clamp(min=COS_EPS)
        cos = num / den  # (B_img, n)
        columns.append(torch.log(torch.exp(gamma2 * cos).sum(dim=1, keepdim=True)))
    return torch.cat(columns, dim=1)
