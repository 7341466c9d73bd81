"""TensorBoard beside log.jsonl (``runtime.tensorboard: true`` or ``--tensorboard``): every row the
training loops log becomes scalars, and their pictures (GAN sample grids with the attention maps,
DAMSM attention maps) become images, in ``OUT/tensorboard/`` through ``torch.utils.tensorboard``.
``tensorboard --logdir OUT/tensorboard`` shows them.

Tags: ``train/<loss>`` and ``train/lr`` for the training rows, ``speed/steps_per_s`` and
``speed/peak_memory_mb``, ``eval/<metric>`` for the evaluation rows (R-precision, IS, FID; the DAMSM's
validation losses and retrieval), each at the row's training step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SPEED_KEYS = ("steps_per_s", "peak_memory_mb")
NOT_SCALARS = ("step", "epoch", "eval")


class TensorBoardWriter:
    """A ``SummaryWriter`` on ``folder``, flushed after each row and picture (rows come only at log
    steps, so a run killed at any time has what it logged)."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package, imported when used

        self.writer = SummaryWriter(log_dir=str(folder))

    def row(self, record: dict) -> None:
        """A log.jsonl row as scalars at its step; resume marks and the final summary are not curves."""
        if "step" not in record or record.get("resumed") or record.get("final"):
            return
        section = "eval" if record.get("eval") else "train"
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            tag = f"speed/{key}" if key in SPEED_KEYS else f"{section}/{key}"
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))
        self.writer.flush()

    def picture(self, tag: str, path: str | Path, step: int) -> None:
        """A PNG the loop wrote (a sample grid, attention maps) as an image at ``step``."""
        from PIL import Image

        with Image.open(path) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
