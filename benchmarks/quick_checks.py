"""The fused ops' outputs and gradients beside a float64 reference on the same inputs: what part a of
``benchmarks.gpu_quick`` checks for every kernel's default launch, part d for the autotuned launch,
and what its warm-up processes run to compile the same kernels beforehand (same calls, same shapes,
same dtypes, hence the same compiled kernels).

Everything goes through the public ops (``impl="triton"``); which kernels ran is read off
``attngan_fast.kernels.chosen_configs()`` (``benchmarks.launches``), never named here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.cases import AttentionCase, DamsmCase, attention_inputs, damsm_inputs
from benchmarks.launches import launched
from attngan_fast.kernels import damsm_word_scores, damsm_word_scores_ref, word_attention, word_attention_ref
from attngan_fast.kernels._runtime import PRECISIONS, resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUTS = {  # (op, variant) -> the outputs and gradients a check compares
    ("damsm", ""): ("R", "d_words", "d_regions"),
    ("damsm", "maps"): ("R", "attn"),
    ("attention", ""): ("ctx", "d_query", "d_context"),
    ("attention", "channels_last"): ("ctx", "d_query", "d_context"),
    ("attention", "legacy"): ("ctx", "d_query", "d_context"),
    ("attention", "maps"): ("ctx", "attn"),
}


def _load_numerics():
    """tests/numerics.py, the one table of tolerances (it is no package: loaded by path)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "numerics.py"
    spec = importlib.util.spec_from_file_location("attngan_test_numerics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOLERANCE = _load_numerics().TOLERANCE


@dataclass(frozen=True)
class Check:
    """One op at one case and input dtype, in one layout variant ("" = plain NCHW, fresh mask;
    "maps" = with the attention maps; "channels_last"; "legacy" = the released masking)."""

    op: str
    case: DamsmCase | AttentionCase
    dtype: str
    variant: str = ""

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUTS[self.op, self.variant]

    def label(self) -> str:
        return f"{self.op}|{self.case.label}|{self.dtype}" + (f"|{self.variant}" if self.variant else "")


def precisions_for(dtype: str) -> list[tuple[str, str]]:
    """(precision argument, label) pairs to check for inputs of ``dtype``: the default ("auto", labelled
    with what it resolves to) first; for fp32 inputs every other precision the ops accept too
    (``attngan_fast.kernels._runtime.PRECISIONS``)."""
    probe = torch.empty(0, dtype=DTYPES[dtype])
    resolved = resolve_precision("auto", probe)
    chosen = [("auto", f"auto={resolved}")]
    if dtype == "fp32":
        chosen += [(p, p) for p in PRECISIONS if p not in ("auto", resolved)]
    return chosen


def tolerance(dtype: str, precision: str) -> float:
    """The test suite's tolerance for these inputs and this (resolved) dot precision; an fp32 precision
    the table does not name yet is held to the fp32 tolerance (DESIGN.md §6: a tensor-core path for
    fp32 inputs must still meet it)."""
    resolved = resolve_precision(precision, torch.empty(0, dtype=DTYPES[dtype]))
    if dtype != "fp32":
        return TOLERANCE[dtype]
    return TOLERANCE.get("fp32" if resolved == "ieee" else resolved, TOLERANCE["fp32"])


def make_inputs(check: Check, device, seed: int) -> tuple:
    """Fresh random inputs of ``check`` (DAMSM: words, cap_lens, regions; F_attn: query, context,
    word_mask), with the awkward lengths: one caption of every length's extremes (T and 1)."""
    dtype = DTYPES[check.dtype]
    if check.op == "damsm":
        words, cap_lens, regions = damsm_inputs(check.case, device, dtype, seed)
        if check.case.batch > 1:
            cap_lens[-1] = 1
        return words, cap_lens, regions
    query, context, mask = attention_inputs(check.case, device, dtype, seed)
    if check.case.batch > 1:
        mask[-1] = True
        mask[-1, 0] = False  # one word only
    if check.variant == "channels_last":
        query = query.contiguous(memory_format=torch.channels_last)
    return query, context, mask


def _grad_leaves(check: Check, inputs: tuple) -> tuple[int, ...]:
    return (0, 2) if check.op == "damsm" else (0, 1)


def _call(check: Check, inputs: tuple, reference: bool, precision: str = "auto"):
    """(main output, maps or None) of the op on ``inputs``."""
    maps = check.variant == "maps"
    if check.op == "damsm":
        words, cap_lens, regions = inputs
        if reference:
            out = damsm_word_scores_ref(words, cap_lens, regions.flatten(2), return_attn=maps)
        else:
            out = damsm_word_scores(words, cap_lens, regions, return_attn=maps, impl="triton", precision=precision)
        return out if maps else (out, None)
    query, context, mask = inputs
    legacy = check.variant == "legacy"
    if reference:
        return word_attention_ref(query, context, mask, return_attn=maps, legacy_mask=legacy)
    return word_attention(query, context, mask, return_attn=maps, legacy_mask=legacy, impl="triton", precision=precision)


def upstream_gradient(check: Check, out: torch.Tensor, seed: int) -> torch.Tensor:
    """A random gradient of the main output, rounded to the dtype the fused op returns it in (fp32
    scores; F_attn's context in the inputs' dtype) and then cast to ``out``'s dtype, so the float64
    reference sees exactly the values the fused backward sees."""
    gen = torch.Generator().manual_seed(seed + 1)
    fused_dtype = torch.float32 if check.op == "damsm" else DTYPES[check.dtype]
    return torch.randn(out.shape, generator=gen).to(fused_dtype).to(out.device, out.dtype)


def run(check: Check, inputs: tuple, seed: int, reference: bool, precision: str = "auto") -> tuple[dict, dict]:
    """({output name: tensor}, {"forward"/"backward": {kernel: config}}) for the fused op
    (``reference=False``) or the float64 reference on the same input values. Maps are not differentiable:
    the "maps" variant has no backward."""
    leaves = _grad_leaves(check, inputs)
    args = list(inputs)
    for i in leaves:
        args[i] = inputs[i].detach().to(torch.float64 if reference else inputs[i].dtype).requires_grad_()
    (out, maps), forward_kernels = launched(lambda: _call(check, tuple(args), reference, precision))
    names = check.outputs
    results = {names[0]: out.detach()}
    kernels_ran = {"forward": forward_kernels}
    if check.variant == "maps":
        results["attn"] = maps.detach()
        return results, kernels_ran
    grad = upstream_gradient(check, out, seed)
    grads, backward_kernels = launched(lambda: torch.autograd.grad(out, [args[i] for i in leaves], grad))
    kernels_ran["backward"] = backward_kernels
    for name, g in zip(names[1:], grads):
        results[name] = g.detach()
    return results, kernels_ran


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float | None, str]:
    """(‖out − ref‖ / ‖ref‖, problem): None with the reason for a shape mismatch or a non-finite output
    (NaN never passes: outputs are poisoned with NaN before each launch)."""
    if out.shape != ref.shape:
        return None, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64 = out.detach().to(torch.float64)
    bad = int((~torch.isfinite(out64)).sum())
    if bad:
        return None, f"{bad} of {out64.numel()} values not finite"
    scale = float(torch.linalg.vector_norm(ref))
    diff = float(torch.linalg.vector_norm(out64 - ref))
    return (diff / scale if scale > 0 else diff), ""
