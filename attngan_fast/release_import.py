"""Import the release's checkpoints (``netG_epoch_600.pth``, ``text_encoder200.pth``,
``image_encoder200.pth``, ``captions.pickle``) into our self-contained checkpoints.

The ``.pth`` files are plain state_dicts read with ``torch.load(weights_only=True)``; the pickle goes
through the restricted unpickler. Every parameter is accounted for: a missing, unexpected or
mis-shaped tensor is an error that names it (``num_batches_tracked``, absent from files saved by
PyTorch < 0.4.1, is filled in). Imported generators use ``legacy_mask=True``: the released code's
F_attn mask layout is what they were trained with. The number of residual blocks per stage is read from
the generator file itself (the release's AttnDCGAN configs set R_NUM 0, its AttnGAN ones 2 or 3).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from .config import load_config
from .models.encoders import InceptionImageEncoder, TextEncoder
from .safe_pickle import as_text, load_plain_pickle
from .text import END_TOKEN, Vocabulary
from .train.checkpoint import save_atomic
from .train.damsm import FORMAT as DAMSM_FORMAT
from .train.gan import FORMAT as GAN_FORMAT
from .train.gan import build_generator


class ReleaseImportError(ValueError):
    """A released file that does not fit the model it should fill."""


def load_release_state(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a pickle protocol it did not expect: refused or not
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:  # permissions, a disk error: not the file's content
        raise ReleaseImportError(f"{path} cannot be read: {err.strerror or err}") from None
    except Exception:  # noqa: BLE001
        # A truncated file, a text file, a pickle that carries code (refused by weights_only; torch's own
        # message would suggest weights_only=False, which an untrusted file must never get).
        raise ReleaseImportError(f"{path} is not a readable torch.save file of tensors (expected the release's "
                                 f"{what}; a file that carries code is refused, a whole pickled model too: "
                                 "save its state_dict() where it was made)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReleaseImportError(f"{path} is not a state_dict of tensors (expected the release's {what})")
    # Files saved from nn.DataParallel carry a "module." prefix.
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def fill_module(module: torch.nn.Module, state: dict, path: str | Path, what: str,
                hint: str = "are --preset (bird or coco) and --variant (attngan or attndcgan) right for this file?") -> None:
    """Loads ``state`` into ``module``, or raises naming every missing, unexpected and mis-shaped tensor,
    then ``hint``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped tensors (e.g. {'; '.join(mis_shaped[:3])})")
    if problems:
        raise ReleaseImportError(f"{path} does not fit the {what}: " + "; ".join(problems) + f" — {hint}")
    merged = {k: state.get(k, own[k]) for k in own}
    module.load_state_dict(merged, strict=True)


def residual_blocks(state: dict) -> int | None:
    """Residual blocks per attention stage in a generator state_dict (``h_net2.residual.<n>.*``), or None
    for a generator without a second stage."""
    if not any(k.startswith("h_net2.") for k in state):
        return None
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"h_net2\.residual\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def release_vocabulary(path: str | Path) -> Vocabulary:
    data = load_plain_pickle(path)
    if not isinstance(data, (list, tuple)) or len(data) != 4 or not isinstance(data[2], dict):
        raise ReleaseImportError(f"{path}: expected the release's [train_captions, test_captions, ixtoword, wordtoix]")
    ixtoword = data[2]
    if not ixtoword or set(ixtoword) != set(range(len(ixtoword))):
        raise ReleaseImportError(f"{path}: the vocabulary (ixtoword, item 3) must map 0, 1, ... to words")
    words = [as_text(ixtoword[i]) for i in range(len(ixtoword))]
    if words[0] != END_TOKEN:
        raise ReleaseImportError(f"{path}: word 0 must be {END_TOKEN!r}, got {words[0]!r}")
    return Vocabulary(words)


# The sizes of the release's two vocabularies (its text encoders' embedding rows). A generator of one
# dataset with the other's text encoder and captions has every shape right: the size is the tell.
RELEASE_VOCABULARY_SIZE = {"bird": 5450, "coco": 27297}


def check_vocabulary_matches(preset: str, size: int, captions: str | Path) -> None:
    """Warns when a vocabulary has the size of the other dataset's released one."""
    other = next((name for name, n in RELEASE_VOCABULARY_SIZE.items() if n == size and name != preset), None)
    if other is not None:
        warnings.warn(f"{captions} has {size:,} words, the size of the release's {other} vocabulary, but --preset is "
                      f"{preset} (whose released vocabulary has {RELEASE_VOCABULARY_SIZE.get(preset, 0):,}): are the "
                      f"text encoder and captions.pickle the {preset} ones?", stacklevel=3)


def import_original(*, netG: str | Path, text_encoder: str | Path, captions: str | Path, preset: str,
                    out: str | Path, image_encoder: str | Path | None = None, out_damsm: str | Path | None = None,
                    variant: str = "attngan") -> dict:
    """Write ``out`` (a generator checkpoint: generator, text encoder, vocabulary, config) and, with the
    image encoder, ``out_damsm`` (a DAMSM checkpoint). Returns a summary."""
    netG_state = load_release_state(netG, "generator")
    r_num = residual_blocks(netG_state)
    cfg = load_config(preset, [f"gan.variant={variant}", "gan.legacy_mask=true"]
                      + ([] if r_num is None else [f"gan.r_num={r_num}"]))
    vocab = release_vocabulary(captions)
    check_vocabulary_matches(preset, len(vocab), captions)
    te = cfg.text_encoder
    text = TextEncoder(len(vocab), te.embedding_dim, te.hidden_dim, te.dropout)
    fill_module(text, load_release_state(text_encoder, "text encoder"), text_encoder,
                f"text encoder (vocabulary of {len(vocab)} words from {Path(captions).name})",
                f"was {captions} released with this text encoder (one embedding row per word), and is --preset "
                "right for it?")
    generator = build_generator(cfg, legacy_mask=True)
    fill_module(generator, netG_state, netG, f"{preset} {variant} generator ({cfg.gan.r_num} residual blocks per stage)")
    gen_state = generator.state_dict()
    save_atomic({
        "format": GAN_FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_json(), "legacy_mask": True,
        "text_encoder": text.state_dict(), "netG": gen_state, "netG_ema": gen_state,
        "imported_from": {"netG": str(netG), "text_encoder": str(text_encoder), "captions": str(captions)},
    }, out)
    summary = {"generator_checkpoint": str(out), "vocabulary": len(vocab), "generator_tensors": len(gen_state),
               "text_encoder_tensors": len(text.state_dict()), "legacy_mask": True, "variant": variant,
               "residual_blocks": cfg.gan.r_num}
    if image_encoder is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the backbone comes from the file, not from ImageNet weights
            image = InceptionImageEncoder(te.hidden_dim)
        fill_module(image, load_release_state(image_encoder, "image encoder"), image_encoder, "Inception image encoder")
        out_damsm = Path(out_damsm) if out_damsm else Path(out).with_name(Path(out).stem + "_damsm.pt")
        save_atomic({
            "format": DAMSM_FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_json(),
            "text_encoder": text.state_dict(), "image_encoder": image.state_dict(),
            "imported_from": {"image_encoder": str(image_encoder), "text_encoder": str(text_encoder)},
        }, out_damsm)
        summary.update(damsm_checkpoint=str(out_damsm), image_encoder_tensors=len(image.state_dict()))
    return summary
