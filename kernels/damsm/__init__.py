"""DAMSM word-level matching score: reference (``reference.py``), released algorithm (``released.py``),
Triton kernels (``fused.py``) and the registered public op (``op.py``)."""

from .op import damsm_word_scores
from .reference import damsm_word_scores_ref, damsm_word_scores_ref_backward
from .released import damsm_word_scores_loop

__all__ = ["damsm_word_scores", "damsm_word_scores_ref", "damsm_word_scores_ref_backward", "damsm_word_scores_loop"]
