"""Discriminators for 64/128/256 px (docs/design.md §3), and 8-32 px ones for small CPU runs: a
down-sampling conv stack to (8·df, 4, 4), an unconditional logit head and a conditional one (a 3x3 conv
on the features ⊕ the tiled sentence vector). Heads return **logits** (no sigmoid), so the losses use
BCE-with-logits, which is autocast-safe. Names follow the release (``img_code_s16``, ``UNCOND_DNET``,
``COND_DNET.jointConv``, ``outlogits``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _lrelu():
    return nn.LeakyReLU(0.2, inplace=True)


def down_block(cin: int, cout: int) -> nn.Sequential:
    """4x4 stride-2 conv, BN, LeakyReLU: halves the side."""
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), _lrelu())


def block3x3(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), _lrelu())


def encode_image(df_dim: int, halvings: int) -> nn.Sequential:
    """The release's encode_image_by_16times for 4 halvings (3 -> df -> 2df -> 4df -> 8df, no BN on the
    first conv); fewer halvings stop earlier."""
    layers: list[nn.Module] = [nn.Conv2d(3, df_dim, 4, 2, 1, bias=False), _lrelu()]
    channels = df_dim
    for _ in range(halvings - 1):
        layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels * 2), _lrelu()]
        channels *= 2
    return nn.Sequential(*layers)


class LogitHead(nn.Module):
    """Unconditional: features -> logit. Conditional: features ⊕ sentence tiled -> 3x3 conv -> logit."""

    def __init__(self, df_dim: int, emb_dim: int, conditional: bool):
        super().__init__()
        self.conditional, self.emb_dim = conditional, emb_dim
        if conditional:
            self.jointConv = block3x3(df_dim * 8 + emb_dim, df_dim * 8)
        self.outlogits = nn.Sequential(nn.Conv2d(df_dim * 8, 1, kernel_size=4, stride=4))

    def forward(self, features: torch.Tensor, sentence: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional:
            if sentence is None:
                raise ValueError("the conditional head needs the sentence vectors")
            tiled = sentence.to(features.dtype).view(-1, self.emb_dim, 1, 1).expand(-1, -1, *features.shape[2:])
            features = self.jointConv(torch.cat((features, tiled), dim=1))
        return self.outlogits(features).view(-1)


class Discriminator(nn.Module):
    """forward(images (B, 3, s, s)) -> features (B, 8·df, 4, 4); heads ``UNCOND_DNET``, ``COND_DNET``.

    ``unconditional=False`` builds the conditional head only (``UNCOND_DNET`` is None), as the release's
    AttnDCGAN discriminator (``D_NET256(b_jcu=False)``); the losses below then use the conditional terms
    only."""

    def __init__(self, size: int, df_dim: int = 64, emb_dim: int = 256, *, unconditional: bool = True):
        super().__init__()
        self.size = size
        if size in (8, 16, 32):
            # Ours, for small CPU runs: halve down to 4x4, then a 3x3 block to 8·df channels.
            halvings = size.bit_length() - 3
            self.small = nn.Sequential(encode_image(df_dim, halvings), block3x3(df_dim * 2 ** (halvings - 1), df_dim * 8))
        elif size in (64, 128, 256):
            self.img_code_s16 = encode_image(df_dim, 4)
            if size >= 128:
                self.img_code_s32 = down_block(df_dim * 8, df_dim * 16)
            if size == 128:
                self.img_code_s32_1 = block3x3(df_dim * 16, df_dim * 8)
            if size == 256:
                self.img_code_s64 = down_block(df_dim * 16, df_dim * 32)
                self.img_code_s64_1 = block3x3(df_dim * 32, df_dim * 16)
                self.img_code_s64_2 = block3x3(df_dim * 16, df_dim * 8)
        else:
            raise ValueError(f"discriminators exist for 8, 16, 32, 64, 128 and 256 px, not {size}")
        self.UNCOND_DNET = LogitHead(df_dim, emb_dim, conditional=False) if unconditional else None
        self.COND_DNET = LogitHead(df_dim, emb_dim, conditional=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            raise ValueError(f"this discriminator takes {self.size}x{self.size} images, got {tuple(images.shape)}")
        if self.size <= 32:
            return self.small(images)
        x = self.img_code_s16(images)
        if self.size == 128:
            x = self.img_code_s32_1(self.img_code_s32(x))
        elif self.size == 256:
            x = self.img_code_s64_2(self.img_code_s64_1(self.img_code_s64(self.img_code_s32(x))))
        return x


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(netD: Discriminator, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor):
    """With both heads: (uncond_real + cond_real)/2 + (uncond_fake + cond_fake + cond_mismatch)/3; with the
    conditional head only (AttnDCGAN): cond_real + (cond_fake + cond_mismatch)/2. The mismatched pair is
    real image i with caption i+1 (absent for a batch of one, whose fake terms are then averaged without
    it). ``fake`` should already be detached. Returns (loss, parts)."""
    real_features, fake_features = netD(real), netD(fake)
    parts = {
        "cond_real": _bce(netD.COND_DNET(real_features, sentence), 1.0),
        "cond_fake": _bce(netD.COND_DNET(fake_features, sentence), 0.0),
    }
    mismatch = real.shape[0] > 1
    if mismatch:
        parts["cond_mismatch"] = _bce(netD.COND_DNET(real_features[:-1], sentence[1:]), 0.0)
    if netD.UNCOND_DNET is None:
        fake_terms = (parts["cond_fake"] + parts["cond_mismatch"]) / 2 if mismatch else parts["cond_fake"]
        return parts["cond_real"] + fake_terms, parts
    parts["uncond_real"] = _bce(netD.UNCOND_DNET(real_features), 1.0)
    parts["uncond_fake"] = _bce(netD.UNCOND_DNET(fake_features), 0.0)
    if mismatch:
        fake_terms = (parts["uncond_fake"] + parts["cond_fake"] + parts["cond_mismatch"]) / 3
    else:
        fake_terms = (parts["uncond_fake"] + parts["cond_fake"]) / 2
    return (parts["uncond_real"] + parts["cond_real"]) / 2 + fake_terms, parts


def generator_adversarial_loss(netD: Discriminator, fake: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
    """The generator's fooling terms for one stage: unconditional + conditional (the conditional one only
    for a discriminator without the unconditional head)."""
    features = netD(fake)
    cond = _bce(netD.COND_DNET(features, sentence), 1.0)
    return cond if netD.UNCOND_DNET is None else _bce(netD.UNCOND_DNET(features), 1.0) + cond
