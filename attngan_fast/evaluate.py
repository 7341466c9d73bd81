"""The reference evaluation (docs/design.md §5): one command, a stated protocol, a JSON report that says what
its numbers can be compared with.

Images are generated for ``n_images`` (test image, caption) pairs drawn at random with a seed from all
test images and all their captions (``protocol.draw_pairs``), each caption cut to the evaluation word
cap (25 words for birds, 20 for COCO, as the release's and DM-GAN's evaluation configs) once, so the
generator and the judge read the same word ids; noise seeded. Written as PNG, then scored:
- R-precision: for each generated image, its true caption among 99 captions of other classes drawn at
  random from the test captions (cut by the same rule); cosine of DAMSM global vectors; R = 1 (a hit
  when the true caption ranks first); 10 folds, mean ± std, and mean ± std over groups of 100 images
  (the paper's ± 4.43 % spread looks like that grouping). The judge is the training DAMSM unless
  ``eval_damsm`` names a separately trained one (the training DAMSM is a biased judge); the report
  names it with a hash of its weights. Comparable with the paper's 67.82 % (CUB) / 85.47 % (COCO) only
  when the judge is the released DAMSM (``import-original``).
- Inception Score and TF-Inception FID with torch-fidelity, from a local weights file of its TF-Inception
  port (``--inception-weights``; without it both are skipped with a message naming the file: nothing is
  downloaded). FID compares with the test images at the generator's final size. CUB IS from this
  ImageNet Inception is not comparable with the paper's 4.36 (a CUB-fine-tuned Inception); the FID is
  comparable with the TF-FID column of later papers, not with pytorch-fid numbers.
"""

from __future__ import annotations

import platform
import re
import shutil
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from . import strict_json
from .atomic import write_text_atomic
from .data.dataset import TextImageDataset
from .data.layouts import check_negatives
from .data.prepare import load_captions
from .generate import LEGACY_BATCH_ORDER, iter_generate_ids
from .pictures import to_pil
from .inception_metrics import UnsafeWeightsError, vetted_weights
from .paths import check_file
from .protocol import (R_PRECISION_GROUP, cut_captions, damsm_sha256, default_eval_words_num, draw_pairs,
                       file_sha256, r_precision, translate_ids)
from .train.damsm import encode_captions, load_damsm
from .train.gan import load_generator

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
# torch.hub names a weights file after the first 8 hex digits of its SHA-256: the published file's.
PUBLISHED_SHA256_PREFIX = "6726825d"
PUBLISHED_NAME = "torch-fidelity's TF-Inception (ImageNet, 2015-12-05; its SHA-256 starts with 6726825d)"
UNVERIFIED_NAME = ("weights that load into torch-fidelity's Inception but are not its published file (their SHA-256 "
                   "does not start with 6726825d): IS and FID are comparable with nothing published")
CUB_IS_NOTE = ("CUB Inception Scores from this ImageNet (TF) Inception are not comparable with the paper's 4.36, "
               "which used an Inception fine-tuned on CUB")
FID_NAME = "TF-Inception FID"
FID_NOTE = ("torch-fidelity's port of the TF Inception (pool3 features): comparable with the TF-FID numbers of later "
            "papers; pytorch-fid's, from the same weights but its own resize, may differ slightly")
R_PRECISION_NOTE = ("comparable with the paper's 67.82 % (CUB) / 85.47 % (COCO) only when the judge is the released "
                    "DAMSM (import-original --image-encoder) and the word cap is the release's (25 birds / 20 COCO)")


class EvaluationError(ValueError):
    """An evaluation request that cannot be carried out (no images, a wrong weights file)."""


def check_request(n_images: int, folds: int, inception_weights, out=None, words_num: int | None = None,
                  overwrite: bool = False) -> None:
    """Refuse what would fail (or waste the generation of every image, or replace an earlier report)
    before anything is generated; warn when the protocol's folds would hold too few images to mean
    anything."""
    if n_images < 1:
        raise EvaluationError(f"--n-images must be at least 1, got {n_images}")
    if words_num is not None and words_num < 1:
        raise EvaluationError(f"--words-num must be at least 1 (or left out for the protocol's cap), got {words_num}")
    if out is not None:
        check_file(out, "--out")
        if Path(out).exists() and not overwrite:
            raise EvaluationError(f"--out {out} holds an earlier report: give another --out, or --overwrite to replace "
                                  f"it and its images ({images_folder(out)})")
        others = not_our_images(images_folder(out))
        if others:  # the evaluation replaces its own PNGs there, and must not take anything else with them
            raise EvaluationError(f"{images_folder(out)}, where this evaluation keeps its images, holds files that are "
                                  f"not an evaluation's (e.g. {others[0]}): move them, or give another --out")
    if inception_weights is not None:
        check_inception_weights(inception_weights)


def warn_if_few(n_images: int, folds: int) -> None:
    """Once the request and the data have passed their checks (so a refusal is its one line alone)."""
    if n_images < 10 * folds:
        warnings.warn(f"--n-images {n_images} is too few for the R-precision protocol ({folds} folds need at least "
                      f"{10 * folds} images, 10 per fold; the paper's figures use 30,000): the numbers will be noisy",
                      stacklevel=3)


def images_folder(report) -> Path:
    """Where an evaluation keeps its PNGs: beside the report, ``<report stem>_images/``."""
    report = Path(report)
    return report.parent / (report.stem + "_images")


def not_our_images(folder: Path) -> list[Path]:
    """What ``folder`` holds besides an evaluation's own files: generated/ and real/ with PNGs named
    by number (000123.png), nothing else."""
    if not folder.is_dir():
        return []
    ours = {folder / "generated", folder / "real"}
    return sorted(p for p in folder.rglob("*") if not (
        p in ours and p.is_dir() or p.parent in ours and re.fullmatch(r"\d{6}\.png", p.name) and p.is_file()))


def check_inception_weights(path) -> None:
    """The file must load into torch-fidelity's Inception (it is what IS and FID are computed with)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--inception-weights {path} " + ("is a folder" if path.is_dir() else "does not exist")
                              + f": give torch-fidelity's {TORCH_FIDELITY_WEIGHTS} as a local file")
    try:
        fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                       feature_extractor_weights_path=vetted_weights(path))
    except Exception as err:  # noqa: BLE001 - torch.load's and load_state_dict's errors alike
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        if isinstance(err, UnsafeWeightsError):
            lines = ["not a torch.save file of tensors; it is only ever read with weights_only=True"]
        detail = next((line for line in lines if line.startswith(("Missing key", "Unexpected key", "size mismatch"))),
                      lines[0])
        detail = detail if len(detail) <= 120 else detail[:117] + "..."
        raise EvaluationError(f"--inception-weights {path} is not torch-fidelity's Inception weights ({detail}); "
                              f"give a local copy of {TORCH_FIDELITY_WEIGHTS}") from None
    identity = inception_weights_identity(path)
    if not identity["published"]:
        warnings.warn(f"--inception-weights {path}: {UNVERIFIED_NAME}", stacklevel=3)


def inception_weights_identity(path) -> dict:
    """What the report says of a weights file: its path, SHA-256, whether it is the published file (by
    the SHA-256 prefix its name carries) and a name that says so."""
    digest = file_sha256(path)
    published = digest.startswith(PUBLISHED_SHA256_PREFIX)
    return {"path": str(path), "sha256": digest, "published": published,
            "name": PUBLISHED_NAME if published else UNVERIFIED_NAME}


def _versions() -> dict:
    out = {"attngan_fast": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "torch_fidelity", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def fidelity_metrics(generated_dir: Path, real_dir: Path, weights: str | Path, device: torch.device) -> dict:
    """IS of the generated images and TF-Inception FID against the real ones, with torch-fidelity's
    Inception loaded from ``weights`` (never downloaded)."""
    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=str(generated_dir), input2=str(real_dir), isc=True, fid=True, cuda=device.type == "cuda",
        feature_extractor_weights_path=vetted_weights(weights), save_cpu_ram=True, verbose=False, cache=False,
        samples_find_deep=False, samples_find_ext="png",
    )
    return {"inception_score": {"mean": float(metrics["inception_score_mean"]), "std": float(metrics["inception_score_std"])},
            "tf_inception_fid": float(metrics["frechet_inception_distance"])}


def _captions_each(counts: list[int]) -> str:
    """'10', or '1-5 (2.4 on average)' for images with different numbers of captions (folder layout)."""
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high} ({sum(counts) / len(counts):.1f} on average)"


@torch.no_grad()
def _image_vectors(image_encoder, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, images.shape[0], batch_size):
        out.append(image_encoder(images[start : start + batch_size].to(device))[1].float().cpu())
    return torch.cat(out)


def _judge(damsm, eval_damsm, device) -> tuple:
    """(the judge's models, its identity for the report). A separate judge with the training DAMSM's very
    weights is reported as the training one."""
    judge = load_damsm(eval_damsm or damsm, device)
    digest = damsm_sha256(judge)
    role = "training"
    if eval_damsm is not None and damsm is not None:
        role = "training" if damsm_sha256(load_damsm(damsm, "cpu")) == digest else "separate"
    note = ("the DAMSM the generator was trained against: a biased judge (it favours its own generator); "
            "--eval-damsm takes a separately trained one") if role == "training" else "a DAMSM the generator was not trained against"
    identity = {"path": str(eval_damsm or damsm), "weights_sha256": digest, "role": role, "note": note,
                "image_encoder": type(judge.image_encoder).__name__, "vocabulary": len(judge.vocab)}
    return judge, identity


def evaluate_generator(checkpoint: str | Path, damsm: str | Path, data_root: str | Path, out: str | Path, *,
                       n_images: int = 30000, inception_weights: str | Path | None = None,
                       eval_damsm: str | Path | None = None, seed: int = 0, batch_size: int = 32, device="cpu",
                       folds: int = 10, words_num: int | None = None, keep_images: bool = True,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Generate ``n_images`` images for drawn test pairs, score them and write the JSON report ``out``.
    ``words_num``: the evaluation word cap (None: 25 for CUB layouts, 20 for COCO)."""
    start_time = time.time()
    check_request(n_images, folds, inception_weights, out, words_num, overwrite)
    device = torch.device(device)
    out = Path(out)
    work = images_folder(out)
    netG, text_encoder, g_vocab, cfg = load_generator(checkpoint, device)
    if cfg.preset == "synthetic" and not Path(data_root).exists():
        raise EvaluationError(f"--data {data_root} does not exist; the synthetic birds are drawn, not downloaded: "
                              f"make them with: attngan-fast data synth --out {data_root}")
    judge, judge_identity = _judge(damsm, eval_damsm, device)
    layout, cpi = cfg.data.layout, cfg.data.captions_per_image
    words_num = default_eval_words_num(layout) if words_num is None else words_num
    # Held until the data pass their checks: a test split that cannot be evaluated is refused below in the
    # very words its warning would say first.
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        cache = load_captions(data_root, layout, cpi, progress=progress, test_fraction=cfg.data.test_fraction)
        test = TextImageDataset(data_root, layout, "test", captions_per_image=cpi, words_num=words_num,
                                image_size=netG.sizes[-1], train=False, cache=cache)
    check_negatives(data_root, "test", test.keys, test.class_ids, evaluation=True)
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    warn_if_few(n_images, folds)
    n_test, counts = len(test), test.caption_counts
    # Every test caption cut once, in the generator's ids (the same ids when it was trained on these
    # captions; an imported generator may have another vocabulary): the generator reads these very ids
    # and the judge the same words.
    caption_ids, unknown_to_generator = translate_ids(cut_captions(cache, "test", n_test, counts, words_num, seed),
                                                      cache.vocab, g_vocab)
    pairs = draw_pairs(n_test, counts, n_images, seed)
    if n_images > sum(counts):
        warnings.warn(f"--n-images {n_images} is more than the {sum(counts)} (test image, caption) pairs of {data_root}: "
                      f"each pair is generated about {n_images / sum(counts):.0f} times, so the folds' spread "
                      "understates the uncertainty", stacklevel=2)
    prompts = [caption_ids[cache.offsets["test"][img] + c] for img, c in pairs]

    # Generated images go to PNG files chunk by chunk (bounded memory for 30,000 images); the judge's
    # global vectors are kept.
    gen_dir, real_dir = work / "generated", work / "real"
    for d in (gen_dir, real_dir):
        if d.exists():
            shutil.rmtree(d)
    gen_dir.mkdir(parents=True)
    bar = tqdm(total=n_images, desc="generating + judging", disable=not progress)
    image_vecs, size = [], None
    for first, chunk in iter_generate_ids(netG, text_encoder, g_vocab, prompts, seed=seed, batch_size=batch_size,
                                          device=device, return_attn=False, progress=bar):
        final = chunk.images[-1]
        size = final.shape[-1]
        image_vecs.append(_image_vectors(judge.image_encoder, final, device, batch_size))
        for n in range(final.shape[0]):
            to_pil(final[n]).save(gen_dir / f"{first + n:06d}.png")
    bar.close()
    image_vecs = torch.cat(image_vecs)

    # R-precision with the judge's global vectors, on the same words (in the judge's ids).
    judge_ids, unreadable = translate_ids(caption_ids, g_vocab, judge.vocab)
    caption_vecs = encode_captions(judge.text_encoder, judge_ids, device)
    r = r_precision(image_vecs, caption_vecs, pairs, counts, test.class_ids, folds=folds, seed=seed)
    fold_sizes = sorted(set(r["fold_size"]))
    groups = r["groups"]

    report = {
        "checkpoint": str(checkpoint), "damsm": str(damsm), "judge_damsm": str(eval_damsm or damsm),
        "data_root": str(data_root), "layout": layout, "n_images": n_images, "image_size": int(size), "seed": seed,
        # With the released mask an image depends on the other captions of its batch: the batch size is
        # then part of what makes the numbers (docs/training.md, "Generating").
        "batch_size": batch_size, "legacy_mask": bool(netG.legacy_mask), "device": str(device),
        "legacy_batch_order": LEGACY_BATCH_ORDER if netG.legacy_mask else None,
        "judge": judge_identity,
        "protocol": {
            "pairs": f"{n_images} (test image, caption) pairs drawn at random (seed {seed}) from all {n_test} test images "
                     f"x {_captions_each(counts)} captions; no pair repeats before every pair was used",
            "word_cap": words_num,
            "word_cap_rule": f"a caption longer than {words_num} words keeps a seeded random ordered subset of "
                             f"{words_num}, cut once: the generator and the judge read the same word ids, and "
                             "distractor captions are cut by the same rule",
            "r_precision": f"1 true + {r['candidates'] - 1} captions of other "
                           f"{'classes' if test.class_ids is not None else 'images'}, DAMSM global-vector cosine, "
                           f"R=1; mean ± std over {len(r['folds'])} folds of {'-'.join(map(str, fold_sizes))} images, "
                           f"and over groups of {R_PRECISION_GROUP} images",
            "folds": len(r["folds"]), "fold_size": fold_sizes[0] if len(fold_sizes) == 1 else fold_sizes,
            "group_size": R_PRECISION_GROUP,
            "inception_score": "torch-fidelity, 10 splits, its TF-Inception (ImageNet) weights from a local file",
            "fid": f"{FID_NAME}: torch-fidelity, generated vs test images at the generator's final size; {FID_NOTE}",
        },
        "r_precision": {"mean": r["mean"], "std": r["std"], "folds": r["folds"], "fold_size": r["fold_size"],
                        "groups_of_100": groups, "candidates": r["candidates"], "chance": r["chance"],
                        "which_is_which": f"mean/std: over the {len(r['folds'])} folds; groups_of_100: mean/std over "
                                          f"{groups['count']} groups of {groups['size']} images",
                        "comparable_with": R_PRECISION_NOTE},
        "versions": _versions(),
    }
    if unreadable:
        report["r_precision"]["captions_without_words_known_to_the_judge"] = unreadable
    if unknown_to_generator:
        report["r_precision"]["captions_without_words_known_to_the_generator"] = unknown_to_generator
    if inception_weights is None:
        report["inception_score"] = report["tf_inception_fid"] = report["inception_weights"] = None
        report["inception_note"] = (
            f"IS and FID skipped: pass --inception-weights with torch-fidelity's Inception file "
            f"({TORCH_FIDELITY_WEIGHTS}, from the torch-fidelity releases) as a local path; nothing is downloaded."
            + (" " + CUB_IS_NOTE + "." if layout == "cub" else ""))
    else:
        real_dir.mkdir(parents=True)
        for i in tqdm(range(n_test), desc="real test images", disable=not progress):
            to_pil(test[i]["images"][-1]).save(real_dir / f"{i:06d}.png")
        report.update(fidelity_metrics(gen_dir, real_dir, inception_weights, device))
        report["inception_weights"] = inception_weights_identity(inception_weights)
        if layout == "cub":
            report["inception_score_note"] = CUB_IS_NOTE
        report["fid_name"] = FID_NAME
    report["generated_images"] = None if not keep_images else str(gen_dir)
    if not keep_images:
        shutil.rmtree(work)
    report["seconds"] = round(time.time() - start_time, 1)
    write_text_atomic(out, strict_json.dumps(report, indent=2))  # a killed write leaves no half report
    return report
