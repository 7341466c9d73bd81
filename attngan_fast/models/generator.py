"""The attentional generative network (docs/design.md §3): conditioning augmentation, an initial stage to
``base_size``², then stages that attend to the words (F_attn on the fused kernel), refine with
residual blocks and double the resolution; one image head per stage (AttnGAN) or a single one at the
end (AttnDCGAN). Parameter names follow the release (``ca_net``, ``h_net1``, ``h_net2.att.conv_context``,
``img_net1`` ...) so released generators load directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attngan_fast.kernels import word_attention


class GLU(nn.Module):
    """First half of the channels gated by the sigmoid of the second half."""

    def forward(self, x):
        return F.glu(x, dim=1)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


def up_block(cin: int, cout: int) -> nn.Sequential:
    """Nearest x2, 3x3 conv, BN, GLU: (B, cin, s, s) -> (B, cout, 2s, 2s)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(cin, cout * 2), nn.BatchNorm2d(cout * 2), GLU())


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(conv3x3(channels, channels * 2), nn.BatchNorm2d(channels * 2), GLU(),
                                   conv3x3(channels, channels), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.block(x)


class ConditioningAugmentation(nn.Module):
    """F_ca: sentence (B, E) -> c (B, c_dim) ~ N(mu, sigma²) with mu, logvar from Linear + GLU."""

    def __init__(self, emb_dim: int, c_dim: int):
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(emb_dim, c_dim * 4)

    def forward(self, sentence: torch.Tensor, eps: torch.Tensor | None = None):
        """``eps`` (B, c_dim): the reparametrisation noise; drawn from the global RNG when None."""
        x = F.glu(self.fc(sentence), dim=1)
        mu, logvar = x[:, : self.c_dim], x[:, self.c_dim :]
        eps = torch.randn_like(mu) if eps is None else eps.to(mu)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class InitStage(nn.Module):
    """(c, z) -> Linear (no bias) + BN + GLU to (16·gf, 4, 4), then up-blocks to (gf, base, base)."""

    def __init__(self, gf_dim: int, z_dim: int, c_dim: int, base_size: int):
        super().__init__()
        ngf = gf_dim * 16
        self.ngf = ngf
        self.fc = nn.Sequential(nn.Linear(z_dim + c_dim, ngf * 4 * 4 * 2, bias=False), nn.BatchNorm1d(ngf * 4 * 4 * 2), GLU())
        self.n_up = int(math.log2(base_size // 4))
        channels = ngf
        for i in range(1, self.n_up + 1):
            # The release halves the channels at every up-block: 16gf -> gf over four of them (64 px).
            out = max(channels // 2, gf_dim) if i < self.n_up else gf_dim
            setattr(self, f"upsample{i}", up_block(channels, out))
            channels = out

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat((c, z), dim=1)).view(-1, self.ngf, 4, 4)
        for i in range(1, self.n_up + 1):
            x = getattr(self, f"upsample{i}")(x)
        return x


class WordContext(nn.Module):
    """U: the 1x1 projection of the words to the image channels (``conv_context`` in the release)."""

    def __init__(self, gf_dim: int, emb_dim: int):
        super().__init__()
        self.conv_context = nn.Conv2d(emb_dim, gf_dim, kernel_size=1, bias=False)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """words (B, E, T) -> e' (B, gf, T)."""
        return self.conv_context(words.unsqueeze(3)).squeeze(3)


class NextStage(nn.Module):
    """h (B, gf, s, s) + word context F_attn(e, h) -> residual blocks -> (B, gf, 2s, 2s)."""

    def __init__(self, gf_dim: int, emb_dim: int, r_num: int):
        super().__init__()
        self.att = WordContext(gf_dim, emb_dim)
        self.residual = nn.Sequential(*[ResBlock(gf_dim * 2) for _ in range(r_num)])
        self.upsample = up_block(gf_dim * 2, gf_dim)

    def forward(self, h, words, word_mask, *, return_attn=False, legacy_mask=False, impl="auto"):
        context = self.att(words).to(h.dtype)
        ctx, attn = word_attention(h, context, word_mask, return_attn=return_attn, legacy_mask=legacy_mask, impl=impl)
        return self.upsample(self.residual(torch.cat((h, ctx.to(h.dtype)), dim=1))), attn


class ImageHead(nn.Module):
    def __init__(self, gf_dim: int):
        super().__init__()
        self.img = nn.Sequential(conv3x3(gf_dim, 3), nn.Tanh())

    def forward(self, h):
        return self.img(h)


@dataclass
class GeneratorOutput:
    images: list[torch.Tensor]  # per stage (AttnDCGAN: one), (B, 3, s, s) in [-1, 1]
    attn: list[torch.Tensor | None]  # per attention stage, (B, T, s, s) fp32 when asked for
    mu: torch.Tensor
    logvar: torch.Tensor


class Generator(nn.Module):
    """AttnGAN generator. forward(z (B, z_dim), sentence (B, E), words (B, E, T), word_mask (B, T) bool,
    True = padding) -> GeneratorOutput. ``stages`` 1-3: the image sides are base_size·2^i."""

    def __init__(self, gf_dim: int = 32, emb_dim: int = 256, z_dim: int = 100, c_dim: int = 100, r_num: int = 2,
                 stages: int = 3, base_size: int = 64, variant: str = "attngan", legacy_mask: bool = False,
                 impl: str = "auto"):
        super().__init__()
        if not 1 <= stages <= 3:
            raise ValueError(f"stages must be 1, 2 or 3, got {stages}")
        if base_size < 8 or base_size & (base_size - 1):
            raise ValueError(f"base_size must be a power of two >= 8, got {base_size}")
        if variant not in ("attngan", "attndcgan"):
            raise ValueError(f"variant must be 'attngan' or 'attndcgan', got {variant!r}")
        self.stages, self.variant, self.z_dim, self.c_dim = stages, variant, z_dim, c_dim
        self.legacy_mask, self.impl = legacy_mask, impl
        self.sizes = [base_size * 2**i for i in range(stages)]
        self.ca_net = ConditioningAugmentation(emb_dim, c_dim)
        self.h_net1 = InitStage(gf_dim, z_dim, c_dim, base_size)
        for i in range(2, stages + 1):
            setattr(self, f"h_net{i}", NextStage(gf_dim, emb_dim, r_num))
        if variant == "attngan":
            for i in range(1, stages + 1):
                setattr(self, f"img_net{i}", ImageHead(gf_dim))
        else:
            self.img_net = ImageHead(gf_dim)

    def forward(self, z, sentence, words, word_mask, *, return_attn: bool = False,
                ca_noise: torch.Tensor | None = None) -> GeneratorOutput:
        """``ca_noise`` (B, c_dim) fixes the conditioning augmentation's draw (reproducible generation)."""
        c, mu, logvar = self.ca_net(sentence, ca_noise)
        h = self.h_net1(z, c)
        images, maps = [], []
        if self.variant == "attngan":
            images.append(self.img_net1(h))
        for i in range(2, self.stages + 1):
            h, attn = getattr(self, f"h_net{i}")(h, words, word_mask, return_attn=return_attn,
                                                 legacy_mask=self.legacy_mask, impl=self.impl)
            maps.append(attn)
            if self.variant == "attngan":
                images.append(getattr(self, f"img_net{i}")(h))
        if self.variant == "attndcgan":
            images.append(self.img_net(h))
        return GeneratorOutput(images, maps, mu, logvar)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, 1)), averaged over every element as in the release."""
    return -0.5 * torch.mean(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp())
