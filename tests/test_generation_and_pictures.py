"""Generation as the release does it for user sentences (every word kept; the cut as an option), the
legacy-mask generators' dependence on their batch (said, warned once, batch size 1 as the reproducible
choice), and attention pictures as the paper's figures draw them."""

from __future__ import annotations

import warnings

import pytest
import torch

from attngan_fast.cli import build_parser
from attngan_fast.generate import LEGACY_BATCH_WARNING, _pad, encode_captions, generate_images, iter_generate_ids
from attngan_fast.pictures import above_uniform, generation_grid, top_words, upsample_map
from attngan_fast.text import Vocabulary
from attngan_fast.train import gan

LONG = ("this bird has wings that are black and has a white belly and this bird has a red crown and a short "
        "black beak and small size")


def test_generate_keeps_every_word_by_default_and_cuts_on_request(trained):
    netG, text_encoder, vocab, _ = gan.load_generator(trained[1])
    known, _ = vocab.encode(LONG.split())
    assert len(known) > 18, "the caption must be longer than the training cap"
    gen = generate_images(netG, text_encoder, vocab, [LONG], seed=1)
    assert len(gen.words[0]) == len(known) and gen.attn[0].shape[1] == len(known)
    cut = generate_images(netG, text_encoder, vocab, [LONG], seed=1, words_num=18)
    assert len(cut.words[0]) == 18
    remaining = iter(gen.words[0])  # an ordered subset of the words
    assert all(any(w == v for v in remaining) for w in cut.words[0])
    assert not torch.equal(gen.images[-1], cut.images[-1])


def test_encode_captions_keeps_every_word_unless_capped():
    vocab = Vocabulary.build([["a", "red", "bird"]])
    ids, _ = encode_captions(["a red bird " * 10], vocab)
    assert len(ids[0]) == 30
    assert len(encode_captions(["a red bird " * 10], vocab, 7)[0][0]) == 7


def test_legacy_mask_generators_warn_once_in_batches_and_are_reproducible_one_at_a_time(trained):
    netG, text_encoder, vocab, _ = gan.load_generator(trained[1])
    first = "a bird with red wings"
    some = [first, "this bird has wings that are black and has a white belly", "a blue bird"]
    others = [first, "a bird", "this small bird has a red crown and a short black beak and white wings"]
    netG.legacy_mask = True
    with pytest.warns(UserWarning) as record:
        batched = generate_images(netG, text_encoder, vocab, some, seed=2, batch_size=3)
    assert [str(w.message) for w in record].count(LEGACY_BATCH_WARNING) == 1, "one warning per generation"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched_others = generate_images(netG, text_encoder, vocab, others, seed=2, batch_size=3)
    assert not torch.allclose(batched.images[-1][0], batched_others.images[-1][0]), \
        "the released mask makes an image depend on the other captions of its batch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # batch size 1: no warning, and each image depends on its caption only
        alone = generate_images(netG, text_encoder, vocab, some, seed=2, batch_size=1)
        alone_others = generate_images(netG, text_encoder, vocab, others, seed=2, batch_size=1)
    torch.testing.assert_close(alone.images[-1][0], alone_others.images[-1][0])
    netG.legacy_mask = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = generate_images(netG, text_encoder, vocab, some, seed=2, batch_size=3)
        ours_others = generate_images(netG, text_encoder, vocab, others, seed=2, batch_size=3)
    torch.testing.assert_close(ours.images[-1][0], ours_others.images[-1][0])


def test_legacy_mask_batches_are_fed_longest_caption_first_as_the_release_fed_them(trained):
    netG, text_encoder, vocab, _ = gan.load_generator(trained[1])
    netG.legacy_mask = True
    # the first and the last tie in length; three images, so that a place in the batch changes the mask a
    # pixel row takes under the released masking (rows (b·HW + q) mod B, B not dividing HW)
    captions = ["a blue bird", "this bird has wings that are black and has a white belly", "a red bird"]
    ids, _ = encode_captions(captions, vocab)
    assert len(ids[0]) == len(ids[2]) and ids[0] != ids[2]
    gen = torch.Generator().manual_seed(5)
    z, ca = torch.randn(3, netG.z_dim, generator=gen), torch.randn(3, netG.c_dim, generator=gen)

    def images(order):  # each caption keeps its own noise, listed in ``order``
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (_, chunk), = iter_generate_ids(netG, text_encoder, vocab, [ids[i] for i in order], batch_size=3,
                                           noise=(z[order], ca[order]))
        return chunk.images[-1][torch.argsort(torch.tensor(order))], chunk.attn[0][torch.argsort(torch.tensor(order))]

    listed, listed_maps = images([0, 1, 2])
    for order in ([2, 1, 0], [0, 2, 1]):  # the tied pair swapped; the untied caption moved
        other, other_maps = images(order)
        torch.testing.assert_close(listed, other)  # the order a batch is listed in does not matter
        torch.testing.assert_close(listed_maps, other_maps)
    # ... because the generator is fed as the release fed it: longest caption first (ties by their words).
    fed = sorted(range(3), key=lambda i: (-len(ids[i]), ids[i]))
    assert fed[0] == 1
    caps, lens = _pad([ids[i] for i in fed])
    with torch.no_grad():
        words, sentence = text_encoder(caps, lens)
        direct = netG(z[fed], sentence, words, caps == 0, ca_noise=ca[fed]).images[-1]
    torch.testing.assert_close(listed[fed], direct)


def test_generate_help_names_the_reproducible_batch_size():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    text = " ".join(sub.format_help().split())
    assert "--batch-size 1" in text and "legacy_mask" in text and "--words-num" in text


def test_paper_ranking_counts_only_weights_above_one_over_t():
    t, h, w = 3, 6, 6
    attn = torch.empty(t, h, w)
    attn[0] = 0.33  # just under the uniform share 1/3 everywhere: much mass, none of it above 1/T
    attn[1] = 0.0
    attn[1, :2, :2] = 0.9  # far above it in a small spot
    attn[2] = 0.3
    assert top_words(attn, t, 3, style="plain") == [0, 2, 1]
    assert top_words(attn, t, 1, style="paper") == [1]
    kept = above_uniform(attn, t)
    assert torch.equal(kept[0], torch.zeros(h, w)) and torch.equal(kept[1], attn[1])
    random_maps = torch.softmax(torch.randn(5, 4, 4) * 2, dim=0)
    kept = above_uniform(random_maps, 5)
    above = random_maps > 0.2
    assert torch.equal(kept[above], random_maps[above]) and torch.all(kept[~above] == 0)
    with pytest.raises(ValueError, match="style"):
        top_words(attn, t, 1, style="fancy")


def test_maps_are_upsampled_smoothly():
    spot = torch.zeros(8, 8)
    spot[3, 4] = 1.0
    smooth = upsample_map(spot, (64, 64))
    blocky = upsample_map(spot, (64, 64), smooth=False)
    assert smooth.shape == (64, 64) and torch.isfinite(smooth).all()
    def kinks(m):  # the largest second difference along the rows, relative to the peak
        return (m[2:] - 2 * m[1:-1] + m[:-2]).abs().max() / m.max()

    assert kinks(smooth) < 0.2 * kinks(blocky), "no sharp cell edges or corners"
    peak = divmod(int(smooth.argmax()), 64)
    assert abs(peak[0] - 3.5 * 8) <= 2 and abs(peak[1] - 4.5 * 8) <= 2
    # A Gaussian blob: symmetric about its peak and falling off monotonically along the row.
    row = smooth[peak[0], peak[1]:peak[1] + 12]
    assert torch.all(row[1:] <= row[:-1] + 1e-7)
    torch.testing.assert_close(upsample_map(torch.ones(4, 4), (32, 32)), torch.ones(32, 32))


def test_generation_grid_draws_in_both_styles():
    images = [torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1]
    maps = [torch.softmax(torch.randn(2, 5, 16, 16), dim=1)]
    words = [["a", "red", "bird"], ["a", "small", "blue", "bird", "here"]]
    paper = generation_grid(images, maps, words, top_k=3)
    plain = generation_grid(images, maps, words, top_k=3, style="plain")
    # two rows of image + two label lines, then the colour scale (two label lines)
    assert paper.size == plain.size == ((2 + 3) * 96, 2 * (96 + 2 * 19) + 2 * 19)
    assert paper.tobytes() != plain.tobytes()
