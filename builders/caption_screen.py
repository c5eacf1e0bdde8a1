"""The caption screen: a source caption that names a concept is dropped, stripped or flagged.

The dataset promises captions that never name the concept (it is *implicit*), but a real source's
caption may ("a poster with a QR code"). Each concept has a vocabulary (the recipe's
``[caption_screen.words]``, these defaults otherwise), matched case-insensitively, with any spaces,
dots, hyphens, dashes or underscores between the words of a phrase ("qr code", "QR-code", "Q.R.
code"). A word of a script written with spaces between words (Latin, Cyrillic, Greek) matches as a
whole word: not inside a longer word of its script ("context", "textbook", "logotype", "контекст"
pass), but where a digit, an underscore or another script joins it ("watermark2", "company_logo",
"QR코드"). A word in Chinese, Japanese or Korean matches anywhere (those scripts write no spaces, and
Korean joins particles to words: "图片带水印", "워터마크가"), but for the few contexts where its
characters belong to other words (:data:`_NOT_AROUND`: "文字通り" is "literally", "山水印象"
"landscape impression"). Captions are matched as Unicode compatibility (NFKC) text without format
characters, so full-width letters ("ＱＲ ｃｏｄｅ"), a soft hyphen or zero-width space inside a word
("Wa\u00adtermark") are caught; a compound may be written apart ("water mark", "water-marked"); a
right single quote stands for an apostrophe ("marca d’água"); "©" is also "(c)" before a year.
The default vocabularies hold each concept's names in English and in the languages most common in
web alt text (Chinese, Japanese, Korean, German, French, Spanish, Portuguese, Italian, Russian,
with their common inflections), since a source like LAION is about half non-English.
The recipe's policy decides what happens to a caption that names one:

- ``drop`` (the default): the item is skipped (``caption_names_concept``). A caption that names a
  watermark or text usually comes with an image that shows it, so its clean twin is not clean either.
- ``strip``: the whole token holding the words (with what is joined to it: "Logo-free",
  "qrcode's", "company_logo.png") and an article right before it are taken out of the caption; a
  caption left without a letter is skipped (``caption_empty_after_screen``). A match in Chinese,
  Japanese or Korean takes out only the words matched (a sentence there is one run of characters).
- ``flag``: the caption is kept as it is and ``KEY.json``'s ``screen.caption_names`` says so.

The vocabularies name the concepts, not what tends to come with them: "sign", "poster", "stock
photo" or "shutterstock" are not in them (the source screen, with the detector, is what finds a
concept in the pixels). "text" is a common word, but in alt text it almost always means text that
shows in the image ("poster with text", "add your text here"); a false match costs one item, a miss
a caption that names the concept. So are "filigrane" / "filigrana" (also filigree jewellery) and
"texte", "texto", "testo", "текст" in their languages.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.validate import check_choice, check_fields, from_table

POLICIES = ("drop", "strip", "flag")

#: Each concept's words. Every concept's caption word (what Geom-Erasing writes) is among them.
DEFAULT_WORDS: dict[str, tuple[str, ...]] = {
    "qrcode": (
        "qr code", "qr codes", "qrcode", "qrcodes", "qr", "quick response code", "q r code", "q r codes",
        # Chinese, Japanese, Korean ("QR-Code", "code QR", "código QR", "QR-код" are caught by "qr")
        "二维码", "二維碼", "qr コード", "二次元コード", "二次元バーコード", "qr 코드", "큐알 코드",
    ),
    "watermark": (
        "watermark", "watermarks", "watermarked", "watermarking", "logo", "logos", "copyright", "©",
        "水印",  # Chinese
        "ウォーターマーク", "透かし", "ロゴ",  # Japanese
        "워터마크", "로고",  # Korean
        "wasserzeichen",  # German
        "filigrane", "filigranes",  # French
        "marca de agua", "marcas de agua", "filigrana",  # Spanish, Italian
        "marca d'água", "marcas d'água", "marca d'agua", "marca de água", "marca dágua",  # Portuguese
        "водяной знак", "водяные знаки", "водяным знаком", "водяного знака", "водяных знаков", "водяными знаками",
        "водяном знаке", "водяному знаку", "логотип", "логотипа", "логотипом", "логотипы", "логотипов",  # Russian
    ),
    "text": (
        "text", "texts", "caption", "captions", "captioned", "subtitle", "subtitles", "subtitled",
        "word", "words", "lettering", "letters", "typography", "inscription", "meme", "memes",
        "calligraphy", "handwriting", "handwritten",
        "文字", "字幕",  # Chinese, Japanese
        "テキスト",  # Japanese
        "텍스트", "자막", "글자", "글씨",  # Korean
        "schriftzug", "schriftzüge", "aufschrift", "aufschriften", "beschriftung", "beschriftet", "untertitel",
        "untertiteln", "kalligrafie",  # German
        "texte", "textes", "sous-titre", "sous-titres", "sous-titré", "sous-titrée", "sous-titrés", "lettrage",
        "calligraphie",  # French
        "texto", "textos", "subtítulo", "subtítulos", "subtitulos", "subtitulado", "subtitulada", "caligrafía",  # Spanish
        "legendas", "legendado", "legendada", "caligrafia",  # Portuguese
        "testo", "scritta", "scritte", "sottotitolo", "sottotitoli", "sottotitolato", "sottotitolata", "calligrafia",  # Italian
        "текст", "текста", "тексту", "текстом", "тексте", "тексты", "текстов", "текстами", "текстах", "надпись", "надписи",
        "надписью", "надписей", "надписями", "надписях", "субтитры", "субтитрами", "субтитров", "каллиграфия",  # Russian
    ),
}

#: Letters (and combining marks) of the scripts written with spaces between words: a vocabulary
#: word inside a longer word of its script is not that word ("context", "контекст").
_LATIN = "a-z\u00df-\u00f6\u00f8-\u00ff\u0100-\u024f\u1e00-\u1eff\u0300-\u036f"
_CYRILLIC = "\u0400-\u0482\u048a-\u052f\u1c80-\u1c8f\ua640-\ua66e\ua680-\ua69f\u0300-\u036f\u0483-\u0489"
_GREEK = "\u0370-\u03ff\u1f00-\u1fff\u0300-\u036f"
_WORD_SCRIPTS = (_LATIN, _CYRILLIC, _GREEK)
#: Han, kana and Hangul: written without spaces, so a word there matches anywhere in a caption.
_CJK = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                  "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]")
#: Between the words of a phrase: spaces, underscores, dots, hyphens and dashes.
_SEPARATOR = r"[\s_.\-\u2010-\u2015\u2212]*"
#: Compounds a caption may write apart ("water mark", "water-marked"): the word and where it splits.
_COMPOUNDS = {"watermark": 5}
#: Words of the scripts without spaces whose characters also end or start other words: not
#: preceded by / not followed by these characters ("山水印象" is "landscape impression", "文字通り"
#: "literally", "文字盤" a watch's dial, "絵文字" emoji, "透かして" the verb "seeing through").
_NOT_AROUND: dict[str, tuple[str, str]] = {
    "水印": ("山墨", ""),
    "文字": ("絵", "通盤"),
    "透かし": ("見", "てたま彫"),
}
#: "©" is also written "(c)", before a year ("(c) 2020 John Doe"), not in "options (a) to (c)".
_COPYRIGHT = r"(?:©|\(c\)(?=\s*\d{4}))"
#: An article right before a stripped token goes with it.
_ARTICLE = re.compile(r"(?<!\w)(?:an?|the)\s+\Z", re.IGNORECASE)


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
        return {name: re.compile(_alternation(phrases), re.IGNORECASE) for name, phrases in self.words.items()}

    def check(self, caption: str) -> CaptionVerdict:
        text, where = _normalised(caption)
        names = tuple(sorted(name for name, pattern in self._patterns.items() if pattern.search(text)))
        if not names:
            return CaptionVerdict((), caption)
        if self.policy == "flag":
            return CaptionVerdict(names, caption)
        if self.policy == "drop":
            return CaptionVerdict(names, None, reason="caption_names_concept")
        found, stripped = set(names), caption
        # Words on either side of a stripped token may join into a phrase ("water text mark" ->
        # "water mark"): strip until the caption names nothing. Each pass takes out at least one
        # word, so this ends.
        while names:
            stripped = self._strip(stripped, text, where, names)
            if not any(c.isalpha() for c in stripped):
                return CaptionVerdict(tuple(sorted(found)), None, stripped=True, reason="caption_empty_after_screen")
            text, where = _normalised(stripped)
            names = tuple(sorted(name for name, pattern in self._patterns.items() if pattern.search(text)))
            found.update(names)
        return CaptionVerdict(tuple(sorted(found)), stripped, stripped=True)

    def _strip(self, caption: str, text: str, where: list[tuple[int, int]], names: tuple[str, ...]) -> str:
        """``caption`` with the tokens holding ``names``' words taken out (``text`` and ``where``:
        its :func:`_normalised` form)."""
        spans = sorted(_token(text, m.start(), m.end()) for name in names for m in self._patterns[name].finditer(text))
        kept, end = [], 0
        for start, stop in spans:
            start, stop = where[start][0], where[stop - 1][1]
            if start > end:
                kept.append(caption[end:start])
            end = max(end, stop)
            kept.append(" ")
        return _tidy("".join(kept) + caption[end:])


#: Characters of a caption normalised together at most: a letter and the marks that compose with it.
MAX_CLUSTER = 32


def _normalised(caption: str) -> tuple[str, list[tuple[int, int]]]:
    """The caption as matched (NFKC, case-folded, without format characters such as a soft hyphen or
    a zero-width space), and for each of its characters the span of the ones it came from.

    Characters that compose are normalised together: a decomposed caption (a Mac's NFD, Korean
    written as jamo, "ｺﾞ" in half-width kana) is matched as its composed form, "워터마크", "ロゴ"."""
    if caption.isascii():
        return caption.lower(), [(i, i + 1) for i in range(len(caption))]
    spans: list[tuple[int, int]] = []
    texts: list[str] = []
    for i, c in enumerate(caption):
        if unicodedata.category(c) == "Cf":
            continue
        if texts and len(texts[-1]) < MAX_CLUSTER and _nfkc(texts[-1] + c) != _nfkc(texts[-1]) + _nfkc(c):
            texts[-1] += c
            spans[-1] = (spans[-1][0], i + 1)
            continue
        spans.append((i, i + 1))
        texts.append(c)
    chars: list[str] = []
    where: list[tuple[int, int]] = []
    for span, text in zip(spans, texts):
        folded = _nfkc(text).casefold()
        chars.append(folded)
        where.extend([span] * len(folded))
    return "".join(chars), where


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _token(text: str, start: int, stop: int) -> tuple[int, int]:
    """The span of the whole token around a match (letters, digits, underscores, hyphens,
    apostrophes and inner dots joined to it) and an article right before it. A match that begins
    (ends) with a Chinese, Japanese or Korean character is not widened on that side: a sentence
    there is one run of characters."""
    if not _CJK.match(text[start]):
        while start > 0 and _joined(text, start - 1):
            start -= 1
    if not _CJK.match(text[stop - 1]):
        while stop < len(text) and _joined(text, stop):
            stop += 1
    article = _ARTICLE.search(text, max(0, start - 16), start)
    return (article.start() if article else start), stop


def _joined(text: str, i: int) -> bool:
    c = text[i]
    return c.isalnum() or unicodedata.category(c).startswith("M") or c in "_-'\u2019" or (c == "." and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum())


def _alternation(phrases: tuple[str, ...]) -> str:
    """One pattern for all ``phrases``, longest first, none inside a longer word of its script."""
    parts = []
    for phrase in sorted(set(phrases), key=lambda p: (-len(p), p)):
        words = unicodedata.normalize("NFKC", phrase.strip()).casefold()
        tokens = re.split(r"[\s_\-]+", words)
        body = _SEPARATOR.join(_spelling(token) for token in tokens)
        before = "".join(f"(?<![{letters}])" for letters in _WORD_SCRIPTS if re.match(f"[{letters}]", tokens[0]))
        after = "".join(f"(?![{letters}])" for letters in _WORD_SCRIPTS if re.search(f"[{letters}]$", tokens[-1]))
        not_before, not_after = _NOT_AROUND.get(words, ("", ""))
        before += f"(?<![{re.escape(not_before)}])" if not_before else ""
        after += f"(?![{re.escape(not_after)}])" if not_after else ""
        parts.append(before + body + after)
    return "(?:" + "|".join(parts) + ")"


def _spelling(token: str) -> str:
    """``token`` as a pattern: a compound of :data:`_COMPOUNDS` may be written apart, an apostrophe
    is either one, "©" is also "(c)" before a year."""
    if token == "©":
        return _COPYRIGHT
    for compound, split in _COMPOUNDS.items():
        if token.startswith(compound):
            return _apostrophes(re.escape(token[:split])) + _SEPARATOR + _apostrophes(re.escape(token[split:]))
    return _apostrophes(re.escape(token))


def _apostrophes(pattern: str) -> str:
    return re.sub("['\u2019]", "['\u2019]", pattern)


#: A pair of brackets or quotes with nothing but spaces or punctuation inside.
_EMPTY_PAIR = re.compile(r"""(?:\([\s,.;:]*\)|\[[\s,.;:]*\]|\{[\s,.;:]*\}|"[\s,.;:]*"|“[\s,.;:]*”|‘[\s,.;:]*’|«[\s,.;:]*»|(?<!\w)'[\s,.;:]*'(?!\w))""")


def _tidy(caption: str) -> str:
    """Spaces collapsed and none left before punctuation or at either end, once words were taken out."""
    caption = re.sub(r"\s+", " ", caption)
    previous = None
    while previous != caption:  # brackets or quotes left empty go too: "a dog (watermark)" -> "a dog"
        previous, caption = caption, _EMPTY_PAIR.sub(" ", caption)
    caption = re.sub(r"\s+", " ", caption)
    caption = re.sub(r" ([,.;:!?])", r"\1", caption)
    caption = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", caption)
    return caption.strip(" ,;:")

