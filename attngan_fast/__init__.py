"""attngan-fast: AttnGAN (Xu et al., CVPR 2018) on PyTorch with fused Triton attention kernels.

The attention math lives in ``attngan_fast.kernels`` (the repository's top-level ``kernels/`` folder,
installed under this package), which needs nothing else of the package; the rest of the package
holds the model, data, losses, training and evaluation on top of it.
"""

__version__ = "0.1.0"
