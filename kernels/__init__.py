"""AttnGAN's attention math as fused Triton kernels beside their plain-PyTorch references.

Public ops (each with ``impl="auto" | "triton" | "reference"``):
- ``damsm_word_scores(words, cap_lens, regions, gamma1, gamma2, *, return_attn, impl)`` — DAMSM
  word-level matching score for every (image, caption) pair; reference ``damsm_word_scores_ref``.
- ``word_attention(query, context, word_mask, *, return_attn, legacy_mask, impl)`` — the generator's
  word attention F_attn; reference ``word_attention_ref``; also ``impl="sdpa"`` (PyTorch's
  scaled_dot_product_attention, ``word_attention_sdpa``), which the DAMSM op takes as "auto".

Importable on its own (``from attngan_fast import kernels`` needs only torch; Triton optional). To run the Triton kernels on CPU tensors,
set ``TRITON_INTERPRET=1`` before importing this package. On CUDA the kernels autotune their launch
configuration per model size; ``set_autotune(False)`` or ``ATTNGAN_FAST_AUTOTUNE=0`` pins the defaults.
``value_checks(False)`` skips the checks of input values (each a host sync on a GPU) inside a block.
"""

# One import name only: the ops register themselves with torch.library when imported, and a second
# copy of this folder under another name (the top-level `kernels`, reachable from the repository's
# root) would register them twice and meet Hugging Face's package of that name.
if __name__ != "attngan_fast.kernels":
    raise ImportError(
        f"this folder is the package attngan_fast.kernels, imported here as {__name__!r}: install the project "
        "(pip install -e .) and write `from attngan_fast import kernels`"
    )

from ._checks import value_checks
from ._runtime import TRITON_AVAILABLE
from ._tuning import AUTOTUNE_ENV, autotune_enabled, autotuning, set_autotune
from .attention import word_attention, word_attention_ref, word_attention_sdpa
from .damsm import damsm_word_scores, damsm_word_scores_loop, damsm_word_scores_ref


def interpreter_active() -> bool:
    """True when the Triton kernels were built for the interpreter (they then run on CPU tensors)."""
    from .damsm.op import _INTERPRETED

    return _INTERPRETED


def chosen_configs() -> dict:
    """Each Triton kernel's last launch configuration (after autotuning on CUDA, the tuned one)."""
    if not TRITON_AVAILABLE:
        return {}
    from .attention import fused as attention_fused
    from .damsm import fused as damsm_fused

    return {**damsm_fused.chosen_configs(), **attention_fused.chosen_configs()}


__all__ = [
    "AUTOTUNE_ENV",
    "TRITON_AVAILABLE",
    "autotune_enabled",
    "autotuning",
    "chosen_configs",
    "damsm_word_scores",
    "damsm_word_scores_loop",
    "damsm_word_scores_ref",
    "interpreter_active",
    "set_autotune",
    "value_checks",
    "word_attention",
    "word_attention_ref",
    "word_attention_sdpa",
]
