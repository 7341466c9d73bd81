"""Captions to word ids, as the release did it (docs/design.md §3).

Tokenizer: NLTK's ``RegexpTokenizer(r"\\w+")`` on lower-cased text, non-ASCII characters dropped (it
needs no NLTK data download). Vocabulary: index 0 is ``<end>``, which is also the padding id.
Captions longer than ``words_num`` keep a random *ordered* subset of ``words_num`` of their words.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

END_TOKEN = "<end>"
_TOKENIZER = None


def _tokenizer():
    # Imported on first use: code that never tokenizes (the GPU benchmarks) runs without NLTK installed.
    global _TOKENIZER
    if _TOKENIZER is None:
        from nltk.tokenize import RegexpTokenizer

        _TOKENIZER = RegexpTokenizer(r"\w+")
    return _TOKENIZER


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption, ASCII only (the release's rule)."""
    caption = caption.replace("\ufffd\ufffd", " ")
    tokens = (t.encode("ascii", "ignore").decode("ascii") for t in _tokenizer().tokenize(caption.lower()))
    return [t for t in tokens if t]


def words_as_written(caption: str) -> list[str]:
    """Lower-cased word tokens of a user's caption with their non-ASCII characters kept: a word such as
    'röd' or '红' cannot be in a vocabulary made by ``tokenize`` and is dropped by its own name, where
    ``tokenize`` would turn it into 'rd' or nothing."""
    return _tokenizer().tokenize(caption.replace("\ufffd\ufffd", " ").lower())


class Vocabulary:
    """Word <-> id mapping; id 0 is ``<end>`` (padding)."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if not words or words[0] != END_TOKEN:
            raise ValueError(f"a vocabulary starts with {END_TOKEN!r} at index 0")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not repeat a word")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]]) -> Vocabulary:
        """From tokenized captions; most frequent first, ties alphabetical (deterministic)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        counts.pop(END_TOKEN, None)
        ordered = sorted(counts, key=lambda w: (-counts[w], w))
        return cls([END_TOKEN, *ordered])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Sequence[str]) -> tuple[list[int], list[str]]:
        """(ids of the known tokens, the unknown tokens that were dropped)."""
        ids, unknown = [], []
        for t in tokens:
            if t in self.index and t != END_TOKEN:
                ids.append(self.index[t])
            else:
                unknown.append(t)
        return ids, unknown

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids if int(i) != 0]

    def to_json(self) -> list[str]:
        return list(self.words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.words))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text()))


def truncate(ids: Sequence[int], words_num: int, rng: random.Random) -> list[int]:
    """At most ``words_num`` ids: a longer caption keeps a random subset of its words, in order."""
    if len(ids) <= words_num:
        return list(ids)
    keep = sorted(rng.sample(range(len(ids)), words_num))
    return [ids[i] for i in keep]
