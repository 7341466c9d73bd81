"""DAMSM encoders (docs/design.md §3): the BiLSTM text encoder and two image encoders with the same outputs.

Parameter names follow the release (``encoder``, ``rnn``; Inception's ``Conv2d_1a_3x3`` ...,
``emb_features``, ``emb_cnn_code``) so its checkpoints map onto these modules.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class InceptionWeightsError(ValueError):
    """The file given as the Inception-v3 backbone's weights is not one."""


class TextEncoder(nn.Module):
    """Word embedding, dropout, one bidirectional LSTM layer.

    forward(captions (B, T) long, cap_lens (B,)) -> words (B, D, T), sentence (B, D) with
    D = hidden_dim (hidden_dim / 2 per direction). Padding positions of ``words`` are zero.

    The LSTM runs on a packed batch, which needs the lengths on the host: give ``cap_lens`` as a CPU
    tensor (the data loader's) and the forward never waits for the GPU; lengths on the GPU are read
    back first, one host sync.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 300, hidden_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (two LSTM directions), got {hidden_dim}")
        self.vocab_size, self.hidden_dim = vocab_size, hidden_dim
        self.encoder = nn.Embedding(vocab_size, embedding_dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(embedding_dim, hidden_dim // 2, num_layers=1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, captions: torch.Tensor, cap_lens: torch.Tensor):
        if captions.dim() != 2:
            raise ValueError(f"captions must be (B, T) word ids, got shape {tuple(captions.shape)}")
        total = captions.shape[1]
        emb = self.drop(self.encoder(captions))
        # The batch is packed longest first and put back in its order afterwards (the caller never sorts).
        # This is pack_padded_sequence(enforce_sorted=False) without its two host syncs: that copies the
        # sorting permutation to the GPU with a blocking copy and pad_packed_sequence reads the
        # inverse back; here the permutation goes over asynchronously and is inverted on the device.
        lengths, order = _longest_first(cap_lens, captions.device)
        packed = pack_padded_sequence(emb.index_select(0, order), lengths, batch_first=True, enforce_sorted=True)
        output, (hidden, _) = self.rnn(packed)
        restore = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        words = pad_packed_sequence(output, batch_first=True, total_length=total)[0].index_select(0, restore)
        sentence = hidden.index_select(1, restore).transpose(0, 1).reshape(captions.shape[0], self.hidden_dim)
        return words.transpose(1, 2), sentence


def _longest_first(cap_lens: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths sorted longest first, on the host; the sorting permutation (B,), on ``device``)."""
    lengths = cap_lens.detach()
    if lengths.device.type != "cpu":
        lengths = lengths.cpu()  # a host sync; the training loops pass the loader's host lengths
    lengths, order = torch.sort(lengths.to(torch.int64), descending=True)
    if device.type == "cuda":
        order = order.pin_memory()  # a non-blocking copy from pinned memory does not wait for the GPU
    return lengths, order.to(device, non_blocking=True)


_INCEPTION_LAYERS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
]


class InceptionImageEncoder(nn.Module):
    """torchvision's Inception-v3 up to Mixed_7c, frozen (weights only from a local file), plus two
    trainable heads: regions = 1x1 conv 768 -> D on Mixed_6e (17x17), global = Linear 2048 -> D on the
    8x8 average. Input: (B, 3, H, W) in [-1, 1], resized bilinearly to 299 x 299.
    forward -> regions (B, D, 17, 17), global (B, D).

    ``backbone_bn``: ``"release"`` lets ``train()`` reach the frozen backbone, as the release did: its
    weights never change, but its BatchNorm layers normalise with batch statistics and their running
    statistics drift to the dataset (and are what eval mode uses afterwards); ``"frozen"`` keeps the
    backbone in eval mode, with the statistics it was loaded with."""

    def __init__(self, out_dim: int = 256, weights_path: str | Path | None = None, backbone_bn: str = "release"):
        super().__init__()
        if backbone_bn not in ("release", "frozen"):
            raise ValueError(f"backbone_bn must be 'release' or 'frozen', got {backbone_bn!r}")
        self.backbone_bn = backbone_bn
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=weights_path is None)
        for name in _INCEPTION_LAYERS:
            setattr(self, name, getattr(net, name))
        self.emb_features = nn.Conv2d(768, out_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, out_dim)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)
        self.backbone_source = "random"
        if weights_path is not None:
            self.load_backbone(weights_path)
        else:
            warnings.warn(
                "InceptionImageEncoder: no --inception-weights file given, so the Inception-v3 backbone is "
                "RANDOM and frozen; region features will be poor. Pass torchvision's ImageNet inception_v3 "
                "state_dict (a local .pth file) for real training.",
                stacklevel=2,
            )
        for name in _INCEPTION_LAYERS:
            getattr(self, name).requires_grad_(False)

    def load_backbone(self, path: str | Path) -> None:
        """Load the backbone from a local torchvision inception_v3 state_dict (extra keys such as fc and
        AuxLogits are ignored; a missing or mis-shaped backbone tensor is an error)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inception weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a text file, a pickle of other objects, a truncated file
            raise InceptionWeightsError(f"--inception-weights {path} is not a torch weights file "
                                        f"({type(err).__name__}); give torchvision's inception_v3 state_dict") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InceptionWeightsError(f"--inception-weights {path} holds a {type(state).__name__}, not a state_dict")
        own = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in _INCEPTION_LAYERS}
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise InceptionWeightsError(f"--inception-weights {path} lacks {len(missing)} of the Inception-v3 backbone's "
                                        f"tensors, e.g. {missing[:3]}: not torchvision's inception_v3 state_dict")
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise InceptionWeightsError(f"--inception-weights {path}: shape mismatch for {bad[:3]} (not torchvision's "
                                        "inception_v3 layout?)")
        self.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
        self.backbone_source = str(path)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_bn == "frozen":
            for name in _INCEPTION_LAYERS:  # the backbone keeps the BatchNorm statistics it came with
                getattr(self, name).eval()
        return self

    def forward(self, images: torch.Tensor):
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        regions = self.emb_features(x)  # (B, D, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return regions, self.emb_cnn_code(pooled)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
    )


class CompactImageEncoder(nn.Module):
    """A small trainable CNN with the Inception encoder's outputs, for synthetic data and CPU runs.

    Four stride-2 blocks: regions = 1x1 conv -> D after the third (side/8, e.g. 8 x 8 at 64 px),
    global = Linear -> D on the average of the fourth. forward -> regions (B, D, s/8, s/8), global (B, D).
    """

    def __init__(self, out_dim: int = 256, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.top = _block(4 * width, 8 * width)
        self.emb_features = nn.Conv2d(4 * width, out_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(8 * width, out_dim)

    def forward(self, images: torch.Tensor):
        x = self.features(images)
        regions = self.emb_features(x)
        pooled = F.adaptive_avg_pool2d(self.top(x), 1).flatten(1)
        return regions, self.emb_cnn_code(pooled)


def build_image_encoder(kind: str, out_dim: int, *, inception_weights=None, compact_width: int = 64,
                        backbone_bn: str = "release") -> nn.Module:
    if kind == "inception":
        return InceptionImageEncoder(out_dim, inception_weights, backbone_bn)
    if kind == "compact":
        return CompactImageEncoder(out_dim, compact_width)
    raise ValueError(f"image encoder kind must be 'inception' or 'compact', got {kind!r}")
