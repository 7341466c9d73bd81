"""The reference evaluation (DESIGN.md §5): one command, a stated protocol, a JSON report.

Images are generated from the test split's captions (image i of the evaluation uses test image
i mod N_test and its caption (i div N_test) mod captions_per_image, noise seeded), written as PNG,
then scored:
- Inception Score and FID with torch-fidelity, from a local weights file of its TF-Inception
  (``--inception-weights``; without it both are skipped with a message naming the file: nothing is
  downloaded). FID compares with the test images at the generator's final size.
- R-precision: for each generated image, its true caption among 99 captions of other classes drawn
  at random from the test captions; cosine of DAMSM global vectors; R = 1 (a hit when the true
  caption ranks first); 10 folds, mean ± std. The judge is the training DAMSM unless ``eval_damsm``
  names a separately trained one (the training DAMSM is a biased judge).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from .data.dataset import TextImageDataset
from .data.prepare import load_captions
from .generate import iter_generate
from .metrics import retrieval_top1
from .pictures import to_pil
from .train.damsm import encode_captions, load_damsm
from .train.gan import load_generator

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class EvaluationError(ValueError):
    """An evaluation request that cannot be carried out (no images, a wrong weights file)."""


def check_request(n_images: int, folds: int, inception_weights) -> None:
    """Refuse what would fail (or waste the generation of every image) before anything is generated;
    warn when the protocol's folds would hold too few images to mean anything."""
    if n_images < 1:
        raise EvaluationError(f"--n-images must be at least 1, got {n_images}")
    if inception_weights is not None:
        check_inception_weights(inception_weights)
    if n_images < 10 * folds:
        warnings.warn(f"--n-images {n_images} is too few for the R-precision protocol ({folds} folds need at least "
                      f"{10 * folds} images, 10 per fold; the paper's figures use 30,000): the numbers will be noisy",
                      stacklevel=3)


def check_inception_weights(path) -> None:
    """The file must load into torch-fidelity's Inception (it is what IS and FID are computed with)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--inception-weights {path} does not exist (torch-fidelity's {TORCH_FIDELITY_WEIGHTS}, "
                              "as a local file)")
    try:
        fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                       feature_extractor_weights_path=str(path))
    except Exception as err:  # noqa: BLE001 - torch.load's and load_state_dict's errors alike
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        detail = next((line for line in lines if line.startswith(("Missing key", "Unexpected key", "size mismatch"))),
                      lines[0])
        detail = detail if len(detail) <= 120 else detail[:117] + "..."
        raise EvaluationError(f"--inception-weights {path} is not torch-fidelity's Inception weights ({detail}); "
                              f"give a local copy of {TORCH_FIDELITY_WEIGHTS}") from None


def _versions() -> dict:
    out = {"attngan_fast": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "torch_fidelity", "triton"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def fidelity_metrics(generated_dir: Path, real_dir: Path, weights: str | Path, device: torch.device) -> dict:
    """IS of the generated images and FID against the real ones, with torch-fidelity's Inception
    loaded from ``weights`` (never downloaded)."""
    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=str(generated_dir), input2=str(real_dir), isc=True, fid=True, cuda=device.type == "cuda",
        feature_extractor_weights_path=str(weights), save_cpu_ram=True, verbose=False, cache=False,
        samples_find_deep=False, samples_find_ext="png",
    )
    return {"inception_score": {"mean": float(metrics["inception_score_mean"]), "std": float(metrics["inception_score_std"])},
            "fid": float(metrics["frechet_inception_distance"])}


@torch.no_grad()
def _image_vectors(image_encoder, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, images.shape[0], batch_size):
        out.append(image_encoder(images[start : start + batch_size].to(device))[1].float().cpu())
    return torch.cat(out)


def evaluate_generator(checkpoint: str | Path, damsm: str | Path, data_root: str | Path, out: str | Path, *,
                       n_images: int = 30000, inception_weights: str | Path | None = None,
                       eval_damsm: str | Path | None = None, seed: int = 0, batch_size: int = 32, device="cpu",
                       folds: int = 10, keep_images: bool = True, progress: bool = True) -> dict:
    start_time = time.time()
    check_request(n_images, folds, inception_weights)
    device = torch.device(device)
    out = Path(out)
    work = out.parent / (out.stem + "_images")
    netG, text_encoder, g_vocab, cfg = load_generator(checkpoint, device)
    judge = load_damsm(eval_damsm or damsm, device)
    cache = load_captions(data_root, cfg.data.layout, cfg.data.captions_per_image, progress=progress)
    words_num = cfg.gan.words_num or cfg.data.words_num
    test = TextImageDataset(data_root, cfg.data.layout, "test", captions_per_image=cfg.data.captions_per_image,
                            words_num=words_num, image_size=netG.sizes[-1], train=False, cache=cache)
    n_test, cpi = len(test), cfg.data.captions_per_image
    # Captions as text, so that models with other vocabularies (an imported or a separate judge) read them.
    caption_text = [" ".join(cache.vocab.decode(cache.caption("test", i, c))) for i in range(n_test) for c in range(cpi)]
    chosen = [(i % n_test, (i // n_test) % cpi) for i in range(n_images)]
    prompts = [caption_text[img * cpi + c] for img, c in chosen]

    # Generated images go to PNG files chunk by chunk (bounded memory for 30,000 images); the judge's
    # global vectors are kept.
    gen_dir, real_dir = work / "generated", work / "real"
    for d in (gen_dir, real_dir):
        if d.exists():
            shutil.rmtree(d)
    gen_dir.mkdir(parents=True)
    bar = tqdm(total=n_images, desc="generating + judging", disable=not progress)
    image_vecs, size = [], None
    for first, chunk in iter_generate(netG, text_encoder, g_vocab, prompts, words_num=words_num, seed=seed,
                                      batch_size=batch_size, device=device, return_attn=False, progress=bar):
        final = chunk.images[-1]
        size = final.shape[-1]
        image_vecs.append(_image_vectors(judge.image_encoder, final, device, batch_size))
        for n in range(final.shape[0]):
            to_pil(final[n]).save(gen_dir / f"{first + n:06d}.png")
    bar.close()
    image_vecs = torch.cat(image_vecs)

    # R-precision with the judge's global vectors.
    judge_ids, unreadable = [], 0
    for text in caption_text:
        ids, _ = judge.vocab.encode(text.split())
        unreadable += not ids
        judge_ids.append(ids[:words_num] or [1])  # a caption the judge cannot read still holds its place
    caption_vecs = encode_captions(judge.text_encoder, judge_ids, device)
    classes = test.class_ids
    image_keys = torch.tensor([classes[img] if classes else img for img, _ in chosen])
    caption_keys = torch.tensor([classes[i] if classes else i for i in range(n_test) for _ in range(cpi)])
    true_caption = torch.tensor([img * cpi + c for img, c in chosen])
    r = retrieval_top1(image_vecs, caption_vecs, true_caption, image_keys, caption_keys, folds=folds, seed=seed)

    report = {
        "checkpoint": str(checkpoint), "damsm": str(damsm), "judge_damsm": str(eval_damsm or damsm),
        "data_root": str(data_root), "n_images": n_images, "image_size": int(size), "seed": seed,
        "protocol": {
            "captions": "test split; generated image i uses test image i mod N_test, caption (i div N_test) mod "
                        "captions_per_image",
            "r_precision": f"1 true + {r['candidates'] - 1} captions of other classes, DAMSM global-vector cosine, "
                           f"R=1, {len(r['folds'])} folds, mean ± std",
            "inception_score": "torch-fidelity, 10 splits, TF-Inception (ImageNet) weights from a local file",
            "fid": "torch-fidelity, generated vs test images at the generator's final size",
        },
        "r_precision": {"mean": r["mean"], "std": r["std"], "folds": r["folds"], "candidates": r["candidates"],
                        "chance": r["chance"]},
        "versions": _versions(),
    }
    if unreadable:
        report["r_precision"]["captions_without_words_known_to_the_judge"] = unreadable
    if inception_weights is None:
        report["inception_score"] = report["fid"] = None
        report["inception_note"] = (
            f"IS and FID skipped: pass --inception-weights with torch-fidelity's Inception file "
            f"({TORCH_FIDELITY_WEIGHTS}, from the torch-fidelity releases) as a local path; nothing is downloaded. "
            "Scores from CUB's fine-tuned Inception (the paper's 4.36) are not comparable with these ImageNet ones.")
    else:
        real_dir.mkdir(parents=True)
        for i in tqdm(range(n_test), desc="real test images", disable=not progress):
            to_pil(test[i]["images"][-1]).save(real_dir / f"{i:06d}.png")
        report.update(fidelity_metrics(gen_dir, real_dir, inception_weights, device))
        report["inception_weights"] = str(inception_weights)
    report["generated_images"] = None if not keep_images else str(gen_dir)
    if not keep_images:
        shutil.rmtree(work)
    report["seconds"] = round(time.time() - start_time, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report

