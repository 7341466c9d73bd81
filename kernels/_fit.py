"""Whether a compiled kernel can launch on the GPU at hand, read off the compiled kernel itself.

A fixed launch configuration is not a promise across compiler versions: the DAMSM gradient kernel's
fp32 default for ~100 KB GPUs took 80 KB of shared memory with Triton 3.6 and 112 KB with 3.8, which
would have failed to launch on an RTX 30xx/40xx. So the launchers do not trust a default blindly:
before its first launch at a set of sizes they compile it (Triton caches the result, so the launch
then costs nothing more), compare its shared memory (Triton's metadata) and its registers (the count
ptxas wrote into the cubin) with what the device offers (Triton's driver), and fall back to the next
candidate that fits (``fallback_order``). The same check runs without a GPU, against the stand-in
driver of ``benchmarks.offline_compile``, for sm_90, sm_86 and sm_80.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

# ptxas's per-function attributes (.nv.info sections of a cubin): EIATTR_REGCOUNT holds the registers
# per thread; every entry starts with a format byte that says how long it is.
_EIATTR_REGCOUNT = 0x2F
_EIFMT_SVAL = 0x04  # a u16 length, then that many bytes
_EIFMT_FIXED_LENGTH = {0x01: 2, 0x02: 4, 0x03: 4}  # no value / a byte / a half-word, with the header


def registers_per_thread(cubin: bytes) -> int:
    """Registers per thread of the (one) kernel in a cubin, from its ``.nv.info`` attributes."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2 or cubin[5] != 1:
        raise ValueError("expected a 64-bit little-endian ELF cubin")
    section_offset = struct.unpack_from("<Q", cubin, 0x28)[0]
    entry_size, sections, names_index = struct.unpack_from("<HHH", cubin, 0x3A)

    def header(i: int) -> tuple:  # (name, type, flags, address, offset, size, link, info, align, entry size)
        return struct.unpack_from("<IIQQQQIIQQ", cubin, section_offset + i * entry_size)

    names_at = header(names_index)[4]
    counts = []
    for i in range(sections):
        name_at, _, _, _, offset, size, *_ = header(i)
        start = names_at + name_at
        if not cubin[start:cubin.index(b"\0", start)].startswith(b".nv.info"):
            continue
        at = offset
        while at + 2 <= offset + size:
            fmt, attribute = cubin[at], cubin[at + 1]
            if fmt == _EIFMT_SVAL:
                length = struct.unpack_from("<H", cubin, at + 2)[0]
                if attribute == _EIATTR_REGCOUNT:
                    counts.append(struct.unpack_from("<I", cubin, at + 8)[0])  # (symbol, value)
                at += 4 + length
            elif fmt in _EIFMT_FIXED_LENGTH:
                at += _EIFMT_FIXED_LENGTH[fmt]
            else:
                break
    if not counts:
        raise ValueError("the cubin records no register count")
    return max(counts)


def device_limits() -> dict:
    """What the current device offers one program: ``max_shared_mem`` (opt-in shared memory per block,
    bytes) and ``max_num_regs`` (32-bit registers per block), as Triton's driver reports them."""
    from triton.runtime.driver import driver

    device = driver.active.get_current_device()
    if device not in _LIMITS:
        props = driver.active.utils.get_device_properties(device)
        _LIMITS[device] = {"max_shared_mem": int(props["max_shared_mem"]), "max_num_regs": int(props["max_num_regs"])}
    return _LIMITS[device]


_LIMITS: dict = {}


def why_it_does_not_fit(compiled, num_warps: int, limits: dict) -> str | None:
    """None when ``compiled`` (a Triton CompiledKernel) can launch with ``num_warps`` within ``limits``
    (``device_limits()``), else the reason in words. Registers are allocated per warp in units of 256."""
    shared = int(compiled.metadata.shared)
    if shared > limits["max_shared_mem"]:
        return f"needs {shared:,} B of shared memory, the device offers {limits['max_shared_mem']:,} B"
    per_thread = registers_per_thread(compiled.asm["cubin"])
    per_block = math.ceil(per_thread * 32 / 256) * 256 * num_warps
    if per_block > limits["max_num_regs"]:
        return (f"needs {per_block:,} registers ({per_thread} per thread on {num_warps} warps), the device "
                f"offers {limits['max_num_regs']:,} per block")
    return None


def fallback_order(default, candidates: Sequence) -> list:
    """``default`` first, then the other candidates whose tiles are no larger (the product of their block
    sizes), largest first and, at equal tiles, with fewer pipeline stages (their buffers are what
    shared memory holds) and more warps; then the larger ones, smallest first."""
    def tile(config) -> int:
        return math.prod(value for _, value in config.meta)

    others = [c for c in dict.fromkeys(candidates) if c != default]
    smaller = sorted((c for c in others if tile(c) <= tile(default)), key=lambda c: (-tile(c), c.num_stages, -c.num_warps))
    larger = sorted((c for c in others if tile(c) > tile(default)), key=lambda c: (tile(c), c.num_stages, -c.num_warps))
    return [default, *smaller, *larger]
