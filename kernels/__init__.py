"""AttnGAN's attention math as fused Triton kernels beside their plain-PyTorch references.

Public ops (each with ``impl="auto" | "triton" | "reference"``):
- ``damsm_word_scores(words, cap_lens, regions, gamma1, gamma2, *, return_attn, impl)`` — DAMSM
  word-level matching score for every (image, caption) pair; reference ``damsm_word_scores_ref``.
- ``word_attention(query, context, word_mask, *, return_attn, legacy_mask, impl)`` — the generator's
  word attention F_attn; reference ``word_attention_ref``.

Importable on its own (needs only torch; Triton optional). To run the Triton kernels on CPU tensors,
set ``TRITON_INTERPRET=1`` before importing this package.
"""

from ._runtime import TRITON_AVAILABLE
from .attention import word_attention, word_attention_ref
from .damsm import damsm_word_scores, damsm_word_scores_loop, damsm_word_scores_ref


def interpreter_active() -> bool:
    """True when the Triton kernels were built for the interpreter (they then run on CPU tensors)."""
    from .damsm.op import _INTERPRETED

    return _INTERPRETED


__all__ = [
    "TRITON_AVAILABLE",
    "damsm_word_scores",
    "damsm_word_scores_loop",
    "damsm_word_scores_ref",
    "interpreter_active",
    "word_attention",
    "word_attention_ref",
]
