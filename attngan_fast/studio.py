"""What the ``attngan-fast serve`` page computes, apart from the page itself (``serve.py``): a caption's
images at every stage with, per attention stage, the most attended words and their maps over the
image (the paper's Figure 1/4), and the same noise under a caption with one word changed (Figure 5).
Generation and pictures are ``generate.py``'s and ``pictures.py``'s; this module bounds what one
request may ask and turns a caption that cannot be read into a message for the page.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .generate import CaptionError, generate_images
from .pictures import attended_words, generation_grid, to_pil
from .text import tokenize, words_as_written

MAX_CAPTION_CHARS = 300
MAX_CAPTION_WORDS = 40
MAX_IMAGES = 8  # per request, unless --max-images says otherwise
MAX_IMAGES_LIMIT = 64  # what --max-images may say
MAX_SEED = 2**31 - 1
TOP_WORDS = 5
MAX_TEST_CAPTIONS = 200
CELL = 128  # pixels per picture in the grid and the galleries


class RequestError(ValueError):
    """A request beyond the page's bounds, or a caption the model cannot read; the page shows the message."""


@dataclass
class Result:
    """One caption's pictures: ``grid`` (one row per image: every stage, then the most attended words per
    attention stage), ``stages`` and ``maps`` as (picture, label) pairs for the page's galleries."""

    caption: str
    words: list[str]  # what the generator read
    grid: Image.Image
    stages: list[tuple[Image.Image, str]] = field(default_factory=list)
    maps: list[tuple[Image.Image, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # words the vocabulary lacks


class Studio:
    """A generator (``train.gan.load_generator``'s four values) behind the page's bounds."""

    def __init__(self, netG, text_encoder, vocab, device, *, max_images: int = MAX_IMAGES,
                 test_captions: list[str] | None = None, checkpoint: str | Path = ""):
        if not 1 <= max_images <= MAX_IMAGES_LIMIT:
            raise ValueError(f"--max-images must be between 1 and {MAX_IMAGES_LIMIT}, got {max_images}")
        self.netG, self.text_encoder, self.vocab, self.device = netG, text_encoder, vocab, device
        self.max_images = max_images
        self.test_captions = list(test_captions or [])
        self.checkpoint = str(checkpoint)

    @property
    def stages(self) -> list[int]:
        return list(self.netG.sizes)

    def check(self, caption, seed, n_images) -> tuple[str, int, int]:
        """(caption, seed, images) as the generator takes them, or RequestError saying what is out of bounds."""
        caption = (caption or "").strip()
        if not caption:
            raise RequestError("type a caption (or pick a test caption) first")
        if len(caption) > MAX_CAPTION_CHARS:
            raise RequestError(f"the caption has {len(caption)} characters; this page takes at most {MAX_CAPTION_CHARS}")
        words = words_as_written(caption)
        if len(words) > MAX_CAPTION_WORDS:
            raise RequestError(f"the caption has {len(words)} words; this page takes at most {MAX_CAPTION_WORDS}")
        seed = _whole(seed, "the seed")
        if not 0 <= seed <= MAX_SEED:
            raise RequestError(f"the seed must be between 0 and {MAX_SEED}, got {seed}")
        n_images = _whole(n_images, "the number of images")
        if not 1 <= n_images <= self.max_images:
            raise RequestError(f"asked for {n_images} images; this page makes 1 to {self.max_images} per request")
        return caption, seed, n_images

    def generate(self, caption, seed=0, n_images=1) -> Result:
        caption, seed, n_images = self.check(caption, seed, n_images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown words come back in ``dropped`` and are said on the page
            try:
                gen = generate_images(self.netG, self.text_encoder, self.vocab, [caption], n_per_caption=n_images,
                                      seed=seed, device=self.device)
            except CaptionError as err:
                if "vocabulary" in str(err):
                    raise RequestError(f"no word of the caption is in the model's vocabulary of {len(self.vocab)} "
                                       "words (try a test caption)") from None
                raise RequestError(str(err)) from None
        words = gen.words[0]
        result = Result(caption, words, generation_grid(gen.images, gen.attn, gen.words, top_k=TOP_WORDS, cell=CELL),
                        dropped=list(gen.dropped.get(caption, [])))
        for k in range(n_images):
            for i, stage in enumerate(gen.images):
                picture = to_pil(stage[k]).resize((CELL, CELL), Image.BILINEAR)
                result.stages.append((picture, f"image {k + 1}, stage {i + 1} ({stage.shape[-1]} px)"))
            for j, top in enumerate(attended_words(gen.images, gen.attn, words, k, top_k=TOP_WORDS, cell=CELL)):
                # The word first: a gallery cuts long labels at their end.
                result.maps.extend((picture, f"{word} (image {k + 1}, stage {j + 2})") for word, picture in top)
        return result

    def change_word(self, caption, word, replacement) -> str:
        """The caption with its first ``word`` (a whole word, any case) replaced by ``replacement``."""
        caption, word, replacement = (caption or "").strip(), (word or "").strip(), (replacement or "").strip()
        for value, what in ((word, "the word to change"), (replacement, "the new word")):
            if len(words_as_written(value)) != 1 or not re.fullmatch(r"\w+", value):
                shown = value if len(value) <= 40 else value[:40] + "…"  # the page echoes it: a bounded echo
                raise RequestError(f"{what} must be one word, got {shown!r}")
        pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
        if not pattern.search(caption):
            raise RequestError(f"{word!r} is not a word of the caption")
        return pattern.sub(replacement, caption, count=1)

    def compare(self, caption, word, replacement, seed=0, n_images=1) -> tuple[Result, Result]:
        """The caption and the caption with one word changed, under the same noise (the paper's Figure 5)."""
        caption, seed, n_images = self.check(caption, seed, n_images)
        changed = self.change_word(caption, word, replacement)
        self.check(changed, seed, n_images)
        if changed.lower() == caption.lower():
            raise RequestError(f"the new word {replacement.strip()!r} is the word it replaces")
        # a new word the model cannot read: the pair would show a word dropped, not changed
        if not all(t in self.vocab for t in tokenize(replacement) or [""]):
            raise RequestError(f"{replacement.strip()!r} is not in the model's vocabulary: it would only be left out")
        return self.generate(caption, seed, n_images), self.generate(changed, seed, n_images)


def _whole(value, what: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RequestError(f"type {what} (a whole number)")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        raise RequestError(f"{what} must be a whole number, got {str(value)[:40]!r}") from None
    if not number.is_integer():
        raise RequestError(f"{what} must be a whole number, got {str(value)[:40]!r}")
    return int(number)


def held_out_captions(cfg, data_root: str | Path | None = None, limit: int = MAX_TEST_CAPTIONS) -> tuple[list[str], str]:
    """(up to ``limit`` distinct test captions of the generator's data, as the words the tokenizer kept; a
    note on where they came from or why there are none). ``data_root``: instead of the config's."""
    from .data.layouts import DataError
    from .data.prepare import load_captions

    root = Path(data_root or cfg.data.root)
    if not root.is_dir():
        return [], f"no test captions: the data root {root} is not on this machine (give --data DIR)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = load_captions(root, cfg.data.layout, cfg.data.captions_per_image, progress=False,
                                  test_fraction=cfg.data.test_fraction)
    except (DataError, OSError) as err:
        first = str(err).splitlines()[0]
        return [], f"no test captions: {root} could not be read ({first})"
    out: list[str] = []
    for ids in cache.captions["test"]:
        text = " ".join(cache.vocab.decode(ids))
        if text not in out:
            out.append(text)
        if len(out) == limit:
            break
    return out, f"{len(out)} test captions of {root}"
