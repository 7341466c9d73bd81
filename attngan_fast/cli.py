"""The ``attngan-fast`` command line.

  attngan-fast info
  attngan-fast demo [--out DIR] [--damsm-steps N] [--gan-steps N] [--max-minutes M]
  attngan-fast data synth --out DIR [--images N] [--size S] [--seed K]
  attngan-fast data prepare --root DIR [--layout cub|coco|folder] [--captions-per-image N]
  attngan-fast pretrain-damsm --config CONFIG [--set key=value ...] [--resume CKPT] [--amp ...] [--compile]
  attngan-fast train --config CONFIG --damsm CKPT [--set key=value ...] [--resume CKPT] [--amp ...] [--compile]
  attngan-fast generate --checkpoint G.pt "this bird has blue wings and a red belly" --out DIR
  attngan-fast evaluate --checkpoint G.pt --damsm D.pt --data ROOT [--inception-weights FILE] --out report.json
  attngan-fast import-original --netG ... --text-encoder ... --captions ... --preset bird --out bird_release.pt
  attngan-fast serve [--checkpoint G.pt] [--host 127.0.0.1] [--port N]
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import platform
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import strict_json

# torch's CPU threads are an OpenMP team whose threads spin while they wait for one another (GNU
# OpenMP's default: ~300,000 turns). On a machine busy with other work a spinning thread can burn the
# time slice its partner needs to finish: the demo's training steps on this project's shared 2-core
# machine ran 2-13x slower than with threads that sleep while they wait, in one hour of measurements
# (benchmarks/results/cpu-amd-epyc-2-cores-2026-12-02-demo-under-load.md). On a quiet machine the short
# spin is the faster one (AttnGAN steps 1.09-1.24x, ...-2026-12-06-demo-quiet.md). So threads sleep
# (OMP_WAIT_POLICY=PASSIVE) when other work already runs as the command starts, and keep OpenMP's
# default otherwise. libgomp reads the policy once, when torch loads it: so it is decided here, before
# any torch import; an explicit OMP_WAIT_POLICY wins.
BUSY_LOAD = 0.5  # 1-minute load average: on average half a core already taken by other work


def openmp_wait_policy(environ, load_1min: float | None) -> tuple[str | None, str]:
    """(the OMP_WAIT_POLICY to set, or None to leave it as it is; why), from the environment and the
    1-minute load average when the command starts (None where the system does not report one)."""
    if "OMP_WAIT_POLICY" in environ:
        return None, "set by the user"
    if load_1min is None or load_1min >= BUSY_LOAD:
        shown = "unknown" if load_1min is None else f"{load_1min:.2f}"
        return "PASSIVE", f"the machine was busy as the command started (1-minute load {shown})"
    return None, f"the machine was quiet as the command started (1-minute load {load_1min:.2f}): OpenMP's short spin"


def _load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not reported on this system
        return None


_POLICY, OPENMP_WAIT_REASON = openmp_wait_policy(os.environ, _load_1min())
if _POLICY:
    os.environ["OMP_WAIT_POLICY"] = _POLICY


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _is_main_process() -> bool:
    """Under torchrun every rank runs the command; rank 0 speaks for them."""
    return os.environ.get("RANK", "0") == "0"


def _result(text: str) -> None:
    """Print a command's result, once."""
    if _is_main_process():
        print(text)


def _at_least(flag: str, value: int, least: int = 1) -> int:
    if value < least:
        raise CliError(f"{flag} must be at least {least}, got {value}")
    return value


MAX_IMAGES = 100_000  # per generate command: every image's noise is drawn first (~80 MB at z_dim = c_dim = 100)
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


def _seed(flag: str, value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise CliError(f"{flag} must be between 0 and 2^63 - 1, got {value}")
    return value


def _read_lines(path: str, flag: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark allowed); one line naming the file and the
    line when it is not UTF-8."""
    raw = Path(path).read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        at = bom + err.start
        line = raw[:at].count(b"\n") + 1
        raise CliError(f"{flag} {path} line {line} is not UTF-8 text (byte 0x{raw[at]:02x}): save it as UTF-8") from None


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line a user reads (no category, file and source line), above any progress bar."""
    from tqdm import tqdm

    tqdm.write(f"attngan-fast: warning: {message}", file=sys.stderr if file is None else file)


def _info(_args) -> int:
    """Versions and where the fused kernels would run: the first thing to paste into a bug report."""
    import torch

    from attngan_fast import kernels
    from attngan_fast import __version__

    facts = {
        "attngan_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": None,
        "triton_interpreter": kernels.interpreter_active(),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "ops": _ops_path(),
        "cpu_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_wait_policy_reason": OPENMP_WAIT_REASON,
    }
    try:  # CUDA only; ATTNGAN_FAST_AUTOTUNE=0 pins the defaults
        facts["autotune"] = kernels.autotune_enabled()
    except ValueError as err:  # a bad setting is what this report is for: say it, don't crash
        facts["autotune"] = f"invalid: {err}"
    if kernels.TRITON_AVAILABLE:
        import triton

        facts["triton"] = triton.__version__
    print(json.dumps(facts, indent=2))
    return 0


def _ops_path() -> str:
    """Which implementation the attention ops run with ``impl=auto`` on this machine."""
    import torch

    from attngan_fast import kernels
    from attngan_fast.kernels.attention.op import CPU_AUTO

    name = {"sdpa": "PyTorch's scaled_dot_product_attention", "reference": "the reference"}
    attention = " and ".join(f"{name[path]} for {layout} features" for layout, path in CPU_AUTO.items())
    cpu = f"on CPU tensors the DAMSM score by the reference (plain PyTorch), the word attention by {attention}"
    if torch.cuda.is_available() and kernels.TRITON_AVAILABLE and not kernels.interpreter_active():
        return f"Triton kernels on CUDA tensors (impl=auto); {cpu}"
    if torch.cuda.is_available():
        return (f"no Triton kernels: TRITON_INTERPRET=1 was set, so they cannot run compiled on CUDA; "
                f"{cpu}, and on CUDA tensors the reference")
    extra = "; impl=triton runs the Triton kernels through the interpreter" if kernels.interpreter_active() else ""
    return f"{cpu} (no CUDA device on this machine); the Triton kernels run on CUDA tensors{extra}"


def _data_synth(args) -> int:
    from .data.synthetic import MAX_SIZE, synthesize

    _at_least("--images", args.images, 2)  # one per split
    if not 16 <= args.size <= MAX_SIZE:
        raise CliError(f"--size must be between 16 and {MAX_SIZE} pixels, got {args.size}")
    _seed("--seed", args.seed)
    if not 0 < args.test_fraction < 1:
        raise CliError(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    if (Path(args.out) / "CUB_200_2011" / "images.txt").exists():  # a new draw over it would leave stale birds
        raise CliError(f"--out {args.out} already holds a dataset (CUB_200_2011/images.txt): give another --out, or "
                       "remove that folder first")
    summary = synthesize(args.out, images=args.images, size=args.size, seed=args.seed,
                         test_fraction=args.test_fraction, progress=not args.quiet)
    print(json.dumps(summary.__dict__, indent=2))
    return 0


def _data_prepare(args) -> int:
    from .data.prepare import prepare

    if not 0 < args.test_fraction < 1:
        raise CliError(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    _at_least("--captions-per-image", args.captions_per_image)
    cache = prepare(args.root, args.layout, args.captions_per_image, progress=not args.quiet,
                    use_release_pickle=not args.ignore_release_pickle, test_fraction=args.test_fraction)
    print(json.dumps(cache.report, indent=2, ensure_ascii=False))
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
    if getattr(args, "tensorboard", False):
        overrides.append("runtime.tensorboard=true")
    return load_config(args.config, overrides)


def _pretrain_damsm(args) -> int:
    from .train.damsm import summarize, train_damsm
    from .train.runtime import TrainingDiverged

    cfg = _load_config(args, "damsm.out_dir")
    args.run_folder = cfg.damsm.out_dir  # a full disk's message names its latest.pt
    try:
        result = train_damsm(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"attngan-fast: {err}", file=sys.stderr)
        return 3
    if result.get("checkpoint") is not None and "retrieval_top1" in result and "stopped_by" not in result:
        _result(f"done: {summarize(result)}")
    _result(strict_json.dumps(result, indent=2))
    return _stopped(result, args.argv)


def _train_gan(args) -> int:
    from .train.gan import train_gan
    from .train.runtime import TrainingDiverged

    cfg = _load_config(args, "gan.out_dir")
    args.run_folder = cfg.gan.out_dir
    if args.damsm is not None:
        cfg.gan.damsm = args.damsm
    if args.legacy_mask:
        cfg.gan.legacy_mask = True
    try:
        result = train_gan(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"attngan-fast: {err}", file=sys.stderr)
        return 3
    _result(strict_json.dumps(result, indent=2))
    return _stopped(result, args.argv)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _resume_command(argv: list[str], checkpoint) -> str:
    """The command that goes on from ``checkpoint``: this one (its other flags unchanged, so the
    settings and the folder are this run's), resuming."""
    again = []
    for arg in argv:
        if again and again[-1] == "--resume":
            again.pop()  # and this value
        elif arg != "--overwrite" and not arg.startswith("--resume="):
            again.append(arg)
    head = "attngan-fast"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # as many processes again, or the run is not continued exactly
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
        head = (f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])}"
                + (f" --nnodes={nodes} <this run's rendezvous flags>" if nodes > 1 else "") + " -m attngan_fast")
    return head + " " + shlex.join([*again, "--resume", str(checkpoint)])


def _stopped(result: dict, argv: list[str]) -> int:
    """0, or for a run a signal stopped (saved first) the shell's code for that signal, and the command
    that goes on."""
    where = result.get("checkpoint")
    if "stopped_by" in result:
        cause, code = f"by {result['stopped_by']}", 128 + int(getattr(signal, result["stopped_by"]))
    elif "stopped_at" in result:  # a limit of the config: the run ends normally, before its epochs are done
        cause, code = f"at {result['stopped_at']}", 0
    else:
        return 0
    raise_first = f"raise {result['stopped_at']}, then " if str(result.get("stopped_at")).endswith("max_steps") else ""
    if _is_main_process():
        print(f"attngan-fast: stopped {cause} at step {result['step']}"
              + (f"; saved {where}; to go on: {raise_first}{_resume_command(argv, where)}" if where else ""),
              file=sys.stderr)
    return code


def _no_space_message(full: OSError, args) -> str:
    """A full disk in one line: what could not be written (when the error knows) and, for a run with a
    complete checkpoint, the command that goes on from it once there is room."""
    from .atomic import NoSpaceError, no_space_words

    if isinstance(full, NoSpaceError):
        text = str(full)
    else:  # a plain write (a log line, a picture): the OS names the file only when opening it failed
        text = no_space_words(full.errno) + (f" to write {full.filename}" if full.filename else "")
    run = getattr(args, "run_folder", None)  # set by the training commands once their config is read
    latest = Path(run) / "latest.pt" if run else None
    if latest is not None and latest.is_file():
        text += (f"; the run's last complete checkpoint is {latest}: free some space, then "
                 f"{_resume_command(args.argv, latest)}")
    return text


def _generate(args) -> int:
    from tqdm import tqdm

    from .atomic import write_text_atomic
    from .generate import iter_generate, write_generation
    from .paths import check_folder
    from .train.gan import load_generator
    from .train.runtime import pick_device

    _at_least("--n-per-caption", args.n_per_caption)
    _at_least("--batch-size", args.batch_size)
    _seed("--seed", args.seed)
    if args.words_num is not None:
        _at_least("--words-num", args.words_num)
    check_folder(args.out, "--out")
    captions = list(args.captions or [])
    sources = [f"caption {n} of the arguments" for n in range(1, len(captions) + 1)]
    if args.captions_file:
        if not Path(args.captions_file).is_file():
            raise CliError(f"--captions {args.captions_file}: no such file (one caption per line)")
        lines = _read_lines(args.captions_file, "--captions")
        captions += [line.strip() for line in lines if line.strip()]
        sources += [f"--captions {args.captions_file} line {n}" for n, line in enumerate(lines, 1) if line.strip()]
    if not captions:
        raise CliError("give at least one caption (as arguments or with --captions FILE)")
    if len(captions) * args.n_per_caption > MAX_IMAGES:
        raise CliError(f"{len(captions):,} caption(s) x --n-per-caption {args.n_per_caption:,} would be "
                       f"{len(captions) * args.n_per_caption:,} images; one command makes at most {MAX_IMAGES:,}")
    out = Path(args.out)
    earlier = _earlier_generation(out, args.overwrite)
    device = pick_device(args.device or "auto")
    netG, text_encoder, vocab, _ = load_generator(args.checkpoint, device)
    for name in earlier:  # only now: a failed set-up leaves the earlier generation as it was
        (out / name).unlink(missing_ok=True)
    manifest = {"checkpoint": str(args.checkpoint), "seed": args.seed, "n_per_caption": args.n_per_caption,
                "batch_size": args.batch_size, "words_num": args.words_num, "captions": captions,
                "complete": False, "files": []}
    images, dropped = 0, {}
    total = len(captions) * args.n_per_caption
    bar = tqdm(total=total, desc="generating", unit="image", disable=args.quiet or total <= args.batch_size)
    for first, chunk in iter_generate(netG, text_encoder, vocab, captions, words_num=args.words_num,
                                      n_per_caption=args.n_per_caption, seed=args.seed, batch_size=args.batch_size,
                                      device=device, progress=bar, names=sources):
        manifest["files"] += [p.name for p in write_generation(chunk, out, n_per_caption=args.n_per_caption,
                                                               first=first)]
        write_text_atomic(out / GENERATION_MANIFEST, json.dumps(manifest, indent=1))  # an interrupted set says so
        images += len(chunk.captions)
        dropped.update(chunk.dropped)
    bar.close()
    write_text_atomic(out / GENERATION_MANIFEST, json.dumps({**manifest, "complete": True}, indent=1))
    print(json.dumps({"captions": len(captions), "images": images, "files": len(manifest["files"]), "out": str(out),
                      "dropped_words": dropped}, indent=2))
    return 0


GENERATION_MANIFEST = "generation.json"


def _earlier_generation(out: Path, overwrite: bool) -> list[str]:
    """The files of an earlier generation in ``out`` (its manifest's list, and the manifest), to remove
    with ``overwrite``; without it, a folder that holds one is refused: two generations' images would
    mix, with nothing to tell them apart."""
    manifest = out / GENERATION_MANIFEST
    if not manifest.is_file():
        return []
    if not overwrite:
        raise CliError(f"--out {out} holds an earlier generation ({GENERATION_MANIFEST}): give another --out, or "
                       "--overwrite to replace its images")
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CliError(f"--overwrite: {manifest} is not a generation's manifest; remove the folder's images "
                       "yourself") from None
    # Only plain names in this folder: a manifest edited to name other paths removes nothing else.
    return [name for name in listed if isinstance(name, str) and Path(name).name == name] + [GENERATION_MANIFEST]


def _evaluate(args) -> int:
    from .evaluate import evaluate_generator
    from .train.runtime import pick_device

    _at_least("--batch-size", args.batch_size)
    _seed("--seed", args.seed)
    report = evaluate_generator(args.checkpoint, args.damsm, args.data, args.out, n_images=args.n_images,
                                overwrite=args.overwrite,
                                inception_weights=args.inception_weights, eval_damsm=args.eval_damsm, seed=args.seed,
                                batch_size=args.batch_size, device=pick_device(args.device or "auto"),
                                words_num=args.words_num, keep_images=not args.discard_images, progress=not args.quiet)
    for key in ("inception_note", "inception_score_note"):
        if report.get(key):
            print(f"note: {report[key]}", file=sys.stderr)
    r = report["r_precision"]
    shown = {"r_precision": {k: r[k] for k in ("mean", "std", "groups_of_100", "candidates", "chance")},
             "judge": {k: report["judge"][k] for k in ("path", "role", "weights_sha256")},
             "word_cap": report["protocol"]["word_cap"],
             **{k: report[k] for k in ("inception_score", "tf_inception_fid", "n_images", "seconds")}}
    print(strict_json.dumps(shown, indent=2))
    return 0


def _import_original(args) -> int:
    from .release_import import ReleaseImportError, import_original

    try:
        summary = import_original(netG=args.netG, text_encoder=args.text_encoder, captions=args.captions,
                                  preset=args.preset, out=args.out, image_encoder=args.image_encoder,
                                  out_damsm=args.out_damsm, variant=args.variant)
    except ReleaseImportError as err:
        raise CliError(str(err)) from None
    print(strict_json.dumps(summary, indent=2))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, damsm_steps=args.damsm_steps, gan_steps=args.gan_steps, max_minutes=args.max_minutes,
                       images=args.images, size=args.size, inception_weights=args.inception_weights,
                       device=args.device, progress=not args.quiet)
    print(strict_json.dumps(summary, indent=2))
    return 0


def _serve(args) -> int:
    from .serve import ServeError, serve
    from .studio import MAX_IMAGES_LIMIT

    if not 1 <= args.max_images <= MAX_IMAGES_LIMIT:
        raise CliError(f"--max-images must be between 1 and {MAX_IMAGES_LIMIT}, got {args.max_images}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        serve(args.checkpoint, host=args.host, port=args.port, data=args.data, device=args.device,
              max_images=args.max_images)
    except ServeError as err:
        raise CliError(str(err)) from None
    return 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from .config import preset_names

    p.add_argument("--config", required=True, help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value, e.g. damsm.lr=0.001")
    p.add_argument("--data", help="dataset root (data.root)")
    p.add_argument("--out", help="output folder (damsm.out_dir or gan.out_dir)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. OUT/latest.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a run (its files are moved into OUT/replaced-<time>/)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision (fp16 uses a gradient scaler)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--impl", choices=["auto", "triton", "reference", "sdpa"],
                   help="attention math implementation (sdpa: the generator's word attention through PyTorch's "
                        "scaled_dot_product_attention, the DAMSM score as auto)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for images")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write losses, speed, evaluation and pictures to OUT/tensorboard/ (runtime.tensorboard)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _own_message(err: Exception) -> str:
    """The error's own message. One raised in a DataLoader worker comes back with the worker's traceback
    folded into its message ("Caught DataError in DataLoader worker process 1. Original Traceback ..."):
    its last line is the message the worker raised, after the exception's name."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    name = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last.split(name, 1)[1] if name in last else last.split(": ", 1)[-1]


def build_parser() -> argparse.ArgumentParser:
    from .demo import DAMSM_STEPS, DEFAULT_OUT, GAN_STEPS, MAX_MINUTES  # no torch import: --help stays quick

    parser = argparse.ArgumentParser(prog="attngan-fast", description="AttnGAN with fused Triton attention kernels")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="synthetic data -> DAMSM -> AttnGAN -> pictures + metrics in one command",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default=DEFAULT_OUT,
                      help="folder for everything (a re-run reuses the phases that completed, resumes the others)")
    demo.add_argument("--damsm-steps", type=int, default=DAMSM_STEPS, help="DAMSM pretraining steps (the budget)")
    demo.add_argument("--gan-steps", type=int, default=GAN_STEPS, help="AttnGAN training steps (the budget)")
    demo.add_argument("--max-minutes", type=float, default=MAX_MINUTES,
                      help="cap on the training time; the page says so when it cuts a phase short")
    demo.add_argument("--images", type=int, default=2000, help="synthetic images to draw")
    demo.add_argument("--size", type=int, default=64, help="synthetic image side in pixels (16 to 1024; the DAMSM "
                                                           "trains at it, AttnGAN always draws 32 -> 64 px)")
    demo.add_argument("--inception-weights", metavar="FILE", help="torch-fidelity Inception weights for IS/FID")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", help="print versions and where the fused kernels run")
    info.set_defaults(func=_info)

    data = sub.add_parser("data", help="datasets: synthesize the synthetic birds, prepare caption caches")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the synthetic birds dataset (CUB layout + part masks)")
    synth.add_argument("--out", required=True, help="folder to write")
    synth.add_argument("--images", type=int, default=2000, help="birds to draw (default 2000; at least 2, and "
                                                                "enough for two classes in the train split)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (16 to 1024, default 64)")
    synth.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    synth.add_argument("--test-fraction", type=float, default=0.15, help="share of the test split (default 0.15)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_data_synth)
    prep = data_sub.add_parser("prepare", help="check a CUB, COCO or folder root, tokenize its captions and cache them",
                               description="Check a dataset root and cache its tokenized captions. The folder layout "
                                           "(your own images: metadata.jsonl or metadata.csv with file_name and text) "
                                           "decodes every image and lists every problem, one line each.")
    prep.add_argument("--root", required=True)
    prep.add_argument("--layout", choices=["cub", "coco", "folder"], default="cub")
    prep.add_argument("--captions-per-image", type=int, default=None,
                      help="default: 10 for cub and folder (where it is an upper bound), 5 for coco")
    prep.add_argument("--test-fraction", type=float, default=0.1,
                      help="folder layout without a split column: the share of images held out (data.test_fraction)")
    prep.add_argument("--ignore-release-pickle", action="store_true",
                      help="build the vocabulary from the text files even if captions.pickle is present")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=_data_prepare)

    damsm = sub.add_parser("pretrain-damsm", help="train the DAMSM text and image encoders")
    _add_run_flags(damsm)
    damsm.add_argument("--inception-weights", metavar="FILE", help="torchvision inception_v3 state_dict (local file)")
    damsm.set_defaults(func=_pretrain_damsm)

    train = sub.add_parser("train", help="train AttnGAN (generator + discriminators) with a frozen DAMSM")
    _add_run_flags(train)
    train.add_argument("--damsm", metavar="CKPT", help="DAMSM checkpoint from pretrain-damsm (gan.damsm)")
    train.add_argument("--legacy-mask", action="store_true", help="the released code's F_attn mask layout")
    train.set_defaults(func=_train_gan)

    gen = sub.add_parser("generate", help="images (and attention pictures) from your own sentences",
                         description="Images (and attention pictures) from your own sentences. Every word is kept "
                                     "unless --words-num cuts them. Noise is seeded per image, so with the default "
                                     "mask the images do not depend on --batch-size; generators imported from the "
                                     "release (legacy_mask) do depend on the other captions of their batch: use "
                                     "--batch-size 1 for them.")
    gen.add_argument("captions", nargs="*", help="captions, e.g. \"this bird has blue wings and a red belly\"")
    gen.add_argument("--checkpoint", required=True, help="generator checkpoint (train's latest.pt or import-original's)")
    gen.add_argument("--captions", dest="captions_file", metavar="FILE", help="a file with one caption per line")
    gen.add_argument("--n-per-caption", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=32,
                     help="images per forward pass (default 32). Generators with the released F_attn mask "
                          "(legacy_mask: imported release checkpoints) couple the samples of a batch, so their "
                          "images depend on the other captions in it: --batch-size 1 is the reproducible choice "
                          "for them (a larger batch warns)")
    gen.add_argument("--words-num", type=int, metavar="N",
                     help="cut captions longer than N words to a seeded random ordered subset, as in training "
                          "(default: every word is kept, as the release's example generation does)")
    gen.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    gen.add_argument("--out", required=True, help="folder for the images; it gets a generation.json that lists them "
                                                  "and the settings (a folder that has one is refused)")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace the earlier generation in --out (the files its generation.json lists)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    ev = sub.add_parser("evaluate", help="R-precision, IS and TF-Inception FID (torch-fidelity) of a generator, "
                                         "as a JSON report that states its protocol")
    ev.add_argument("--checkpoint", required=True, help="generator checkpoint")
    ev.add_argument("--damsm", required=True, help="the DAMSM checkpoint the generator was trained with")
    ev.add_argument("--data", required=True, help="dataset root (its test split is used)")
    ev.add_argument("--n-images", type=int, default=30000,
                    help="generated images, one per (test image, caption) pair drawn (default: 30,000, the protocol's)")
    ev.add_argument("--inception-weights", metavar="FILE", help="torch-fidelity's Inception weights (local file)")
    ev.add_argument("--eval-damsm", metavar="CKPT", help="a separately trained DAMSM as the R-precision judge")
    ev.add_argument("--words-num", type=int, metavar="N",
                    help="evaluation word cap (default: 25 for CUB layouts, 20 for COCO, as the release's and "
                         "DM-GAN's evaluation configs); the generator and the judge read the same cut captions")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--discard-images", action="store_true", help="delete the PNGs written for IS/FID afterwards")
    ev.add_argument("--out", required=True, help="the JSON report to write (an existing one is refused)")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out and its images")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_evaluate)

    srv = sub.add_parser("serve", help="a local web page: type a caption, see every stage and the attention maps",
                         description="A local web page (Gradio, the optional extra: pip install -e \".[app]\") to type "
                                     "a caption or pick a test caption, choose the seed and the number of images, and "
                                     "see every stage's image with the most attended words and their maps; and to "
                                     "change one word and see both side by side. Binds 127.0.0.1 unless --host. A "
                                     "request takes a caption of at most 300 characters and 40 words, a seed from 0 "
                                     "to 2147483647 and 1 to --max-images images; one runs at a time, 16 may wait, "
                                     "and a request body holds at most 64 KiB.")
    srv.add_argument("--checkpoint", help=f"generator checkpoint (default: the demo's, "
                                          f"{DEFAULT_OUT}/attngan/latest.pt)")
    srv.add_argument("--data", help="dataset root for the test captions (default: the one the generator was "
                                    "trained on)")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    srv.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    srv.add_argument("--max-images", type=int, default=8, help="most images one request may ask for (default 8)")
    srv.set_defaults(func=_serve)

    imp = sub.add_parser("import-original", help="convert the release's .pth files into our checkpoints")
    imp.add_argument("--netG", required=True, help="e.g. netG_epoch_600.pth")
    imp.add_argument("--text-encoder", required=True, help="e.g. text_encoder200.pth")
    imp.add_argument("--captions", required=True, help="the release's captions.pickle (vocabulary)")
    imp.add_argument("--image-encoder", help="e.g. image_encoder200.pth (also writes a DAMSM checkpoint)")
    imp.add_argument("--preset", choices=["bird", "coco"], required=True)
    imp.add_argument("--variant", choices=["attngan", "attndcgan"], default="attngan")
    imp.add_argument("--out", required=True, help="generator checkpoint to write")
    imp.add_argument("--out-damsm", help="DAMSM checkpoint to write (default: OUT with _damsm)")
    imp.set_defaults(func=_import_original)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a stopped run's message repeats it
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "captions_per_image", 0) is None:
        args.captions_per_image = 5 if args.layout == "coco" else 10
    from .config import ConfigError
    from .data.layouts import DataError
    from .demo import DemoError
    from .evaluate import EvaluationError
    from .generate import CaptionError
    from .models.encoders import InceptionWeightsError
    from .paths import NotAFolderError
    from .atomic import no_space_error
    from .safe_pickle import UnsafePickleError
    from .train.checkpoint import CheckpointError
    from .train.run_folder import RunExistsError
    from .train.runtime import DeviceError

    for flag in ("checkpoint", "damsm", "eval_damsm", "resume"):  # named here: the loaders only know a path
        value = getattr(args, flag, None)
        if args.command != "serve" and isinstance(value, str) and not Path(value).exists():  # serve says more
            print(f"attngan-fast: error: --{flag.replace('_', '-')} {value} does not exist", file=sys.stderr)
            return 2
    # SIGTERM (kill, docker stop) ends a command as Ctrl-C does, through Python's exit: temporary folders
    # go (atexit) instead of staying in /tmp. Training loops take it over to save first.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    with warnings.catch_warnings():
        warnings.showwarning = _plain_warning
        try:
            return args.func(args)
        except (CliError, ConfigError, DataError, UnsafePickleError, CaptionError, CheckpointError, RunExistsError,
                DeviceError, EvaluationError, DemoError, InceptionWeightsError, NotAFolderError,
                FileNotFoundError) as err:
            print(f"attngan-fast: error: {_own_message(err)}", file=sys.stderr)
            return 2
        except Exception as err:
            full = no_space_error(err)
            if full is None:
                raise
            print(f"attngan-fast: error: {_no_space_message(full, args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            saving = args.command in ("pretrain-damsm", "train")  # a second Ctrl-C: stopped before the save
            run = getattr(args, "run_folder", None)
            latest = Path(run) / "latest.pt" if run else None
            if _is_main_process():
                print("attngan-fast: interrupted" + (" without saving" if saving else "") + (
                    f"; the run's last checkpoint is {latest}: {_resume_command(args.argv, latest)}"
                    if saving and latest is not None and latest.is_file() else ""), file=sys.stderr)
            return 130
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # python -m attngan_fast.cli, torchrun -m attngan_fast.cli
    raise SystemExit(main())
