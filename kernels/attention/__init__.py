"""The generator's word attention F_attn: reference (``reference.py``), the released algorithm
(``released.py``), Triton kernels (``fused.py``), PyTorch's scaled_dot_product_attention (``sdpa.py``)
and FlexAttention (``flex.py``) forms, and the registered public op (``op.py``)."""

from .flex import word_attention_flex
from .op import word_attention
from .reference import word_attention_maps, word_attention_ref, word_attention_ref_backward
from .released import word_attention_released
from .sdpa import word_attention_sdpa, word_attention_sdpa_key_channel

__all__ = ["word_attention", "word_attention_flex", "word_attention_maps", "word_attention_ref",
           "word_attention_ref_backward", "word_attention_released", "word_attention_sdpa",
           "word_attention_sdpa_key_channel"]
