"""A caption as every external source reads it (a folder's ``KEY.txt``, a tar's ``KEY.txt`` member).

:func:`read_caption` decodes its bytes (UTF-8, or the UTF-16/UTF-32 a byte order mark names) and
cleans the text: control characters become spaces, the invisible format characters that hide or
reorder text (:data:`REMOVED_FORMAT`) are removed, the rest composed (NFC), and a caption left with
nothing visible, or an RTF document's markup, is refused.
"""
from __future__ import annotations

import codecs
import re
import unicodedata

#: A caption is copied into KEY.txt, KEY.json and the manifest: longer ones are refused.
MAX_CAPTION_BYTES = 64 << 10


#: Byte order marks and the encoding each one names, longest first (UTF-32LE's starts like UTF-16LE's).
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_caption(data: bytes) -> tuple[str | None, str | None, str]:
    """``(caption, None, "")`` or ``(None, reason, why)``.

    A caption is UTF-8, or the encoding its byte order mark names (UTF-8, UTF-16 or UTF-32, either
    byte order: Windows tools write UTF-16LE with a BOM); the BOM is not part of it. Anything else
    is ``caption_not_utf8``, and ``why`` says what was found (the first bad byte, a BOM whose text
    does not decode, UTF-16 without a BOM).

    A caption is stored in KEY.txt, KEY.json and the manifest, so it holds no control characters
    (C0, C1, line breaks and tabs, Unicode line and paragraph separators: each becomes a space) and
    none of the invisible format characters that hide or reorder text (:data:`REMOVED_FORMAT`:
    bidi controls, zero-width space, soft hyphen, BOM, word joiner...; each is removed, so a word
    stays whole). Format characters that are part of a spelling stay: ZWNJ and ZWJ (Persian, Indic
    scripts, emoji sequences), the Arabic number signs, emoji tag sequences (a flag of a region). It
    is composed (NFC): a caption typed or saved on a Mac decomposed is the same caption as any other.
    A caption left without a visible character is ``empty_caption``, and an RTF document (TextEdit's
    default, renamed ``.txt``) is ``caption_not_plain_text``: it is text, but its markup is not a
    caption. A document or image saved in a caption's place is named in ``why``.
    """
    if len(data) > MAX_CAPTION_BYTES:
        return None, "caption_too_large", f"{len(data)} bytes, over the cap of {MAX_CAPTION_BYTES}"
    encoding, bom = next(((name, len(mark)) for mark, name in _BOMS if data.startswith(mark)), ("utf-8", 0))
    try:
        text = data[bom:].decode(encoding)
    except UnicodeDecodeError as e:
        return None, "caption_not_utf8", _not_decoded(data, encoding, bom, e)
    text = unicodedata.normalize("NFC", _printable(text)).strip()
    if text.startswith("{\\rtf"):
        return None, "caption_not_plain_text", ("an RTF document (starts with '{\\rtf'), not plain text: its markup would be the "
                                                "caption; save it as plain text (TextEdit: Format > Make Plain Text)")
    if not any(unicodedata.category(c) not in _INVISIBLE for c in text):
        return None, "empty_caption", "no visible character"
    if encoding == "utf-8" and _nul_every_other_byte(data):  # ASCII in UTF-16 is valid UTF-8: "a   p h o t o"
        return None, "caption_not_utf8", f"not UTF-8 text: {_UTF16_HINT}"
    return text, None, ""


#: What does not make a caption visible on its own: spaces, control and format characters, marks.
_INVISIBLE = frozenset(("Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"))


def _not_decoded(data: bytes, encoding: str, bom: int, error: UnicodeDecodeError) -> str:
    """Why a caption's bytes are not text, in words a person can act on (``bom``: its length)."""
    offset = bom + error.start
    if encoding != "utf-8":
        name = encoding.upper().replace("-LE", "LE").replace("-BE", "BE")
        return f"starts with a {name} byte order mark but is not {name} text ({error.reason} at byte {offset})"
    found = f"not UTF-8: byte 0x{data[offset]:02x} at offset {offset} ({error.reason})"
    document = next((what for mark, what in _DOCUMENTS if data.startswith(mark)), None)
    if document is not None:
        return f"{found}; {document}, not a text file: save the caption as plain UTF-8 text"
    if _nul_every_other_byte(data):
        return f"{found}; {_UTF16_HINT}"
    return f"{found}; text in another encoding (Latin-1, Windows-1252, Shift-JIS, GBK, ...)? Save captions as UTF-8"


#: Files a caption is sometimes saved as instead of text, by their first bytes.
_DOCUMENTS = (
    (b"PK\x03\x04", "a zip archive (a Word .docx or OpenDocument .odt?)"), (b"%PDF-", "a PDF"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE document (a Word .doc?)"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
)

_UTF16_HINT = "a NUL every other byte: UTF-16 without a byte order mark? Save captions as UTF-8"


def _nul_every_other_byte(data: bytes) -> bool:
    """UTF-16 (or UTF-32) text without a BOM: NULs fill one byte in two of its Latin letters."""
    return max(data[0::2].count(0), data[1::2].count(0)) * 4 > len(data)


#: Categories that become a space: control characters (C0, C1: tab, newline, escapes) and line
#: and paragraph separators (U+2028, U+2029).
_SPACED = ("Cc", "Zl", "Zp")

#: The format (Cf) characters a caption loses: invisible ones that hide, split or reorder what a
#: reader sees, and mean nothing in a caption. Every other format character is part of a spelling
#: and stays: ZWNJ U+200C and ZWJ U+200D (Persian and Indic spellings, emoji sequences), the Arabic
#: number and end-of-ayah signs, the Mongolian vowel separator, Egyptian and shorthand format
#: controls, musical beams, and tag characters inside an emoji tag sequence (a region's flag).
REMOVED_FORMAT: dict[str, str] = {
    "\u00ad": "soft hyphen",
    "\u061c": "Arabic letter mark (bidi)",
    "\u200b": "zero-width space",
    "\u200e": "left-to-right mark (bidi)",
    "\u200f": "right-to-left mark (bidi)",
    **{chr(c): "bidi embedding, override or pop (U+202A-U+202E)" for c in range(0x202A, 0x202F)},
    "\u2060": "word joiner",
    **{chr(c): "invisible math operator (U+2061-U+2064)" for c in range(0x2061, 0x2065)},
    **{chr(c): "bidi isolate (U+2066-U+2069)" for c in range(0x2066, 0x206A)},
    **{chr(c): "deprecated format character (U+206A-U+206F)" for c in range(0x206A, 0x2070)},
    "\ufeff": "byte order mark / zero-width no-break space",
    **{chr(c): "interlinear annotation (U+FFF9-U+FFFB)" for c in range(0xFFF9, 0xFFFC)},
    "\U000e0001": "language tag (deprecated)",
}
#: Tag characters (U+E0020-U+E007F) hide ASCII text from a reader ("ASCII smuggling"); they stay
#: only as an emoji tag sequence: U+1F3F4 WAVING BLACK FLAG, tags, then U+E007F CANCEL TAG.
_TAGS = re.compile("[\U000e0020-\U000e007f]+")
_FLAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")


def _printable(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    # Every character str.splitlines() breaks at is Cc, Zl or Zp: none is left in a caption.
    text = "".join(" " if unicodedata.category(c) in _SPACED else c for c in text if c not in REMOVED_FORMAT)
    return _without_stray_tags(text) if _TAGS.search(text) else text


def _without_stray_tags(text: str) -> str:
    kept, end = [], 0
    for match in _FLAG_SEQUENCE.finditer(text):
        kept += [_TAGS.sub("", text[end:match.start()]), match.group()]
        end = match.end()
    return "".join(kept) + _TAGS.sub("", text[end:])
