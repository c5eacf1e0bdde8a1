"""Mutation round 23: behaviours hand mutants of modules no earlier round mutated (the WebDataset
source's names and brace counting, the detector's image sets, drawing a scene) showed unguarded.

Every render mutant changes the drawn bytes, which only the slow suite's committed icd-debug
checksums would notice, saying only that something changed. The tests here hold the drawing to its design (gradients,
pattern shades and periods, hollow rings, antialiased shapes with both edges) without pinning bytes."""
import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.sources import SourceNotFound, WebDatasetConfig, WebDatasetSource
from builders.sources import webdataset_source
from builders.sources.webdataset_source import MAX_PATTERN_RUNS, expand_tars
from implicit_concept.detector.image_sets import ImageSetError, image_set_digest, named_images, pixel_sha256, write_backgrounds
from implicit_concept.scene.grammar import Background, Scene, SceneObject
from implicit_concept.scene.render import render_scene
from tests.test_sources import jpeg, read_all, write_tar


def _sample_tar(path: Path, key: str = "a") -> Path:
    write_tar(path, [(f"{key}.jpg", jpeg()), (f"{key}.txt", b"a red square")])
    return path


# ---- the WebDataset source: names ----

def test_a_shard_extracted_from_a_bundle_tar_is_named_by_the_shard_not_the_bundle(tmp_path):
    """``tar -xOf all-shards.tar shards/00001.tar`` names two tars; the one read is the last, so each
    shard keeps its own name (naming the bundle gave every shard one name and refused the source)."""
    (tmp_path / "shards").mkdir()
    for i in range(2):
        _sample_tar(tmp_path / "shards" / f"{i:05d}.tar", key=f"k{i}")
    with tarfile.open(tmp_path / "all-shards.tar", "w") as bundle:
        bundle.add(tmp_path / "shards", arcname="shards")
    source = WebDatasetSource(WebDatasetConfig(
        urls=f"pipe:tar -xOf {tmp_path / 'all-shards.tar'} shards/{{00000..00001}}.tar", test_fraction=0.0))
    assert [i.source_id for i in read_all(source, "train") if i.error is None] == ["00000.tar/k0", "00001.tar/k1"]


def test_a_pipe_command_naming_no_tar_is_named_by_its_last_operand_not_an_option(tmp_path):
    for i in range(2):
        _sample_tar(tmp_path / f"part-{i:05d}", key=f"k{i}")
    source = WebDatasetSource(WebDatasetConfig(urls=f"pipe:cat {tmp_path}/part-{{00000..00001}} -u", test_fraction=0.0))
    assert [i.source_id for i in read_all(source, "train") if i.error is None] == ["part-00000/k0", "part-00001/k1"]


# ---- the WebDataset source: brace patterns ----

def test_an_escaped_brace_names_a_tar_with_a_brace_in_its_name(tmp_path):
    _sample_tar(tmp_path / "a{b.tar")
    config = WebDatasetConfig(urls=str(tmp_path) + r"/a\{b.tar", test_fraction=0.0)
    assert webdataset_source.tar_paths(config) == [str(tmp_path / "a{b.tar")]
    assert [i.source_id for i in read_all(WebDatasetSource(config), "train")] == ["a{b.tar/a"]


def test_patterns_may_name_exactly_the_shards_a_split_may_have(monkeypatch):
    monkeypatch.setattr(webdataset_source, "MAX_PLANNED_SHARDS", 4)
    assert len(expand_tars(["/d/{0..3}.tar"])) == 4
    assert len(expand_tars(["/d/{0..1}.tar", "/d/{a,b}.tar"])) == 4
    for patterns in (["/d/{0..4}.tar"], ["/d/{0..1}.tar", "/d/{a,b,c}.tar"]):
        with pytest.raises(ValueError, match=r"names more than 4 tars"):
            expand_tars(patterns)


@pytest.mark.parametrize("runs", [MAX_PATTERN_RUNS, MAX_PATTERN_RUNS + 1])
def test_a_missing_tar_is_answered_with_a_pattern_up_to_the_runs_it_spells_out(tmp_path, runs):
    for i in range(runs):
        (tmp_path / f"{2 * i:05d}.tar").write_bytes(b"")
    with pytest.raises(SourceNotFound) as missing:
        WebDatasetSource(WebDatasetConfig(urls=f"{tmp_path}/{{00000..00001}}.tar"))
    if runs == MAX_PATTERN_RUNS:
        spelled = ",".join(f"{2 * i:05d}" for i in range(runs))
        assert f"(the tars in that folder: '{tmp_path}/{{{spelled}}}.tar')" in str(missing.value)
    else:
        assert f"{runs} tars with {runs - 1} gaps: list them in a recipe's urls" in str(missing.value)


# ---- the detector's image sets ----

def _noise(seed: int, size=(6, 4), mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def test_an_image_sets_sha256_is_its_sorted_pixel_hashes_one_a_line():
    """The module's stated identity (caches of detectors key on it): the sha256 of the distinct pixel
    hashes, sorted, each ending in a newline."""
    images = [_noise(i) for i in range(3)]
    hashes = sorted(pixel_sha256(im) for im in images)
    digest = image_set_digest([(str(i), im) for i, im in enumerate(images)], "background")
    assert digest.sha256 == hashlib.sha256("".join(f"{h}\n" for h in hashes).encode("ascii")).hexdigest()
    assert digest.to_json() == {"images": 3, "sha256": digest.sha256}


def test_images_of_one_pixel_row_in_two_shapes_are_two_images():
    row = _noise(7, size=(4, 1))
    column = Image.frombytes("RGB", (1, 4), row.tobytes())
    assert pixel_sha256(row) != pixel_sha256(column)
    assert image_set_digest([("row", row), ("column", column)], "background").images == 2


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_an_images_pixel_hash_is_of_its_rgb_pixels_whatever_its_mode(mode):
    image = _noise(3).convert(mode)
    assert pixel_sha256(image) == pixel_sha256(image.convert("RGB"))


def test_a_transparent_image_given_in_memory_is_the_same_image_as_its_file(tmp_path):
    """Transparency is white in both (the toolkit's one rule), so a set given as pairs and the same
    images saved as files are one set."""
    image = _noise(5, mode="RGBA")
    (tmp_path / "set").mkdir()
    image.save(tmp_path / "set" / "a.png")
    from_file = image_set_digest(tmp_path / "set", "background")
    assert image_set_digest([("a", image)], "background") == from_file
    assert from_file != image_set_digest([("a", image.convert("RGB"))], "background"), "not the colour under the alpha"
    [(_, given)] = named_images([("a", image)], "background")
    assert given.mode == "RGB"


def test_a_folders_images_are_named_by_their_path_inside_it(tmp_path):
    """Calibration images are listed by name in the clean reference: two files of one name in two
    subfolders are two names."""
    for i, sub in enumerate(("", "sub")):
        (tmp_path / "set" / sub).mkdir(parents=True, exist_ok=True)
        _noise(i).save(tmp_path / "set" / sub / "0.png")
    assert [name for name, _ in named_images(tmp_path / "set", "calibration")] == ["0.png", "sub/0.png"]


def test_a_pair_of_more_than_two_parts_is_refused_naming_it():
    with pytest.raises(ImageSetError, match=r"background images: item 1 is tuple, want a \(name, PIL image\) pair"):
        image_set_digest([("a", _noise(1)), ("b", _noise(2), "extra")], "background")


def test_a_file_given_as_a_folder_of_images_is_refused_naming_it(tmp_path):
    _noise(1).save(tmp_path / "one.png")
    with pytest.raises(ImageSetError, match=rf"^{tmp_path / 'one.png'}: not a folder \(want a folder of calibration images\)$"):
        image_set_digest(tmp_path / "one.png", "calibration")


def test_backgrounds_are_never_written_over_backgrounds_already_there(tmp_path):
    first = write_backgrounds([("a", _noise(1))], tmp_path / "bg")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "bg").rglob("*"))
    with pytest.raises(FileExistsError):
        write_backgrounds([("b", _noise(2))], tmp_path / "bg")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "bg").rglob("*")) == before
    [png] = (tmp_path / "bg" / "images").iterdir()
    assert png.name == f"{next(iter(first.pixel_hashes))}.png"
    with Image.open(png) as saved:
        assert pixel_sha256(saved) == png.stem, "written losslessly: the file is the pixels its name hashes"
    (tmp_path / "mine" / "images").mkdir(parents=True)
    _noise(3).save(tmp_path / "mine" / "images" / "own.png")
    with pytest.raises(FileExistsError):
        write_backgrounds([("b", _noise(2))], tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").rglob("*")] == ["images", "own.png"], "a folder of one's own images is left as it was"


# ---- drawing a scene ----

GREY = (128, 128, 128)


def _drawn(background: Background, *objects: SceneObject, size: int = 64) -> np.ndarray:
    return np.asarray(render_scene(Scene(background, objects, "single"), size), dtype=np.int16)


def _object(shape: str, radius: float = 0.25) -> SceneObject:
    return SceneObject(shape, "red", (250, 10, 10), "large", "center", 0.5, 0.5, radius)


@pytest.mark.parametrize("orientation, flip", [("horizontal", False), ("vertical", False), ("horizontal", True), ("vertical", True)])
def test_a_gradient_runs_dark_to_light_along_its_orientation_reversed_when_flipped(orientation, flip):
    pixels = _drawn(Background("gradient", "grey", GREY, {"orientation": orientation, "flip": flip}))
    along = pixels if orientation == "horizontal" else pixels.transpose(1, 0, 2)
    assert (along == along[:1]).all(), "constant across the orientation"
    first, last = along[0, 0], along[0, -1]
    dark, light = (last, first) if flip else (first, last)
    assert (dark < GREY).all() and (light > GREY).all(), "darker than the colour at one end, lighter at the other"
    assert (dark > 0).all() and (light < 255).all(), "a shade of the colour, never black or white"


@pytest.mark.parametrize("rgb", [(30, 40, 50), (220, 210, 200)])
def test_stripes_cover_half_the_image_in_a_visible_second_shade_at_their_period(rgb):
    """Patterns lighten dark colours and darken light ones; stripes alternate every half period."""
    pixels = _drawn(Background("stripes", "c", rgb, {"orientation": "vertical", "period": 0.25, "flip": False}))
    row = pixels[0]
    plain = (row == rgb).all(axis=1)
    assert plain.sum() == 32, "half the columns keep the colour"
    second = row[~plain]
    assert ((second > rgb) if sum(rgb) < 384 else (second < rgb)).all()
    changes = int((plain[1:] != plain[:-1]).sum())
    assert changes == 7, "8 stripes of 8 columns: 2 per period of 16"


def test_a_ring_is_hollow_and_a_circle_is_not():
    flat = Background("flat", "grey", GREY)
    assert (_drawn(flat, _object("ring"))[32, 32] == GREY).all()
    assert (_drawn(flat, _object("circle"))[32, 32] == (250, 10, 10)).all()


@pytest.mark.parametrize("shape", ["circle", "ring", "diamond"])
def test_a_shape_is_drawn_antialiased_inside_its_box_and_as_wide_each_side_of_its_centre(shape):
    flat = Background("flat", "grey", GREY)
    pixels = _drawn(flat, _object(shape))
    covered = (pixels != GREY).any(axis=2)
    columns = np.flatnonzero(covered.any(axis=0))
    assert 15 <= columns[0] and columns[-1] <= 48, "inside x - radius to x + radius, 16 to 48 of 64 pixels"
    assert abs((columns[-1] - 32) - (32 - columns[0])) <= 1, "as wide right of its centre as left: neither edge cut"
    assert (pixels[16, 16] == GREY).all(), "the box's corner is not the shape's"
    partial = covered & ~(pixels == (250, 10, 10)).all(axis=2)
    assert partial.sum() > 0, "edge pixels blend the two colours"


@pytest.mark.parametrize("orientation", ["horizontal", "diagonal"])
def test_a_checkers_cells_are_squares_of_its_period_turned_when_diagonal(orientation):
    pixels = _drawn(Background("checker", "grey", GREY, {"orientation": orientation, "period": 0.25, "flip": False}))
    cell, next_cell = pixels[:16, :16], pixels[:16, 16:32]
    if orientation == "diagonal":
        assert len(np.unique(cell.reshape(-1, 3), axis=0)) > 1, "a turned cell crosses an upright one"
    else:
        assert (cell == cell[0, 0]).all() and (next_cell == next_cell[0, 0]).all() and (cell[0, 0] != next_cell[0, 0]).any()


def test_a_noise_background_varies_within_its_shades():
    pixels = _drawn(Background("noise", "grey", GREY, {"seed": 3}))
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    assert pixels.min() >= round(128 * 0.7) and pixels.max() <= round(128 + 0.3 * 127)
