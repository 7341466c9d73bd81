"""DAMSM encoders: shapes, padding, unsorted packing, Inception weights from a local file only."""

from __future__ import annotations

import warnings

import pytest
import torch

from attngan_fast.models.encoders import CompactImageEncoder, InceptionImageEncoder, TextEncoder


def test_text_encoder_shapes_padding_and_unsorted_lengths():
    enc = TextEncoder(vocab_size=30, embedding_dim=12, hidden_dim=16, dropout=0.0).eval()
    captions = torch.randint(1, 30, (4, 7))
    lens = torch.tensor([3, 7, 1, 5])  # not sorted: packed with enforce_sorted=False
    for i, n in enumerate(lens.tolist()):
        captions[i, n:] = 0
    words, sentence = enc(captions, lens)
    assert words.shape == (4, 16, 7) and sentence.shape == (4, 16)
    for i, n in enumerate(lens.tolist()):
        assert torch.all(words[i, :, n:] == 0), "padding positions carry no features"
        alone_words, alone_sentence = enc(captions[i : i + 1, :n], lens[i : i + 1])
        torch.testing.assert_close(words[i : i + 1, :, :n], alone_words)
        torch.testing.assert_close(sentence[i : i + 1], alone_sentence)


def _plain_packed_forward(enc, captions, lens):
    """The encoder's math written with pack_padded_sequence(enforce_sorted=False) as documented."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(enc.drop(enc.encoder(captions)), lens, batch_first=True, enforce_sorted=False)
    output, (hidden, _) = enc.rnn(packed)
    words = pad_packed_sequence(output, batch_first=True, total_length=captions.shape[1])[0].transpose(1, 2)
    return words, hidden.transpose(0, 1).reshape(captions.shape[0], enc.hidden_dim)


def test_text_encoder_packs_as_pack_padded_sequence_unsorted_does_gradients_included():
    torch.manual_seed(3)
    enc = TextEncoder(vocab_size=40, embedding_dim=10, hidden_dim=12, dropout=0.0)
    lens = torch.tensor([2, 6, 6, 1, 4, 6, 3])  # ties, the longest not first
    captions = torch.randint(1, 40, (7, 8))
    captions[torch.arange(8)[None, :] >= lens[:, None]] = 0
    results = []
    for forward in (enc, lambda c, n: _plain_packed_forward(enc, c, n)):
        enc.zero_grad()
        words, sentence = forward(captions, lens)
        (words.square().sum() + sentence.sin().sum()).backward()
        results.append((words, sentence, *[p.grad.clone() for p in enc.parameters()]))
    for ours, plain in zip(*results):
        torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-7)


def test_compact_encoder_outputs():
    regions, code = CompactImageEncoder(out_dim=24, width=8)(torch.randn(3, 3, 64, 64))
    assert regions.shape == (3, 24, 8, 8) and code.shape == (3, 24)


@pytest.mark.slow
def test_inception_encoder_outputs_and_frozen_backbone(tmp_path):
    from torchvision.models import inception_v3

    reference = inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "inception_v3_imagenet.pth"
    torch.save(reference.state_dict(), path)  # torchvision's own layout, with fc and AuxLogits
    enc = InceptionImageEncoder(out_dim=32, weights_path=path)
    assert enc.backbone_source == str(path)
    torch.testing.assert_close(enc.Mixed_6e.branch1x1.conv.weight, reference.Mixed_6e.branch1x1.conv.weight)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"emb_features.weight", "emb_cnn_code.weight", "emb_cnn_code.bias"}
    enc.train()
    assert enc.Mixed_5b.training, "as released: train() reaches the frozen backbone's BatchNorm layers"
    frozen = InceptionImageEncoder(out_dim=32, weights_path=path, backbone_bn="frozen").train()
    assert not frozen.Mixed_5b.training and frozen.emb_features.training, "frozen keeps its BatchNorm statistics"
    regions, code = enc(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert regions.shape == (2, 32, 17, 17) and code.shape == (2, 32)


def test_inception_without_weights_warns_and_bad_files_fail(tmp_path):
    with pytest.warns(UserWarning, match="backbone is RANDOM"):
        InceptionImageEncoder(out_dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            InceptionImageEncoder(out_dim=8, weights_path=tmp_path / "missing.pth")
        partial = tmp_path / "partial.pth"
        torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, partial)
        with pytest.raises(ValueError, match="lacks .* of the Inception-v3 backbone's tensors"):
            InceptionImageEncoder(out_dim=8, weights_path=partial)
        text = tmp_path / "notes.txt"
        text.write_text("<html>not weights</html>")
        with pytest.raises(ValueError, match="notes.txt is not a torch weights file"):
            InceptionImageEncoder(out_dim=8, weights_path=text)
