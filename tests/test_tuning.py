"""Launch configurations: every autotuning candidate of every kernel computes the same function, and the
switch that pins the defaults works.

The interpreter ignores warps and stages, so on CPU each distinct set of block sizes is run (forced with
``config=``) against float64; tests/test_gpu.py runs every candidate compiled on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from attngan_fast import kernels
from attngan_fast.kernels import _tuning, testing
from attngan_fast.kernels.attention import word_attention_ref, word_attention_ref_backward
from attngan_fast.kernels.damsm import damsm_word_scores_ref, damsm_word_scores_ref_backward
from numerics import assert_rel, needs_interpreter

pytestmark = needs_interpreter


def _distinct_meta(candidates):
    """One candidate per distinct set of block sizes: what the interpreter can tell apart (it ignores
    warps and stages)."""
    seen, out = set(), []
    for c in candidates:
        if c.meta not in seen:
            seen.add(c.meta)
            out.append(c)
    return out


def _damsm_inputs():
    """3 images, 2 captions (lengths 6 and 1), D = 40, T = 6, N = 37: one or two region tiles for
    BLOCK_N 64/32, and a partial second chunk of D for BLOCK_K = 32."""
    return testing.damsm_inputs(3, 2, 40, 6, 37, scale=40 ** -0.25)


def _attention_inputs():
    """B = 2, C = 20 (a partial last chunk for either BLOCK_K), 13 x 11 = 143 pixels (a partial last tile
    for every BLOCK_Q; several backward tiles add into one partial sum), T = 6 with padding."""
    return testing.attention_inputs(2, 20, 13, 11, 6)


def _damsm_candidates():
    from attngan_fast.kernels.damsm import plan

    return ([("forward", c) for c in _distinct_meta(plan.FORWARD_CANDIDATES)]
            + [("grad", c) for c in _distinct_meta(plan.GRAD_CANDIDATES)])


@pytest.mark.parametrize("kernel, config", _damsm_candidates(), ids=lambda x: str(x))
def test_every_damsm_candidate_matches_float64(kernel, config):
    """Forward candidates run the forward and the backward's context kernel, gradient-kernel
    candidates the gradient kernel; the other kernel runs its default."""
    from attngan_fast.kernels.damsm import fused

    words, cap_lens, regions = _damsm_inputs()
    grad = torch.randn(3, 2)
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    if kernel == "forward":
        scores, attn = fused.damsm_forward(words, cap_lens, regions[:2], 4.0, 5.0, True, "ieee", config=config)
        ref_scores, ref_attn = damsm_word_scores_ref(words.double(), cap_lens, regions[:2].double(), return_attn=True)
        assert_rel(scores, ref_scores, 1e-5, f"R with {config}")
        assert_rel(attn, ref_attn, 1e-5, f"maps with {config}")
        assert fused._FWD.last_config == config
        d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee",
                                                  context_config=config)
        assert fused._CONTEXT.last_config == config
    else:
        d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee", grad_config=config)
        assert fused._GRAD.last_config == config
    assert_rel(d_words, ref_w, 1e-5, f"d_words with {config}")
    assert_rel(d_regions, ref_r, 1e-5, f"d_regions with {config}")


@pytest.mark.parametrize("kernel, config", _damsm_candidates(), ids=lambda x: str(x))
def test_damsm_candidates_write_nothing_outside_their_buffers_at_narrow_features(kernel, config):
    """D = 16: every candidate's feature chunk (BLOCK_K 32, 64) is wider than the padded features.
    Every buffer the launchers allocate gets a guard band behind it; a write past its end (which on a GPU
    corrupts other tensors, and under the interpreter the heap) changes the band."""
    from unittest import mock

    from attngan_fast.kernels import _runtime
    from attngan_fast.kernels.damsm import fused

    guards = []

    def guarded(shape, device, dtype):
        numel = math.prod(shape)
        whole = torch.full((numel + 4096,), 7.0, device=device, dtype=dtype)
        guards.append(whole[numel:])
        return _runtime.poison_(whole[:numel].view(shape))

    words = torch.randn(2, 16, 6) / 16 ** 0.25
    regions = torch.randn(3, 16, 37) / 16 ** 0.25
    cap_lens = torch.tensor([6, 1])
    grad = torch.randn(3, 2)
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    forced = {"context_config": config} if kernel == "forward" else {"grad_config": config}
    with mock.patch.object(fused, "alloc_output", guarded):
        d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee", **forced)
    assert guards and all(bool((g == 7.0).all()) for g in guards), f"{config} wrote past a buffer's end"
    assert_rel(d_words, ref_w, 1e-5, f"d_words with {config}")
    assert_rel(d_regions, ref_r, 1e-5, f"d_regions with {config}")


def _attention_candidates():
    from attngan_fast.kernels.attention import plan

    return ([("forward", c) for c in _distinct_meta(plan.FORWARD_CANDIDATES)]
            + [("backward", c) for c in _distinct_meta(plan.BACKWARD_CANDIDATES)])


@pytest.mark.parametrize("direction, config", _attention_candidates(), ids=lambda x: str(x))
def test_every_word_attention_candidate_matches_float64(direction, config):
    from attngan_fast.kernels.attention import fused

    query, context, word_mask = _attention_inputs()
    if direction == "forward":
        ctx, attn = fused.word_attention_forward(query, context, word_mask, True, False, "ieee", config=config)
        ref_ctx, ref_attn = word_attention_ref(query.double(), context.double(), word_mask, return_attn=True)
        assert_rel(ctx, ref_ctx, 1e-5, f"ctx with {config}")
        assert_rel(attn, ref_attn, 1e-5, f"maps with {config}")
        assert fused._FWD.last_config == config
    else:
        grad = torch.randn_like(query)
        d_query, d_context = fused.word_attention_backward(grad, query, context, word_mask, False, "ieee", config=config)
        ref_q, ref_k = word_attention_ref_backward(grad.double(), query.double(), context.double(), word_mask)
        assert_rel(d_query, ref_q, 1e-5, f"d_query with {config}")
        assert_rel(d_context, ref_k, 1e-5, f"d_context with {config}")
        assert fused._BWD.last_config == config


def test_the_interpreter_runs_the_defaults_even_with_autotuning_on():
    from attngan_fast.kernels.attention import fused as attention_fused, plan as attention_plan
    from attngan_fast.kernels.damsm import fused as damsm_fused, plan as damsm_plan

    words, cap_lens, regions = _damsm_inputs()
    query, context, word_mask = _attention_inputs()
    with kernels.autotuning(True):
        kernels.damsm_word_scores(words, cap_lens, regions, impl="triton")
        kernels.word_attention(query, context, word_mask, impl="triton")
    # fp32 inputs: the default precision holds them as bf16 pairs, 4 bytes an operand ("wide").
    assert damsm_fused._FWD.last_config == damsm_plan.default_config(6, 40, 37, wide=True)
    assert attention_fused._FWD.last_config == attention_plan.FORWARD_DEFAULT
    chosen = kernels.chosen_configs()
    assert chosen["damsm_fwd"] == str(damsm_plan.default_config(6, 40, 37, wide=True))
    assert chosen["word_attention_fwd"] == str(attention_plan.FORWARD_DEFAULT)


def test_defaults_follow_the_model_size_and_the_gpu():
    from attngan_fast.kernels.damsm import plan

    hopper = plan.default_config(T=18, D=256, N=289, capability=90)
    assert dict(hopper.meta) == {"BLOCK_N": 128} and hopper.num_warps == 8  # wgmma's M for 8 warps
    wide = plan.default_config(T=18, D=256, N=289, capability=90, wide=True)
    assert dict(wide.meta) == {"BLOCK_N": 32} and wide.num_stages == 2
    assert dict(plan.default_config(18, 256, 289, capability=90, grad=True, wide=True).meta) == \
        {"BLOCK_N": 64, "BLOCK_K": 32}
    assert dict(plan.default_config(T=18, D=256, N=289, capability=86).meta) == {"BLOCK_N": 32}
    assert plan.default_config(T=18, D=256, N=289) == hopper  # the interpreter's
    # never wider than the regions; never a chunk wider than the features
    assert dict(plan.default_config(T=5, D=20, N=9).meta) == {"BLOCK_N": 16}
    assert dict(plan.default_config(T=5, D=12, N=9, grad=True).meta) == {"BLOCK_N": 16, "BLOCK_K": 16}


def test_backward_splits_fill_the_gpu_in_few_waves_within_the_memory_budget():
    from attngan_fast.kernels.damsm import plan

    slots = (256 * 289, 256 * 18 * 3)

    def memory(s_m, s_k, images, groups, B_img):
        return 4 * (s_k * B_img * slots[0] + s_m * groups * slots[1])

    # A chunk of 24 of B = 48 images on 132 SMs: 24 x 16 (image, group) pairs, one wave, and the
    # partial sums within their budget (spreading over every group, 16 d_regions slots, would not be).
    s_m, s_k = plan.backward_splits(24, 16, True, 132, slots, 48)
    assert s_m * s_k <= 132 and -(-24 // s_m) * -(-16 // s_k) <= 4
    assert memory(s_m, s_k, 24, 16, 48) <= plan.PARTIAL_BYTES < memory(8, 16, 24, 16, 48)
    # Without d_words every image has its own programs.
    s_m, s_k = plan.backward_splits(20, 7, False, 132, slots, 20)
    assert s_m == 20 and s_m * s_k <= 132
    # When nothing fits, the least memory.
    assert plan.backward_splits(4, 4, True, 132, (10**9, 1), 4) == (1, 1)


def test_pruning_drops_blocks_wider_than_the_axis_and_keeps_one():
    from attngan_fast.kernels.attention import plan as attention_plan
    from attngan_fast.kernels.damsm import fused as damsm_fused, plan as damsm_plan

    kept = damsm_plan.prune(damsm_plan.GRAD_CANDIDATES, {"N": 9, "D": 256})
    assert kept and all(dict(c.meta)["BLOCK_N"] == 16 for c in kept)
    wide_only = [_tuning.LaunchConfig.of(BLOCK_N=64), _tuning.LaunchConfig.of(BLOCK_N=128)]
    assert damsm_plan.prune(wide_only, {"N": 9, "D": 256}) == wide_only[:1]
    assert damsm_plan.prune(damsm_plan.FORWARD_CANDIDATES, {"N": 289, "D": 256}) == damsm_plan.FORWARD_CANDIDATES
    kept = attention_plan.prune(attention_plan.FORWARD_CANDIDATES, {"HW": 40, "C": 48})
    assert {dict(c.meta)["BLOCK_Q"] for c in kept} == {64}
    assert attention_plan.prune(attention_plan.BACKWARD_CANDIDATES, {"HW": 4096, "C": 32}) == \
        attention_plan.BACKWARD_CANDIDATES
    # The autotuner sees the same pruning through Triton's early_config_prune hook.
    tuner = damsm_fused._FWD._tuner()
    args = {"N": 9, "D": 256}
    assert len(tuner.early_config_prune(tuner.configs, args)) == len(damsm_plan.prune(damsm_plan.FORWARD_CANDIDATES,
                                                                                        args))
    assert tuner.keys == ["T", "D", "N", "PRECISION", "DOT_DTYPE", "SPLIT", "RETURN_ATTN"]


def test_backward_chunk_is_a_multiple_of_every_tile():
    from attngan_fast.kernels.attention import plan

    for config in plan.BACKWARD_CANDIDATES:
        assert plan.PIXELS_PER_PROGRAM % dict(config.meta)["BLOCK_Q"] == 0


def test_autotune_switch(monkeypatch):
    monkeypatch.delenv(kernels.AUTOTUNE_ENV, raising=False)
    assert kernels.autotune_enabled()
    monkeypatch.setenv(kernels.AUTOTUNE_ENV, "0")
    assert not kernels.autotune_enabled()
    with kernels.autotuning(True):
        assert kernels.autotune_enabled()
        with kernels.autotuning(False):
            assert not kernels.autotune_enabled()
        assert kernels.autotune_enabled()
    assert not kernels.autotune_enabled()
    monkeypatch.setenv(kernels.AUTOTUNE_ENV, "maybe")
    with pytest.raises(ValueError, match="ATTNGAN_FAST_AUTOTUNE"):
        kernels.autotune_enabled()
    with pytest.raises(TypeError, match="enabled"):
        kernels.set_autotune("no")
    kernels.set_autotune(None)


class _FakeTimer:
    """Stands in for CUDA-event timing: runs each trial once (on the real buffers, as the autotuner
    does) and reports every next trial faster, so the last candidate benchmarked wins."""

    def __init__(self):
        self.trials = 0

    def __call__(self, kernel_call, quantiles=None):
        kernel_call()
        self.trials += 1
        t = 1000.0 - self.trials
        return [t, t, t] if quantiles else t


def _tuned_through_interpreter(monkeypatch, module, name, timer):
    """Swaps module.<name> for the same kernel autotuned through the interpreter with ``timer``."""
    original = getattr(module, name)
    tuned = _tuning.TunedKernel(original.kernel, original.candidates, original.key, prune=original.prune,
                                interpreted=False, do_bench=timer)
    monkeypatch.setattr(module, name, tuned)
    return tuned


def test_the_damsm_autotuning_path_keeps_results_exact_and_tunes_once_per_model_size(monkeypatch):
    """Every candidate runs on the real output buffers before the winner runs again, so a kernel that
    relied on a zeroed or untouched buffer would fail here; the choice is cached per (T, D, N, ...)."""
    from attngan_fast.kernels.damsm import fused, plan

    timers = {name: _FakeTimer() for name in ("_FWD", "_CONTEXT", "_GRAD")}
    tuned = {name: _tuned_through_interpreter(monkeypatch, fused, name, t) for name, t in timers.items()}
    words, cap_lens, regions = _damsm_inputs()
    grad = torch.randn(3, 2)
    ref_scores = damsm_word_scores_ref(words.double(), cap_lens, regions.double())
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    with kernels.autotuning(True):
        for _ in range(2):  # the second call reuses the choice: no new trials
            scores, _ = fused.damsm_forward(words, cap_lens, regions, 4.0, 5.0, False, "ieee")
            d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee")
            assert_rel(scores, ref_scores, 1e-5, "R after autotuning")
            assert_rel(d_words, ref_w, 1e-5, "d_words after autotuning")
            assert_rel(d_regions, ref_r, 1e-5, "d_regions after autotuning")
        for name, candidates in (("_FWD", plan.FORWARD_CANDIDATES), ("_CONTEXT", plan.FORWARD_CANDIDATES),
                                 ("_GRAD", plan.GRAD_CANDIDATES)):
            kept = plan.prune(candidates, {"N": 37, "D": 40})  # 37 regions: tiles up to 64 kept
            assert timers[name].trials == len(kept), name
            assert tuned[name].last_config == kept[-1], name  # the fake timer's winner
        # Another batch is the same key; another region count is a new one.
        trials = timers["_FWD"].trials
        fused.damsm_forward(words[:1], cap_lens[:1], regions[:1], 4.0, 5.0, False, "ieee")
        assert timers["_FWD"].trials == trials
        fused.damsm_forward(words, cap_lens, regions[:, :, :20], 4.0, 5.0, False, "ieee")
        assert timers["_FWD"].trials == trials + len(plan.prune(plan.FORWARD_CANDIDATES, {"N": 20, "D": 40})) > trials


def test_the_word_attention_autotuning_path_keeps_results_exact(monkeypatch):
    from attngan_fast.kernels.attention import fused, plan

    timers = {"_FWD": _FakeTimer(), "_BWD": _FakeTimer()}
    tuned = {name: _tuned_through_interpreter(monkeypatch, fused, name, t) for name, t in timers.items()}
    query, context, word_mask = _attention_inputs()
    grad = torch.randn_like(query)
    ref_ctx, ref_attn = word_attention_ref(query.double(), context.double(), word_mask, return_attn=True)
    ref_q, ref_k = word_attention_ref_backward(grad.double(), query.double(), context.double(), word_mask)
    with kernels.autotuning(True):
        ctx, attn = fused.word_attention_forward(query, context, word_mask, True, False, "ieee")
        d_query, d_context = fused.word_attention_backward(grad, query, context, word_mask, False, "ieee")
    assert_rel(ctx, ref_ctx, 1e-5, "ctx after autotuning")
    assert_rel(attn, ref_attn, 1e-5, "maps after autotuning")
    assert_rel(d_query, ref_q, 1e-5, "d_query after autotuning")
    assert_rel(d_context, ref_k, 1e-5, "d_context after autotuning")
    assert timers["_FWD"].trials == len(plan.prune(plan.FORWARD_CANDIDATES, {"HW": 143, "C": 20}))
    assert tuned["_FWD"].last_config == plan.prune(plan.FORWARD_CANDIDATES, {"HW": 143, "C": 20})[-1]
    assert tuned["_BWD"].last_config == plan.prune(plan.BACKWARD_CANDIDATES, {"HW": 143, "C": 20})[-1]


def test_direct_and_autotuned_launches_pass_the_pinned_compile_options(monkeypatch):
    """Both launch paths hand kernels._tuning.COMPILE_OPTIONS to Triton (the interpreter then drops them;
    a compiling Triton builds with them). tests/test_compiled_resources.py sees the compiled side."""
    from attngan_fast.kernels.attention import fused, plan

    seen = []
    kernel = fused._FWD.kernel
    original_run = kernel.run

    def recording_run(*args, **kwargs):
        seen.append({key: kwargs.get(key) for key in _tuning.COMPILE_OPTIONS})
        return original_run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", recording_run)
    query, context, word_mask = _attention_inputs()
    fused.word_attention_forward(query, context, word_mask, False, False, "ieee")
    assert seen == [_tuning.COMPILE_OPTIONS]
    _tuned_through_interpreter(monkeypatch, fused, "_FWD", _FakeTimer())
    with kernels.autotuning(True):
        fused.word_attention_forward(query, context, word_mask, False, False, "ieee")
    assert len(seen) == 2 + len(plan.prune(plan.FORWARD_CANDIDATES, {"HW": 143, "C": 20}))  # trials, winner
    assert all(options == _tuning.COMPILE_OPTIONS for options in seen), seen


def test_every_default_is_a_candidate_so_that_a_launch_can_fall_back_to_its_neighbours():
    from attngan_fast.kernels.attention import plan as attention_plan
    from attngan_fast.kernels.damsm import plan as damsm_plan

    for capability in (None, 80, 86, 89, 90):
        for wide, fma in ((False, False), (True, False), (True, True)):
            assert damsm_plan.default_config(18, 256, 289, capability, wide=wide, fma=fma) in \
                damsm_plan.FORWARD_CANDIDATES
            assert damsm_plan.default_config(18, 256, 289, capability, grad=True, wide=wide, fma=fma) in \
                damsm_plan.GRAD_CANDIDATES
        for precision in ("native", "bf16x3", "tf32", "ieee"):
            assert attention_plan.default_config(capability, precision, backward=False) in \
                attention_plan.FORWARD_CANDIDATES
            assert attention_plan.default_config(capability, precision, backward=True) in \
                attention_plan.BACKWARD_CANDIDATES


def test_fallback_order_tries_the_default_then_smaller_tiles_then_larger():
    from attngan_fast.kernels._fit import fallback_order

    of = _tuning.LaunchConfig.of
    default = of(num_warps=8, num_stages=2, BLOCK_N=64)
    candidates = [of(num_warps=4, num_stages=1, BLOCK_N=32), of(num_warps=8, num_stages=1, BLOCK_N=128), default,
                  of(num_warps=8, num_stages=1, BLOCK_N=64), of(num_warps=4, num_stages=2, BLOCK_N=64),
                  of(num_warps=8, num_stages=2, BLOCK_N=256)]
    assert fallback_order(default, candidates) == [
        default, of(num_warps=8, num_stages=1, BLOCK_N=64), of(num_warps=4, num_stages=2, BLOCK_N=64),
        of(num_warps=4, num_stages=1, BLOCK_N=32), of(num_warps=8, num_stages=1, BLOCK_N=128),
        of(num_warps=8, num_stages=2, BLOCK_N=256)]
    assert fallback_order(default, [])[0] == default  # a default outside the list is still tried first


class _FakeCompiled:
    def __init__(self, shared):
        self.metadata = type("Metadata", (), {"shared": shared})()
        self.asm = {"cubin": b""}


class _FakeKernel:
    """Stands in for a compiled-mode @triton.jit kernel: ``warmup`` compiles to a kernel whose shared
    memory grows with the region tile and stages, and records what it was asked to compile."""

    __name__ = "_fake_kernel"
    arg_names = ["x", "N"]

    def __init__(self):
        self.compiled = []

    def warmup(self, *args, grid, BLOCK_N, num_warps, num_stages, **kwargs):
        self.compiled.append((BLOCK_N, num_warps, num_stages))
        return _FakeCompiled(shared=1024 * BLOCK_N * num_stages)


def test_a_default_that_does_not_fit_the_device_falls_back_to_the_next_that_does(monkeypatch):
    from attngan_fast.kernels import _fit

    monkeypatch.setattr(_fit, "registers_per_thread", lambda cubin: 128)
    of = _tuning.LaunchConfig.of
    default = of(num_warps=8, num_stages=2, BLOCK_N=128)
    fake = _FakeKernel()
    tuned = _tuning.TunedKernel(fake, [of(num_warps=4, num_stages=1, BLOCK_N=32), default,
                                       of(num_warps=8, num_stages=1, BLOCK_N=128)], key=["N"])
    x = torch.zeros(4)
    roomy = {"max_shared_mem": 300 * 1024, "max_num_regs": 65536}
    assert tuned.fitting((x, 289), {}, default, roomy) == default and fake.compiled == [(128, 8, 2)]
    small = {"max_shared_mem": 150 * 1024, "max_num_regs": 65536}  # 256 KB and 128 KB do not fit: not the default
    with pytest.warns(RuntimeWarning, match=r"default launch BLOCK_N=128 warps=8 stages=2 needs 262,144 B of "
                                            r"shared memory.*running BLOCK_N=128 warps=8 stages=1 instead"):
        assert tuned.fitting((x, 289), {}, default, small) == of(num_warps=8, num_stages=1, BLOCK_N=128)
    compiled = len(fake.compiled)
    assert tuned.fitting((x, 289), {}, default, small) == of(num_warps=8, num_stages=1, BLOCK_N=128)
    assert len(fake.compiled) == compiled  # the answer is kept: no second compile, no second warning
    tiny = {"max_shared_mem": 8 * 1024, "max_num_regs": 65536}
    with pytest.raises(RuntimeError, match="no launch configuration of _fake_kernel fits this GPU"):
        tuned.fitting((x, 289), {}, default, tiny)
    # Registers count too: 128 per thread on 8 warps is 32,768 per block.
    assert "registers" in _fit.why_it_does_not_fit(_FakeCompiled(0), 8, {"max_shared_mem": 1, "max_num_regs": 32767})


@needs_interpreter
def test_an_interpreter_that_turns_loop_bounds_into_ints_unsqueezed_is_mended(monkeypatch):
    """Triton 3.6's interpreter converted a scalar loop bound with ``int()`` of its (1,)-shaped array,
    which NumPy >= 2.4 refuses: the F_attn backward's chunk loop failed on CPU. Recreated here on the
    installed Triton: the old conversion breaks that loop (on NumPy >= 2.4), the mend makes it run and
    match float64, and a fixed interpreter is left alone."""
    import numpy as np
    from triton.runtime import interpreter

    from attngan_fast.kernels import _runtime
    from attngan_fast.kernels.attention import fused

    def old_patch_lang_tensor(tensor, scope):  # the 3.6 form of the conversion, over the installed one
        fixed_patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    fixed_patch_lang_tensor = interpreter._patch_lang_tensor
    assert not _runtime._mend_interpreter_loop_bounds()  # a fixed interpreter: nothing to mend
    query, context, word_mask = _attention_inputs()
    grad = torch.randn_like(query)

    def backward():
        return fused.word_attention_backward(grad, query, context, word_mask, False, "ieee")

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_patch_lang_tensor)
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(Exception, match="only 0-dimensional arrays"):
            backward()
    assert _runtime._mend_interpreter_loop_bounds()
    d_query, d_context = backward()
    ref_q, ref_k = word_attention_ref_backward(grad.double(), query.double(), context.double(), word_mask)
    assert_rel(d_query, ref_q, 1e-5, "d_query")
    assert_rel(d_context, ref_k, 1e-5, "d_context")
