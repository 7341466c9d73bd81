"""attngan-fast: AttnGAN (Xu et al., CVPR 2018) on PyTorch with fused Triton attention kernels.

The attention math lives in the importable-alone package ``kernels``; this package holds the model,
data, losses, training and evaluation on top of it.
"""

__version__ = "0.1.0"
