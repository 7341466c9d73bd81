"""pytest-benchmark suites for the two fused ops against their baselines (docs/design.md §6).

CPU sizes in CI (benchmarks disabled: each case runs once, as a smoke test; the fused provider then
runs through the Triton interpreter); the real sizes on a GPU:
``pytest benchmarks --benchmark-enable``. The GPU script ``python -m benchmarks.gpu`` measures the
same providers with CUDA events and writes the results files.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.cases import (CASES, PROVIDERS, NotApplicable, applies, attention_inputs, attention_provider,
                              damsm_inputs, damsm_provider, forward_backward, not_applicable)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SIZES = CASES["model" if CUDA else "small"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _skip(op: str, provider: str, dtype: str) -> None:
    if not applies(provider, DTYPES[dtype]):
        pytest.skip(f"{provider} has no {dtype} rows")
    reason = not_applicable(op, provider, DTYPES[dtype], DEVICE)
    if reason:
        pytest.skip(reason)


def _sync(result):
    if CUDA:
        torch.cuda.synchronize()
    return result


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS["damsm"])
@pytest.mark.parametrize("case", SIZES["damsm"], ids=lambda c: c.label)
def test_damsm_word_scores(benchmark, case, provider, mode, dtype):
    _skip("damsm", provider, dtype)
    words, cap_lens, regions = damsm_inputs(case, DEVICE, DTYPES[dtype])
    fn = damsm_provider(provider)
    if mode == "fwd":
        run = lambda: fn(words, cap_lens, regions)  # noqa: E731
    else:
        words.requires_grad_(), regions.requires_grad_()
        run = forward_backward(fn, (words, cap_lens, regions), (words, regions))
    out = benchmark(lambda: _sync(run()))
    values = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(v.float()).all() for v in values)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS["attention"])
@pytest.mark.parametrize("case", SIZES["attention"], ids=lambda c: c.label)
def test_word_attention(benchmark, case, provider, mode, dtype):
    _skip("attention", provider, dtype)
    query, context, word_mask = attention_inputs(case, DEVICE, DTYPES[dtype])
    fn = attention_provider(provider)
    if mode == "fwd":
        run = lambda: fn(query, context, word_mask)  # noqa: E731
    else:
        query.requires_grad_(), context.requires_grad_()
        run = forward_backward(fn, (query, context, word_mask), (query, context))
    try:
        run()  # a backend that refuses the case (SDPA's, FlexAttention's backward on CPU) says why
    except NotApplicable as err:
        pytest.skip(str(err))
    out = benchmark(lambda: _sync(run()))
    values = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(v.float()).all() for v in values)
