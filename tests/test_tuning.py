"""Launch configurations: every autotuning candidate of every kernel computes the same function, and the
switch that pins the defaults works.

The interpreter ignores warps and stages, so on CPU each distinct set of block sizes is run (forced with
``config=``) against float64; tests/test_gpu.py runs every candidate compiled on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import _tuning
from kernels.attention import word_attention_ref, word_attention_ref_backward
from kernels.damsm import damsm_word_scores_ref, damsm_word_scores_ref_backward
from numerics import assert_rel, needs_interpreter

pytestmark = needs_interpreter


def _damsm_inputs():
    """3 images, 2 captions, D = 20, T = 6, N = 37: one, two and three region tiles for BLOCK_N 64/32/16."""
    words = torch.randn(2, 20, 6)
    regions = torch.randn(3, 20, 37)
    cap_lens = torch.tensor([6, 1])
    return words, cap_lens, regions


def _attention_inputs():
    """B = 2, C = 20, 13 x 11 = 143 pixels (a partial last tile for every BLOCK_Q), T = 6 with padding."""
    query = torch.randn(2, 20, 13, 11)
    context = torch.randn(2, 20, 6)
    word_mask = torch.arange(6)[None, :] >= torch.tensor([6, 2])[:, None]
    return query, context, word_mask


@pytest.mark.parametrize("config", _tuning.distinct_meta(kernels.damsm.fused.CANDIDATES), ids=str)
def test_every_damsm_candidate_matches_float64(config):
    from kernels.damsm import fused

    words, cap_lens, regions = _damsm_inputs()
    scores, attn = fused.damsm_forward(words, cap_lens, regions[:2], 4.0, 5.0, True, "ieee", config=config)
    ref_scores, ref_attn = damsm_word_scores_ref(words.double(), cap_lens, regions[:2].double(), return_attn=True)
    assert_rel(scores, ref_scores, 1e-5, f"R with {config}")
    assert_rel(attn, ref_attn, 1e-5, f"maps with {config}")
    assert fused._FWD.last_config == config

    grad = torch.randn(3, 2)
    d_words, d_regions = fused.damsm_backward(grad, words, cap_lens, regions, 4.0, 5.0, "ieee",
                                              words_config=config, regions_config=config)
    ref_w, ref_r = damsm_word_scores_ref_backward(grad.double(), words.double(), cap_lens, regions.double())
    assert_rel(d_words, ref_w, 1e-5, f"d_words with {config}")
    assert_rel(d_regions, ref_r, 1e-5, f"d_regions with {config}")


def _attention_candidates():
    from kernels.attention import fused

    return ([("forward", c) for c in _tuning.distinct_meta(fused.FORWARD_CANDIDATES)]
            + [("backward", c) for c in _tuning.distinct_meta(fused.BACKWARD_CANDIDATES)])


@pytest.mark.parametrize("direction, config", _attention_candidates(), ids=lambda x: str(x))
def test_every_word_attention_candidate_matches_float64(direction, config):
    from kernels.attention import fused

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
    from kernels.attention import fused as attention_fused
    from kernels.damsm import fused as damsm_fused

    words, cap_lens, regions = _damsm_inputs()
    query, context, word_mask = _attention_inputs()
    with kernels.autotuning(True):
        kernels.damsm_word_scores(words, cap_lens, regions, impl="triton")
        kernels.word_attention(query, context, word_mask, impl="triton")
    assert damsm_fused._FWD.last_config == damsm_fused.default_config(6, 20, 37)
    assert attention_fused._FWD.last_config == attention_fused.FORWARD_DEFAULT
    chosen = kernels.chosen_configs()
    assert chosen["damsm_fwd"] == str(damsm_fused.default_config(6, 20, 37))
    assert chosen["word_attention_fwd"] == str(attention_fused.FORWARD_DEFAULT)


def test_defaults_follow_the_model_size():
    from kernels.damsm import fused

    real = fused.default_config(T=18, D=256, N=289)
    assert dict(real.meta) == {"BLOCK_N": 32} and real.num_warps == 8
    assert dict(fused.default_config(T=5, D=20, N=9).meta) == {"BLOCK_N": 16}  # never wider than the regions
    assert dict(fused.default_config(T=5, D=300, N=289).meta) == {"BLOCK_N": 16}  # 512-wide caption tiles
    assert fused.default_config(T=5, D=20, N=9).num_warps == 4


def test_pruning_drops_blocks_wider_than_the_axis_and_keeps_one():
    from kernels.attention import fused as attention_fused
    from kernels.damsm import fused as damsm_fused

    kept = damsm_fused._prune(damsm_fused.CANDIDATES, {"N": 9})
    assert kept and all(dict(c.meta)["BLOCK_N"] == 16 for c in kept)
    assert damsm_fused._prune(damsm_fused.CANDIDATES, {"N": 289}) == damsm_fused.CANDIDATES
    kept = attention_fused._prune(attention_fused.FORWARD_CANDIDATES, {"HW": 40})
    assert {dict(c.meta)["BLOCK_Q"] for c in kept} == {32, 64}
    # The autotuner sees the same pruning through Triton's early_config_prune hook.
    tuner = damsm_fused._FWD._tuner()
    assert len(tuner.early_config_prune(tuner.configs, {"N": 9})) == len(damsm_fused._prune(damsm_fused.CANDIDATES, {"N": 9}))
    assert tuner.keys == ["T", "D", "N", "PRECISION", "RETURN_ATTN"]


def test_backward_chunk_is_a_multiple_of_every_tile():
    from kernels.attention import fused

    for config in fused.BACKWARD_CANDIDATES:
        assert fused.PIXELS_PER_PROGRAM % dict(config.meta)["BLOCK_Q"] == 0


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
