"""Compiling the Triton kernels for a GPU architecture on a machine that has no GPU.

Triton's compiler needs no device: only its launcher asks the CUDA driver for the current target.
``use_offline_target`` installs a stand-in driver that answers with a chosen architecture, after which
``kernel.warmup(...)`` (Triton's compile-without-launch) runs the whole pipeline down to a cubin with
the bundled ``ptxas``. The bundled ``cuobjdump`` then reads what the interpreter cannot tell: registers
per thread, spill space and spill instructions, and (from Triton's metadata) shared memory per program.

This is a check of compiled code, not of results: a kernel that compiles and fits can still compute
wrongly on a GPU (the ``gpu`` tests are for that). It needs a process of its own, one that imported
``attngan_fast.kernels`` *without* ``TRITON_INTERPRET`` and never uses a real GPU: the stand-in driver stays active.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget


@dataclass(frozen=True)
class Arch:
    """What one SM of a GPU generation offers a kernel (CUDA programming guide, compute capabilities)."""

    capability: int
    gpus: str
    max_shared_bytes: int  # opt-in shared memory per block
    shared_per_sm: int  # shared memory per SM; each resident block also reserves 1 KB of it
    max_warps: int  # resident warps per SM
    max_blocks: int  # resident blocks per SM
    registers: int = 65536  # 32-bit registers per SM


ARCHS = {
    90: Arch(90, "H100/H200", 232448, 233472, 64, 32),
    80: Arch(80, "A100", 166912, 167936, 64, 32),
    86: Arch(86, "RTX 30xx, A10", 101376, 102400, 48, 16),
    89: Arch(89, "RTX 40xx, L4", 101376, 102400, 48, 24),
}


class _OfflineUtils:
    """The device properties a launcher checks a compiled kernel against (``attngan_fast.kernels._fit``)."""

    def __init__(self, driver: "_OfflineDriver") -> None:
        self.driver = driver
        self.max_shared: int | None = None  # a smaller GPU than the architecture's, for tests

    def get_device_properties(self, device: int) -> dict:
        arch = ARCHS[device]
        return {"max_shared_mem": self.max_shared or arch.max_shared_bytes, "max_num_regs": arch.registers,
                "multiprocessor_count": 0, "warpSize": 32}


class _OfflineDriver:
    """Answers the launcher's questions about "the current GPU" with a fixed target; launches nothing.
    The device number is the capability, so Triton's per-device caches never mix two targets."""

    def __init__(self) -> None:
        self.capability = 90
        self.utils = _OfflineUtils(self)

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self) -> int:
        return self.capability

    def get_current_stream(self, device=None) -> int:
        return 0


_DRIVER = _OfflineDriver()


def use_offline_target(capability: int, max_shared: int | None = None) -> None:
    """Makes Triton compile for ``capability`` (e.g. 90) from now on in this process; ``max_shared``
    (bytes) makes the device report less shared memory than the architecture has."""
    from triton.runtime.driver import driver

    from attngan_fast.kernels import _fit

    if capability not in ARCHS:
        raise ValueError(f"capability must be one of {sorted(ARCHS)}, got {capability!r}")
    _DRIVER.capability = capability
    _DRIVER.utils.max_shared = max_shared
    _fit._LIMITS.clear()
    driver.set_active(_DRIVER)


def compile_for(kernel, args, kwargs: dict, launch_kwargs: dict, capability: int):
    """The CompiledKernel of ``kernel[grid](*args, **kwargs, **launch_kwargs)`` for ``capability``."""
    if not isinstance(kernel, triton.runtime.jit.JITFunction):
        raise TypeError(f"expected a compiled-mode @triton.jit kernel, got {type(kernel).__name__} "
                        "(was TRITON_INTERPRET set when kernels were imported?)")
    use_offline_target(capability, _DRIVER.utils.max_shared)
    return kernel.warmup(*args, grid=(1,), **kwargs, **launch_kwargs)


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+)")


def _cuobjdump() -> Path:
    """The cuobjdump that ships with Triton (it reads the cubin Triton itself produced, so registers and
    stack are exact whatever flags that Triton version passes to ptxas)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        raise RuntimeError(f"Triton's bundled cuobjdump is missing ({tool})")
    return tool


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;\n]*);")  # "/*2f10*/  @!P3 BRA 0x2e50 ;"
_BRANCH_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, text) of every instruction in ``cuobjdump -sass`` output; the opcode without
    its predicate and modifiers ("@P0 LDL.LU R124, [R1+0x780]" -> "LDL")."""
    found = []
    for match in _INSTRUCTION.finditer(sass):
        text = match.group(2).strip()
        tokens = [t for t in text.split() if not t.startswith("@")]
        if tokens:
            found.append((int(match.group(1), 16), tokens[0].split(".")[0], text))
    return found


def sass_loops(instructions: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """The loops of the machine code as (first, last) address ranges: every branch to an earlier
    address closes one (ptxas lays structured loops out contiguously; the branch-to-self that pads the
    end of a function is no loop). Back branches to the same head are one loop."""
    ends: dict[int, int] = {}
    for address, opcode, text in instructions:
        target = _BRANCH_TARGET.search(text) if opcode == "BRA" else None
        if target and int(target.group(1), 16) < address:
            head = int(target.group(1), 16)
            ends[head] = max(ends.get(head, address), address)
    return sorted(ends.items())


def local_memory_by_loop(sass: str) -> dict:
    """Where the spill instructions (STL/LDL) sit: how many at each loop depth (0 = outside every loop)
    and how many inside innermost loops, the hot ones (for these kernels the product's chunk loops).
    A spill outside the loops costs once per program or per pair; one in an inner loop, every step."""
    instructions = sass_instructions(sass)
    loops = sass_loops(instructions)

    def depth(address: int) -> int:
        return sum(first <= address <= last for first, last in loops)

    inner = [(a, b) for a, b in loops if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    by_depth = [0] * (max((depth(first) for first, _ in loops), default=0) + 1)
    in_inner = 0
    for address, opcode, _ in instructions:
        if opcode in ("STL", "LDL"):
            by_depth[depth(address)] += 1
            in_inner += any(a <= address <= b for a, b in inner)
    return dict(local_by_loop_depth=by_depth, local_in_inner_loops=in_inner)


def register_usage(compiled) -> dict:
    """Registers per thread and stack bytes per thread (spill space: these kernels keep no local
    arrays) of the compiled kernel, the number of local-memory store/load instructions in its machine
    code (STL/LDL: spill traffic, static count) and where they sit in its loops, and shared memory per
    program from Triton's metadata (its pipelining and layout-conversion buffers live there)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(_cuobjdump()), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
        sass = subprocess.run([str(_cuobjdump()), "-sass", str(cubin)], capture_output=True, text=True, check=True)
    found = _RESOURCES.search(usage.stdout)
    if found is None:
        raise RuntimeError(f"unexpected cuobjdump -res-usage output: {usage.stdout[-300:]!r}")
    opcodes = [opcode for _, opcode, _ in sass_instructions(sass.stdout)]
    return dict(registers=int(found.group(1)), stack_bytes=int(found.group(2)),
                local_stores=opcodes.count("STL"), local_loads=opcodes.count("LDL"),
                **local_memory_by_loop(sass.stdout), **math_instructions(opcodes),
                shared_bytes=int(compiled.metadata.shared))


# What the products compile to: HGMMA is Hopper's warpgroup MMA (wgmma), HMMA the warp-level mma.sync
# (tensor cores before Hopper, and on Hopper whenever a product cannot take wgmma), FFMA the fp32
# fused multiply-add of the FMA units (an ``ieee`` product, and all the softmax arithmetic).
MATH_OPCODES = ("HGMMA", "HMMA", "FFMA")


def math_instructions(opcodes: list[str]) -> dict:
    """Static counts of the tensor-core and FMA instructions in the machine code."""
    return {opcode.lower(): opcodes.count(opcode) for opcode in MATH_OPCODES}


def occupancy(usage: dict, num_warps: int, capability: int, max_shared: int | None = None) -> dict:
    """Resident programs and warps per SM that registers, shared memory and the block limit allow
    (registers rounded up per warp to 256, as the hardware allocates them); ``max_shared`` as in
    ``use_offline_target``."""
    arch = ARCHS[capability]
    regs_per_warp = -(-usage["registers"] * 32 // 256) * 256
    by_registers = arch.registers // (regs_per_warp * num_warps)
    by_shared = arch.shared_per_sm // (usage["shared_bytes"] + 1024)
    programs = min(by_registers, by_shared, arch.max_blocks, arch.max_warps // num_warps)
    limit = min(arch.max_shared_bytes, max_shared or arch.max_shared_bytes)
    return dict(programs_per_sm=programs, warps_per_sm=programs * num_warps,
                fits=usage["shared_bytes"] <= limit and programs >= 1)
