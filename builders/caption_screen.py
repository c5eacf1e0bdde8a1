"""The caption screen: a source caption that names a concept is dropped, stripped or flagged.

The dataset promises captions that never name the concept (it is *implicit*), but a real source's
caption may ("a poster with a QR code"). Each concept has a vocabulary (the recipe's
``[caption_screen.words]``, these defaults otherwise), matched as whole words, case-insensitively,
with any spaces, hyphens or underscores between the words of a phrase ("qr code", "QR-code").
The recipe's policy decides what happens to a caption that names one:

- ``drop`` (the default): the item is skipped (``caption_names_concept``). A caption that names a
  watermark or text usually comes with an image that shows it, so its clean twin is not clean either.
- ``strip``: the words (and an article right before them) are taken out of the caption; a caption
  left without a letter is skipped (``caption_empty_after_screen``).
- ``flag``: the caption is kept as it is and ``KEY.json``'s ``screen.caption_names`` says so.

The vocabularies name the concepts, not what tends to come with them: "sign", "poster", "stock
photo" or "shutterstock" are not in them (the source screen, with the detector, is what finds a
concept in the pixels). "text" is a common word, but in alt text it almost always means text that
shows in the image ("poster with text", "add your text here"); a false match costs one item, a miss
a caption that names the concept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.validate import check_choice, check_fields, from_table

POLICIES = ("drop", "strip", "flag")

#: Each concept's words. Every concept's caption word (what Geom-Erasing writes) is among them.
DEFAULT_WORDS: dict[str, tuple[str, ...]] = {
    "qrcode": ("qr code", "qr codes", "qrcode", "qrcodes", "qr", "quick response code"),
    "watermark": (
        "watermark", "watermarks", "watermarked", "watermarking", "logo", "logos", "copyright", "©",
    ),
    "text": (
        "text", "texts", "caption", "captions", "captioned", "subtitle", "subtitles", "subtitled",
        "word", "words", "lettering", "letters", "typography", "inscription", "meme", "memes",
    ),
}

_ARTICLE = r"(?:(?<!\w)(?:an?|the)\s+)?"


@dataclass(frozen=True)
class CaptionVerdict:
    """What the screen made of one caption: the concepts it names, the caption to write (None:
    skip the item, for ``reason``), and whether words were taken out."""

    names: tuple[str, ...]
    caption: str | None
    stripped: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class CaptionScreen:
    policy: str = "drop"
    #: Concept -> phrases; a concept the recipe leaves out keeps its default words.
    words: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_WORDS))

    def __post_init__(self) -> None:
        check_choice("caption_screen.policy", self.policy, POLICIES)
        if not isinstance(self.words, Mapping):
            raise ValueError(f"caption_screen.words must be a table of concept = [words], got {self.words!r}")
        check_fields(self.words, CONCEPT_NAMES, "caption_screen.words")
        words = dict(DEFAULT_WORDS)
        for name, phrases in self.words.items():
            ok = isinstance(phrases, (list, tuple)) and phrases and all(isinstance(p, str) and p.strip() for p in phrases)
            if not ok:
                raise ValueError(f"caption_screen.words.{name} must be a non-empty list of words or phrases, got {phrases!r}")
            words[name] = tuple(p.strip() for p in phrases)
        object.__setattr__(self, "words", {name: words[name] for name in CONCEPT_NAMES})

    @classmethod
    def from_options(cls, options: Any) -> "CaptionScreen":
        return from_table(cls, options, "caption_screen")

    @cached_property
    def _patterns(self) -> dict[str, re.Pattern[str]]:
        return {name: re.compile(_ARTICLE + _alternation(phrases), re.IGNORECASE) for name, phrases in self.words.items()}

    def check(self, caption: str) -> CaptionVerdict:
        names = tuple(sorted(name for name, pattern in self._patterns.items() if pattern.search(caption)))
        if not names:
            return CaptionVerdict((), caption)
        if self.policy == "flag":
            return CaptionVerdict(names, caption)
        if self.policy == "drop":
            return CaptionVerdict(names, None, reason="caption_names_concept")
        stripped = caption
        for name in names:
            stripped = self._patterns[name].sub(" ", stripped)
        stripped = _tidy(stripped)
        if not any(c.isalpha() for c in stripped):
            return CaptionVerdict(names, None, stripped=True, reason="caption_empty_after_screen")
        return CaptionVerdict(names, stripped, stripped=True)


def _alternation(phrases: tuple[str, ...]) -> str:
    """One pattern for all ``phrases``, longest first, each a whole word where it begins or ends with one."""
    parts = []
    for phrase in sorted(set(phrases), key=lambda p: (-len(p), p)):
        body = r"[\s_-]*".join(re.escape(token) for token in re.split(r"[\s_-]+", phrase.strip()))
        before = r"(?<!\w)" if re.match(r"\w", phrase.strip()) else ""
        after = r"(?!\w)" if re.search(r"\w$", phrase.strip()) else ""
        parts.append(before + body + after)
    return "(?:" + "|".join(parts) + ")"


def _tidy(caption: str) -> str:
    """Spaces collapsed and none left before punctuation or at either end, once words were taken out."""
    caption = re.sub(r"\s+", " ", caption)
    caption = re.sub(r" ([,.;:!?])", r"\1", caption)
    caption = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", caption)
    return caption.strip(" ,;:")

