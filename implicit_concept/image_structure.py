"""Structure Pillow walks in Python, bounded before it does; and a PNG whose image data ends early.

Structure costs time the file's size does not show: Pillow parses PNG chunks, JPEG marker segments
and GIF blocks in Python, a few microseconds each, so a 60 MB PNG of five million empty chunks took
27 s; each is counted, before Pillow sees the file, up to :data:`MAX_CHUNKS`. A TIFF's first tag
directory is read the same way: Pillow unpacks its strips' offsets and every numeric tag it reads
into Python objects (an 8 MB TIFF of a million one-row strips took 10 s and 390 MB to open), so more
than :data:`MAX_CHUNKS` strips or tiles, or than :data:`MAX_TIFF_VALUES` values in one tag, is
refused (``too_many_chunks``). PNG metadata Pillow would refuse the whole image for (a text chunk
inflating past its limit, a chunk failing its CRC) is dropped, not the image (:func:`screen_structure`).
Pillow leaves the rows a PNG's data lacks zero; :func:`check_png_rows` says it is truncated, as libpng does.
A JPEG scan cut short and closed with an end marker decodes with its rest grey, libjpeg's warning on
stderr alone: where the JPEG has restart markers, one too few of them says it is truncated.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin
from PIL.JpegImagePlugin import MARKER as _JPEG_MARKERS

from implicit_concept.sample_error import SampleError


#: Chunks (PNG), marker segments and stray bytes before the first scan (JPEG) or blocks before the
#: first image (GIF) read at most: Pillow takes 0.5-5 us over each, 0.3 s for this many. A 64 MiB PNG
#: written in libpng's 8 KiB chunks has 8192; a JPEG's header a few dozen.
MAX_CHUNKS = 65536
#: Progressive scans of a JPEG read at most: libjpeg passes over the whole image once per scan
#: (2 ms a scan at 4 MP); encoders write about 10.
MAX_JPEG_SCANS = 100
#: Values of one numeric tag of a TIFF's first image read at most (its strips and tiles: MAX_CHUNKS):
#: Pillow unpacks each into a Python object, 4 us and 170 bytes for a rational. A 16-bit image's
#: colour map or transfer function holds 3 x 65536.
MAX_TIFF_VALUES = 4 * MAX_CHUNKS
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")


def screen_structure(raw: BinaryIO, head: bytes) -> BinaryIO:
    """Refuse structure that costs far more time than its bytes suggest, and give Pillow a PNG
    without the metadata it would refuse the whole image for; ``raw`` itself when nothing changes."""
    if head.startswith(_PNG_SIGNATURE):
        return _screen_png(raw)
    if head.startswith(b"\xff\xd8\xff"):
        _screen_jpeg(raw)
    elif head.startswith((b"GIF87a", b"GIF89a")):
        _screen_gif(raw, head)
    elif head.startswith(_TIFF_PREFIXES):
        _screen_tiff(raw, head)
    return raw


def _read_at(f: BinaryIO, pos: int, size: int) -> bytes:
    f.seek(pos)
    return f.read(size)


def _too_many(what: str) -> SampleError:
    return SampleError("too_many_chunks", what)


def _png_chunks(f: BinaryIO):
    """(type, data offset, length) of each chunk Pillow reads for the first frame: up to IEND, the
    fcTL of a second APNG frame or the end of the bytes; at most :data:`MAX_CHUNKS`."""
    pos, count, seen_idat = len(_PNG_SIGNATURE), 0, False
    while True:
        header = _read_at(f, pos, 8)
        if len(header) < 8:
            return
        count += 1
        if count > MAX_CHUNKS:
            raise _too_many(f"a PNG of more than {MAX_CHUNKS} chunks before its first image ends")
        length, kind = struct.unpack(">I4s", header)
        yield kind, pos + 8, length
        if kind == b"IEND" or (kind == b"fcTL" and seen_idat):
            return
        seen_idat |= kind == b"IDAT"
        pos += 12 + length


def _screen_png(f: BinaryIO) -> BinaryIO:
    """Count the chunks, and drop metadata Pillow refuses the whole image for: text or an ICC
    profile inflating past ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MB; workflows that image generators
    embed reach it), text past ``MAX_TEXT_MEMORY`` in all, an unknown compression method, and an
    ancillary chunk before the image data that fails its CRC (libpng and browsers drop it and show
    the picture; Pillow refused the file as no PNG). A critical chunk failing its CRC is a damaged
    file, said so, image data included (libpng's rule; Pillow never checks it, and a download cut
    short into a file of zeros decoded as garbage rows). Pillow's limits stay as they are; this file's pixels are decoded without that
    metadata. Past ``MAX_TEXT_MEMORY`` inflated, every later text or profile chunk is dropped
    uninflated: 65536 chunks of 1 KB that inflate to 1 MB each would be 64 GB to inflate."""
    dropped, held, full, seen_idat = [], 0, False, False
    for kind, offset, length in _png_chunks(f):
        seen_idat |= kind == b"IDAT"
        if kind == b"IDAT" and _crc_fails(f, kind, offset, length):
            raise SampleError("unreadable_image", f"the PNG's IDAT chunk at byte {offset - 8} fails its CRC check: the file is damaged")
        data = None
        if not seen_idat:  # Pillow checks the CRC of every chunk it reads before the image data
            data = _read_at(f, offset, length + 4)
            if len(data) == length + 4 and zlib.crc32(data[:length], zlib.crc32(kind)) != int.from_bytes(data[length:], "big"):
                if not kind[0] & 0x20:  # a critical chunk (IHDR, PLTE): the picture depends on it
                    where = f"the PNG's {_chunk_name(kind)} chunk at byte {offset - 8}"
                    raise SampleError("unreadable_image", f"{where} fails its CRC check: the file is damaged")
                dropped.append((offset - 8, offset + length + 4))
                continue
        if kind not in _PNG_TEXT:
            continue
        size = None if full else _png_text_size(kind, data[:length] if data is not None else _read_at(f, offset, length))
        full = full or (size is not None and held + size > PngImagePlugin.MAX_TEXT_MEMORY)
        if size is None or full:
            dropped.append((offset - 8, offset + length + 4))
        else:
            held += size
    if not dropped:
        return f
    data = _read_at(f, 0, -1)
    kept, start = io.BytesIO(), 0
    for begin, end in dropped:
        kept.write(data[start:begin])
        start = end
    kept.write(data[start:])
    kept.seek(0)
    return kept


def _crc_fails(f: BinaryIO, kind: bytes, offset: int, length: int) -> bool:
    """Whether a whole chunk's CRC is wrong (one cut short is Pillow's to call truncated), read in
    1 MiB pieces."""
    crc, pos, end = zlib.crc32(kind), offset, offset + length
    while pos < end:
        piece = _read_at(f, pos, min(1 << 20, end - pos))
        if not piece:
            return False
        crc, pos = zlib.crc32(piece, crc), pos + len(piece)
    stored = _read_at(f, end, 4)
    return len(stored) == 4 and crc != int.from_bytes(stored, "big")


def _chunk_name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else repr(kind)


def _png_text_size(kind: bytes, data: bytes) -> int | None:
    """The bytes Pillow holds for a text or iCCP chunk (0 where it ignores it), or None where it
    raises instead (PngImagePlugin's chunk_tEXt, chunk_zTXt, chunk_iTXt and chunk_iCCP)."""
    keyword, nul, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return len(rest) if keyword else 0
    if kind == b"iCCP" and not (nul and rest):
        return None
    if kind in (b"zTXt", b"iCCP"):
        if rest and rest[0] != 0:
            return None
        size = _inflated_size(rest[1:])
        return 0 if size is not None and not keyword and kind == b"zTXt" else size
    if len(rest) < 2:  # iTXt: compressed flag, method, language, translated keyword, text
        return 0
    parts = rest[2:].split(b"\0", 2)
    if len(parts) < 3:
        return 0
    if rest[0] == 0:
        return len(parts[2])
    return _inflated_size(parts[2]) if rest[1] == 0 else 0


def _inflated_size(data: bytes) -> int | None:
    """Pillow's rule for compressed metadata: None past MAX_TEXT_CHUNK, 0 for a broken stream."""
    inflate = zlib.decompressobj()
    try:
        size = len(inflate.decompress(data, PngImagePlugin.MAX_TEXT_CHUNK))
    except zlib.error:
        return 0
    return None if inflate.unconsumed_tail else size


def _screen_jpeg(f: BinaryIO) -> None:
    """Walk the header as Pillow's JpegImageFile._open does (a step per marker segment and per stray
    byte) to the first scan, then count the scans libjpeg will pass over the image for."""
    pos, steps = 2, 0  # Pillow starts at the third byte, the 0xFF of the first marker
    frame = interval = b""
    while True:
        steps += 1
        if steps > MAX_CHUNKS:
            raise _too_many(f"a JPEG of more than {MAX_CHUNKS} marker segments and stray bytes before its first scan")
        pair = _read_at(f, pos, 2)
        if len(pair) < 2:
            return  # Pillow meets the end of the file, and says so
        if pair[0] != 0xFF or pair[1] == 0xFF:
            pos += 1  # a stray byte, or fill before a marker: Pillow moves on by one
            continue
        marker = 0xFF00 | pair[1]
        if marker == 0xFF00:
            pos += 2
        elif marker not in _JPEG_MARKERS:
            return  # "no marker found": Pillow refuses it
        elif _JPEG_MARKERS[marker][2] is None:
            pos += 2
        elif marker == 0xFFDA:
            break
        else:
            size = _read_at(f, pos + 2, 2)
            if len(size) < 2:
                return
            length = struct.unpack(">H", size)[0]
            if marker in (0xFFC0, 0xFFC1):  # a sequential frame: its size and components
                frame = _read_at(f, pos + 4, max(length - 2, 0))
            elif marker == 0xFFDD:
                interval = _read_at(f, pos + 4, 2)
            pos += 2 + length
    if _count_scans(f, pos, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise _too_many(f"a JPEG of more than {MAX_JPEG_SCANS} scans")
    _check_restart_intervals(f, pos, frame, interval)


def _check_restart_intervals(f: BinaryIO, sos: int, frame: bytes, interval: bytes) -> None:
    """A sequential JPEG with restart markers whose one scan holds every component (the common
    layout) has a marker between each two of its intervals: fewer, then its end marker, is a scan
    cut short with an end marker put after it (a download repaired), which libjpeg decodes with
    the rest grey, saying so on stderr alone; ``truncated_image``. Only a cut inside the last
    interval goes unseen. ``sos``: where the scan's marker is; ``frame``: SOF0/SOF1's fields."""
    header = _read_at(f, sos + 2, 3)
    if len(interval) < 2 or len(frame) < 6 or len(header) < 3:
        return
    every, (_, height, width, count) = struct.unpack(">H", interval)[0], struct.unpack(">BHHB", frame[:6])
    factors = frame[7:6 + 3 * count:3]
    if not (every and height and width and count) or header[2] != count or len(factors) < count or 0 in factors:
        return
    most_h, most_v = (1, 1) if count == 1 else (max(b >> 4 for b in factors), max(b & 15 for b in factors))
    if not (most_h and most_v):
        return
    units = -(-width // (8 * most_h)) * -(-height // (8 * most_v))
    intervals = -(-units // every)
    end, restarts = _scan_end(f, sos + 2 + struct.unpack(">H", header[:2])[0])
    if end is not None and restarts < intervals - 1 and _read_at(f, end + 1, 1) == b"\xd9":
        raise SampleError("truncated_image", f"a JPEG whose scan ends inside restart interval {restarts + 1} of {intervals}, "
                                             f"then its end marker: the data was cut short (libjpeg would draw the rest grey)")


def _scan_end(f: BinaryIO, pos: int) -> tuple[int | None, int]:
    """Where the first marker after entropy-coded data starting at ``pos`` is (None: the file ends
    first), and how many restart markers (0xFF 0xD0-0xD7) come before it, in one pass of blocks of
    1 MiB."""
    restarts, block_size = 0, 1 << 20
    while True:
        block = np.frombuffer(_read_at(f, pos, block_size + 1), np.uint8)
        ff = np.flatnonzero(block[:-1] == 0xFF)
        after = block[ff + 1]
        restart = (after >= 0xD0) & (after <= 0xD7)
        hits = np.flatnonzero((after != 0) & (after != 0xFF) & ~restart)
        if hits.size:
            return pos + int(ff[hits[0]]), restarts + int(np.count_nonzero(restart[:hits[0]]))
        restarts += int(np.count_nonzero(restart))
        if len(block) <= block_size:
            return None, restarts
        pos += block_size


def _count_scans(f: BinaryIO, pos: int, most: int) -> int:
    """The scans libjpeg reads, from the first (its marker at ``pos``) to the end of the image (EOI),
    walked as libjpeg walks them: a segment skipped by its length, a scan's entropy-coded data to
    the next marker. What follows EOI is never read (a Motion Photo's video, an MPO's other
    pictures: their bytes held 0xFFDA pairs enough to refuse a photo). Stops past ``most``."""
    found = steps = 0
    while found <= most:
        pos = _next_marker(f, pos)
        if pos is None:
            return found
        marker = _read_at(f, pos + 1, 1)[0]
        if marker == 0xD9:
            return found
        steps += 1
        if steps > MAX_CHUNKS:
            raise _too_many(f"a JPEG of more than {MAX_CHUNKS} marker segments after its first scan")
        if marker == 0xDA:
            found += 1
        size = b"" if marker in _NO_LENGTH else _read_at(f, pos + 2, 2)
        pos += 2 + (struct.unpack(">H", size)[0] if len(size) == 2 else 0)
    return found


#: Markers without a length: TEM, the restart markers, SOI and EOI.
_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xDA)))
#: What follows 0xFF inside entropy-coded data: a stuffed zero, fill, a restart marker.
_NOT_MARKERS = frozenset((0x00, 0xFF, *range(0xD0, 0xD8)))


def _next_marker(f: BinaryIO, pos: int) -> int | None:
    """Where the first marker at or after ``pos`` starts: 0xFF, then a byte other than 0x00 (a
    stuffed zero), 0xFF (fill) or a restart marker, which entropy-coded data holds; None at the
    end of the file. Most markers follow the last segment at once: two bytes are read first, then
    blocks from 4 KiB up to 1 MiB."""
    pair = _read_at(f, pos, 2)
    if len(pair) == 2 and pair[0] == 0xFF and pair[1] not in _NOT_MARKERS:
        return pos
    block_size = 1 << 12
    while True:
        block = np.frombuffer(_read_at(f, pos, block_size + 1), np.uint8)
        ff = np.flatnonzero(block[:-1] == 0xFF)
        after = block[ff + 1]
        hits = ff[(after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]
        if hits.size:
            return pos + int(hits[0])
        if len(block) <= block_size:
            return None
        pos += block_size
        block_size = min(block_size * 2, 1 << 20)


def _screen_gif(f: BinaryIO, head: bytes) -> None:
    """Walk the blocks before the first image as Pillow's GifImageFile._seek does: a step per stray
    byte, extension and data sub-block."""
    flags = head[10] if len(head) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    steps = 0
    while True:
        steps += 1
        if steps > MAX_CHUNKS:
            raise _too_many(f"a GIF of more than {MAX_CHUNKS} blocks before its first image")
        byte = _read_at(f, pos, 1)
        if byte in (b"", b";", b","):
            return
        if byte != b"!":
            pos += 1
            continue
        pos += 2  # "!" and the extension's label, then its sub-blocks up to an empty one
        while True:
            steps += 1
            if steps > MAX_CHUNKS:
                raise _too_many(f"a GIF of more than {MAX_CHUNKS} blocks before its first image")
            size = _read_at(f, pos, 1)
            if not size:
                return
            pos += 1 + size[0]
            if size[0] == 0:
                break


#: The headers Pillow opens as TIFF (TiffImagePlugin.PREFIXES: a classic TIFF either byte order,
#: the two swapped ones it takes too, a BigTIFF).
_TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
#: Tags whose values are the first image's strips or tiles: StripOffsets, StripByteCounts,
#: TileOffsets, TileByteCounts.
_TIFF_PIECES = (273, 279, 324, 325)
#: Tag types Pillow keeps as bytes or text, not one object per value: BYTE, ASCII, UNDEFINED.
_TIFF_BYTES = (1, 2, 7)


def _screen_tiff(f: BinaryIO, head: bytes) -> None:
    """Read the first image's tag directory as Pillow's ImageFileDirectory_v2.load does (BigTIFF
    when the third byte is 43, its own rule), and refuse more tags than :data:`MAX_CHUNKS`, more
    strips or tiles than that, or a numeric tag of more than :data:`MAX_TIFF_VALUES` values:
    Pillow unpacks each into a Python object (one tuple per strip) when it opens the file. What
    cannot be read is left to Pillow, which says so."""
    order = ">" if head.startswith(b"MM") else "<"
    big = head[2] == 43
    if len(head) < (16 if big else 8):
        return
    (where,) = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])
    counted = _read_at(f, where, 8 if big else 2)
    if len(counted) < (8 if big else 2):
        return
    (tags,) = struct.unpack(order + ("Q" if big else "H"), counted)
    if tags > MAX_CHUNKS:
        raise _too_many(f"a TIFF whose first image has more than {MAX_CHUNKS} tags ({tags})")
    size = 20 if big else 12
    entries = _read_at(f, where + len(counted), tags * size)
    entry = struct.Struct(order + ("HHQ" if big else "HHI"))
    for at in range(0, len(entries) - size + 1, size):
        tag, kind, count = entry.unpack_from(entries, at)
        if tag in _TIFF_PIECES and count > MAX_CHUNKS:
            raise _too_many(f"a TIFF whose first image has more than {MAX_CHUNKS} strips or tiles (tag {tag}: {count} values)")
        if kind not in _TIFF_BYTES and count > MAX_TIFF_VALUES:
            raise _too_many(f"a TIFF whose first image has a tag of more than {MAX_TIFF_VALUES} values (tag {tag}: {count} values)")


def check_png_rows(image: Image.Image, source: BinaryIO) -> None:
    """Refuse a PNG whose compressed data ends (cleanly) before the rows its header declares:
    Pillow leaves the missing rows zero, libpng says "Not enough image data". Rows fill from the
    top, so only an image whose last row is zero is inflated again (Pillow itself refuses an
    interlaced one short of data)."""
    width, height = image.size
    last = image.crop((0, height - 1, width, height)).tobytes()
    if image.info.get("interlace") or last.count(0) != len(last):
        return
    try:
        held, declared = _png_data_size(source)
    except (OSError, ValueError, struct.error, zlib.error):  # a stream closed by its caller, or data Pillow took
        return
    if held < declared:
        raise SampleError("truncated_image", f"PNG image data ends after {held} of the {declared} bytes its header declares")


def _png_data_size(f: BinaryIO) -> tuple[int, int]:
    """(bytes the first IDAT run inflates to, bytes its IHDR declares), inflating in 1 MiB pieces."""
    header, stream, declared, held = None, zlib.decompressobj(), 0, 0
    in_idat = False
    for kind, offset, length in _png_chunks(f):
        if kind == b"IHDR":
            header = _read_at(f, offset, 13)
            declared = _png_raw_size(*struct.unpack(">IIBBBBB", header))
        elif kind == b"IDAT":
            in_idat = True
            pending = _read_at(f, offset, length)
            while pending and not stream.eof and held < declared:
                held += len(stream.decompress(pending, 1 << 20))
                pending = stream.unconsumed_tail
        elif in_idat:
            break
    return (held, declared) if header is not None and stream.eof else (declared, declared)


def _png_raw_size(width: int, height: int, depth: int, colour: int, _c: int, _f: int, interlace: int) -> int:
    """Bytes of filtered rows a PNG header declares (Adam7: seven reduced images)."""
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)) if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + (w * bits + 7) // 8)
    return total
