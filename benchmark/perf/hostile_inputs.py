"""How much memory does a build take over hostile inputs, and is each one a counted skip?

Writes a folder source and a tar source, each holding every hostile input of issue 11 beside a few
good images: pixel bombs (13000 x 13000 PNGs of 680 KB, 8-bit RGBA and 16-bit grey), a 10 KB tar
with a sparse member declaring 2 GiB, a 2 MB ``.tar.gz`` whose member (and another's long-name
header) holds 2 GiB of zeros, a chain of 3000 header records, a KEY.json nested 100000 deep and
one of 2 MB, captions that are symlinks to ``/dev/zero`` and to a file outside, a FIFO caption, an
image symlink, sparse 2 GiB image and 1 GiB caption files, names that are not UTF-8, and images
that cost time or attack surface their size does not show (PostScript named .jpg, which Pillow
would hand to Ghostscript; a 60 MB PNG of five million empty chunks; a JPEG of 1000 scans). Each
source is built in a child process (under an address-space limit, so a regression fails instead of
swapping), and the child's peak RSS is its own VmHWM (wait4's counts the parent's at the fork). Target: every hostile input a counted
skip, the peak under 1 GiB.

Run: ``python -m benchmark.perf.hostile_inputs [--keep DIR]``.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.perf import probe_cli

MIB = 1 << 20
GIB = 1 << 30
#: What each bomb declares: more than the target, so reading one whole misses it.
DECLARED = 2 * GIB
BOMB_SIDE = 13000
TARGET_PEAK = GIB
#: The child's address-space limit: past it the build fails with MemoryError, not the machine.
CHILD_ADDRESS_SPACE = 3 * GIB + GIB // 2
#: A build that hangs (on a FIFO, say) is killed after this many seconds.
CHILD_TIMEOUT_S = 600


# --- hostile files ------------------------------------------------------------------------------


def png_bomb(side: int = BOMB_SIDE, sixteen_bit: bool = False) -> bytes:
    """A valid PNG of ``side`` x ``side`` zero pixels (RGBA 8-bit, or 16-bit grey): 680 KB on disk.

    Made in seconds: one block of rows is compressed once, after a full flush, and repeated.
    """
    colour_type, depth, channels = (0, 16, 1) if sixteen_bit else (6, 8, 4)
    row = 1 + side * channels * depth // 8
    rows = 64
    block = bytes(row * rows)
    times, rest = divmod(side, rows)
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(bytes(row * rest)) + compressor.flush()
    adler = 1
    for _ in range(times):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(bytes(row * rest), adler)
    stream = first + repeated * (times - 1) + tail[:-4] + adler.to_bytes(4, "big")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([depth, colour_type, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def declared_png(side: int) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` pixels and whose data holds 64 x 64."""
    small = png_bomb(side=64)
    header = side.to_bytes(4, "big") * 2 + small[24:29]
    return small[:8] + len(header).to_bytes(4, "big") + b"IHDR" + header + zlib.crc32(b"IHDR" + header).to_bytes(4, "big") + small[33:]


def chunk_flood_png(chunks: int = 5_000_000) -> bytes:
    """A 16 x 16 PNG behind ``chunks`` empty ancillary chunks (12 bytes each): Pillow parses each in
    Python, 27 s for five million."""
    empty = (0).to_bytes(4, "big") + b"zzZz" + zlib.crc32(b"zzZz").to_bytes(4, "big")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, "PNG")
    small = buffer.getvalue()
    return small[:33] + empty * chunks + small[33:]


def scan_bomb_jpeg(scans: int = 1000) -> bytes:
    """A progressive JPEG whose last scan is repeated: libjpeg passes over the image once per scan."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last = data[data.rfind(b"\xff\xda"):-2]
    return data[:-2] + last * scans + data[-2:]


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 96 72\n0 0 1 setrgbcolor 0 0 96 72 rectfill\nshowpage\n%%EOF\n"


def good_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def member(name: str, data: bytes) -> bytes:
    """One ustar member: header and padded data."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def good_members(prefix: str, count: int, seed: int) -> bytes:
    return b"".join(
        member(f"{prefix}{i}.jpg", good_jpeg(seed + i)) + member(f"{prefix}{i}.txt", b"a good photo") for i in range(count)
    )


def sparse_member(name: str, declared: int = DECLARED) -> bytes:
    """A GNU sparse member: 512 bytes stored, ``declared`` bytes when read (holes are zeros)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = 512, 0, tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0" % (declared - 512) + b"%011o\0" % 512
    header[483:495] = b"%011o\0" % declared
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"\xff" * 512


def header_chain(length: int = 3000) -> bytes:
    """``length`` GNU long-name records before one member: tarfile recurses once per record."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 16
    record = info.tobuf(tarfile.GNU_FORMAT) + b"chained/name.jpg" + bytes(496)
    return record * length + member("chained.jpg", b"")


def _gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes as concatenated gzip members (one 16 MiB member compressed once, repeated)."""
    chunk = 16 * MIB
    times, rest = divmod(size, chunk)
    return gzip.compress(bytes(chunk), 9, mtime=0) * times + gzip.compress(bytes(rest), 9, mtime=0)


def zeros_tar_gz(before: bytes, zero_header: bytes, after: bytes, size: int = DECLARED) -> bytes:
    """A .tar.gz: ``before``, a header whose ``size`` bytes of data are zeros, the zeros, ``after``."""
    return gzip.compress(before + zero_header, 9, mtime=0) + _gzip_of_zeros(size) + gzip.compress(after + bytes(1024), 9, mtime=0)


def big_member_header(name: str, size: int = DECLARED) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 0
    return info.tobuf(tarfile.GNU_FORMAT)


def long_name_header(size: int = DECLARED) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, size
    return info.tobuf(tarfile.GNU_FORMAT)


# --- the two sources ------------------------------------------------------------------------------


def make_tar_source(folder: Path) -> tuple[list[str], Counter[str], int]:
    """Tar shards holding every hostile tar input; returns (tar paths, expected skips, good samples)."""
    folder.mkdir(parents=True, exist_ok=True)
    deep = b"[" * 100_000 + b"]" * 100_000
    big = json.dumps({"padding": "x" * (2 * MIB)}).encode()
    plain = good_members("a", 2, 0) + b"".join(
        member(f"{key}.jpg", good_jpeg(9)) + member(f"{key}.txt", b"hostile") + member(f"{key}.json", data)
        for key, data in (("deep_json", deep), ("big_json", big))
    ) + b"".join(
        member(f"{key}.png", data) + member(f"{key}.txt", b"hostile")
        for key, data in (("bomb_rgba", png_bomb()), ("bomb_16bit", png_bomb(sixteen_bit=True)))
    ) + good_members("b", 1, 10)
    files = {
        "00000.tar": plain + bytes(1024),
        "00001.tar": good_members("c", 2, 20) + member("sparse.txt", b"hostile") + sparse_member("sparse.jpg") + bytes(1024),
        "00002.tar.gz": zeros_tar_gz(
            good_members("d", 2, 30), big_member_header("zeros.jpg"), member("zeros.txt", b"hostile") + good_members("e", 1, 40)
        ),
        "00003.tar.gz": zeros_tar_gz(good_members("f", 2, 50) + member("long.txt", b"hostile"), long_name_header(), member("long.jpg", b"")),
        "00004.tar": good_members("g", 2, 60) + member("chained.txt", b"hostile") + header_chain() + bytes(1024),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # A refused tar stops where it is refused: one skipped source item (each split's shard of that tar
    # meets it, and the build counts it once).
    expected = Counter(json_too_deep=1, json_too_large=1, too_large=2, member_too_large=1, sparse_member=1, tar_header_too_large=2)
    good = 12  # a0 a1 b0, c0 c1, d0 d1 e0, f0 f1, g0 g1
    return [str(folder / name) for name in files], expected, good


def make_folder_source(folder: Path) -> tuple[Counter[str], int]:
    """A folder holding every hostile folder input; returns (expected skips, good samples)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (folder / f"good{i}.jpg").write_bytes(good_jpeg(100 + i))
        (folder / f"good{i}.txt").write_text("a good photo", encoding="utf-8")
    secret = folder.parent / "secret.txt"
    secret.write_text("a file outside the source that must not reach the dataset", encoding="utf-8")
    hostile = {
        "bomb_rgba.png": png_bomb(),
        "bomb_16bit.png": png_bomb(sixteen_bit=True),
        "zero_caption.jpg": good_jpeg(1),
        "fifo_caption.jpg": good_jpeg(2),
        "leak_caption.jpg": good_jpeg(3),
        "big_caption.jpg": good_jpeg(4),
        "name_\udcff.jpg": good_jpeg(5),
        "postscript.jpg": POSTSCRIPT,
        "chunk_flood.png": chunk_flood_png(),
        "scan_bomb.jpg": scan_bomb_jpeg(),
    }
    for name, data in hostile.items():
        (folder / name).write_bytes(data)
        if name not in ("zero_caption.jpg", "fifo_caption.jpg", "leak_caption.jpg", "big_caption.jpg"):
            (folder / name).with_suffix(".txt").write_text("hostile", encoding="utf-8")
    (folder / "zero_caption.txt").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo_caption.txt")
    (folder / "leak_caption.txt").symlink_to(secret)
    with open(folder / "big_caption.txt", "wb") as f:
        f.truncate(GIB)
    (folder / "zero_image.jpg").symlink_to("/dev/zero")
    (folder / "zero_image.txt").write_text("hostile", encoding="utf-8")
    with open(folder / "sparse_image.jpg", "wb") as f:
        f.truncate(DECLARED)
    (folder / "sparse_image.txt").write_text("hostile", encoding="utf-8")
    expected = Counter(too_large=2, not_a_regular_file=4, caption_too_large=1, file_too_large=1, undecodable_name=1,
                       unsupported_format=1, too_many_chunks=2)
    return expected, 3


# --- building in a child process ------------------------------------------------------------------


@dataclass
class Result:
    source: str
    peak_bytes: int
    samples: int
    failures: dict[str, int]
    expected: Counter[str]
    good: int
    returncode: int
    stderr: str

    @property
    def every_hostile_input_skipped(self) -> bool:
        return self.returncode == 0 and Counter(self.failures) == self.expected and self.samples == self.good


def recipe(name: str, source: dict) -> dict:
    return {
        "name": name,
        "seed": 1,
        "image_size": 64,
        "shard_size": 100,
        "source": {**source, "test_fraction": 0.0},
        "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}],
    }


def build_in_child(raw_recipe: dict, out: Path) -> tuple[int, int, dict]:
    """Build in a child process; return (exit status, peak RSS in bytes, its build report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.recipe.json").write_text(json.dumps(raw_recipe), encoding="utf-8")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    cmd = [sys.executable, "-m", "benchmark.perf.hostile_inputs", "--child", str(out.parent / f"{out.name}.recipe.json"), str(out)]
    log = out.parent / f"{out.name}.stderr"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, preexec_fn=limit, cwd=Path(__file__).resolve().parents[2])
        timer = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
        timer.daemon = True  # a timer a stop left running must not hold the probe's exit for ten minutes
        try:
            timer.start()  # inside: a Ctrl-C while its thread starts still ends the child
            stdout = proc.stdout.read()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the build ends with the probe, whose exit no timer holds up
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode == 0:
        report = json.loads(stdout)
    else:
        killed = f"killed after {CHILD_TIMEOUT_S:g} s\n" if proc.returncode == -9 else ""
        report = {"samples": 0, "failures": {}, "stderr": killed + log.read_text(encoding="utf-8", errors="replace")[-2000:]}
    # The child's own high-water mark; wait4's counts the parent's memory at the fork.
    return proc.returncode, report.pop("peak_bytes", usage.ru_maxrss * 1024), report


def _child(recipe_file: str, out: str) -> None:
    from builders.build import build_dataset
    from builders.recipe import parse_recipe

    from benchmark.perf.child_process import peak_rss
    from implicit_concept.json_records import read_json_object

    report = build_dataset(parse_recipe(read_json_object(Path(recipe_file))), Path(out), workers=1, progress=False)
    print(json.dumps({"samples": report.samples, "failures": report.failures, "peak_bytes": peak_rss()}))


def make_sources(workdir: Path) -> dict:
    """Both sources under ``workdir``; returns what each build should report."""
    tars, tar_expected, tar_good = make_tar_source(workdir / "tars")
    folder_expected, folder_good = make_folder_source(workdir / "folder" / "images")
    return {
        "folder": ({"kind": "folder", "path": str(workdir / "folder" / "images")}, folder_expected, folder_good),
        "webdataset": ({"kind": "webdataset", "urls": tars}, tar_expected, tar_good),
    }


def run(workdir: Path) -> list[Result]:
    """Make the sources in one child process and build each in another.

    A child's peak RSS counts its parent's at fork time (Linux keeps the high-water mark across
    exec), so the parent that starts the builds never holds the hostile files itself.
    """
    made = subprocess.run(
        [sys.executable, "-m", "benchmark.perf.hostile_inputs", "--make", str(workdir)],
        stdout=subprocess.PIPE, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    plan = json.loads(made.stdout)
    results = []
    for name, (source, expected, good) in plan.items():
        status, peak, report = build_in_child(recipe(f"hostile-{name}", source), workdir / "out" / name)
        results.append(Result(name, peak, report["samples"], report["failures"], Counter(expected), good, status, report.get("stderr", "")))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = probe_cli.parser("benchmark.perf.hostile_inputs", __doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=probe_cli.output("folder", empty=True),
                        help="write the sources and builds here, a new or empty folder (default: a temporary folder)")
    parser.add_argument("--child", nargs=2, metavar=("RECIPE_JSON", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if args.make:
        print(json.dumps(make_sources(Path(args.make))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(args.keep or tmp))
    print(f"{'source':<11} {'peak RSS':>9}  {'good kept':>9}  skipped by reason (expected)")
    for r in results:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items())) or "-"
        expected = ", ".join(f"{k} {v}" for k, v in sorted(r.expected.items()))
        print(f"{r.source:<11} {r.peak_bytes / MIB:>5.0f} MiB  {r.samples:>4} of {r.good:<2}  {skipped} ({expected})")
        if r.returncode:
            print(f"  the build failed (exit {r.returncode}):\n{r.stderr}")
    peak = max(r.peak_bytes for r in results)
    skipped = all(r.every_hostile_input_skipped for r in results)
    print(f"every hostile input a counted skip: {'yes' if skipped else 'NO'}")
    print(f"peak under {TARGET_PEAK // MIB} MiB: {'yes' if peak < TARGET_PEAK else 'NO'} ({peak / MIB:.0f} MiB)")
    return 0 if skipped and peak < TARGET_PEAK else 1


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
