"""A word-level tokenizer over the world's vocabulary (prompts and instructions use a closed set of words).

Every sequence starts with a non-padding ``<bos>`` token, so the empty prompt used for classifier-free guidance is
never all padding (all-padding rows return NaN in some fused attention paths).
"""

from __future__ import annotations

import re

import torch

from . import edits, prompts
from .vocab import ALL_SHAPES, ALL_STYLES, BACKGROUND_COLORS, OBJECT_COLORS

SPECIALS = ("<pad>", "<bos>", "<unk>")
_WORD = re.compile(r"[a-z]+")


def _template_words() -> set[str]:
    texts: list[str] = []
    texts += prompts.TEMPLATES + prompts.BG_TEMPLATES
    texts += tuple(prompts.REL_WORDS.values()) + tuple(prompts.REL_WORDS_ALT.values())
    texts += tuple(prompts.NUMBER_WORDS.values()) + ("a", "an", "and")
    texts += edits.ADD_T + edits.REMOVE_T + edits.REPLACE_T + edits.COLOR_T + edits.BG_T
    texts += tuple(edits.POS_PHRASES_3.values()) + ("in row column",)
    for v in edits.STYLE_T.values():
        texts += v
    texts += ALL_SHAPES + tuple(prompts.plural(s) for s in ALL_SHAPES)
    texts += tuple(OBJECT_COLORS) + tuple(BACKGROUND_COLORS) + ALL_STYLES
    words: set[str] = set()
    for t in texts:
        words.update(_WORD.findall(t.lower()))
    return words


class WorldTokenizer:
    """``encode(texts) -> LongTensor [B, max_len]`` with ids; 0 = pad, 1 = bos, 2 = unk."""

    def __init__(self, words: list[str] | None = None, max_len: int = 24):
        self.words = list(SPECIALS) + sorted(words if words is not None else _template_words())
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def tokenize(self, text: str) -> list[int]:
        ids = [1] + [self.index.get(w, 2) for w in _WORD.findall(text.lower())]
        return ids[: self.max_len]

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.tokenize(t)
            out[i, : len(ids)] = torch.tensor(ids)
        return out
