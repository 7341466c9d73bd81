"""One full AttnGAN training step (every D, then G with λ·DAMSM and KL; the production ``GanStep``)
for the variants of docs/design.md §6, on a fixed random batch.

``released-fp32-eager`` swaps in the release's algorithms: F_attn by flatten/bmm/repeated mask and
the DAMSM word score by the per-caption Python loop with host syncs, and torch's default Adam (ours: fused).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

import attngan_fast.models.generator as generator_module
import attngan_fast.train.gan as gan_module
from attngan_fast.config import Config, load_config
from attngan_fast.losses import matching_losses
from attngan_fast.models.encoders import TextEncoder, build_image_encoder
from attngan_fast.train.common import adam
from attngan_fast.train.runtime import compile_mode, grad_scaler
from attngan_fast.kernels import damsm_word_scores_loop
from attngan_fast.kernels.attention import word_attention_released

VARIANTS = {
    "released-fp32-eager": dict(amp="off", compile=False, impl="reference", released=True),
    "ours-fp32-eager": dict(amp="off", compile=False, impl="reference", released=False),
    "ours-bf16": dict(amp="bf16", compile=False, impl="reference", released=False),
    "ours-fp16": dict(amp="fp16", compile=False, impl="reference", released=False),  # with a gradient scaler
    "ours-bf16-compile-fused": dict(amp="bf16", compile=True, impl="triton", released=False),
    # the compiled parts as CUDA graphs (runtime.cuda_graphs): GPU only
    "ours-bf16-compile-fused-graphs": dict(amp="bf16", compile=True, impl="triton", released=False, cuda_graphs=True),
}
VOCAB = 5450  # the bird vocabulary's size


def bird_config(batch: int = 20) -> Config:
    return load_config("bird", [f"gan.batch_size={batch}"])


def tiny_config(batch: int = 4) -> Config:
    """CPU-sized: two stages 16 -> 32 px, narrow layers, the compact image encoder."""
    return load_config("synthetic", [
        f"gan.batch_size={batch}", "gan.stages=2", "gan.base_size=16", "gan.gf_dim=4", "gan.df_dim=4",
        "gan.r_num=1", "text_encoder.embedding_dim=16", "text_encoder.hidden_dim=16", "image_encoder.compact_width=8",
    ])


def _words_loss_released(regions, words, cap_lens, class_ids=None, gamma1=4.0, gamma2=5.0, gamma3=10.0, *,
                         return_attn=False, impl=None):
    scores = damsm_word_scores_loop(words.float(), cap_lens, regions.flatten(2).float(), gamma1, gamma2)
    loss0, loss1 = matching_losses(gamma3 * scores, class_ids)
    return loss0, loss1, None


def _attention_released(query, context, word_mask=None, *, return_attn=False, legacy_mask=False, impl=None):
    return word_attention_released(query, context.to(query.dtype), word_mask, return_attn)


@contextlib.contextmanager
def released_algorithms():
    """Route the model's F_attn and the G loss's word score through the release's algorithms."""
    saved = generator_module.word_attention, gan_module.words_loss
    generator_module.word_attention, gan_module.words_loss = _attention_released, _words_loss_released
    try:
        yield
    finally:
        generator_module.word_attention, gan_module.words_loss = saved


def random_batch(cfg: Config, seed: int = 0) -> dict:
    g = cfg.gan
    gen = torch.Generator().manual_seed(seed)
    sizes = [g.base_size * 2**i for i in range(g.stages)]
    lengths = torch.randint(4, cfg.data.words_num + 1, (g.batch_size,), generator=gen)
    lengths[0] = cfg.data.words_num
    captions = torch.randint(1, VOCAB, (g.batch_size, cfg.data.words_num), generator=gen)
    captions[torch.arange(cfg.data.words_num)[None, :] >= lengths[:, None]] = 0
    return {"images": [torch.rand(g.batch_size, 3, s, s, generator=gen) * 2 - 1 for s in sizes],
            "captions": captions, "cap_lens": lengths, "class_ids": None}


def build_step(cfg: Config, variant: str | dict, device: torch.device):
    """(step(batch) -> losses, context manager to run it under) for one variant (a name of VARIANTS or
    a dict of the same keys)."""
    options = VARIANTS[variant] if isinstance(variant, str) else variant
    cfg.runtime.amp, cfg.runtime.compile, cfg.runtime.impl = options["amp"], options["compile"], options["impl"]
    cfg.runtime.cuda_graphs = options.get("cuda_graphs", False)
    torch.manual_seed(0)
    te = cfg.text_encoder
    text_encoder = TextEncoder(VOCAB, te.embedding_dim, te.hidden_dim, te.dropout).to(device).eval().requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random Inception backbone is fine for timing
        image_encoder = build_image_encoder(cfg.image_encoder.kind, te.hidden_dim,
                                            compact_width=cfg.image_encoder.compact_width)
    image_encoder = image_encoder.to(device).eval().requires_grad_(False)
    netG = gan_module.build_generator(cfg).to(device)
    netsD = gan_module.build_discriminators(cfg).to(device)
    gan_module.init_weights(netG)
    gan_module.init_weights(netsD)
    if cfg.runtime.channels_last:  # as the training loop lays them out
        for module in (netG, netsD, image_encoder):
            module.to(memory_format=torch.channels_last)
    g = cfg.gan

    def optimizer(params, lr):  # the release: torch's default Adam; ours: the fused one the loops use
        return torch.optim.Adam(params, lr=lr, betas=g.betas) if options["released"] else adam(params, lr, g.betas)

    optG = optimizer(netG.parameters(), g.lr_g)
    optsD = [optimizer(d.parameters(), g.lr_d) for d in netsD]
    scaler = grad_scaler(device, options["amp"])
    g_model, d_steps, image_fn = netG, [gan_module.DiscriminatorStep(d) for d in netsD], image_encoder
    adversarial = gan_module.GeneratorAdversarial(netsD)
    if options["compile"]:
        g_model, d_steps, adversarial, image_fn = gan_module.compiled(netG, d_steps, adversarial, image_encoder,
                                                                      compile_mode(cfg.runtime))
    step = gan_module.GanStep(g_model, d_steps, netsD, optG, optsD, scaler, text_encoder, image_fn, cfg, device,
                              adversarial)
    return step, (released_algorithms if options["released"] else contextlib.nullcontext)
