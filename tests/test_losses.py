"""DAMSM losses: the two cross-entropies, class masking, both directions, every accepted class_ids type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attngan_fast.losses import same_class_mask, sent_loss, sentence_scores, words_loss
from attngan_fast.kernels import damsm_word_scores_loop
from numerics import IMPLS, assert_rel


def _manual_ce(logits, masked_pairs):
    """Cross-entropy of the diagonal per row, computed by hand, skipping masked pairs."""
    losses = []
    for i in range(logits.shape[0]):
        keep = [j for j in range(logits.shape[1]) if (i, j) not in masked_pairs]
        row = logits[i, keep]
        losses.append(torch.logsumexp(row, 0) - logits[i, i])
    return torch.stack(losses).mean()


def _pairs_of_same_class(class_ids):
    return {(i, j) for i in range(len(class_ids)) for j in range(len(class_ids)) if i != j and class_ids[i] == class_ids[j]}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("class_ids", [None, [3, 1, 3, 2, 1]])
def test_words_loss_matches_hand_computation(impl, class_ids):
    batch, dim, max_len = 5, 16, 6
    regions = torch.randn(batch, dim, 4, 4, dtype=torch.float64)
    words = torch.randn(batch, dim, max_len, dtype=torch.float64)
    cap_lens = torch.tensor([6, 3, 1, 5, 2])
    dtype = torch.float64 if impl == "reference" else torch.float32
    loss0, loss1, attn = words_loss(regions.to(dtype), words.to(dtype), cap_lens, class_ids, impl=impl)
    logits = 10.0 * damsm_word_scores_loop(words, cap_lens, regions.flatten(2))  # rows: images
    masked = _pairs_of_same_class(class_ids) if class_ids else set()
    tol = 1e-10 if impl == "reference" else 1e-5
    assert_rel(loss0, _manual_ce(logits, masked), tol, "loss0 (images -> captions)")
    assert_rel(loss1, _manual_ce(logits.t(), masked), tol, "loss1 (captions -> images)")
    assert attn.shape == (batch, max_len, 4, 4)
    assert torch.all(attn[2, 1:] == 0)
    # Each word's map is a softmax over the regions: it sums to 1 (to fp32's rounding on the Triton path).
    torch.testing.assert_close(attn[0].sum((1, 2)).double(), torch.ones(max_len, dtype=torch.float64),
                               rtol=0, atol=1e-10 if impl == "reference" else 1e-6)


def test_loss0_is_images_to_captions():
    """Make image 0 match every caption equally while caption 0 matches only image 0: the image->caption
    loss of row 0 is then large and the caption->image loss of row 0 is small."""
    img = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sent = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    scores = sentence_scores(img, sent)
    loss0, loss1 = sent_loss(img, sent)
    labels = torch.arange(3)
    torch.testing.assert_close(loss0, F.cross_entropy(10 * scores, labels))
    torch.testing.assert_close(loss1, F.cross_entropy(10 * scores.t(), labels))
    assert not torch.allclose(loss0, loss1)


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_sent_loss_class_masking_any_container(kind):
    class_ids = [7, 7, 2, 5]
    ids = {"list": class_ids, "numpy": np.array(class_ids), "tensor": torch.tensor(class_ids)}[kind]
    img = torch.randn(4, 8, dtype=torch.float64)
    sent = torch.randn(4, 8, dtype=torch.float64)
    loss0, loss1 = sent_loss(img, sent, ids)
    cos = torch.stack([torch.stack([F.cosine_similarity(img[i], sent[j], dim=0) for j in range(4)]) for i in range(4)])
    masked = _pairs_of_same_class(class_ids)
    assert_rel(loss0, _manual_ce(10 * cos, masked), 1e-12, "loss0")
    assert_rel(loss1, _manual_ce(10 * cos.t(), masked), 1e-12, "loss1")
    assert torch.equal(same_class_mask(ids, 4, img.device), torch.tensor(
        [[False, True, False, False], [True, False, False, False], [False] * 4, [False] * 4]))


def test_losses_send_gradients_to_both_encoders():
    regions = torch.randn(4, 16, 3, 3, requires_grad=True)
    words = torch.randn(4, 16, 5, requires_grad=True)
    img = torch.randn(4, 16, requires_grad=True)
    sent = torch.randn(4, 16, requires_grad=True)
    w0, w1, _ = words_loss(regions, words, [5, 4, 2, 1], return_attn=False)
    s0, s1 = sent_loss(img, sent)
    (w0 + w1 + s0 + s1).backward()
    for name, t in (("regions", regions), ("words", words), ("img", img), ("sent", sent)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_loss_input_errors():
    with pytest.raises(ValueError, match="class_ids must be 3 integers"):
        sent_loss(torch.randn(3, 4), torch.randn(3, 4), [1, 2])
    with pytest.raises(ValueError, match="img_code has batch 3 but sent_code has 2"):
        sent_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="img_code has D=4 but sent_code has D=5"):
        sent_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="region_features has batch 3 but words_emb has 2"):
        words_loss(torch.randn(3, 8, 2, 2), torch.randn(2, 8, 4), [4, 4])
