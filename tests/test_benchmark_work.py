"""The counted work of benchmarks.work: executed beside useful, at the launchers' own defaults."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from benchmarks.work import attention_executed, attention_useful, damsm_executed, damsm_useful
from attngan_fast.kernels._tuning import TunedKernel
from attngan_fast.kernels.attention import fused as attention_fused
from attngan_fast.kernels.damsm import fused as damsm_fused


@pytest.mark.parametrize("element_bytes", [2, 4])
def test_damsm_executed_work_at_the_bird_sizes_stays_within_two_and_a_half_times_the_useful(element_bytes):
    """Issue 'tensor-core kernels': fwd+bwd at B = 48, T = 18, N = 289, D = 256 executes at most 2.5x the
    useful products (the first fused kernels executed 4.3x), bf16 and fp32 inputs alike."""
    useful = damsm_useful(48, 18, 289, 256, element_bytes, backward=True)
    executed = damsm_executed(48, 18, 289, 256, element_bytes, backward=True)
    assert useful.flops == pytest.approx(36.82e9, rel=1e-3)
    assert 1.0 < executed.flops / useful.flops <= 2.5
    assert executed.bytes > useful.bytes
    assert set(executed.detail) == {"forward", "context", "grad"}
    assert sum(len(k["products"]) for k in executed.detail.values()) == 9  # 2 + 2 + 5 per pair


def test_the_forward_alone_and_word_attention_count_their_own_kernels():
    fwd = damsm_executed(20, 18, 289, 256, 2, backward=False)
    assert set(fwd.detail) == {"forward"} and fwd.flops > damsm_useful(20, 18, 289, 256, 2, False).flops
    for element_bytes in (2, 4):
        for channels in (32, 48):
            useful = attention_useful(20, channels, 128 * 128, 18, element_bytes, backward=True)
            executed = attention_executed(20, channels, 128 * 128, 18, element_bytes, backward=True)
            assert 1.0 < executed.flops / useful.flops < 3.0 and executed.bytes >= useful.bytes


def _recorded_defaults(launch) -> dict:
    """The default launch configuration each kernel gets from its launcher on a Hopper GPU."""
    seen = {}

    def record(self, grid, *args, default, config=None, **kwargs):
        seen[id(self)] = default

    with mock.patch.object(TunedKernel, "launch", record), \
            mock.patch.object(damsm_fused, "_capability", lambda device: 90), \
            mock.patch.object(attention_fused, "_capability", lambda device: 90), \
            mock.patch.object(damsm_fused, "INTERPRETED", False), \
            mock.patch.object(attention_fused, "INTERPRETED", False):
        launch()
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_counts_use_the_configurations_the_launchers_launch(dtype):
    words, regions = torch.randn(4, 256, 18).to(dtype), torch.randn(4, 256, 289).to(dtype)
    cap_lens = torch.full((4,), 18)
    precision = "native" if dtype == torch.bfloat16 else "bf16x3"

    def launch():
        damsm_fused.damsm_forward(words, cap_lens, regions, 4.0, 5.0, False, precision)
        damsm_fused.damsm_backward(torch.ones(4, 4), words, cap_lens, regions, 4.0, 5.0, precision)

    seen = _recorded_defaults(launch)
    detail = damsm_executed(4, 18, 289, 256, dtype.itemsize, backward=True).detail
    assert detail["forward"]["config"] == str(seen[id(damsm_fused._FWD)])
    assert detail["context"]["config"] == str(seen[id(damsm_fused._CONTEXT)])
    assert detail["grad"]["config"] == str(seen[id(damsm_fused._GRAD)])


def test_the_counter_adds_inputs_and_outputs_and_skips_views():
    """StepCounter on fake tensors (as the eager providers are counted): an add of two fp32 tensors of N
    elements moves 3·4N bytes, a transpose and an unsqueeze nothing, a stride-0 broadcast input counts
    the memory it covers once, a strided slice its elements; metadata queries launch nothing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmarks.step_budget import StepCounter

    fake = FakeTensorMode()
    with fake:
        a, b, row = torch.empty(64, 32), torch.empty(64, 32), torch.empty(1, 32)
    moved = []
    for op in (lambda: a.t().unsqueeze(0), lambda: a + b, lambda: a + row.expand(64, 32), lambda: a[:, ::2] * 2,
               lambda: a.device):
        with fake, StepCounter({}) as counter:
            op()
        moved.append((counter.rows["losses and glue"]["launches"], counter.rows["losses and glue"]["bytes"]))
    assert moved == [(0, 0), (1, 3 * 64 * 32 * 4), (1, 2 * 64 * 32 * 4 + 32 * 4), (1, 2 * 64 * 16 * 4), (0, 0)]


@pytest.mark.parametrize("element_bytes", [2, 4])
def test_every_f_attn_provider_is_counted_at_least_at_the_useful_work(element_bytes):
    """At the bird sizes (B = 20, C = 32, 128², T = 18) every counted provider executes at least the
    useful FLOPs and moves at least the useful bytes; the flash-style backward kernels (mem-efficient,
    FlashAttention, FlexAttention's dK/dV) run B programs (T = 18 is one key block), the fused one a
    program per 128 pixels of each sample."""
    from benchmarks.cases import PROVIDERS
    from benchmarks.work import NOT_COUNTED, attention_provider_work

    useful = attention_useful(20, 32, 128 * 128, 18, element_bytes, backward=True)
    counted = {}
    for provider in PROVIDERS["attention"]:
        if provider in NOT_COUNTED or provider.startswith("fused-") or provider.startswith("reference-compiled-"):
            assert provider in NOT_COUNTED or provider.endswith(("untuned", "max-autotune", "tf32"))
            continue
        if provider == "sdpa-flash-key-channel" and element_bytes == 4:
            with pytest.raises(ValueError, match="fp16/bf16 only"):
                attention_provider_work(provider, 20, 32, 128 * 128, 18, element_bytes, True)
            continue
        work = attention_provider_work(provider, 20, 32, 128 * 128, 18, element_bytes, True)
        assert work.flops >= useful.flops * (1 - 1e-9) and work.bytes >= useful.bytes, provider
        counted[provider] = work
    programs = {p: w.detail["backward"].get("programs") for p, w in counted.items()}
    assert programs["sdpa-efficient"] == 20 and programs["fused"] == 20 * 128 * 128 // 128
    assert programs["flex-compiled"] == (20 if element_bytes == 2 else 40)
    for provider in ("released", "reference", "sdpa-math"):
        assert counted[provider].detail["how"].startswith("counted") and counted[provider].flops == pytest.approx(useful.flops)
