"""The paper's variants and experiments: AttnDCGAN as released (conditional-only discriminator, no
residual blocks, imports of R_NUM 0 and R_NUM 2 files), the AttnGAN1/AttnGAN2/attndcgan presets, the
release's DAMSM BatchNorm behaviour, the paper's score form, the DAMSM snapshots the GANs train against,
and the evaluation hook of GAN training."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import attngan_fast.train.gan as gan
from attngan_fast.config import load_config
from attngan_fast.generate import generate_images
from attngan_fast.losses import matching_losses, word_scores, words_loss
from attngan_fast.models.discriminators import Discriminator, discriminator_loss, generator_adversarial_loss
from attngan_fast.release_import import import_original
from attngan_fast.train.checkpoint import load_checkpoint
from attngan_fast.train.damsm import FORMAT as DAMSM_FORMAT
from attngan_fast.train.damsm import damsm_losses, train_damsm
from data_fixtures import RELEASE_LAYOUTS
from numerics import INCEPTION_SCORE_FLOOR

LAYOUTS = RELEASE_LAYOUTS


# ------------------------------------------------------------------------------------------ AttnDCGAN

def test_attndcgan_discriminator_has_the_conditional_head_only_and_the_releases_losses():
    netD = Discriminator(64, 8, 12, unconditional=False)
    assert netD.UNCOND_DNET is None and not any(k.startswith("UNCOND_DNET") for k in netD.state_dict())
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    sentence = torch.randn(4, 12)
    loss, parts = discriminator_loss(netD, real, fake, sentence)
    assert set(parts) == {"cond_real", "cond_fake", "cond_mismatch"}

    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    fr, ff = netD(real), netD(fake)
    cond_real = bce(netD.COND_DNET(fr, sentence), 1.0)
    cond_fake = bce(netD.COND_DNET(ff, sentence), 0.0)
    cond_wrong = bce(netD.COND_DNET(fr[:-1], sentence[1:]), 0.0)
    torch.testing.assert_close(loss, cond_real + (cond_fake + cond_wrong) / 2)
    torch.testing.assert_close(generator_adversarial_loss(netD, fake, sentence), bce(netD.COND_DNET(ff, sentence), 1.0))
    single, _ = discriminator_loss(netD, real[:1], fake[:1], sentence[:1])  # no mismatched pair in a batch of one
    torch.testing.assert_close(single, bce(netD.COND_DNET(netD(real[:1]), sentence[:1]), 1.0)
                               + bce(netD.COND_DNET(netD(fake[:1]), sentence[:1]), 0.0))


def test_attndcgan_preset_builds_the_released_model():
    cfg = load_config("attndcgan")
    g = cfg.gan
    assert (g.variant, g.r_num, g.lambda_damsm, g.batch_size, g.epochs, g.stages) == ("attndcgan", 0, 1.0, 30, 400, 3)
    netsD = gan.build_discriminators(cfg)
    assert len(netsD) == 1 and netsD[0].size == 256
    released_d = {k: v for k, v in LAYOUTS["netD2_bird"].items() if not k.startswith("UNCOND_DNET")}
    assert {k: list(v.shape) for k, v in netsD[0].state_dict().items()} == released_d
    released_g = {k: v for k, v in LAYOUTS["netG_attnDCGAN_bird"].items() if ".residual." not in k}
    assert {k: list(v.shape) for k, v in gan.build_generator(cfg).state_dict().items()} == released_g


def test_the_papers_variants_are_presets():
    bird = load_config("bird")
    one, two = load_config("attngan1"), load_config("attngan2")
    assert (one.gan.stages, one.gan.image_size, two.gan.stages, two.gan.image_size) == (2, 128, 3, 256)
    for cfg in (one, two, load_config("attndcgan")):
        assert cfg.damsm == bird.damsm and cfg.data == bird.data and cfg.image_encoder == bird.image_encoder
        assert cfg.gan.out_dir != bird.gan.out_dir
    # The lambda ablation is one override.
    assert load_config("attngan2", ["gan.lambda_damsm=0.1"]).gan.lambda_damsm == 0.1


def test_a_file_may_inherit_a_preset(tmp_path):
    from attngan_fast.config import ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text("inherits: coco\ngan: {lambda_damsm: 10}\n")
    cfg = load_config(path)
    assert cfg.gan.lambda_damsm == 10.0 and cfg.gan.gf_dim == 48 and cfg.data.layout == "coco"
    path.write_text("inherits: nowhere\n")
    with pytest.raises(ConfigError, match="inherits must name one of the presets"):
        load_config(path)


def _release_generator_file(tmp_path, r_num: int) -> dict:
    """A released-AttnDCGAN-layout generator file (random values) with ``r_num`` residual blocks, and the
    text encoder and captions.pickle it needs."""
    import pickle

    state = {}
    for name, shape in LAYOUTS["netG_attnDCGAN_bird"].items():
        block = name.split(".residual.")[1].split(".")[0] if ".residual." in name else None
        if block is not None and int(block) >= r_num:
            continue
        if name.endswith("num_batches_tracked"):
            continue
        state[name] = torch.rand(shape) + 0.5 if name.endswith("running_var") else torch.randn(shape) * 0.05
    torch.save(state, tmp_path / "netG.pth")
    torch.save({k: torch.randn(v) * 0.05 for k, v in LAYOUTS["text_encoder(n_words=5450)"].items()},
               tmp_path / "text_encoder.pth")
    words = ["<end>", "this", "bird", "has", "red", "wings"] + [f"w{i}" for i in range(6, 5450)]
    with open(tmp_path / "captions.pickle", "wb") as fh:
        pickle.dump([[[1, 2]], [[2, 3]], dict(enumerate(words)), {w: i for i, w in enumerate(words)}], fh, protocol=2)
    return dict(netG=tmp_path / "netG.pth", text_encoder=tmp_path / "text_encoder.pth",
                captions=tmp_path / "captions.pickle")


@pytest.mark.slow
@pytest.mark.parametrize("r_num", [0, 2])
def test_released_attndcgan_files_import_with_their_residual_blocks_and_generate(tmp_path, r_num):
    files = _release_generator_file(tmp_path, r_num)
    summary = import_original(**files, preset="bird", variant="attndcgan", out=tmp_path / "dcgan.pt")
    assert summary["residual_blocks"] == r_num and summary["variant"] == "attndcgan"
    netG, text_encoder, vocab, cfg = gan.load_generator(tmp_path / "dcgan.pt")
    assert cfg.gan.r_num == r_num and netG.variant == "attndcgan" and netG.legacy_mask
    original = torch.load(files["netG"], weights_only=True)
    assert set(original) == {k for k in netG.state_dict() if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(netG.state_dict()[k], v) for k, v in original.items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = generate_images(netG, text_encoder, vocab, ["this bird has red wings"], batch_size=1)
    assert len(out.images) == 1 and out.images[0].shape == (1, 3, 256, 256) and torch.isfinite(out.images[0]).all()
    assert len(out.attn) == 2 and out.attn[1].shape == (1, 5, 128, 128)


# ------------------------------------------------------------------------------------ DAMSM settings

def _reference_paper_scores(words, cap_lens, regions, gamma1, gamma2):
    """(1/γ2)·log Σ_t exp(γ2·cos_t) for every (image, caption) pair, one pair at a time in float64."""
    words, regions = words.double(), regions.double().flatten(2)
    out = torch.empty(regions.shape[0], words.shape[0], dtype=torch.float64)
    for i in range(regions.shape[0]):
        v = regions[i]  # (D, N)
        for j in range(words.shape[0]):
            e = words[j, :, : int(cap_lens[j])]  # (D, T)
            s = torch.softmax(e.t() @ v, dim=0)  # softmax over the words, per region
            alpha = torch.softmax(gamma1 * s, dim=1)  # over the regions, per word
            context = v @ alpha.t()  # (D, T)
            cos = (context * e).sum(0) / (context.norm(dim=0) * e.norm(dim=0)).clamp(min=1e-8)
            out[i, j] = math.log(sum(math.exp(gamma2 * float(c)) for c in cos)) / gamma2
    return out


def test_the_papers_score_form_is_the_released_one_over_gamma2():
    words, regions = torch.randn(5, 24, 7), torch.randn(3, 24, 4, 5)
    cap_lens = torch.tensor([7, 1, 3, 5, 2])
    gamma1, gamma2 = 4.0, float(torch.empty(1).uniform_(2, 8))
    released, _ = word_scores(regions, words, cap_lens, gamma1, gamma2, impl="reference")
    paper, _ = word_scores(regions, words, cap_lens, gamma1, gamma2, score_form="paper", impl="reference")
    torch.testing.assert_close(paper, released / gamma2, rtol=0, atol=0)
    torch.testing.assert_close(paper.double(), _reference_paper_scores(words, cap_lens, regions, gamma1, gamma2),
                               rtol=1e-5, atol=1e-6)
    w0, w1, _ = words_loss(regions[:3], words[:3], cap_lens[:3], None, gamma1, gamma2, 10.0, score_form="paper",
                           impl="reference")
    sub, _ = word_scores(regions[:3], words[:3], cap_lens[:3], gamma1, gamma2, impl="reference")
    expected = matching_losses(10.0 * sub / gamma2)
    torch.testing.assert_close((w0, w1), expected)
    with pytest.raises(ValueError, match="score_form"):
        word_scores(regions, words, cap_lens, score_form="other")


def test_damsm_pretraining_uses_the_configured_score_form(synthetic_root):
    from attngan_fast.data.dataset import TextImageDataset, collate
    from attngan_fast.train.damsm import build_models

    cfg = load_config("synthetic", [f"data.root={synthetic_root}", "data.image_size=32", "runtime.impl=reference"])
    data = TextImageDataset(synthetic_root, "cub", "train", captions_per_image=10, words_num=18, image_size=32,
                            train=False)
    batch = collate([data[i] for i in range(6)])
    text, image = build_models(cfg, data.vocab)
    text.eval()
    image.eval()
    released, _ = damsm_losses(text, image, batch, cfg, torch.device("cpu"))
    cfg.damsm.score_form = "paper"
    paper, _ = damsm_losses(text, image, batch, cfg, torch.device("cpu"))
    with torch.no_grad():
        words, _ = text(batch["captions"], batch["cap_lens"])
        regions, _ = image(batch["images"][-1])
        scores, _ = word_scores(regions, words, batch["cap_lens"], impl="reference")
    expected = matching_losses(cfg.damsm.gamma3 * scores / cfg.damsm.gamma2, batch["class_ids"])
    torch.testing.assert_close(paper["w0"], expected[0])
    assert not torch.allclose(paper["w0"], released["w0"])
    torch.testing.assert_close(paper["s0"], released["s0"])  # the sentence loss has no γ2


def test_the_gan_loss_uses_the_configured_score_form():
    from attngan_fast.losses import sent_loss
    from attngan_fast.models.encoders import build_image_encoder

    cfg = load_config("synthetic", ["runtime.impl=reference", "damsm.score_form=paper", "gan.lambda_damsm=3"])
    image_encoder = build_image_encoder("compact", 12, compact_width=4).eval()
    images = [torch.rand(4, 3, 32, 32) * 2 - 1]
    words, sentence = torch.randn(4, 12, 6), torch.randn(4, 12)
    cap_lens, mu, logvar = torch.tensor([6, 2, 4, 1]), torch.zeros(4, 8), torch.zeros(4, 8)
    with torch.no_grad():
        _, parts = gan.generator_loss(lambda imgs, sent: torch.tensor(0.0), images, mu, logvar, sentence, words,
                                      cap_lens, None, image_encoder, cfg)
        regions, code = image_encoder(images[-1])
        scores, _ = word_scores(regions, words, cap_lens, impl="reference")
        w0, w1 = matching_losses(10.0 * scores / 5.0)
        s0, s1 = sent_loss(code, sentence)
    torch.testing.assert_close(parts["damsm"], 3 * (w0 + w1 + s0 + s1))


def _backbone_bn(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith(("Conv2d_", "Mixed_")) and ("running_" in k)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["release", "frozen"])
def test_release_bn_lets_the_backbone_statistics_drift_during_pretraining_and_frozen_does_not(
        synthetic_root, tmp_path, mode):
    cfg = load_config("bird", [
        f"data.root={synthetic_root}", f"damsm.out_dir={tmp_path}", "data.image_size=32", "data.workers=0",
        "text_encoder.embedding_dim=8", "text_encoder.hidden_dim=8", "damsm.batch_size=4", "damsm.max_steps=1",
        "runtime.eval_batches=1", f"image_encoder.backbone_bn={mode}"])
    from attngan_fast.data.prepare import load_captions
    from attngan_fast.train.damsm import build_models
    from attngan_fast.train.runtime import seed_everything

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone is announced loudly
        seed_everything(cfg.runtime.seed)  # as the run does before it builds its models: the same weights
        _, fresh = build_models(cfg, load_captions(synthetic_root, "cub", 10, progress=False).vocab)
        train_damsm(cfg, progress=False)
    before = _backbone_bn(fresh.state_dict())
    after = _backbone_bn(load_checkpoint(tmp_path / "latest.pt", DAMSM_FORMAT)["image_encoder"])
    assert len(before) == len(after) > 100
    drifted = [k for k in before if not torch.equal(before[k], after[k])]
    if mode == "release":
        assert len(drifted) == len(before), "every backbone BatchNorm updates its running statistics"
    else:
        assert drifted == []
    saved = load_checkpoint(tmp_path / "latest.pt", DAMSM_FORMAT)["image_encoder"]
    weights = [k for k in fresh.state_dict() if k.startswith("Mixed_7c") and k.endswith("conv.weight")]
    assert weights and all(torch.equal(fresh.state_dict()[k], saved[k]) for k in weights), "the backbone stays frozen"


def test_presets_follow_the_releases_bn_and_keep_the_damsm_the_gan_uses():
    from attngan_fast.train.damsm import keeps_snapshot

    for preset, epoch in (("bird", 200), ("coco", 100)):
        cfg = load_config(preset)
        assert cfg.image_encoder.backbone_bn == "release"
        assert keeps_snapshot(cfg.damsm, epoch) and cfg.gan.damsm.endswith(f"damsm_epoch{epoch:04d}.pt")
        assert keeps_snapshot(load_config(preset, ["damsm.snapshot_every=7"]).damsm, epoch)
    assert load_config("synthetic").image_encoder.backbone_bn == "frozen"


def test_snapshot_epochs_are_kept(synthetic_root, tmp_path):
    cfg = load_config("synthetic", [
        f"data.root={synthetic_root}", f"damsm.out_dir={tmp_path}", "data.image_size=32", "data.workers=0",
        "text_encoder.embedding_dim=8", "text_encoder.hidden_dim=8", "image_encoder.compact_width=4",
        "damsm.batch_size=24", "damsm.epochs=3", "damsm.max_minutes=null", "damsm.snapshot_every=1000",
        "damsm.snapshot_epochs=[2]", "runtime.eval_batches=1", "damsm.pictures_every=1000"])
    train_damsm(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.glob("damsm_epoch*.pt")) == ["damsm_epoch0002.pt"]


# ------------------------------------------------------------------------------------ evaluation hook

def _hook_config(root, damsm, out, *extra):
    return load_config("synthetic", [
        f"data.root={root}", f"gan.damsm={damsm}", f"gan.out_dir={out}", "data.workers=0",
        "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16", "gan.stages=2", "gan.base_size=16",
        "gan.gf_dim=4", "gan.df_dim=4", "gan.z_dim=8", "gan.c_dim=8", "gan.r_num=0", "gan.batch_size=24",
        "gan.epochs=2", "gan.max_minutes=null", "gan.samples_every=1000", "runtime.log_every=1", *extra])


def test_the_evaluation_hook_writes_its_rows_and_plot_without_changing_training(synthetic_root, trained, tmp_path):
    from attngan_fast.data.dataset import TextImageDataset
    from attngan_fast.protocol import FixedEvaluation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = gan.train_gan(_hook_config(synthetic_root, trained[0], tmp_path / "a", "gan.eval_every=1",
                                            "gan.eval_images=30"), progress=False)
        plain = gan.train_gan(_hook_config(synthetic_root, trained[0], tmp_path / "b", "gan.eval_every=null"),
                              progress=False)
    assert hooked["param_checksum"] == plain["param_checksum"], "evaluating leaves the training unchanged"
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval")]
    assert [r["epoch"] for r in evals] == [1, 2] and all(r["r_precision_images"] == 30 for r in evals)
    assert all(0.0 <= r["r_precision"] <= 1.0 and r["eval_words_num"] == 25 for r in evals)
    assert evals[0]["step"] < evals[1]["step"] and "inception_score" not in evals[0]
    assert (tmp_path / "a" / "eval_curve.png").stat().st_size > 1000
    assert not (tmp_path / "b" / "eval_curve.png").exists()
    assert not any(r.get("eval") for r in map(json.loads, (tmp_path / "b" / "log.jsonl").read_text().splitlines()))

    # The last row is what the protocol gives for the checkpoint's EMA generator on the same fixed pairs.
    cfg = _hook_config(synthetic_root, trained[0], tmp_path / "a")
    netG, text_encoder, vocab, _ = gan.load_generator(tmp_path / "a" / "latest.pt")
    from attngan_fast.train.damsm import load_damsm

    damsm = load_damsm(trained[0])
    test = TextImageDataset(synthetic_root, "cub", "test", captions_per_image=10, words_num=18, image_size=32,
                            train=False)
    again = FixedEvaluation.build(test, damsm.text_encoder, n_images=30, z_dim=8, c_dim=8, seed=cfg.runtime.seed,
                                  batch_size=24, device="cpu")(netG, text_encoder, damsm.image_encoder)
    assert again["r_precision"] == evals[-1]["r_precision"]


@pytest.mark.slow
def test_the_evaluation_hook_adds_the_inception_score_with_weights(synthetic_root, trained, fidelity_weights,
                                                                   tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gan.train_gan(_hook_config(synthetic_root, trained[0], tmp_path, "gan.eval_every=1", "gan.eval_images=20",
                                   "gan.epochs=1", f"gan.eval_inception_weights={fidelity_weights}"), progress=False)
    evals = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if r.get("eval")]
    assert len(evals) == 1 and evals[0]["inception_score"] >= INCEPTION_SCORE_FLOOR and evals[0]["inception_score_std"] >= 0


def test_the_evaluation_hook_settings_are_checked(synthetic_root, trained, tmp_path):
    from attngan_fast.config import ConfigError

    with pytest.raises(ConfigError, match="gan.eval_inception_weights: .* does not exist"):
        gan.train_gan(_hook_config(synthetic_root, trained[0], tmp_path, "gan.eval_every=1",
                                   f"gan.eval_inception_weights={tmp_path / 'missing.pth'}"), progress=False)
    with pytest.raises(ConfigError, match="gan.eval_every must be"):
        gan.train_gan(_hook_config(synthetic_root, trained[0], tmp_path, "gan.eval_every=0"), progress=False)
