"""Where a concept is, said in words: a G x G grid of location tokens appended to captions.

The image is split into G x G equal bins. Bin ``(m, n)`` has the token ``<l{m},{n}>`` where ``m`` is
the COLUMN (0 = left) and ``n`` the ROW (0 = top), so ``<l3,0>`` is the top-right bin of a 4 x 4 grid.
A box names every bin it touches. Boxes are in pixels with ``x2``/``y2`` exclusive, so a box that
ends exactly on a bin edge does not spill into the next bin.

CLIP reads 77 tokens at most (start and end tokens included). When a caption plus its concept and
location tokens is too long, words are dropped from the end of the ORIGINAL caption, and the result
says so; the concept and location tokens are never cut.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from implicit_concept.sample import Box

log = logging.getLogger(__name__)

DEFAULT_GRID = 4
#: CLIP's text context, in tokens, including the start and end tokens: what a caption must fit in.
CLIP_MAX_LENGTH = 77
MAX_GRID = 8

Bin = tuple[int, int]


def check_grid(grid: int) -> int:
    """G must be an integer in [1, 8]: 8 x 8 tokens plus the concept still fit CLIP's context."""
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= MAX_GRID:
        raise ValueError(f"grid must be an integer in [1, {MAX_GRID}], got {grid!r}")
    return grid


def location_token(m: int, n: int) -> str:
    """The token of the bin in column ``m`` and row ``n``."""
    return f"<l{m},{n}>"


def location_tokens(grid: int = DEFAULT_GRID) -> list[str]:
    """All G*G tokens, row by row from the top-left bin."""
    check_grid(grid)
    return [location_token(m, n) for n in range(grid) for m in range(grid)]


def bins_for_box(box: Box | Sequence[int], width: int, height: int, grid: int = DEFAULT_GRID) -> list[Bin]:
    """Every ``(m, n)`` bin the box touches, row by row; the box is clipped to the image first."""
    check_grid(grid)
    x1, y1, x2, y2 = box.as_list() if isinstance(box, Box) else box
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if x2 <= x1 or y2 <= y1:
        return []
    m1, m2 = _bin_span(x1, x2, width, grid)
    n1, n2 = _bin_span(y1, y2, height, grid)
    return [(m, n) for n in range(n1, n2 + 1) for m in range(m1, m2 + 1)]


def _bin_span(lo: float, hi: float, extent: int, grid: int) -> tuple[int, int]:
    """First and last bin of ``[lo, hi)``; integer arithmetic so bin edges are exact."""
    first = int(lo * grid // extent)
    last = int(-((-hi * grid) // extent)) - 1  # ceil(hi * G / extent) - 1: hi itself is excluded
    return min(first, grid - 1), min(max(last, first), grid - 1)


@dataclass(frozen=True)
class GeometricCaption:
    """A training caption and what, if anything, was cut from the original to fit."""

    text: str
    original: str
    suffix: str
    dropped_words: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_words)


def concept_suffix(terms: Sequence[tuple[str, Sequence[Bin]]]) -> str:
    """``"qr code <l0,0> <l1,0>"`` for each (concept term, bins) pair, in order; an empty term is left out."""
    words = []
    for term, bins in terms:
        words += ([term] if term else []) + [location_token(m, n) for m, n in bins]
    return " ".join(words)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens ``text`` takes in the text encoder's context, start and end tokens included."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def geometric_caption(
    caption: str,
    terms: Sequence[tuple[str, Sequence[Bin]]],
    tokenizer,
    max_length: int = CLIP_MAX_LENGTH,
) -> GeometricCaption:
    """Caption + concept term(s) + their bins' location tokens, cut to fit ``max_length`` tokens.

    Only the original caption is shortened, by whole words from its end; a warning is logged and
    the dropped words are returned. If the suffix alone does not fit, that is a configuration error.
    """
    suffix = concept_suffix(terms)
    if not suffix:
        return GeometricCaption(text=caption, original=caption, suffix="")
    if count_tokens(tokenizer, suffix) > max_length:
        raise ValueError(f"concept and location tokens alone exceed {max_length} tokens: {suffix!r}")
    words = caption.split()
    lo, hi = 0, len(words)  # the longest prefix that fits: binary search, fitting is monotone in length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(tokenizer, " ".join(words[:mid] + [suffix])) <= max_length:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo] + [suffix])
    dropped = tuple(words[lo:])
    if dropped:
        log.warning("caption cut to fit %d tokens: dropped %r from %r", max_length, " ".join(dropped), caption)
    return GeometricCaption(text=text, original=caption, suffix=suffix, dropped_words=dropped)


def negative_prompt(concept_terms: Sequence[str], grid: int | None = DEFAULT_GRID) -> str:
    """The concept term(s) and, unless ``grid`` is None, all G*G location tokens: the location is unknown at sampling."""
    tokens = location_tokens(grid) if grid is not None else []
    return " ".join(list(concept_terms) + tokens)


#: A token written as added tokens are (a location token ``<l3,0>``, a concept token ``<qrcode>``, a
#: textual-inversion token ``<cat-toy>``): one word in angle brackets.
ADDED_TOKEN = re.compile(r"<[^<>\s]+>")


def tokens_not_held(tokenizer, text: str) -> list[str]:
    """The added tokens ``text`` names that ``tokenizer`` does not hold as one token each: CLIP's BPE
    reads such a token as pieces of plain text (``<``, ``l``, ``3``, ...), silently, so a negative
    prompt of location tokens given to a tokenizer saved without them steers away from nothing. Held
    is read as one id: a tokenizer that lowercases (CLIP's) names a held ``<Cat-Toy>`` ``<cat-toy>``."""
    return sorted({token for token in ADDED_TOKEN.findall(text) if not _one_token(tokenizer, token)})


def _one_token(tokenizer, token: str) -> bool:
    ids = tokenizer(token, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def add_tokens(tokenizer, text_encoder, tokens: Sequence[str], seed: int = 0, noise: float = 0.1) -> list[int]:
    """Add ``tokens`` (those not yet known) and give each a new embedding row; return all their ids.

    A new row starts at the mean embedding plus ``noise`` times the per-dimension spread, drawn from a
    seeded generator: distinct tokens start distinct, and the same seed gives the same start.
    """
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        old = text_encoder.get_input_embeddings().weight.shape[0]
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            base = weight[:old]
            gen = torch.Generator().manual_seed(seed)
            rand = torch.randn(weight.shape[0] - old, weight.shape[1], generator=gen, dtype=torch.float32)
            weight[old:] = (base.mean(0) + noise * base.std(0) * rand.to(base.device)).to(weight.dtype)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return list(ids)
