"""The ``attngan-fast`` command line.

  attngan-fast info
  attngan-fast data synth --out DIR [--images N] [--size S] [--seed K]
  attngan-fast data prepare --root DIR [--layout cub|coco] [--captions-per-image N]
  attngan-fast pretrain-damsm --config CONFIG [--set key=value ...] [--resume CKPT] [--amp ...] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


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


def _data_synth(args) -> int:
    from .data.synthetic import synthesize

    summary = synthesize(args.out, images=args.images, size=args.size, seed=args.seed,
                         test_fraction=args.test_fraction, progress=not args.quiet)
    print(json.dumps(summary.__dict__, indent=2))
    return 0


def _data_prepare(args) -> int:
    from .data.prepare import prepare

    cache = prepare(args.root, args.layout, args.captions_per_image, progress=not args.quiet,
                    use_release_pickle=not args.ignore_release_pickle)
    print(json.dumps(cache.report, indent=2))
    return 0


def _load_config(args, out_key: str):
    from .config import load_config

    overrides = list(args.set or [])
    for flag, key in (("amp", "runtime.amp"), ("impl", "runtime.impl"), ("out", out_key),
                      ("device", "runtime.device"), ("data", "data.root"),
                      ("inception_weights", "image_encoder.inception_weights")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if getattr(args, "compile", False):
        overrides.append("runtime.compile=true")
    if getattr(args, "channels_last", False):
        overrides.append("runtime.channels_last=true")
    return load_config(args.config, overrides)


def _pretrain_damsm(args) -> int:
    from .train.damsm import TrainingDiverged, summarize, train_damsm

    cfg = _load_config(args, "damsm.out_dir")
    try:
        result = train_damsm(cfg, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"attngan-fast: {err}", file=sys.stderr)
        return 3
    if result.get("checkpoint") is not None and "retrieval_top1" in result:
        print(f"done: {summarize(result)}")
    print(json.dumps(result, indent=2))
    return 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a preset (bird, coco, synthetic) or a YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value, e.g. damsm.lr=0.001")
    p.add_argument("--data", help="dataset root (data.root)")
    p.add_argument("--out", help="output folder (damsm.out_dir or gan.out_dir)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. OUT/latest.pt)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision (fp16 uses a gradient scaler)")
    p.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    p.add_argument("--impl", choices=["auto", "triton", "reference"], help="attention math implementation")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for images")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attngan-fast", description="AttnGAN with fused Triton attention kernels")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="print versions and where the fused kernels run")
    info.set_defaults(func=_info)

    data = sub.add_parser("data", help="datasets: synthesize the synthetic birds, prepare caption caches")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the synthetic birds dataset (CUB layout + part masks)")
    synth.add_argument("--out", required=True, help="folder to write")
    synth.add_argument("--images", type=int, default=2000)
    synth.add_argument("--size", type=int, default=64, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.15)
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(func=_data_synth)
    prep = data_sub.add_parser("prepare", help="tokenize the captions of a CUB/COCO root and cache them")
    prep.add_argument("--root", required=True)
    prep.add_argument("--layout", choices=["cub", "coco"], default="cub")
    prep.add_argument("--captions-per-image", type=int, default=None, help="default: 10 for cub, 5 for coco")
    prep.add_argument("--ignore-release-pickle", action="store_true",
                      help="build the vocabulary from the text files even if captions.pickle is present")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=_data_prepare)

    damsm = sub.add_parser("pretrain-damsm", help="train the DAMSM text and image encoders")
    _add_run_flags(damsm)
    damsm.add_argument("--inception-weights", metavar="FILE", help="torchvision inception_v3 state_dict (local file)")
    damsm.set_defaults(func=_pretrain_damsm)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "captions_per_image", 0) is None:
        args.captions_per_image = 10 if args.layout == "cub" else 5
    from .config import ConfigError
    from .data.layouts import DataError
    from .safe_pickle import UnsafePickleError

    try:
        return args.func(args)
    except (CliError, ConfigError, DataError, UnsafePickleError, FileNotFoundError) as err:
        print(f"attngan-fast: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attngan-fast: interrupted", file=sys.stderr)
        return 130
