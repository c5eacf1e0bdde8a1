"""Scoring what another lab already has: an erased diffusers pipeline, or a folder of images.

Both are judged exactly as a benchmark method is: the track fixes the prompts, seeds, sampler (a
pipeline folder is sampled with the track's scheduler, whatever it was saved with), detector
threshold and quality measures, and :func:`benchmark.evaluation.scorecard.score_generated`
computes the same fields a ``results.json`` row holds, so the numbers share a leaderboard.

The seed rule (ESD/I2P's ``evaluation_seed`` convention, extended to several images per prompt):
image ``i`` of prompt ``p`` is sampled with ``torch.Generator("cpu").manual_seed(p.evaluation_seed
* 1000 + i)`` and saved as ``{p.case_number}_{i}.png``.
"""
from __future__ import annotations

import codecs
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from benchmark.evaluation.scorecard import score_generated
from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images, image_name, image_prompts
from benchmark.method_evaluation import quality_reference
from benchmark.models.pipeline_identity import model_record, pipeline_source, sampler_settings
from benchmark.models.pipelines import NEGATIVE_PROMPT_FILE, load_pipeline, same_sampler, track_sampler
from benchmark.prompts import Prompt, prompts_sha256, read_prompts, resolve_prompts, shard_prompts
from benchmark.published_models import is_published
from benchmark.track import Track
from builders.recipe import recipe_name
from implicit_concept.bounded_reads import read_regular_file
from implicit_concept.content_hashes import folder_sha256, sha256_file
from implicit_concept.detector.inference import Detector
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_write_json, atomic_write_text, foreign_output, within
from implicit_concept.geom_erasing.location_tokens import tokens_not_held
from implicit_concept.geom_erasing.training_target import negative_prompt_for
from implicit_concept.image_decode import open_image
from implicit_concept.image_stream import IMAGE_SUFFIXES, ImageReadError, require_readable
from implicit_concept.json_records import read_json_object
from implicit_concept.provenance import environment
from implicit_concept.scoring import ScoreConfig
from implicit_concept.shard_reader import is_hidden

SEED_RULE = "image i of prompt p: torch.Generator('cpu').manual_seed(p.evaluation_seed * 1000 + i), saved as {case_number}_{i}.png"


@dataclass(frozen=True)
class Judging:
    """What a track fixes for every scored image set, and where the clean reference images are."""

    track: Track
    detector: Detector
    #: The clean test split FID compares with (a shard set); None: no quality scores.
    reference: Path | None
    cache: Path
    num_prompts: int | None = None
    #: The track's training subset the scored model stands for (:meth:`Track.groups`): its concepts are
    #: scored; None: the track's first (the only one of a mixed track), every concept of the track.
    subset: str | None = None
    #: That subset's test split, whose captions are the prompts of a track with ``prompts = "test-split"``.
    test_split: Path | None = None

    def __post_init__(self) -> None:
        subsets = [name for name, _ in self.track.groups()]
        if self.subset is not None and self.subset not in subsets:
            raise ValueError(f"--subset {self.subset}: not one of track {self.track.name}'s subsets {subsets}")
        if self.subset is None and self.track.prompts == "test-split" and len(subsets) > 1:
            raise ValueError(f"track {self.track.name} prompts each subset's model with its own test split's captions: "
                             f"name the subset the scored model stands for with --subset (one of {subsets})")

    @property
    def concepts(self) -> tuple[str, ...]:
        """The concepts scored: the subset's, or every concept of the track."""
        return dict(self.track.groups())[self.subset] if self.subset is not None else tuple(self.track.concepts)

    def prompts(self) -> list[Prompt]:
        """The first ``num_prompts`` of the track's (all of them: None); never silently fewer."""
        if self.num_prompts is not None and (isinstance(self.num_prompts, bool) or not isinstance(self.num_prompts, int)
                                             or not 1 <= self.num_prompts <= self.track.num_prompts):
            raise ValueError(f"num_prompts: expected an integer in [1, {self.track.num_prompts}] (track {self.track.name} scores "
                             f"{self.track.num_prompts} prompts), got {self.num_prompts!r}")
        count = self.num_prompts or self.track.num_prompts
        if self.track.prompts == "test-split":
            if self.test_split is None or not Path(self.test_split).is_dir():
                raise FileNotFoundError(f"{self.test_split}: no test split to take track {self.track.name}'s prompts from (its "
                                        "prompts are a subset's test captions): build the track's dataset under --data")
            prompts = shard_prompts(self.test_split, count)
        else:
            prompts = read_prompts(self.track.prompts, limit=count)
        if self.num_prompts is not None and len(prompts) < count:
            source = self.test_split if self.track.prompts == "test-split" else resolve_prompts(self.track.prompts)
            raise ValueError(f"{source}: holds {len(prompts)} prompts, fewer than the {count} asked")
        return prompts

    def settings(self, **overrides: Any) -> GenerationSettings:
        return replace(self.track.generation_settings(), **{k: v for k, v in overrides.items() if v is not None})


#: Where score-images lists every unreadable image when there are too many for one line.
UNREADABLE_FILE = "unreadable.txt"
#: What scoring writes into its ``--out`` folder.
OUT_FILES = ("scores.json", "summary.json", UNREADABLE_FILE)


def test_split(track: Track, data_root: Path, subset: str | None = None) -> Path:
    """Where the test split of ``subset`` (None: the track's first) is when the track's dataset is
    built under ``data_root``: the clean images the benchmark compares with, and on a track with
    ``prompts = "test-split"`` its captions are the prompts."""
    return Path(data_root) / recipe_name(track.recipe) / (subset or track.groups()[0][0]) / "test"


#: The largest ``negative_prompt.txt`` read: a prompt is at most a few hundred tokens.
MAX_NEGATIVE_PROMPT_BYTES = 1 << 20


def pipeline_negative_prompt(pipeline_dir: Path) -> str:
    """The negative prompt a saved pipeline records (``negative_prompt.txt``, or Geom-Erasing's
    metadata). A folder, FIFO or device in the text file's place, or one far larger than a prompt,
    is refused, naming it: it was passed over for the metadata, and the lab's prompt went unsampled."""
    recorded = Path(pipeline_dir) / NEGATIVE_PROMPT_FILE
    try:
        data = read_regular_file(recorded, MAX_NEGATIVE_PROMPT_BYTES)
    except FileNotFoundError:
        return negative_prompt_for(pipeline_dir)  # a damaged record named by the one rule for JSON records
    except IsADirectoryError:
        raise ValueError(f"{recorded}: a folder, where the pipeline's negative prompt (text) was expected") from None
    # A byte-order mark says the encoding and is not part of the prompt (it would be sampled as a
    # token): Notepad's UTF-8 one, or UTF-16's, which Windows PowerShell's `echo ... > FILE` writes.
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n").strip()  # as read_text reads it
    except UnicodeDecodeError as e:
        raise ValueError(f"{recorded}: not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text ({e})") from None


def _check_out_apart(out: Path, pipeline_dir: Path) -> None:
    """Refuse an ``--out`` that is or lies inside the pipeline folder scored: its images and scores
    would be written into the lab's folder (a benchmark fine-tune's, sealed when made, would then be
    refused by every method that asks for it). One holding it (``runs/mine`` for
    ``runs/mine/pipeline``) writes beside it and is fine."""
    if within(out, pipeline_dir):
        raise ValueError(f"--out {out}: is or lies inside the pipeline folder {pipeline_dir}, which scoring would write into; "
                         "choose a folder outside it")


def score_pipeline(
    pipeline_dir: Path,
    out: Path,
    judging: Judging,
    negative_prompt: str | None = None,
    progress: bool = True,
    own_scheduler: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Generate from the track's prompts with ``pipeline_dir`` (resumable), then score. ``negative_prompt``
    None: the one the pipeline records; ``settings`` override the track's sampler settings.

    The folder is sampled with the track's sampler (:meth:`Track.sampler`: its class and settings,
    the folder's noise schedule and prediction type), whatever scheduler it was saved with, so a
    folder re-saved with Euler or DPM-Solver is judged as the benchmark's own methods are.
    ``own_scheduler``: sample with the folder's own instead, listed in ``overrides`` when it differs."""
    _check_out_apart(Path(out), Path(pipeline_dir))
    sampler = judging.track.sampler()
    try:
        pipe = load_pipeline(pipeline_dir, sampler=None if own_scheduler else sampler)
    except OSError as e:  # what diffusers or transformers could not read in a part, said as they say it
        raise ValueError(f"{pipeline_dir}: cannot load the pipeline ({e})") from None
    pipe.set_progress_bar_config(disable=True)
    negative = pipeline_negative_prompt(pipeline_dir) if negative_prompt is None else negative_prompt
    unknown = tokens_not_held(pipe.tokenizer, negative)
    if unknown:
        raise ValueError(f"{Path(pipeline_dir) / 'tokenizer'}: the negative prompt names {len(unknown)} tokens it does not hold "
                         f"(e.g. {', '.join(unknown[:3])}), which it would read as plain text; save the tokenizer "
                         "(and text encoder) the pipeline was trained with")
    generation = judging.settings(**settings)
    prompts = judging.prompts()
    source = {**pipeline_source(pipe), "negative_prompt": negative}
    with _held(Path(out)):
        paths = generate_images(diffusers_generate_fn(pipe, generation), prompts, Path(out) / "images", negative, generation, progress,
                                source=source)
        scheduler = _scheduler_record(Path(pipeline_dir), pipe.scheduler)
        inputs = {"pipeline": str(pipeline_dir), "model": model_record(pipe, source), "scheduler": scheduler,
                  "negative_prompt": negative, "generation": generation.__dict__}
        off = {"scheduler": scheduler["class"]} if own_scheduler and _off_track_sampler(Path(pipeline_dir), pipe.scheduler, sampler) else {}
        return _score(paths, prompts, generation, Path(out), judging, inputs, off)


@contextmanager
def _held(out: Path) -> Iterator[None]:
    """``out`` for this process alone while it draws and scores: a second scoring into it (another
    pipeline's, a rerun started twice) would remove the first one's images as stale and draw its own
    among them, and the first would score a mixture under its own pipeline's name. A lab's own
    files of :data:`OUT_FILES`' names there are refused, not replaced (:func:`foreign_output`)."""
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder; name a folder for {', '.join(OUT_FILES)}")
    theirs = foreign_output(out, OUT_FILES)
    if theirs:
        raise ValueError(f"--out {out}: holds {theirs}, which scoring would replace or remove; move it away or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, wait=False, refusal="wait for it to finish or choose another --out", inside=True):
        yield


def _scheduler_record(pipeline_dir: Path, scheduler: Any) -> dict[str, Any]:
    """What sampled (class and settings) and what the folder was saved with."""
    saved = pipeline_dir / "scheduler" / "scheduler_config.json"
    folder_class = read_json_object(saved).get("_class_name") if saved.is_file() else None
    settings = json.loads(json.dumps(sampler_settings(scheduler.config), default=repr))  # a tuple or array as JSON holds it
    return {"class": type(scheduler).__name__, "settings": settings, "folder_class": folder_class}


def _off_track_sampler(pipeline_dir: Path, scheduler: Any, sampler: Any) -> bool:
    """Whether the folder's own scheduler is not the track's sampler for this model."""
    try:
        track = track_sampler(sampler, read_json_object(pipeline_dir / "scheduler" / "scheduler_config.json"), str(pipeline_dir))
    except ValueError:
        return True  # the track's sampler cannot even sample it
    return not same_sampler(track, scheduler)


def score_image_folder(
    folder: Path, out: Path, judging: Judging, images_per_prompt: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """Score images named ``{case_number}_{i}`` after the track's prompts, in any format the scorer
    reads (``.png`` as the benchmark writes them, ``.jpg``, ``.webp``, ...); every one must exist, in
    one format only, decode and be ``image_size`` pixels square, as a method's images must be.

    ``images_per_prompt`` and ``image_size`` None: the track's ``[generation]`` values; others are
    recorded in ``summary.json``'s ``overrides``.
    """
    if os.path.realpath(out) == os.path.realpath(folder):
        # Scoring writes scores.json, summary.json and a lock file there, replacing the lab's own of those names.
        raise ValueError(f"--out {out}: is the images folder {folder}, which scoring would write its files into "
                         f"(replacing any {', '.join(OUT_FILES)} there); choose another folder")
    generation = judging.settings(images_per_prompt=images_per_prompt, image_size=image_size)
    prompts = judging.prompts()
    stems = [Path(image_name(p, i)).stem for p in prompts for i in range(generation.images_per_prompt)]
    found = _images_by_stem(Path(folder))
    missing = [stem for stem in stems if stem not in found]
    unfit = _not_files(Path(folder), stems)
    if unfit:
        raise FileNotFoundError(f"{folder}: {len(unfit)} entries named as images are not image files: {'; '.join(unfit[:3])}"
                                f"{'; ...' if len(unfit) > 3 else ''}")
    if missing:
        raise FileNotFoundError(
            f"{folder}: {len(missing)} of {len(stems)} images named by {judging.track.prompts} are missing, first "
            f"{missing[0]} ({'/'.join(IMAGE_SUFFIXES)}); images are named {{case_number}}_{{i}} (the prompts' case_number, "
            f"i from 0 to images_per_prompt - 1) directly in the folder: {_found_instead(Path(folder), found, missing)}"
        )
    twice = next((found[stem] for stem in stems if len(found[stem]) > 1), None)
    if twice:
        raise ValueError(f"{folder}: {twice[0].stem} is there as {' and '.join(p.name for p in twice)}; keep one")
    paths = [found[stem][0] for stem in stems]
    side = generation.image_size
    try:
        sizes = require_readable(paths)
    except ImageReadError as e:
        listed = len(e.problems) > 5  # every one named, where a long list belongs
        if listed or Path(out).is_dir():
            with _held(Path(out)):  # written (or an earlier attempt's list removed) only while --out is this command's
                _list_unreadable(Path(out), e.problems if listed else [])
        if not listed:
            raise
        raise ImageReadError(f"{e} (all {len(e.problems)} named in {Path(out) / UNREADABLE_FILE})") from None
    other = [f"{path.name} ({w}x{h})" for path, (w, h) in zip(paths, sizes) if (w, h) != (side, side)]
    if other:
        asked = "the track's image_size" if image_size is None else "the size asked"
        raise ValueError(
            f"{folder}: {len(other)} of {len(paths)} images are not {side}x{side} pixels ({asked}), first "
            f"{', '.join(other[:3])}; a method's images must be the track's size (--size N scores another, recorded as an override)"
        )
    formats = image_formats(paths)
    lossy = {fmt: n for fmt, n in formats.items() if fmt in LOSSY_FORMATS}
    if lossy:
        # Compression artefacts read as a concept's texture (JPEG's 8x8 blocks as QR modules): such
        # scores are not comparable with the benchmark's, whose images are PNG.
        print(f"warning: {folder}: {sum(lossy.values())} of {len(paths)} images are lossy ({_counted(lossy)}); the benchmark "
              "scores PNG, and compression artefacts change the ICR: scored off the track's protocol (summary.json overrides). "
              "Save them as PNG (or lossless WebP) to be on it", file=sys.stderr)
    scored = set(stems)
    extra = sorted(stem for stem in found if stem not in scored)
    if extra:
        # Images no prompt names (a second image per prompt without --images-per-prompt, unknown case
        # numbers): not scored, and said so on the console and in summary.json.
        shown = ", ".join(found[stem][0].name for stem in extra[:5]) + (", ..." if len(extra) > 5 else "")
        print(f"note: {folder}: {len(extra)} images not scored (no prompt of {judging.track.prompts} names them, at "
              f"{generation.images_per_prompt} per prompt): {shown}", file=sys.stderr)
    # The images by content (each one's name and sha256): what was scored, wherever the folder is.
    inputs = {"images": str(folder), "images_sha256": folder_sha256(Path(folder), only=[p.name for p in paths]), "formats": formats,
              "not_scored": {"count": len(extra), "images": [found[stem][0].name for stem in extra]}}
    with _held(Path(out)):
        _list_unreadable(Path(out), [])
        return _score(paths, prompts, generation, Path(out), judging, inputs, {"lossy_images": lossy} if lossy else {})


def _list_unreadable(out: Path, problems: list[str]) -> None:
    """``out``'s list of unreadable images: this attempt's ``problems``, or none (an earlier attempt's
    removed). Called holding ``out``: a list written or removed before would be another command's."""
    listing = out / UNREADABLE_FILE
    if problems:
        atomic_write_text(listing, "".join(f"{problem}\n" for problem in problems))
    else:
        listing.unlink(missing_ok=True)


#: Image formats (as :func:`image_formats` names them) whose decoded pixels are not the pixels
#: saved: a method's images scored from them are not the images it drew.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP (lossy)", "TIFF (JPEG-compressed)")


def image_formats(paths: list[Path]) -> dict[str, int]:
    """How many of ``paths`` are in each format, read from the files' headers (not their suffixes):
    PNG, JPEG, BMP, TIFF, ``WEBP (lossless)`` or ``WEBP (lossy)``, ``TIFF (JPEG-compressed)``."""
    counts: dict[str, int] = {}
    for path in paths:
        fmt = _image_format(path)
        counts[fmt] = counts.get(fmt, 0) + 1
    return dict(sorted(counts.items()))


def _image_format(path: Path) -> str:
    """By Pillow's header reader, through :func:`~implicit_concept.image_decode.open_image`'s allow-list
    (a file in any other format, an EPS named .jpg say, is never handed to its plug-in)."""
    with open(path, "rb") as f, open_image(f) as image:
        fmt = image.format or path.suffix.lstrip(".").upper()
        compression = str(image.info.get("compression", ""))
    if fmt == "WEBP":
        return "WEBP (lossless)" if _webp_is_lossless(path) else "WEBP (lossy)"
    if fmt == "TIFF" and "jpeg" in compression.lower():
        return "TIFF (JPEG-compressed)"
    return fmt


def _webp_is_lossless(path: Path) -> bool:
    """A WebP file's image chunk: ``VP8L`` is lossless, ``VP8 `` lossy (an extended file, ``VP8X``,
    holds one of them after its other chunks; an animation's frames are not looked into: lossy)."""
    data = path.read_bytes()
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        if chunk in (b"VP8L", b"VP8 "):
            return chunk == b"VP8L"
        at += 8 + size + (size & 1)
    return False


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {fmt}" for fmt, n in counts.items())


def _found_instead(folder: Path, found: dict[str, list[Path]], missing: list[str]) -> str:
    """What the folder holds instead: a few of its image names, files of types not read (any, where
    it holds no image; else those named as a ``missing`` image, a ``0_0.gif`` among PNGs), and images
    in subfolders (never searched). Hidden files are none of them."""
    names = sorted(path.name for paths in found.values() for path in paths)
    said = f"found {len(names)} images, e.g. {', '.join(names[:3])}" if names else "found no image file"
    wanted = set(missing)
    unread = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and not is_hidden(p.name)
              and (not names or p.stem in wanted)]
    if unread:
        kinds = sorted({p.suffix.lower() or p.name for p in unread})
        said += f" ({len(unread)} files of types not read: {', '.join(kinds[:5])}{', ...' if len(kinds) > 5 else ''}; save them as PNG)"
    nested = sorted({p.parent.relative_to(folder) for p in folder.rglob("*") if p.parent != folder
                     and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()})
    if nested:
        shown = ", ".join(f"{n}/" for n in map(str, nested[:3])) + (", ..." if len(nested) > 3 else "")
        said += f"; subfolders are not searched ({shown} hold{'s' if len(nested) == 1 else ''} images)"
    return said


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    """The folder's image files by stem, listed once."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of images")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not is_hidden(path.name):  # as image_files
            found.setdefault(path.stem, []).append(path)
    return found


def _not_files(folder: Path, stems: list[str]) -> list[str]:
    """What stands under the name of one of ``stems``' images that is not a file to read (a broken or
    looping symbolic link, a folder, a FIFO): said as what it is, where "missing" would contradict a
    listing that shows it. Beside a file of the same stem too (a ``0_0.jpg`` link left dangling by a copy
    beside ``0_0.png``): which of the two is the lab's image is not for scoring to guess."""
    wanted = set(stems)
    said = []
    for path in sorted(folder.iterdir()):
        if path.stem not in wanted or path.suffix.lower() not in IMAGE_SUFFIXES or path.is_file() or is_hidden(path.name):
            continue
        if path.is_symlink() and not path.exists():
            try:
                said.append(f"{path.name} is a broken symbolic link (to {os.readlink(path)})")
            except OSError as e:
                said.append(f"{path.name} is a symbolic link that cannot be read ({e.strerror})")
        else:
            said.append(f"{path.name} is {'a folder' if path.is_dir() else 'not a regular file'}")
    return said


def track_overrides(judging: Judging, generation: GenerationSettings) -> dict[str, Any]:
    """The track settings a scoring departed from (its ``[generation]`` values, its prompt count):
    a result with any is not on the track's protocol, whatever its ``track_sha256`` says."""
    track_settings = judging.track.generation_settings().__dict__
    changed = {k: v for k, v in generation.__dict__.items() if v != track_settings[k]}
    if judging.num_prompts is not None and judging.num_prompts != judging.track.num_prompts:
        changed["num_prompts"] = judging.num_prompts
    return changed


def _score(paths: list[Path], prompts: list[Prompt], generation: GenerationSettings, out: Path, judging: Judging,
           inputs: dict[str, Any], off_protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``paths`` and write ``scores.json`` and ``summary.json``; ``off_protocol``: what besides
    the track's settings the scored images depart from (a scheduler, lossy files), in ``overrides``."""
    detector = judging.detector
    track = judging.track
    quality = track.quality if judging.reference is not None else {"kind": "none"}
    reference = quality_reference(judging.reference, prompts) if judging.reference is not None else []
    report, rows = score_generated(paths, image_prompts(prompts, generation), detector, ScoreConfig(conf=track.conf, seed=track.seed), quality, reference, judging.cache)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "scores.json")
    summary = {
        "inputs": inputs,
        "track": track.name,
        "track_sha256": track.sha256,
        "track_concepts": list(judging.concepts),
        "subset": judging.subset,
        "protocol": track.protocol,
        "overrides": {**track_overrides(judging, generation), **(off_protocol or {})},
        "prompts": {"file": track.prompts, "sha256": prompts_sha256(prompts), "count": len(prompts), "images": len(paths)},
        "seed_rule": SEED_RULE,
        "detector": {"path": str(detector.path), "sha256": sha256_file(detector.path), "conf": track.conf,
                     "thresholds": report.thresholds, "clean_reference_sha256": getattr(detector, "clean_reference_sha256", None),
                     "published": is_published(detector.path)},
        "reference": str(judging.reference) if judging.reference is not None else None,
        "environment": environment(),
        # The scored concepts alone (a --subset's, as a run's rows of that subset's fine-tune): the
        # detector reports every concept it knows, and scores.json keeps them all.
        "rows": [{"concept": concept, **row} for concept, row in rows.items() if concept in judging.concepts],
        "concepts": {c: s.to_json() for c, s in report.concepts.items() if c in judging.concepts},
        "table": report.table(judging.concepts),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
