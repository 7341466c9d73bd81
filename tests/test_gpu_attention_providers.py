"""F_attn through PyTorch's attention kernels on a CUDA device, at the model's sizes, against float64:
``impl="sdpa"`` pinned to each SDPA backend, FlashAttention's maskless key-channel form and FlexAttention
under ``torch.compile`` (forward and backward: on CPU torch 2.14 has no FlexAttention backward).

Skipped without CUDA. Run with ``pytest -m gpu tests/test_gpu_attention_providers.py`` on a GPU machine
and record the result in tests/GPU_RESULTS.md. Inputs are scaled by C^(-1/4) (similarities O(1), as
tests/test_gpu.py explains). A backend that refuses the inputs is skipped with PyTorch's reasons where
the refusal is documented (FlashAttention and cuDNN take fp16/bf16 only) or version-dependent (cuDNN's
masks); the math and memory-efficient backends must take every case.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from attngan_fast.kernels import testing, word_attention
from attngan_fast.kernels.attention import word_attention_flex, word_attention_sdpa_key_channel
from attngan_fast.kernels.testing import DTYPES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SIXTEEN_BIT_ONLY = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION)


def _inputs(dtype, channels=32, side=64, layout="channels_last", batch=20, words=18):
    """query (B, C, s, s) in ``layout``, context (B, C, T), word_mask (B, T) with a full and a one-word caption."""
    return testing.attention_inputs(batch, channels, side, side, words, scale=channels ** -0.25, layout=layout,
                                    dtype=dtype, device="cuda")


def _check(attention, label, legacy=False, **shape):
    """ctx and both gradients of ``attention(query, context, word_mask)`` against float64."""
    query, context, word_mask = _inputs(DTYPES[label], **shape)
    testing.assert_attention_matches_float64(attention, query, context, word_mask, testing.tolerance(label), label,
                                             legacy=legacy)


def _pinned(backend, fn):
    """fn under sdpa_kernel([backend]); a documented refusal skips with PyTorch's reasons."""
    def run(*args):
        with sdpa_kernel([backend]), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                return fn(*args)
            except RuntimeError as err:
                reasons = "; ".join(str(w.message).split(" (Triggered")[0] for w in seen) or str(err)
                if backend in SIXTEEN_BIT_ONLY and args[0].dtype == torch.float32:
                    pytest.skip(f"{backend.name} takes fp16/bf16 only: {reasons}")
                if backend == SDPBackend.CUDNN_ATTENTION:  # what it takes depends on the cuDNN version
                    pytest.skip(f"cuDNN refused: {reasons}")
                raise AssertionError(f"{backend.name} refused: {reasons}") from err

    return run


@pytest.mark.parametrize("label", list(DTYPES))
@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION],
                         ids=lambda b: b.name)
@pytest.mark.parametrize("legacy", [False, True])
def test_sdpa_backends_match_float64(backend, label, legacy):
    """impl="sdpa" pinned to each backend that takes a mask, own and released (legacy) masks."""
    attention = _pinned(backend, lambda q, k, m: word_attention(q, k, m, legacy_mask=legacy, impl="sdpa")[0])
    _check(attention, label, legacy=legacy)


@pytest.mark.parametrize("label", ["bf16", "fp16"])
@pytest.mark.parametrize("channels", [32, 48])
def test_flash_attention_key_channel_form_matches_float64(label, channels):
    _check(_pinned(SDPBackend.FLASH_ATTENTION, word_attention_sdpa_key_channel), label, channels=channels)


def test_flash_attention_refuses_the_mask():
    """Why sdpa-flash is not applicable on CUDA (and the key-channel form exists)."""
    query, context, word_mask = _inputs(torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
        word_attention(query, context, word_mask, impl="sdpa")


@pytest.mark.parametrize("label", list(DTYPES))
@pytest.mark.parametrize("layout, legacy", [("channels_last", False), ("nchw", False), ("channels_last", True)])
def test_compiled_flex_attention_matches_float64(label, layout, legacy):
    torch._dynamo.reset()
    compiled = torch.compile(word_attention_flex, fullgraph=True, dynamic=False)
    _check(lambda q, k, m: compiled(q, k, m, legacy), label, legacy=legacy, layout=layout, channels=48)


@pytest.mark.parametrize("form", ["sdpa", "flex"])
def test_padding_words_take_no_part_on_cuda(form):
    query, context, word_mask = _inputs(torch.bfloat16)
    poisoned = context.clone()
    poisoned[word_mask.unsqueeze(1).expand_as(poisoned)] = float("nan")
    poisoned.requires_grad_()
    torch._dynamo.reset()
    fn = (lambda q, k, m: word_attention(q, k, m, impl="sdpa")[0]) if form == "sdpa" else torch.compile(
        word_attention_flex, fullgraph=True, dynamic=False)
    ctx = fn(query, poisoned, word_mask)
    assert torch.equal(ctx, fn(query, context, word_mask))
    ctx.float().sum().backward()
    assert torch.all(poisoned.grad.transpose(1, 2)[word_mask] == 0) and torch.isfinite(poisoned.grad).all()
