"""DAMSM losses (docs/design.md §2.2) on top of the word-score kernel.

Both losses score every image against every caption of the batch, mask the off-diagonal pairs of the
same class (they are not negatives), and take the cross-entropy of the true pair in both directions:
``loss0`` over captions for each image (images → captions), ``loss1`` over images for each caption.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attngan_fast.kernels import damsm_word_scores

COS_EPS = 1e-8


def _class_tensor(class_ids, batch: int, device: torch.device) -> torch.Tensor | None:
    if class_ids is None:
        return None
    if isinstance(class_ids, torch.Tensor):
        ids = class_ids.to(device=device)
    else:
        try:
            ids = torch.as_tensor(np.asarray(class_ids), device=device)
        except (TypeError, ValueError) as err:
            raise TypeError(f"class_ids must be a list, numpy array or tensor of integers: {err}") from None
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(f"class_ids must be {batch} integers (one per sample), got {tuple(ids.shape)} {ids.dtype}")
    return ids


def same_class_mask(class_ids, batch: int, device: torch.device) -> torch.Tensor | None:
    """(B, B) bool, True where i != j share a class: such pairs are excluded from the softmax.
    None when there are no class ids (nothing is masked)."""
    ids = _class_tensor(class_ids, batch, device)
    if ids is None:
        return None
    mask = ids[:, None] == ids[None, :]
    return mask & ~torch.eye(batch, dtype=torch.bool, device=device)


def matching_losses(logits: torch.Tensor, class_ids=None):
    """Cross-entropies of the diagonal of ``logits`` (B_img, B_cap): (images → captions, captions → images)."""
    batch = logits.shape[0]
    mask = same_class_mask(class_ids, batch, logits.device)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(batch, device=logits.device)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels)


SCORE_FORMS = ("released", "paper")


def word_scores(region_features: torch.Tensor, words_emb: torch.Tensor, cap_lens, gamma1: float = 4.0,
                gamma2: float = 5.0, *, score_form: str = "released", return_attn: bool = False, impl: str = "auto"):
    """Word-level matching scores R (B_img, B_cap) fp32 of every image with every caption (docs/design.md §2.1),
    and with ``return_attn`` the matching pairs' region attention (B, T, N).

    ``score_form``: ``"released"`` R = log Σ_t exp(γ2·cos_t), what the release computes and its γ3 = 10
    was tuned with; ``"paper"`` R = (1/γ2)·log Σ_t exp(γ2·cos_t), the paper's Eq. 10. The kernel computes
    the released form; the paper's is that divided by γ2, exactly, so it is taken here rather than in
    the kernel (the division is one more autograd node, and the gradient scales by 1/γ2 with it)."""
    if score_form not in SCORE_FORMS:
        raise ValueError(f"score_form must be one of {list(SCORE_FORMS)}, got {score_form!r}")
    out = damsm_word_scores(words_emb, cap_lens, region_features, gamma1, gamma2, return_attn=return_attn, impl=impl)
    scores, attn = out if return_attn else (out, None)
    if score_form == "paper":
        scores = scores / gamma2
    return scores, attn


def words_loss(
    region_features: torch.Tensor,
    words_emb: torch.Tensor,
    cap_lens,
    class_ids=None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    *,
    return_attn: bool = True,
    impl: str = "auto",
    score_form: str = "released",
):
    """DAMSM word loss.

    region_features: (B, D, H, W) or (B, D, N) image regions; words_emb: (B, D, T) word features;
    cap_lens: (B,) caption lengths; class_ids: (B,) class per sample or None; score_form: see
    ``word_scores`` (the logits are γ3·R either way).
    Returns (loss0, loss1, attn_maps): the two cross-entropies and the matching pairs' region
    attention, (B, T, H, W) for 4-D regions else (B, T, N), padding words zero (None when
    ``return_attn`` is False).
    """
    both = isinstance(region_features, torch.Tensor) and isinstance(words_emb, torch.Tensor)
    if both and region_features.dim() > 0 and words_emb.dim() > 0 and region_features.shape[0] != words_emb.shape[0]:
        raise ValueError(
            f"region_features has batch {region_features.shape[0]} but words_emb has {words_emb.shape[0]}; "
            "the DAMSM losses pair image i with caption i"
        )
    scores, attn = word_scores(region_features, words_emb, cap_lens, gamma1, gamma2, score_form=score_form,
                               return_attn=return_attn, impl=impl)
    loss0, loss1 = matching_losses(gamma3 * scores, class_ids)
    if attn is not None and region_features.dim() == 4:
        attn = attn.view(attn.shape[0], attn.shape[1], *region_features.shape[2:])
    return loss0, loss1, attn


def sentence_scores(img_code: torch.Tensor, sent_code: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every image vector (B_img, D) with every sentence vector (B_cap, D),
    eps 1e-8 on the norm product, computed in fp32 (fp64 for fp64 inputs) -> (B_img, B_cap)."""
    for name, x in (("img_code", img_code), ("sent_code", sent_code)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor (B, D), got {getattr(x, 'shape', type(x))}")
    if img_code.shape[1] != sent_code.shape[1]:
        raise ValueError(f"img_code has D={img_code.shape[1]} but sent_code has D={sent_code.shape[1]}")
    dtype = torch.float64 if torch.float64 in (img_code.dtype, sent_code.dtype) else torch.float32
    with torch.autocast(device_type=img_code.device.type, enabled=False):
        a, b = img_code.to(dtype), sent_code.to(dtype)
        norms = torch.linalg.vector_norm(a, dim=1)[:, None] * torch.linalg.vector_norm(b, dim=1)[None, :]
        return (a @ b.t()) / norms.clamp(min=COS_EPS)


def sent_loss(img_code: torch.Tensor, sent_code: torch.Tensor, class_ids=None, gamma3: float = 10.0):
    """DAMSM sentence loss. img_code: (B, D) global image vectors; sent_code: (B, D) sentence vectors.
    Returns (loss0 images → captions, loss1 captions → images)."""
    if img_code.shape[0] != sent_code.shape[0]:
        raise ValueError(f"img_code has batch {img_code.shape[0]} but sent_code has {sent_code.shape[0]}")
    return matching_losses(gamma3 * sentence_scores(img_code, sent_code), class_ids)
