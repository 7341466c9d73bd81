"""The step budget's counts are consistent: a convolution's FLOPs are the formula's, the parts add up
to the total, the total is torch's FlopCounterMode's, and the counts repeat exactly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.step_budget import StepCounter, counting, floors, generated_launches, step_budget
from benchmarks.train_step import build_step, random_batch, tiny_config

OPTIONS = dict(amp="off", compile=False, impl="reference", released=False)


def test_a_convolution_costs_what_the_formula_says():
    batch, cin, cout, side, k = 3, 5, 7, 9, 3
    conv = torch.nn.Conv2d(cin, cout, k, padding=1)
    x = torch.randn(batch, cin, side, side, requires_grad=True)
    with StepCounter({conv: "conv/net"}) as counter:
        conv(x).sum().backward()
    forward = 2 * batch * cout * side * side * cin * k * k
    # backward: the input's gradient and the weight's, each as many multiply-adds as the forward
    assert counter.rows["conv"]["flops"] == 3 * forward
    weights_and_activations = (x.numel() + conv.weight.numel() + conv.bias.numel() + batch * cout * side * side) * 4
    assert counter.rows["conv"]["bytes"] >= weights_and_activations
    assert counter.rows["conv"]["launches"] >= 2  # the forward and the backward


def _count(cfg):
    step, _ = build_step(cfg, OPTIONS, torch.device("cpu"))
    batch = random_batch(cfg)
    step(batch)
    with counting(step) as counter:
        step(batch)
    with FlopCounterMode(display=False) as reference:
        step(batch)
    return counter, reference.get_total_flops()


def test_the_parts_add_up_to_the_total_and_to_torchs_flop_counter():
    cfg = tiny_config(batch=4)
    counter, torch_flops = _count(cfg)
    regions = counter.rows
    assert {"D0 (16 px)", "D1 (32 px)", "G stage 1 (16 px)", "G stage 2 (32 px)", "attention: F_attn",
            "attention: DAMSM word loss", "image encoder (DAMSM loss)", "text encoder", "optimizers"} <= set(regions)
    assert sum(r["flops"] for r in regions.values()) == torch_flops > 0
    for name, r in regions.items():
        assert r["ops"] >= r["launches"] > 0, name
        assert r["bytes"] >= r["gemm_bytes"] >= 0, name
    # the convolutions of the Ds and G stages carry FLOPs; the optimizers move bytes but multiply nothing
    assert all(regions[n]["flops"] > 0 for n in ("D0 (16 px)", "D1 (32 px)", "G stage 1 (16 px)", "G stage 2 (32 px)"))
    assert regions["optimizers"]["flops"] == 0 and regions["optimizers"]["gemm_bytes"] > 0


def test_the_budget_repeats_exactly_and_names_its_bound():
    cfg = tiny_config(batch=4)
    first, second = (step_budget(cfg, "cpu") for _ in range(2))
    assert first["regions"] == second["regions"] and first["total"]["launches"] > 100
    assert first["total"]["flops"] == sum(r.get("flops", 0) for r in first["regions"].values())
    assert "EMA" in first["regions"] and first["total"]["host_syncs"] == second["total"]["host_syncs"]


@pytest.mark.parametrize("tflops, gbps, launches, bound", [(1e-6, 1e6, 1, "compute"), (1e6, 1e-6, 1, "memory"),
                                                           (1e6, 1e6, 10**6, "launch")])
def test_the_floor_is_the_slowest_bound(tflops, gbps, launches, bound):
    total = {"flops": 2e12, "bytes": 3e9, "gemm_bytes": 1e9}
    f = floors(total, launches, {"matmul_tflops": tflops, "copy_gbps": gbps}, launch_us=5.0)
    assert f["bound"] == bound
    assert f["compute_ms"] == pytest.approx(1e3 * 2e12 / (tflops * 1e12), rel=1e-2)
    assert f["launch_ms"] == pytest.approx(launches * 5e-3, rel=1e-2)
    assert f["max_steps_per_s"] == pytest.approx(1e3 / f[f"{bound}_ms"], rel=2e-2)


def test_generated_launches_counts_the_calls_of_the_call_function_only():
    code = '''
def helper():
    triton_poi_0.run(x)
def call(args):
    buf0 = empty_strided_cuda((4,), (1,), torch.float32)
    triton_poi_fused_add_0.run(arg0, buf0, 4, stream=stream0)
    extern_kernels.mm(buf0, arg1, out=buf1)
    cpp_fused_relu_1(buf1)
    buf2 = torch.ops.aten.convolution.default(buf1, arg2)
    return (buf1, )
class Runner:
    def call(self):
        pass
'''
    assert generated_launches([code, code]) == 8


@pytest.mark.parametrize("op", ["word_attention", "damsm_word_scores"])
def test_the_fused_ops_cost_what_the_reference_multiplies(op):
    """The custom ops are opaque to the dispatcher; their FLOP formulas must equal the products the
    reference path dispatches (forward), and count the backward as twice the forward."""
    from attngan_fast import kernels

    if not kernels.interpreter_active():
        pytest.skip("the fused path on CPU needs the Triton interpreter")
    gen = torch.Generator().manual_seed(0)
    if op == "word_attention":
        inputs = (torch.randn(2, 16, 5, 7, generator=gen), torch.randn(2, 16, 6, generator=gen))
        run = lambda impl, q, c: kernels.word_attention(q, c, impl=impl)[0].sum()  # noqa: E731
    else:
        inputs = (torch.randn(3, 16, 6, generator=gen), torch.tensor([6, 2, 4]), torch.randn(3, 16, 17, generator=gen))
        run = lambda impl, w, n, r: kernels.damsm_word_scores(w, n, r, impl=impl).sum()  # noqa: E731
    counted = {}
    for impl in ("reference", "triton"):
        leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
        with StepCounter({}) as counter:
            out = run(impl, *leaves)
        forward = counter.rows["losses and glue"]["flops"]
        with StepCounter({}) as counter:
            out.backward()
        counted[impl] = forward, counter.rows["losses and glue"]["flops"]
    assert counted["triton"][0] == counted["reference"][0] > 0
    assert counted["triton"][1] == 2 * counted["triton"][0]
