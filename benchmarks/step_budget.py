"""The budget of one AttnGAN training step (every D, then G with λ·DAMSM, then the EMA update), per part
of the model: FLOPs, bytes read and written op by op, ops dispatched, kernels launched (eager, and the
calls in inductor's generated code under ``torch.compile``); with the device's measured peaks, the
step's floors: compute, memory traffic, launches (× 5 µs). docs/training-speed.md explains them;
``python -m benchmarks.gpu --only budget`` prints them (``--device cpu --sizes model``: the bird step
counted on CPU).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import re
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, register_flop_formula
from torch.utils.module_tracker import ModuleTracker

import attngan_fast.models.generator as generator_module
import attngan_fast.train.gan as gan_module
from attngan_fast.config import Config
from benchmarks.train_step import build_step, random_batch

aten = torch.ops.aten
LAUNCH_US = 5.0  # typical host cost of one eager kernel launch
# The parts torch.compile leaves eager (the training loops compile G, the D steps, the G step's pass
# through the Ds and the image encoder); "losses and glue" is mostly the G loss's eager sums.
LEFT_EAGER = ("text encoder", "attention: DAMSM word loss", "losses and glue", "optimizers", "EMA")
NO_KERNEL = {aten.empty, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.empty_like, aten.detach,
             aten.lift_fresh, aten.alias, aten.set_, aten._unsafe_view}
SYNCS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select}
GEMM = {aten.convolution, aten.convolution_backward, aten.mm, aten.bmm, aten.addmm, aten.baddbmm,
        aten._fused_adam_, aten._foreach_lerp_}


# The fused ops are opaque to the dispatcher: their useful FLOPs (the products the reference computes),
# the backward twice the forward.
def _attention(query, context, *_):  # F_attn: scores and context, 2·B·HW·T·C each
    return 4 * query.numel() * context.shape[2]


def _damsm(words, cap_lens, regions, *_):  # DAMSM: s and c, 2·Bi·Bc·T·N·D each
    return 4 * regions.shape[0] * words.numel() * regions[0, 0].numel()


for op, flops in ((torch.ops.attngan_fast.word_attention, _attention), (torch.ops.attngan_fast.damsm_word_scores, _damsm),
                  (torch.ops.attngan_fast.word_attention_backward, lambda g, *a: 2 * _attention(*a)),
                  (torch.ops.attngan_fast.damsm_word_scores_backward, lambda g, *a: 2 * _damsm(*a))):
    register_flop_formula(op, get_raw=True)(lambda *a, out_val=None, _f=flops, **k: _f(*a))


class _Labelled(ModuleTracker):
    """ModuleTracker with our names ("region/unique suffix") that keeps the order modules were entered in:
    the latest still open is the innermost (in the backward, a module whose inputs need no gradient is
    never left, so the set of open modules alone would keep charging it)."""

    def __init__(self, labels: dict):
        super().__init__()
        self.labels, self.names, self.order = labels, set(labels.values()), []

    def _get_mod_name(self, mod):
        return self.labels.get(mod, f"{type(mod).__name__}#{id(mod)}")

    def _get_append_fn(self, name, is_bw):
        enter = super()._get_append_fn(name, is_bw)
        return lambda *args: (enter(*args), self.order.append(name))

    def innermost(self) -> str | None:
        self.order = [p for p in self.order if p in self.parents]
        return next((p for p in reversed(self.order) if p in self.names), None)


class Region(torch.nn.Module):
    """A function made a module for the tracker (the attention ops are functions)."""

    def __init__(self, fn):
        super().__init__()
        self.forward = fn


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel moves for ``t``: its elements, or the memory they cover where that is less (a
    stride-0 broadcast is read once)."""
    if t.numel() == 0:
        return 0
    span = (1 + sum((n - 1) * stride for n, stride in zip(t.shape, t.stride()) if stride > 0)) * t.element_size()
    return min(span, t.nbytes)


class StepCounter(TorchDispatchMode):
    """Per region (the label's part before "/"): FLOPs, bytes read + written (every tensor input and
    output of a kernel, ``tensor_bytes``), ops dispatched, kernels launched (ops but views and
    allocations), host syncs. Also counts on fake (shape-only) tensors."""

    def __init__(self, labels: dict):
        super().__init__()
        self.tracker = _Labelled(labels)
        self.rows = collections.defaultdict(collections.Counter)
        self.manual: str | None = None  # optimizers and EMA are not modules: set by hooks and the caller

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace in ("profiler", "prim"):  # record_function markers and metadata queries, not work
            return out
        label = self.manual or self.tracker.innermost() or "losses and glue/"
        row, packet = self.rows[label.split("/")[0]], func.overloadpacket
        row["ops"] += 1
        if func.is_view or packet in NO_KERNEL:
            return out
        row["launches"] += 1
        row["host_syncs"] += packet in SYNCS and any(  # a read of a GPU value waits for the GPU's queue
            t.device.type == "cuda" for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor))
        if packet in flop_registry:
            row["flops"] += flop_registry[packet](*args, **(kwargs or {}), out_val=out)
        moved = sum(tensor_bytes(t) for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor))
        row["bytes"] += moved
        row["gemm_bytes"] += moved if packet in GEMM else 0
        return out

    def __enter__(self):
        return self.tracker.__enter__() and super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.tracker.__exit__(*exc)


def labels_for(step) -> dict:
    """module -> "region/unique suffix" for every module of a ``GanStep``, submodules included (the
    losses call a D's heads directly); a later ``put`` overrides an earlier one in its subtree."""
    orig = lambda m: getattr(m, "_orig_mod", m)  # noqa: E731 - the module under a torch.compile wrapper
    netG, labels = orig(step.netG), {}
    sizes = netG.sizes

    def put(module, region, tag):
        labels.update({m: f"{region}/{tag}.{name}" for name, m in module.named_modules()})

    put(netG, "G (top)", "G")
    put(orig(step.adversarial), "losses and glue", "adversarial")
    for i, (d, d_step) in enumerate(zip(step.netsD, step.d_steps)):
        size = sizes[i] if len(step.netsD) == len(sizes) else sizes[-1]
        put(orig(d_step), f"D{i} ({size} px)", "step")
        put(d, f"D{i} ({size} px)", "net")
    put(netG.ca_net, f"G stage 1 ({sizes[0]} px)", "ca")
    for name, child in netG.named_children():
        stage = int(name[-1]) if name[-1].isdigit() else len(sizes) if name == "img_net" else None
        if stage:
            put(child, f"G stage {stage} ({sizes[stage - 1]} px)", name)
    put(orig(step.image_encoder), "image encoder (DAMSM loss)", "net")
    put(step.text_encoder, "text encoder", "net")
    return labels


@contextlib.contextmanager
def counting(step):
    """A StepCounter over ``step`` (a GanStep): attention ops wrapped, optimizer steps named."""
    labels = labels_for(step)
    attention, words = Region(generator_module.word_attention), Region(gan_module.words_loss)
    labels[attention], labels[words] = "attention: F_attn/op", "attention: DAMSM word loss/op"
    counter = StepCounter(labels)
    hooks = [h for opt in [step.optG, *step.optsD] for h in (
        opt.register_step_pre_hook(lambda *_: setattr(counter, "manual", "optimizers/")),
        opt.register_step_post_hook(lambda *_: setattr(counter, "manual", None)))]
    try:
        with mock.patch.object(generator_module, "word_attention", attention), \
                mock.patch.object(gan_module, "words_loss", words), counter:
            yield counter
    finally:
        for h in hooks:
            h.remove()


# A line of a generated call() that launches: a Triton kernel, a C++ kernel, an extern kernel, an aten op.
KERNEL_CALL = re.compile(r"^\s+(?:\w+ = )?(?:\w+\.run\(|cpp_fused_\w+\(|extern_kernels\.\w+\("
                         r"|(?:torch\.ops\.)?aten\.\w+)", re.M)


def generated_launches(sources: list[str]) -> int:
    """Kernel and extern calls in the ``call`` functions of inductor's generated modules (each graph
    runs once per step)."""
    total = 0
    for code in sources:
        body = code[code.find("def call("):]
        body = body[: min((i for i in (body.find("\ndef ", 1), body.find("\nclass ", 1)) if i > 0), default=len(body))]
        total += len(KERNEL_CALL.findall(body))
    return total


def floors(total: dict, launches: int, ceilings: dict, launch_us: float = LAUNCH_US) -> dict:
    """Seconds per step if the step were only compute, only memory traffic, or only launches."""
    bounds = {"compute": total["flops"] / (ceilings["matmul_tflops"] * 1e12),
              "memory": total["bytes"] / (ceilings["copy_gbps"] * 1e9),
              "memory_gemm_only": total["gemm_bytes"] / (ceilings["copy_gbps"] * 1e9),
              "launch": launches * launch_us * 1e-6}
    worst = max(("compute", "memory", "launch"), key=bounds.get)
    return {**{f"{k}_ms": 1e3 * v for k, v in bounds.items()}, "bound": worst, "max_steps_per_s": 1 / bounds[worst]}


def step_budget(cfg: Config, device: torch.device | str, compiled: bool = False, ceilings: dict | None = None) -> dict:
    """The budget of one GanStep + EMA update of ``cfg`` (its runtime.amp and impl) on ``device``.
    With ``compiled``, also the launches of the compiled step (inductor's generated code plus the
    parts left eager); with ``ceilings`` (the device's measured peaks, ``benchmarks.gpu.ceilings``),
    the step's floors at the matrix rate of its dtype."""
    device = torch.device(device)
    options = dict(amp=cfg.runtime.amp, compile=False, impl=cfg.runtime.impl, released=False)
    step, _ = build_step(cfg, options, device)
    batch = random_batch(cfg)
    ema = copy.deepcopy(step.netG).requires_grad_(False)
    step(batch)  # warm-up: optimizer state, lazy initialisation
    with counting(step) as counter:
        step(batch)
        counter.manual = "EMA/"
        gan_module.ema_update(ema, step.netG, cfg.gan.ema_decay)
    regions = {k: dict(v) for k, v in sorted(counter.rows.items())}
    total = {k: sum(r.get(k, 0) for r in regions.values()) for k in ("flops", "bytes", "gemm_bytes", "ops", "launches",
                                                                  "host_syncs")}
    out = {"config": cfg.preset, "batch": cfg.gan.batch_size, "image_size": cfg.gan.image_size,
           "amp": cfg.runtime.amp, "impl": cfg.runtime.impl, "device": str(device), "regions": regions, "total": total}
    if compiled:
        step_c, _ = build_step(cfg, {**options, "compile": True}, device)
        sources: list[str] = []
        from torch._inductor.graph import GraphLowering

        torch._dynamo.reset()
        with mock.patch.object(GraphLowering, "save_output_code", sources.append):
            step_c(batch)
        generated = generated_launches(sources)
        eager = sum(regions.get(r, {}).get("launches", 0) for r in LEFT_EAGER)
        out["compiled"] = {"graphs": len(sources), "generated_launches": generated, "eager_launches": eager,
                           "launches": generated + eager, "launches_with_cuda_graphs": len(sources) + eager}
    if ceilings:
        rate = ceilings["bf16_tflops" if cfg.runtime.amp in ("bf16", "fp16") else "fp32_tflops"]
        peaks = {"matmul_tflops": rate, "copy_gbps": ceilings["copy_gbps"]}
        out["floors"] = {"eager": floors(total, total["launches"], peaks)}
        if compiled:
            out["floors"]["compiled"] = floors(total, out["compiled"]["launches"], peaks)
    return out
