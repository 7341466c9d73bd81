"""The ``attngan-fast`` command line."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def _info(_args) -> int:
    """Versions and where the fused kernels would run: the first thing to paste into a bug report."""
    import torch

    import kernels
    from attngan_fast import __version__

    facts = {
        "attngan_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": None,
        "triton_interpreter": kernels.interpreter_active(),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    if kernels.TRITON_AVAILABLE:
        import triton

        facts["triton"] = triton.__version__
    print(json.dumps(facts, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attngan-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and where the fused kernels run")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)
