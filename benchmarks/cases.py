"""Sizes, inputs and providers of the kernel tables (docs/benchmarks.md lists the providers and the
rules that keep the comparison fair to both sides: the fused providers run inside
``value_checks(False)``, as the training loops call them; every compiled provider is compiled afresh
for its case with ``dynamic=False``, so create it right before timing it; the TF32 variant scopes its
matmul precision to its own calls). The F_attn cases are laid out as training with ``--channels-last``
lays them out (``AttentionCase.layout``): SDPA's (B, HW, C) queries are then a free view; a provider
that needs a copy makes it inside its timed call. A backend that refuses a case raises
``NotApplicable`` with PyTorch's reasons."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.work import Work, attention_executed, attention_useful, damsm_executed, damsm_useful
from attngan_fast import kernels
from attngan_fast.kernels import (damsm_word_scores, damsm_word_scores_loop, damsm_word_scores_ref, testing, value_checks,
                                  word_attention, word_attention_ref)
from attngan_fast.kernels._runtime import is_channels_last
from attngan_fast.kernels.attention import word_attention_released
from attngan_fast.kernels.attention.sdpa import word_attention_sdpa, word_attention_sdpa_key_channel

BASELINES = ("released", "reference", "reference-compiled", "reference-compiled-max-autotune",
             "reference-compiled-tf32")
# F_attn's providers beyond those: SDPA pinned to each backend, its maskless FlashAttention form,
# FlexAttention under torch.compile.
SDPA_BACKENDS = {"sdpa-math": SDPBackend.MATH, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION}
ATTENTION_ONLY = (*SDPA_BACKENDS, "sdpa-flash-key-channel", "flex-compiled")
PROVIDERS = {"damsm": (*BASELINES, "fused"), "attention": (*BASELINES, *ATTENTION_ONLY, "fused")}  # table order
MAX_AUTOTUNE = "max-autotune-no-cudagraphs"


def applies(provider: str, dtype: torch.dtype) -> bool:
    """Whether ``provider`` has a row for inputs of ``dtype``: the TF32 reference only for 16-bit
    inputs (for fp32 inputs it would compute less accurately than the fp32 rows it sits beside)."""
    return provider != "reference-compiled-tf32" or dtype in (torch.bfloat16, torch.float16)


# The fused kernels on CPU run through the Triton interpreter: a check of the path at toy sizes only.
INTERPRETER_AT_MODEL_SIZES = ("the Triton interpreter would take hours at the model's sizes: the fused kernels run "
                              "on CPU at --sizes small")


def not_applicable(op: str, provider: str, dtype: torch.dtype, device: torch.device, case=None) -> str | None:
    """Why ``provider`` has no timing on ``device`` for ``case`` (None: it runs)."""
    if device.type != "cuda":
        if provider.startswith("fused") and case in CASES["model"][op]:
            return INTERPRETER_AT_MODEL_SIZES
        if provider == "reference-compiled-max-autotune":
            return "inductor's max-autotune times GPU matmul templates (~90 s a graph on a 2-core CPU)"
        if provider == "reference-compiled-tf32":
            return "TF32 is a CUDA matmul mode"
        if provider == "fused" and not kernels.interpreter_active():
            return "the fused kernels run on CPU tensors only through the Triton interpreter (TRITON_INTERPRET=1)"
    return None


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
    layout: str = "channels_last"  # of the image features h: "channels_last" (as training lays them out) or "nchw"

    @property
    def label(self) -> str:
        layout = "" if self.layout == "channels_last" else f" {self.layout}"
        return f"B={self.batch} C={self.channels} {self.side}x{self.side} T={self.words}{layout}"


CASES = {  # the model's sizes (the GPU's) and toy ones for a check of the path on CPU
    "model": {"damsm": [DamsmCase(48), DamsmCase(20), DamsmCase(100)],
              "attention": [AttentionCase(20, 32, 128), AttentionCase(20, 32, 64), AttentionCase(20, 48, 128),
                            AttentionCase(20, 48, 64)]},
    "small": {"damsm": [DamsmCase(4, dim=32, words=6, side=5)], "attention": [AttentionCase(2, 16, 8, words=6)]},
}


def damsm_inputs(case: DamsmCase, device, dtype=torch.float32, seed: int = 0):
    """words (B, D, T), cap_lens (B,), regions (B, D, s, s), scaled by D^-1/4 (similarities O(1), as for
    trained encoders)."""
    return testing.damsm_inputs(case.batch, case.batch, case.dim, case.words, case.side ** 2, scale=case.dim ** -0.25,
                                layout="4d", dtype=dtype, device=device, generator=torch.Generator().manual_seed(seed))


def attention_inputs(case: AttentionCase, device, dtype=torch.float32, seed: int = 0):
    """query (B, C, s, s) in ``case.layout``, context (B, C, T), word_mask (B, T)."""
    return testing.attention_inputs(case.batch, case.channels, case.side, case.side, case.words,
                                    scale=case.channels ** -0.25, layout=case.layout, dtype=dtype, device=device,
                                    generator=torch.Generator().manual_seed(seed))


def compiled(fn, mode: str | None = None):
    """fn under ``torch.compile`` as one static graph per input size (``dynamic=False``), compiled
    afresh: dynamo's compiled code is reset first, so the graph never comes from another case's compile
    (whose second size would have been traced with dynamic shapes) and no earlier case counts towards
    the recompile limit. ``mode`` is inductor's (None: its default)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False, mode=mode)


def tf32_matmuls(fn):
    """fn with fp32 matmuls allowed on TF32 tensor cores during its calls only (the previous settings
    come back after every call, also when it raises)."""
    def run(*args):
        previous = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn(*args)
        finally:
            torch.set_float32_matmul_precision(previous[0])
            torch.backends.cuda.matmul.allow_tf32 = previous[1]

    return run


@contextlib.contextmanager
def compile_backend(backend: str):
    """``torch.compile`` with ``backend`` for everything compiled inside the block, its ``mode`` dropped
    (modes are inductor's). For CPU self-checks of the scripts: inductor on the 2-core CPU takes ~20 s a
    graph and max-autotune ~90 s (measured at B = 3), and CPU timings are no evidence anyway."""
    if backend == "inductor":
        yield
        return
    original = torch.compile

    def patched(model=None, **options):
        options.pop("mode", None)
        options["backend"] = backend
        return original(**options) if model is None else original(model, **options)

    torch.compile = patched
    try:
        yield
    finally:
        torch.compile = original


def _damsm_fused(words, cap_lens, regions):
    with value_checks(False):  # the backward runs inside this block too (forward_backward)
        return damsm_word_scores(words, cap_lens, regions, impl="triton")


def _attention_fused(query, context, word_mask):
    with value_checks(False):
        return word_attention(query, context, word_mask, impl="triton")[0]


def _damsm_released(words, cap_lens, regions):
    return damsm_word_scores_loop(words, cap_lens, regions.flatten(2))


def _damsm_reference(words, cap_lens, regions):
    return damsm_word_scores_ref(words, cap_lens, regions.flatten(2))


def _attention_reference(query, context, word_mask):
    return word_attention_ref(query, context, word_mask)[0]


def _attention_released(query, context, word_mask):
    return word_attention_released(query, context, word_mask)[0]


class NotApplicable(RuntimeError):
    """A provider that does not take this case (dtype, mask, device); the message says why."""


def _sdpa_reasons(seen, err: Exception, device: torch.device) -> str:
    """PyTorch's reasons for refusing a pinned SDPA backend: its warnings, without the C++ locations."""
    reasons = [str(w.message).split(" (Triggered internally")[0] for w in seen]
    reasons = [r for r in reasons if r and not r.endswith("not used because:")]
    if reasons:
        return "; ".join(dict.fromkeys(reasons))
    return "PyTorch has no CPU kernel for it" if device.type == "cpu" else str(err).splitlines()[0]


def _sdpa_pinned(backend, form):
    """``form`` (an SDPA form of F_attn: query, context, word_mask -> ctx) with SDPA pinned to ``backend``.
    The fused backends need unit stride on the channels: NCHW queries are copied to channels_last inside
    the call (the timed region); the math backend takes them as they are. The first call turns a
    refusal into NotApplicable with PyTorch's reasons; later calls run bare."""
    checked = []

    def run(query, context, word_mask):
        if backend != SDPBackend.MATH and not is_channels_last(query):
            query = query.contiguous(memory_format=torch.channels_last)
        with sdpa_kernel([backend]):
            if checked:
                return form(query, context, word_mask)
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                try:
                    out = form(query, context, word_mask)
                except RuntimeError as err:
                    raise NotApplicable(f"{backend.name}: {_sdpa_reasons(seen, err, query.device)}") from None
        checked.append(True)
        return out

    return run


def _attention_sdpa(query, context, word_mask):
    return word_attention_sdpa(query, context, word_mask)[0]


def _flex_compiled():
    """FlexAttention under torch.compile: mask_mod, BlockMask and kernel in one static graph."""
    from attngan_fast.kernels.attention.flex import word_attention_flex

    fn = compiled(word_attention_flex)

    def run(query, context, word_mask):
        if query.device.type == "cpu" and (query.requires_grad or context.requires_grad):
            raise NotApplicable("FlexAttention has no backward on CPU in torch 2.14 (forward only)")
        return fn(query, context, word_mask)

    return run


def _provider(name: str, released, reference, fused):
    if name == "released":
        return released
    if name == "reference":
        return reference
    if name == "reference-compiled":
        return compiled(reference)
    if name == "reference-compiled-max-autotune":
        return compiled(reference, mode=MAX_AUTOTUNE)
    if name == "reference-compiled-tf32":
        return tf32_matmuls(compiled(reference))
    if name == "fused":
        return fused
    raise ValueError(f"provider must be one of {BASELINES + ('fused',)}, got {name!r}")


def damsm_provider(name: str):
    """f(words, cap_lens, regions) -> R (B, B). A compiled provider is compiled for the first size it
    sees: make one per case, right before timing it."""
    return _provider(name, _damsm_released, _damsm_reference, _damsm_fused)


def attention_provider(name: str):
    """f(query, context, word_mask) -> ctx (B, C, H, W), any of PROVIDERS["attention"]. The released
    algorithm uses its own masking. A provider that does not take a case raises NotApplicable."""
    if name in SDPA_BACKENDS:
        return _sdpa_pinned(SDPA_BACKENDS[name], _attention_sdpa)
    if name == "sdpa-flash-key-channel":
        return _sdpa_pinned(SDPBackend.FLASH_ATTENTION, word_attention_sdpa_key_channel)
    if name == "flex-compiled":
        return _flex_compiled()
    return _provider(name, _attention_released, _attention_reference, _attention_fused)


def forward_backward(fn, inputs: tuple, grad_inputs: tuple):
    """A callable running fn(*inputs) and the gradient w.r.t. ``grad_inputs`` (no .grad accumulation)."""
    def run():
        out = fn(*inputs)
        return torch.autograd.grad(out, grad_inputs, torch.ones_like(out))

    return run


def damsm_work(case: DamsmCase, element_bytes: int, backward: bool) -> tuple[Work, Work]:
    """(useful, executed) work of one DAMSM call at ``case`` (``benchmarks.work``): useful = the math
    at the true sizes, executed = what the fused kernels run at their default launch."""
    args = (case.batch, case.words, case.side ** 2, case.dim, element_bytes, backward)
    return damsm_useful(*args), damsm_executed(*args)


def attention_work(case: AttentionCase, element_bytes: int, backward: bool) -> tuple[Work, Work]:
    """(useful, executed) work of one F_attn call at ``case`` (``benchmarks.work``)."""
    args = (case.batch, case.channels, case.side ** 2, case.words, element_bytes, backward)
    return attention_useful(*args), attention_executed(*args)
