"""The benchmark's providers are fair to both sides (issue 16): the fused ones run without the host
syncs of the ops' value checks, the compiled reference is one static graph per case (never a
dynamic-shape graph from an earlier size, never eager after the recompile limit), max-autotune and
TF32 variants exist and are what they say, and every kernel row carries useful and executed work."""

from __future__ import annotations

import pytest
import torch

from attngan_fast import kernels
from benchmarks import cases, gpu, report, work
from benchmarks.cases import AttentionCase, DamsmCase
from host_sync import HostReads

needs_interpreter = pytest.mark.skipif(not kernels.interpreter_active(), reason="needs the Triton interpreter (CPU)")
TINY_DAMSM = [DamsmCase(3, dim=16, words=5, side=3), DamsmCase(4, dim=16, words=6, side=4)]
TINY_ATTENTION = AttentionCase(2, 16, 4, words=5)


@needs_interpreter
def test_fused_providers_run_with_the_value_checks_off():
    """Each value check reads the device (a host sync on a GPU, which the references never pay): the
    plain op makes such reads, the benchmark's fused providers none, forward or backward."""
    words, cap_lens, regions = cases.damsm_inputs(TINY_DAMSM[0], "cpu", seed=torch.seed() % 2**31)
    query, context, mask = cases.attention_inputs(TINY_ATTENTION, "cpu", seed=torch.seed() % 2**31)
    with HostReads() as plain:
        kernels.damsm_word_scores(words, cap_lens, regions, impl="triton")
        kernels.word_attention(query, context, mask, impl="triton")
    assert plain.found, "the detector should see the ops' value checks"
    words.requires_grad_(), regions.requires_grad_(), query.requires_grad_(), context.requires_grad_()
    with HostReads() as fused:
        cases.forward_backward(cases.damsm_provider("fused"), (words, cap_lens, regions), (words, regions))()
        cases.forward_backward(cases.attention_provider("fused"), (query, context, mask), (query, context))()
    assert fused.found == []


class _Recorder:
    """A torch.compile backend that keeps each graph's example inputs and runs the graph as it is."""

    def __init__(self):
        self.graphs: list[list] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(list(example_inputs))
        return gm.forward


def _spy_compile(monkeypatch, recorder):
    """torch.compile with the recorder as backend; the options the benchmark passed are kept."""
    calls, original = [], torch.compile

    def spy(fn, **options):
        calls.append(options)
        return original(fn, backend=recorder, dynamic=options.get("dynamic"))

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def _static(graph: list) -> bool:
    return all(not isinstance(x, torch.SymInt) for x in graph) and all(
        not isinstance(s, torch.SymInt) for x in graph if isinstance(x, torch.Tensor) for s in x.shape)


def test_the_compiled_reference_is_one_static_graph_per_case(monkeypatch):
    recorder = _Recorder()
    calls = _spy_compile(monkeypatch, recorder)
    for case in TINY_DAMSM:  # as the benchmark does: a provider per case, made right before its rows
        fn = cases.damsm_provider("reference-compiled")
        words, cap_lens, regions = cases.damsm_inputs(case, "cpu")
        assert torch.allclose(fn(words, cap_lens, regions), cases.damsm_provider("reference")(words, cap_lens, regions))
    assert [c["dynamic"] for c in calls] == [False, False]
    assert len(recorder.graphs) == 2 and all(_static(g) for g in recorder.graphs)
    words_shapes = [next(tuple(x.shape) for x in g if isinstance(x, torch.Tensor) and x.dim() == 3) for g in recorder.graphs]
    assert words_shapes == [(c.batch, c.dim, c.words) for c in TINY_DAMSM]


def test_many_cases_never_reach_the_recompile_limit(monkeypatch):
    """Dynamo's cache per function holds 8 graphs; past that it silently runs eager. Every compiled
    provider starts afresh, so the twelfth case is compiled like the first."""
    recorder = _Recorder()
    _spy_compile(monkeypatch, recorder)
    for batch in range(2, 14):
        fn = cases.attention_provider("reference-compiled")
        fn(*cases.attention_inputs(AttentionCase(batch, 8, 3, words=4), "cpu"))
    assert len(recorder.graphs) == 12 and all(_static(g) for g in recorder.graphs)


def test_max_autotune_and_tf32_variants_pass_what_they_say(monkeypatch):
    """max-autotune is inductor's mode (its CPU compile takes ~90 s at these sizes, so the options are
    checked, not run); the TF32 variant is compiled like the reference and applies to 16-bit inputs only."""
    recorder = _Recorder()
    calls = _spy_compile(monkeypatch, recorder)
    cases.damsm_provider("reference-compiled-max-autotune")
    cases.attention_provider("reference-compiled-tf32")
    assert calls == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}, {"dynamic": False, "mode": None}]
    assert not cases.applies("reference-compiled-tf32", torch.float32)
    assert cases.applies("reference-compiled-tf32", torch.bfloat16) and cases.applies("reference-compiled", torch.float32)


def test_tf32_is_allowed_inside_the_tf32_provider_only(monkeypatch):
    seen, reference = [], cases._damsm_reference

    def spy(*args):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32))
        if len(seen) == 2:
            raise RuntimeError("boom")
        return reference(*args)

    monkeypatch.setattr(cases, "compiled", lambda fn, mode=None: fn)  # what is compiled is tested above
    monkeypatch.setattr(cases, "_damsm_reference", spy)
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    assert before == ("highest", False)
    fn = cases.damsm_provider("reference-compiled-tf32")
    inputs = cases.damsm_inputs(TINY_DAMSM[0], "cpu")
    fn(*inputs)
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError, match="boom"):
        fn(*inputs)
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
    assert seen == [("high", True), ("high", True)]


def test_compile_backend_swaps_the_backend_and_drops_the_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn=None, **options: calls.append(options) or fn)
    with cases.compile_backend("aot_eager"):
        cases.compiled(lambda x: x, mode="max-autotune-no-cudagraphs")
    cases.compiled(lambda x: x)
    with cases.compile_backend("inductor"):
        cases.compiled(lambda x: x, mode="max-autotune-no-cudagraphs")
    assert calls == [{"dynamic": False, "backend": "aot_eager"}, {"dynamic": False, "mode": None},
                     {"dynamic": False, "mode": "max-autotune-no-cudagraphs"}]


@needs_interpreter
def test_kernel_rows_carry_useful_and_executed_work_and_rates_of_the_useful_work():
    case = TINY_DAMSM[0]
    rows = [gpu.kernel_row("damsm", case, "fp32", "fwd+bwd", p, torch.device("cpu"), lambda fn: 2.0)
            for p in ("reference", "fused")]
    useful = work.damsm_useful(case.batch, case.words, case.side ** 2, case.dim, 4, True)
    executed = work.damsm_executed(case.batch, case.words, case.side ** 2, case.dim, 4, True)
    for row in rows:
        assert "error" not in row, row
        assert row["useful_gflop"] == pytest.approx(useful.flops / 1e9) and row["useful_mb"] == pytest.approx(useful.bytes / 1e6)
        assert row["tflops"] == pytest.approx(useful.flops / 2e-3 / 1e12)
        assert row["gbps"] == pytest.approx(useful.bytes / 2e-3 / 1e9)
    assert "executed_gflop" not in rows[0]
    assert rows[1]["executed_gflop"] == pytest.approx(executed.flops / 1e9) and rows[1]["executed_mb"] == pytest.approx(executed.bytes / 1e6)
    assert set(rows[1]["launch"]) and set(rows[1]["launch"]) <= set(kernels.chosen_configs())
    table = "\n".join(report._kernel_table(rows, "damsm", "DAMSM"))
    assert "useful GFLOP, MB" in table and "executed GFLOP, MB" in table
    assert f"{executed.flops / 1e9:.3g}, {executed.bytes / 1e6:.3g}" in table


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("provider", cases.ATTENTION_ONLY)
def test_sdpa_and_flex_providers_compute_f_attn_or_say_why_not(provider, layout):
    """Each SDPA / FlexAttention row computes F_attn with the sample's own padding (NCHW queries copied
    inside the call for the fused backends), or refuses with the backend's reason: on CPU PyTorch has
    no memory-efficient or cuDNN kernel, and FlexAttention no backward."""
    case = AttentionCase(2, 16, 4, words=5, layout=layout)
    query, context, mask = cases.attention_inputs(case, "cpu", seed=torch.seed() % 2**31)
    expected = kernels.word_attention_ref(query.double(), context.double(), mask)[0]
    with cases.compile_backend("aot_eager"):  # the compiled rows' graph, without inductor's CPU compile
        fn = cases.attention_provider(provider)
    try:
        ctx = fn(query, context, mask)
    except cases.NotApplicable as err:
        assert provider in ("sdpa-efficient", "sdpa-cudnn") and "PyTorch has no CPU kernel" in str(err), err
        return
    assert torch.linalg.vector_norm(ctx.double() - expected) <= 1e-5 * torch.linalg.vector_norm(expected)
    query.requires_grad_(), context.requires_grad_()
    if provider == "flex-compiled":
        with pytest.raises(cases.NotApplicable, match="no backward on CPU"):
            fn(query, context, mask)
        return
    cases.forward_backward(fn, (query, context, mask), (query, context))()
