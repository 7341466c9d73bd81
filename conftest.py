"""Loaded by pytest before any test module. Without a CUDA device the Triton kernels run through the
interpreter on CPU tensors; TRITON_INTERPRET must be set before ``attngan_fast.kernels`` is imported, which is why
this happens here, in the first file pytest loads. With a GPU the kernels are compiled."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
