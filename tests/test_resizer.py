"""The resizer turns any common image encoding into the same square RGB, or names why not."""
from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from benchmark.perf import hostile_inputs as hostile
from builders.resizer import SampleError, prepare_image
from implicit_concept import image_decode
from tests.bounded_memory import memory_headroom
from tests.pillow_calls import pillow_calls

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise_jpeg(width: int = 160, height: int = 120) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def reason(raw: bytes | Image.Image, size: int = 32, min_side: int = 16) -> str:
    with pytest.raises(SampleError) as info:
        prepare_image(raw, size, min_side)
    return info.value.reason


def test_output_is_square_rgb_and_deterministic():
    raw = noise_jpeg()
    first = prepare_image(raw, 64, 32)
    assert first.mode == "RGB" and first.size == (64, 64)
    assert prepare_image(raw, 64, 32).tobytes() == first.tobytes()


def test_upscales_small_images_that_pass_min_side():
    image = Image.new("RGB", (40, 50), GREEN)
    out = prepare_image(encode(image, "PNG"), 64, 32)
    assert out.size == (64, 64)
    assert np.abs(mean_rgb(out) - GREEN).max() < 2


def test_centre_crop_keeps_the_middle():
    image = Image.new("RGB", (200, 100), GREEN)
    image.paste(RED, (0, 0, 50, 100))
    image.paste(BLUE, (150, 0, 200, 100))
    out = np.asarray(prepare_image(encode(image, "PNG"), 32, 16), dtype=np.int16)
    assert np.abs(out[:, 2:-2] - GREEN).max() <= 2


def test_already_prepared_image_is_unchanged():
    pixels = np.random.default_rng(1).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert prepare_image(image, 48, 16).tobytes() == image.tobytes()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), RED)
    image.paste(BLUE, (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    oriented = prepare_image(encode(image, "PNG", exif=exif), 32, 16)
    expected = prepare_image(image.transpose(Image.Transpose.ROTATE_270), 32, 16)
    assert oriented.tobytes() == expected.tobytes()


#: The transpose that stores an upright picture under each EXIF orientation (a viewer undoes it).
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def quadrants(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (230, 230, 230))
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("fmt", "size"), [("JPEG", (1200, 800)), ("PNG", (90, 60)), ("WEBP", (90, 60)), ("TIFF", (90, 60))],
                         ids=["jpeg_drafted", "png", "webp", "tiff"])
def test_every_exif_orientation_is_shown_upright_in_every_format_that_carries_one(orientation, fmt, size):
    """Each quadrant lands where a viewer shows it, a drafted JPEG's too (a box drawn on the
    image is then where the concept is in the picture a lab sees)."""
    upright = quadrants(*size)
    stored = upright if STORED_AS[orientation] is None else upright.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = np.asarray(prepare_image(encode(stored, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {})), 32, 16), np.int16)
    want = np.asarray(prepare_image(upright, 32, 16), np.int16)
    centres = [(8, 8), (8, 24), (24, 8), (24, 24)]
    assert max(np.abs(out[y, x] - want[y, x]).max() for y, x in centres) <= 8


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_orientation_out_of_range_is_ignored(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = quadrants(90, 60)
    out = np.asarray(prepare_image(encode(image, "PNG", exif=exif), 32, 16))
    assert np.array_equal(out, np.asarray(prepare_image(image, 32, 16)))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "unreadable_image"),
        (b"not an image at all", "unreadable_image"),
        (noise_jpeg()[:2000], "truncated_image"),
        (encode(Image.new("RGB", (100, 100), RED), "PNG")[:-200], "truncated_image"),
        (encode(Image.new("RGB", (12, 40), RED), "PNG"), "too_small"),
        (encode(Image.new("F", (40, 40), 0.5), "TIFF"), "unsupported_mode"),
    ],
    ids=["zero_bytes", "garbage", "truncated_jpeg", "truncated_png", "too_small", "float_tiff"],
)
def test_bad_inputs_name_their_reason(raw, expected):
    assert reason(raw) == expected


@pytest.mark.parametrize(("mode", "kind"), [("F", "32-bit floating-point pixels"), ("LAB", "CIE L*a*b* pixels")])
def test_a_mode_with_no_rgb_meaning_says_what_it_holds(mode, kind):
    """A scientist's float TIFF or a LAB export: the record says what the pixels are, not a bare mode name."""
    with pytest.raises(SampleError) as info:
        prepare_image(encode(Image.new(mode, (40, 40)), "TIFF"), 32, 16)
    assert info.value.reason == "unsupported_mode"
    assert info.value.detail == f"{mode} ({kind}): no 8-bit RGB meaning here; save the image as 8- or 16-bit RGB"


def test_sample_error_carries_reason():
    """What a build counts a skipped image under, and what it says about it."""
    with pytest.raises(SampleError) as info:
        prepare_image(encode(Image.new("RGB", (10, 12)), "PNG"), 32, 16)
    assert (info.value.reason, info.value.detail) == ("too_small", "10x12 < 16") and "10x12" in str(info.value)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))
    out = prepare_image(encode(cmyk, "JPEG", quality=95), 32, 16)
    r, g, b = mean_rgb(out)
    assert r > 200 and g < 60 and b < 60


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((*BLUE, 255), (0, 0, 40, 20))
    out = np.asarray(prepare_image(encode(rgba, "PNG"), 40, 16), dtype=np.int16)
    assert np.abs(out[:16] - BLUE).max() <= 2
    assert np.abs(out[24:] - 255).max() <= 2

    la = Image.new("LA", (40, 40), (0, 0))
    assert mean_rgb(prepare_image(encode(la, "PNG"), 32, 16)).min() > 253


def test_palette_with_transparency():
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.paste(0, (0, 20, 40, 40))
    out = np.asarray(prepare_image(encode(palette, "PNG", transparency=0), 40, 16), dtype=np.int16)
    assert np.abs(out[:16] - RED).max() <= 2
    assert np.abs(out[24:] - 255).max() <= 2


def test_sixteen_bit_grey_is_scaled_to_eight_bits():
    deep = np.zeros((40, 40), dtype=np.uint16)
    deep[:, 20:] = 65535
    deep[:20, :20] = 32896
    image = Image.open(io.BytesIO(encode(Image.fromarray(deep), "PNG")))
    assert image.mode.startswith("I")
    out = np.asarray(prepare_image(image, 40, 16), dtype=np.int16)
    assert np.abs(out[:, 24:] - 255).max() <= 1
    assert np.abs(out[:16, :16] - 128).max() <= 1
    assert np.abs(out[24:, :16]).max() <= 1


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int16, np.int8])
def test_integer_grey_of_any_width_is_scaled_like_sixteen_bit(dtype):
    """Pillow opens these as mode "I", whose array is Pillow's own read-only buffer."""
    info = np.iinfo(dtype)
    deep = np.zeros((40, 40), dtype=dtype)
    deep[:, 20:] = min(info.max, 1 << 20)  # over 65535 where the type holds it: clipped to white
    deep[:20, :20] = min(info.max, 32896)
    deep[20:, :20] = info.min  # negative: clipped to black
    raw = encode(Image.fromarray(deep), "TIFF")
    assert Image.open(io.BytesIO(raw)).mode == "I"
    out = np.asarray(prepare_image(raw, 40, 16), dtype=np.int16)
    assert np.abs(out[:, 24:] - round(min(info.max, 65535) / 257)).max() <= 1
    assert np.abs(out[:16, :16] - round(min(info.max, 32896) / 257)).max() <= 1
    assert np.abs(out[24:, :16]).max() <= 1


@pytest.mark.parametrize("error", [ValueError("output array is read-only"), IndexError("tuple index"), RecursionError()])
def test_an_unforeseen_decoder_error_is_a_sample_error(monkeypatch, error):
    """Whatever a decoder raises on one image is that image's skip, never the build's end."""
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr("builders.resizer.decode_rgb", broken)
    with pytest.raises(SampleError) as info:
        prepare_image(encode(Image.new("RGB", (40, 40), RED), "PNG"), 32, 16)
    assert info.value.reason == "decoder_failed" and type(error).__name__ in info.value.detail


def test_memory_error_is_not_an_images_fault(monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("builders.resizer.decode_rgb", exhausted)
    with pytest.raises(MemoryError):
        prepare_image(encode(Image.new("RGB", (40, 40), RED), "PNG"), 32, 16)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_become_rgb(mode):
    image = Image.new(mode, (40, 40), 0)
    image.paste(255, (0, 0, 20, 40))
    out = np.asarray(prepare_image(encode(image, "PNG"), 40, 16), dtype=np.int16)
    assert (out[:, :16] >= 253).all() and (out[:, 24:] <= 2).all()


# --- pixels cost memory that the file size does not show ----------------------------------------


def test_pixel_bombs_are_refused_from_the_header_before_decoding():
    """13000 x 13000 PNGs of 680 KB (RGBA) and 330 KB (16-bit grey): 2.7 GB and more if decoded."""
    for raw in (hostile.png_bomb(), hostile.png_bomb(sixteen_bit=True), hostile.declared_png(20000)):
        with memory_headroom(), pillow_calls() as calls:
            assert reason(raw) == "too_large"
        assert calls["load"] == 0, "pixels were decoded"


def test_the_pixel_cap_is_the_callers():
    raw = encode(Image.new("RGB", (100, 100), RED), "PNG")
    with pytest.raises(SampleError, match="100x100 pixels > the cap of 5000"):
        prepare_image(raw, 32, 16, max_pixels=5000)
    assert prepare_image(raw, 32, 16, max_pixels=10000).size == (32, 32)
    assert prepare_image(Image.new("RGB", (100, 100)), 32, 16, max_pixels=5000).size == (32, 32), "in memory: nothing to decode"


def test_a_jpeg_with_a_second_picture_is_drafted_like_any_jpeg():
    """Phones write a depth map or a second picture after the photo (an MPF segment): Pillow opens
    such a JPEG as MPO. It is the same photo, decoded from the same draft, under the same cap."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    photo = Image.fromarray(np.asarray(Image.fromarray(pixels).resize((800, 600), Image.Resampling.NEAREST)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the draft and the orientation together
    plain = encode(photo, "JPEG", quality=90, exif=exif.tobytes())
    mpo = encode(photo, "MPO", quality=90, exif=exif.tobytes(), save_all=True, append_images=[Image.new("RGB", (80, 60))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    cap = 100_000  # the 800 x 600 photo decodes at 100 x 75 for a 64 px square
    assert np.array_equal(np.asarray(prepare_image(mpo, 64, 0, max_pixels=cap)), np.asarray(prepare_image(plain, 64, 0, max_pixels=cap)))


def test_pillows_bomb_warning_is_a_refusal_not_a_full_decode(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert reason(encode(Image.new("RGB", (40, 40), RED), "PNG")) == "too_large"


def test_a_baseline_jpeg_past_pillows_warning_is_capped_after_its_draft(monkeypatch):
    """A 108 MP phone photo (12000 x 9000) passes Pillow's bomb warning (89 MP): a baseline JPEG
    decodes from its draft, under the caller's cap. A progressive one is still refused: libjpeg
    holds all its coefficients whatever the draft (here Pillow's limit is 1000 pixels, the photos 1600)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(image_decode, "PILLOW_MAX_PIXELS", 1000)
    photo = Image.new("RGB", (40, 40), RED)
    assert mean_rgb(prepare_image(encode(photo, "JPEG"), 32, 16)) == pytest.approx(RED, abs=2)
    with pytest.raises(SampleError, match="40x40 pixels > the cap of 1000"):  # the draft of a 32 px square is the whole image
        prepare_image(encode(photo, "JPEG"), 32, 16, max_pixels=1000)
    with pytest.raises(SampleError, match="a progressive JPEG of 40x40 pixels > 1000"):
        prepare_image(encode(photo, "JPEG", progressive=True), 32, 16)


def test_sixteen_bit_images_are_scaled_without_float64_copies():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    raw = encode(Image.fromarray(values), "PNG")
    out = np.asarray(prepare_image(raw, 256, 16))[:, :, 0]
    assert (out == np.round(values / 257.0).astype(np.uint8)).all()
    big = encode(Image.fromarray(np.random.default_rng(0).integers(0, 65536, (1000, 1000), dtype=np.uint16)), "PNG")
    tracemalloc.start()
    prepare_image(big, 64, 16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 1000 * 1000, f"{peak / 1e6:.1f} bytes a pixel"
