"""The generator's word attention F_attn: reference (``reference.py``), the released algorithm
(``released.py``), Triton kernels (``fused.py``) and the registered public op (``op.py``)."""

from .op import word_attention
from .reference import word_attention_ref, word_attention_ref_backward
from .released import word_attention_released

__all__ = ["word_attention", "word_attention_ref", "word_attention_ref_backward", "word_attention_released"]
