"""Dataset recipes: plain TOML in ``manifests/``, validated once here into frozen dataclasses.

Every field error names the field, so a bad recipe fails before any shard is written. The recipe's
name and its subsets' names become folders (``data/<recipe>/<subset>/``), so they are plain names
that cannot reach outside ``--out``.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from builders.caption_screen import CaptionScreen
from builders.source_screen import SourceScreenConfig, detector_fingerprint
from builders.sources import make_source
from builders.sources.base import SourceNotFound
from builders.sources.webdataset_source import expand_tars, missing_tars_hint, public_location
from implicit_concept.concepts import CONCEPT_NAMES, make_renderer
from implicit_concept.shard_reader import is_stream
from implicit_concept.provenance import config_hash
from implicit_concept.validate import FOLDER_NAME, check_fields, read_toml
from manifests import RECIPES_DIR


class RecipeError(ValueError):
    """A recipe field is missing or wrong; the message names the file and the field."""


class MissingSource(RecipeError):
    """The recipe's own source is not on this machine (:class:`~builders.sources.base.SourceNotFound`)."""


#: A recipe name: a folder under ``data/``. A subset name: a folder beside the dataset's files
#: (``recipe.json``, ``manifest.parquet`` ...), so without a dot.
RECIPE_NAME = FOLDER_NAME
SUBSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: The largest image side a recipe asks for: a sample holds several full-size copies (image, clean
#: twin, mask, each layer drawn), 200 MB each at this size.
MAX_IMAGE_SIZE = 8192
#: The largest seed: every sample's KEY.json holds it in its ``seed``, declared int64 (``JSON_SHAPE``,
#: as Hugging Face datasets reads it); a larger one built shards that ``load_dataset`` failed on.
MAX_SEED = 2**63 - 1
#: The most concept events one image of a subset may draw (the shipped recipes draw 1 or 2).
MAX_INSTANCES = 32

#: A license as a dataset card names it (Hugging Face's identifiers: "apache-2.0", "cc-by-4.0", "other").
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


@dataclass(frozen=True)
class Subset:
    """One shard set: which concepts, on what share of images, how many events per image."""

    name: str
    concepts: tuple[str, ...]
    fraction: float
    instances: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    image_size: int
    source: dict[str, Any]
    subsets: tuple[Subset, ...]
    concepts: dict[str, dict[str, Any]] = field(default_factory=dict)
    min_side: int = 0
    shard_size: int = 1000
    jpeg_quality: int = 95
    write_clean: bool = True
    write_mask: bool = True
    system_fonts: bool = False
    #: An instance showing less than this share of its alpha in the final image (covered by a
    #: later, opaque one) is not labelled: below a third, a word is a few strokes and a QR code
    #: loses its finder patterns, so no detector should be asked to find it.
    min_visible: float = 0.3
    #: The dataset card's license: the procedural default is the project's own (Apache-2.0); a
    #: build from your images carries theirs ("other" until the recipe says).
    license: str = "other"
    caption_screen: CaptionScreen = field(default_factory=CaptionScreen)
    source_screen: SourceScreenConfig = field(default_factory=SourceScreenConfig)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as its records and sha256 hold it: what a lab elsewhere can hold too. Where this
        machine keeps the source (``source``, as read) and the screen's detector are not part of it:
        local tars are their names, a folder is its files, a detector its weights' sha256
        (:func:`portable_source`, :func:`portable_detector`); which files a build read is its source
        fingerprint's to say, in ``recipe.json``."""
        d = asdict(self)
        d["subsets"] = [asdict(s) for s in self.subsets]
        d["source"] = portable_source(self.source)
        if self.source_screen.detector is not None:
            d["source_screen"]["detector"] = portable_detector(self.source_screen.detector)
        return d

    @cached_property
    def sha256(self) -> str:
        """The recipe's hash: computed once (a build stamps it on every sample). The same source
        and detector give the same hash, and so the same bytes, wherever they lie."""
        return config_hash(self.to_dict())

    def subset(self, name: str) -> Subset:
        for s in self.subsets:
            if s.name == name:
                return s
        raise KeyError(f"recipe {self.name!r} has no subset {name!r}")


_TOP_LEVEL = {f for f in Recipe.__dataclass_fields__}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A path to a TOML file (a name ending in ``.toml``), or the name of a recipe shipped in ``manifests/``."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    known = sorted(q.stem for q in RECIPES_DIR.glob("*.toml"))
    raise RecipeError(f"{name_or_path}: no such recipe file, nor a shipped recipe (known: {', '.join(known)})")


def _read_recipe_file(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = resolve_recipe_path(name_or_path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    return path, read_toml(path, RecipeError, "recipe file")


def recipe_name(name_or_path: str | Path) -> str:
    """A recipe's ``name`` (its dataset's folder under a data root), read without checking its source:
    a recipe built from a lab's own shards (``--source``) names its folder wherever the shards are."""
    path, raw = _read_recipe_file(name_or_path)
    try:
        return _name(raw.get("name"), "name", RECIPE_NAME, "letters, digits, '_', '-' and '.'")
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None, check_components: bool = True) -> Recipe:
    """A recipe, every field checked; without ``check_components``, its source and renderers are not
    built (their files not looked for), as :func:`parse_recipe`."""
    path, raw = _read_recipe_file(name_or_path)
    raw.update(overrides or {})
    try:
        recipe = parse_recipe(raw, check_components)
    except RecipeError as e:
        overridden = [k for k in overrides or {} if str(e).startswith((f"{k}.", f"{k}:"))]
        if overridden:  # a field given in place of the recipe's (--source): the recipe file is not at fault
            raise RecipeError(f"{e} (the {overridden[0]} given, in place of {path.name}'s)") from None
        hint = "; to read your own shards or folder, pass it with --source" if isinstance(e, MissingSource) else ""
        raise RecipeError(f"{path}: {e}{hint}") from None
    # Checked (and any missing tar named as written) above; read by absolute path from here on (to_dict leaves it out).
    source = absolute_source(recipe.source)
    return recipe if source == recipe.source else replace(recipe, source=source)


def hashed_with_paths(recorded: Any, recorded_sha256: Any) -> bool:
    """Whether a build record's recipe was hashed, as before recipes left out where the source lies,
    with this machine's paths in it (its recipe_sha256 is the hash of the recipe as recorded, which
    holds a path): its shards carry that hash, not the one this version gives the same recipe."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("source"), dict):
        return False
    return recorded_sha256 == config_hash(recorded) and portable_source(recorded["source"]) != recorded["source"]


def portable_source(source: dict[str, Any]) -> dict[str, Any]:
    """``source`` without this machine's paths: a folder's ``path`` left out, a local tar pattern
    cut to what follows its folders (``/data/laion/{00000..00099}.tar`` is ``{00000..00099}.tar``,
    a tar's basename being part of its items' source ids); ``pipe:`` commands stay as written and
    URLs less their query (a presigned URL's token), since they name the same bytes everywhere.
    Two copies of one source, at any two paths, are one recipe."""
    return _with_locations(source, lambda path: None, _tar_names)


def _tar_names(pattern: str) -> str:
    return public_location(pattern) if is_stream(pattern) or "://" in pattern else _split_tar_pattern(pattern)[1]


def portable_detector(detector: str) -> str:
    """The screen's detector as a recipe's identity holds it: ``sha256:`` and its weights' sha256
    (the same weights screen alike wherever their folder lies, and other weights at the same path
    do not); a detector not readable here (a recorded recipe read back) stays as given."""
    if detector.startswith("sha256:"):
        return detector
    try:
        return f"sha256:{detector_fingerprint(detector)['sha256']}"
    except (OSError, ValueError):
        return detector


def absolute_source(source: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """``source`` with its local paths made absolute (a folder's, and each local tar pattern of
    ``urls``; ``pipe:`` commands and URLs stay as written), a relative one read from ``base`` (the
    current folder when None): the same files are one recipe however they were typed, and a resume
    from another working folder does not read other files of the same names there."""
    return _with_locations(source, lambda path: str(Path(base or ".", path).resolve()), lambda url: absolute_tar_pattern(url, base))


def absolute_tar_pattern(pattern: str, base: str | Path | None = None) -> str:
    """A local tar path or brace pattern made absolute (a relative one read from ``base``, else the
    current folder): the folders before the first brace are resolved (symlinks and ``..`` included,
    as a folder source's path is); the tar names themselves are kept, since a tar's basename is part
    of its items' source ids. Streams are returned as given."""
    if is_stream(pattern) or "://" in pattern:
        return pattern
    folder, name = _split_tar_pattern(pattern)
    resolved = str(Path(base or ".", folder).resolve())
    return f"{resolved.rstrip('/')}/{name}"


def relative_source(source: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """``source`` (its local paths absolute) with them written relative to ``base``: where a build
    in ``base`` read its source, as its ``recipe.json`` says it without this machine's folders
    (``../images``; a URL less its query, as :func:`portable_source` has it); :func:`absolute_source`
    with the same ``base`` reads it back, also once both were moved together."""
    return _with_locations(source, lambda path: os.path.relpath(path, base), lambda url: _relative_tar_pattern(url, base))


def _with_locations(source: dict[str, Any], folder: Callable[[str], str | None], tar: Callable[[str], str]) -> dict[str, Any]:
    """``source`` with where it lies rewritten, the one walk :func:`portable_source`,
    :func:`absolute_source` and :func:`relative_source` share: a folder's ``path`` by ``folder``
    (None: left out), each tar pattern or URL of ``urls`` by ``tar``; anything else (a procedural
    source, a field the recipe check will refuse) as given."""
    kind = source.get("kind")
    if kind == "folder" and isinstance(source.get("path"), str) and source["path"]:
        path = folder(source["path"])
        return {**source, "path": path} if path is not None else {k: v for k, v in source.items() if k != "path"}
    if kind == "webdataset":
        urls = source.get("urls")
        if isinstance(urls, str) and urls:
            return {**source, "urls": tar(urls)}
        if isinstance(urls, (list, tuple)) and all(isinstance(u, str) and u for u in urls):
            return {**source, "urls": [tar(u) for u in urls]}
    return source


def _relative_tar_pattern(pattern: str, base: str | Path) -> str:
    if is_stream(pattern) or "://" in pattern:
        return public_location(pattern)
    folder, name = _split_tar_pattern(pattern)
    return f"{os.path.relpath(folder, base)}/{name}"


def _split_tar_pattern(pattern: str) -> tuple[str, str]:
    """``(folder, names)``: a tar pattern's folders before its first brace, and the rest."""
    head, sep, rest = pattern.partition("{")
    folder, slash, name = head.rpartition("/")
    if not slash:  # no folder before the name (or the brace): the current folder
        return ".", head + sep + rest
    return folder or "/", name + sep + rest


def _lists_tars(path: Path) -> bool:
    """Whether ``path`` is a text file whose first line names a tar (a shard list, ``aws s3 ls`` saved)."""
    try:
        with open(path, "rb") as f:
            first = f.read(4096).split(b"\n", 1)[0].strip().split()
    except OSError:
        return False
    return bool(first) and first[-1].lower().endswith((b".tar", b".tar.gz", b".tgz"))


def source_from_spec(spec: str, test_fraction: float = 0.1) -> dict[str, Any]:
    """``--source``: a folder of images with caption sidecars, or tar shards (local paths ending in
    ``.tar``, ``.tar.gz`` or ``.tgz``, brace patterns, ``pipe:`` commands, http(s) URLs). A path that
    is neither is refused here, naming it, rather than later as a field of the recipe it replaces."""
    if Path(spec).is_dir():
        # One folder, one spelling: relative, with a trailing slash or through a symlink, the same
        # images give the same recipe (and a resume from another working folder finds its build).
        return {"kind": "folder", "path": str(Path(spec).resolve()), "test_fraction": test_fraction}
    if is_stream(spec):
        return {"kind": "webdataset", "urls": spec, "test_fraction": test_fraction}
    if ".tar" not in spec and not spec.endswith(".tgz") and "{" not in spec:
        what = "a file, but not a tar shard" if Path(spec).exists() else "no such folder"
        if Path(spec).is_file() and _lists_tars(Path(spec)):
            what = "a list of tars, not a tar shard: name them in a recipe's [source] urls (a list), or with one brace pattern"
        if spec.startswith("~") and not Path(spec).exists():
            what += f" (a '~' is not expanded here, only by a shell and outside quotes: {os.path.expanduser(spec)!r}?)"
        raise RecipeError(
            f"--source {spec}: {what} (a source is a folder of name.jpg + name.txt pairs, or tar shards: "
            "paths ending in .tar, .tar.gz or .tgz, a brace pattern, a pipe: command or an http(s) URL)"
        )
    try:
        tars = expand_tars([spec], "--source")
    except ValueError as e:
        raise RecipeError(str(e)) from None
    missing = [t for t in tars if not Path(t).is_file()]
    if missing:
        raise RecipeError(f"--source {spec}: {len(missing)} of {len(tars)} tar files do not exist, first {missing[0]!r}"
                          f"{missing_tars_hint(missing[0], '--source')}")
    # Read by absolute path, as a folder is (a pipe: command or URL stays as given); to_dict leaves the folders out.
    return {"kind": "webdataset", "urls": absolute_tar_pattern(spec), "test_fraction": test_fraction}


def with_screen_detector(recipe: Recipe, detector: str | Path) -> Recipe:
    """``recipe`` with its source screen using ``detector`` (``--screen-detector``)."""
    try:
        screen = replace(recipe.source_screen, detector=str(detector))
    except ValueError as e:
        raise RecipeError(str(e)) from None
    updated = replace(recipe, source_screen=screen)
    _check_components(updated)
    return updated


def parse_recipe(raw: dict[str, Any], check_components: bool = True) -> Recipe:
    """Validate ``raw`` into a Recipe; without ``check_components``, its fields only (the source and
    the renderers are not built: ``verify`` reads a dataset whose source is elsewhere)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe is a table of fields, got {type(raw).__name__}")
    check_fields(raw, _TOP_LEVEL, "", RecipeError)
    for required in ("name", "seed", "image_size", "source", "subsets"):
        if required not in raw:
            raise RecipeError(f"missing required field {required!r}")
    recipe = Recipe(
        name=_name(raw["name"], "name", RECIPE_NAME, "letters, digits, '_', '-' and '.'"),
        seed=_int(raw["seed"], "seed", lo=0, hi=MAX_SEED),
        image_size=_int(raw["image_size"], "image_size", lo=16, hi=MAX_IMAGE_SIZE),
        source=dict(_table(raw["source"], "source")),
        subsets=tuple(_subset(s, i) for i, s in enumerate(_list(raw["subsets"], "subsets"))),
        concepts={k: dict(_table(v, f"concepts.{k}")) for k, v in _table(raw.get("concepts", {}), "concepts").items()},
        min_side=_int(raw.get("min_side", 0), "min_side", lo=0),
        shard_size=_int(raw.get("shard_size", 1000), "shard_size", lo=1),
        jpeg_quality=_int(raw.get("jpeg_quality", 95), "jpeg_quality", lo=1, hi=100),
        write_clean=_bool(raw.get("write_clean", True), "write_clean"),
        write_mask=_bool(raw.get("write_mask", True), "write_mask"),
        system_fonts=_bool(raw.get("system_fonts", False), "system_fonts"),
        min_visible=_fraction(raw.get("min_visible", 0.3), "min_visible"),
        license=_license(raw.get("license", "other")),
        caption_screen=_screen(CaptionScreen.from_options, raw.get("caption_screen", {})),
        source_screen=_screen(SourceScreenConfig.from_options, raw.get("source_screen", {})),
    )
    if not recipe.subsets:
        raise RecipeError("subsets: at least one subset is needed")
    names = [s.name for s in recipe.subsets]
    if len({name.casefold() for name in names}) != len(names):
        # Names differing in case only are one folder on macOS and Windows: their shards would mix.
        raise RecipeError(f"subsets: names must be unique, also ignoring case (one folder on macOS and Windows), got {names}")
    for name in recipe.concepts:
        if name not in CONCEPT_NAMES:
            raise RecipeError(f"concepts.{name}: unknown concept (known: {', '.join(CONCEPT_NAMES)})")
    if check_components:
        _check_components(recipe)
    return recipe


def _check_components(recipe: Recipe) -> None:
    """Build every source and renderer once, so their own field checks run before any work, and
    find the screen's detector."""
    try:
        make_source(recipe.source, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed)
        if recipe.source_screen.detector is not None:
            detector_fingerprint(recipe.source_screen.detector)
        for concept in sorted({c for s in recipe.subsets for c in s.concepts}):
            for split in ("train", "test"):
                make_renderer(concept, recipe.concepts.get(concept, {}), split, system_fonts=recipe.system_fonts)
    except SourceNotFound as e:
        raise MissingSource(str(e)) from None
    except ValueError as e:
        raise RecipeError(str(e)) from None


def _screen(build: Any, options: Any) -> Any:
    try:
        return build(options)
    except ValueError as e:
        raise RecipeError(str(e)) from None


def _subset(raw: Any, i: int) -> Subset:
    where = f"subsets[{i}]"
    d = _table(raw, where)
    check_fields(d, Subset.__dataclass_fields__, where, RecipeError)
    name = _name(d.get("name"), f"{where}.name", SUBSET_NAME, "letters, digits, '_' and '-'")
    where = f"subsets.{name}"
    concepts = tuple(_list(d.get("concepts"), f"{where}.concepts"))
    if not concepts:
        raise RecipeError(f"{where}.concepts: at least one concept is needed")
    for c in concepts:
        if c not in CONCEPT_NAMES:
            raise RecipeError(f"{where}.concepts: unknown concept {c!r} (known: {', '.join(CONCEPT_NAMES)})")
    twice = sorted({c for c in concepts if concepts.count(c) > 1})
    if twice:
        # Each event draws one of the list with the same chance: a repeat would silently double its share.
        raise RecipeError(f"{where}.concepts: {twice} listed more than once; list each concept once")
    fraction = d.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise RecipeError(f"{where}.fraction must be a number in [0, 1], got {fraction!r}")
    inst = _list(d.get("instances", [1, 1]), f"{where}.instances")
    counts = len(inst) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INSTANCES for v in inst)
    if not counts or inst[0] > inst[1]:
        raise RecipeError(f"{where}.instances must be [min, max] with 1 <= min <= max <= {MAX_INSTANCES}, got {inst!r}")
    return Subset(name=name, concepts=concepts, fraction=float(fraction), instances=(inst[0], inst[1]))


def _name(v: Any, where: str, pattern: re.Pattern[str], allowed: str) -> str:
    """A name that becomes a folder: no path separators, no leading dot, no ``..``."""
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise RecipeError(
            f"{where} must be 1 to 64 of {allowed}, starting with a letter or digit (it names a folder), got {v!r}"
        )
    return v


def _license(v: Any) -> str:
    if not isinstance(v, str) or not LICENSE.fullmatch(v):
        raise RecipeError(f"license must be a license identifier such as 'apache-2.0', 'cc-by-4.0' or 'other', got {v!r}")
    return v


def _int(v: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecipeError(f"{where} must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RecipeError(f"{where} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _fraction(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise RecipeError(f"{where} must be a number in [0, 1], got {v!r}")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise RecipeError(f"{where} must be true or false, got {v!r}")
    return v


def _table(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise RecipeError(f"{where} must be a table, got {type(v).__name__}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        raise RecipeError(f"{where} must be a list, got {v!r}")
    return list(v)
