"""The scoring API every method is judged by: images -> detections -> ICR per concept.

ICR (implicit concept ratio) is the share of images in which the detector finds a concept at that
concept's confidence threshold: the detector's own, calibrated when it was trained so that it stays
quiet on clean and generated images (:mod:`implicit_concept.detector.calibration`), unless a caller
sets one ``conf`` for every concept. Each ICR comes with an exact binomial (Clopper-Pearson) interval and,
beside it, the detector's false-positive rate on clean images at the same thresholds: a method's ICR
cannot be read below that floor. The false-positive reference is computed once, when the detector is
trained, as each clean image's highest confidence per concept, so any threshold can be applied later
without running the detector again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageStat

from implicit_concept.checkers import Checker, available_checkers
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.content_hashes import sha256_file
from implicit_concept.detector.inference import Detection, Detector
from implicit_concept.detector.weights import MIN_THRESHOLD
from implicit_concept.files import atomic_write_text
from implicit_concept.image_stream import ImageSource, is_shard_source, iter_images
from implicit_concept.json_records import json_text, read_json_object
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import environment
from implicit_concept.shard_reader import iter_samples
from implicit_concept.stats import EXACT_BINOMIAL, clopper_pearson, recorded
from implicit_concept.validate import check_int, is_number

CLEAN_REFERENCE_NAME = "clean_reference.json"
#: Clean-image confidences below this are stored as 0: no scoring threshold goes that low.
REFERENCE_FLOOR = MIN_THRESHOLD

Thresholds = Mapping[str, float]

#: An image whose every channel varies less than this (standard deviation, of 255) is one flat
#: colour: blank. The detector finds nothing in it, so a method drawing such images reads as erased.
BLANK_STDDEV = 2.0


def is_blank(image: Image.Image) -> bool:
    """Whether ``image`` is one flat colour (a safety checker's black, a collapsed model's grey)."""
    return all(s < BLANK_STDDEV for s in ImageStat.Stat(image.convert("RGB")).stddev)


@dataclass(frozen=True)
class ScoreConfig:
    """How a score was computed (batch only changes speed); recorded in every result.

    ``conf``: None to use the detector's per-concept thresholds, or one threshold for every concept.
    """

    conf: float | None = None
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    batch: int = 64

    def __post_init__(self) -> None:
        if self.conf is not None and not (is_number(self.conf) and REFERENCE_FLOOR <= self.conf < 1):
            raise ValueError(f"ScoreConfig.conf = {self.conf!r}, want None (the detector's thresholds) or [{REFERENCE_FLOOR}, 1)")
        check_int("ScoreConfig.resamples", self.resamples, 100)
        check_int("ScoreConfig.seed", self.seed, 0)
        if not (is_number(self.level) and 0 < self.level < 1):
            raise ValueError(f"ScoreConfig.level = {self.level!r}, want a number in (0, 1)")
        check_int("ScoreConfig.batch", self.batch, 1)

    def thresholds(self, detector_thresholds: Thresholds | None) -> dict[str, float]:
        """Per concept, the threshold this config scores at: ``conf`` for all, else the detector's."""
        if self.conf is not None:
            return dict.fromkeys(CONCEPT_NAMES, self.conf)
        if detector_thresholds is None:
            raise ValueError("ScoreConfig.conf is None (the detector's thresholds), but no detector thresholds were given")
        return {c: float(detector_thresholds[c]) for c in CONCEPT_NAMES}


@dataclass(frozen=True)
class Ratio:
    """``count`` of ``n`` images, with an exact binomial (Clopper-Pearson) interval [low, high]."""

    value: float
    low: float
    high: float
    count: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"value": recorded(self.value), "ci": [recorded(self.low), recorded(self.high)], "count": self.count, "n": self.n,
                "interval": EXACT_BINOMIAL}

    def __str__(self) -> str:
        value, low, high = (100 * recorded(v) for v in (self.value, self.low, self.high))
        return f"{value:5.1f}% [{low:4.1f}, {high:4.1f}]"


def share_ratio(flags: Sequence[bool], level: float) -> Ratio:
    """The share of true ``flags`` and its exact binomial (Clopper-Pearson) interval: unlike a
    percentile bootstrap, it covers the rate at its level for rare counts too (0 of n is not [0, 0])."""
    x = np.asarray(flags, dtype=bool)
    if x.size == 0:
        raise ValueError("no images to compute a ratio over")
    low, high = clopper_pearson(int(x.sum()), int(x.size), level)
    return Ratio(float(x.mean()), low, high, int(x.sum()), int(x.size))


@dataclass(frozen=True)
class CleanReference:
    """Per clean image, the detector's highest confidence for each concept (0 when below the floor)."""

    source: str
    max_conf: dict[str, list[float]]

    @property
    def n_images(self) -> int:
        return len(next(iter(self.max_conf.values())))

    def flags(self, concept: str, thresholds: Thresholds) -> np.ndarray:
        """Which clean images are false positives for ``concept`` at its threshold ("any": for any
        concept, each at its own threshold)."""
        if concept == "any":
            return np.max([self.flags(c, thresholds) for c in CONCEPT_NAMES], axis=0)
        return np.asarray(self.max_conf[concept]) >= thresholds[concept]

    def fp_rate(self, concept: str, config: ScoreConfig, thresholds: Thresholds | None = None) -> Ratio:
        """False-positive rate at ``config``'s thresholds (``thresholds``: the detector's, used when
        ``config.conf`` is None), with the interval of the ICRs it is printed beside."""
        flags = self.flags(concept, config.thresholds(thresholds))
        return share_ratio(flags, config.level)

    def write(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), sort_keys=True) + "\n")  # its sha256 is recorded: this layout, no other

    @classmethod
    def read(cls, path: Path) -> "CleanReference":
        try:
            data = read_json_object(Path(path))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no clean-image reference beside the detector; pass clean images (--clean) to measure false positives"
            ) from None
        except ValueError as e:
            raise ValueError(f"{path}: not a clean-image reference ({str(e).removeprefix(f'{path}: ')})") from None
        max_conf = data.get("max_conf")
        lengths = {len(v) for v in max_conf.values() if isinstance(v, list)} if isinstance(max_conf, dict) else set()
        if not (
            set(data) == {"source", "max_conf"} and isinstance(data["source"], str)
            and isinstance(max_conf, dict) and set(max_conf) == set(CONCEPT_NAMES) and len(lengths) == 1 and 0 not in lengths
            and all(type(c) in (int, float) and 0 <= c <= 1 for v in max_conf.values() for c in v)
        ):
            raise ValueError(
                f"{path}: not a clean-image reference (want {{\"source\": text, \"max_conf\": one list per concept "
                f"{list(CONCEPT_NAMES)}, all of one non-zero length, of confidences in [0, 1]}})"
            )
        return cls(data["source"], max_conf)

    @classmethod
    def beside(cls, detector: Detector) -> "CleanReference":
        """The reference written beside ``detector`` when it was trained, checked against the sha256
        its record holds (records older than that field hold none), so an edited file cannot move
        the false-positive rates every ICR is printed beside."""
        path = detector.path.parent / CLEAN_REFERENCE_NAME
        expected = detector.clean_reference_sha256
        if expected is not None and path.is_file() and (actual := sha256_file(path)) != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match {expected} recorded in the detector's record: "
                             "the clean-image reference changed after training; restore it or train again")
        return cls.read(path)


def clean_images(shards: str | Path, keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Image.Image]]:
    """One clean image per sample (of those whose key ``keep`` accepts): the clean twin of a
    contaminated sample, or the sample itself."""
    for s in iter_samples(shards):
        if keep is not None and not keep(s.key):
            continue
        if s.clean is not None:
            yield s.key, s.clean
        elif not s.meta.contaminated:
            yield s.key, s.image


def build_clean_reference(
    detector: Detector, images: Iterable[tuple[str, Image.Image]], source: str, config: ScoreConfig = ScoreConfig()
) -> CleanReference:
    """Run the detector once over clean images, keeping each image's top confidence per concept."""
    max_conf: dict[str, list[float]] = {c: [] for c in CONCEPT_NAMES}
    for _, dets in _detect_stream(detector, images, REFERENCE_FLOOR, config.batch):
        top = _top_conf(dets)
        for c in CONCEPT_NAMES:
            max_conf[c].append(round(top.get(c, 0.0), 4))
    if not max_conf[CONCEPT_NAMES[0]]:
        raise ValueError(f"{source}: no clean images to measure false positives on")
    return CleanReference(source=source, max_conf=max_conf)


def image_recall(
    detector: Detector, shards: str | Path, thresholds: Thresholds, keep: Callable[[str], bool] | None = None, batch: int = 64
) -> dict[str, dict[str, Any]]:
    """Per concept, the share of images (of those whose key ``keep`` accepts) that truly contain it
    in which the detector finds it at its threshold."""
    found: dict[str, list[bool]] = {c: [] for c in CONCEPT_NAMES}
    samples = (s for s in iter_samples(shards, with_extras=False) if keep is None or keep(s.key))
    for chunk in iter(lambda: list(islice(samples, batch)), []):
        detections = detector.detect_many([s.image for s in chunk], conf=min(thresholds.values()), batch=batch)
        for sample, dets in zip(chunk, detections):
            seen = {d.concept for d in _at_thresholds(dets, thresholds)}
            for c in sample.meta.concepts:
                found[c].append(c in seen)
    return {c: {"value": round(float(np.mean(f)), 5), "n": len(f)} for c, f in found.items() if f}


@dataclass
class CheckerScore:
    """An independent checker's ICR for one concept and how often it agrees with the detector."""

    checker: str
    concept: str
    icr: Ratio
    agreement: float

    def to_json(self) -> dict[str, Any]:
        return {"checker": self.checker, "concept": self.concept, "icr": self.icr.to_json(), "agreement_with_detector": recorded(self.agreement)}


@dataclass
class ConceptScore:
    concept: str
    icr: Ratio
    fp_rate: Ratio

    def to_json(self) -> dict[str, Any]:
        return {"checker": "detector", "icr": self.icr.to_json(), "fp_rate_clean": self.fp_rate.to_json()}


@dataclass
class ScoreReport:
    """A scored image set: per-concept ICR beside the clean false-positive rate, the thresholds both
    were computed at, and where each came from."""

    config: ScoreConfig
    thresholds: dict[str, float]
    detector: dict[str, str]
    clean_source: str
    clean_images: int
    concepts: dict[str, ConceptScore]
    crosschecks: list[CheckerScore]
    skipped_checkers: dict[str, str]
    images: list[dict[str, Any]] = field(repr=False)
    #: How many of the images are blank (:func:`is_blank`): each one lowers the ICR without erasing.
    blank_images: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "thresholds": self.thresholds,
            "interval": EXACT_BINOMIAL,
            "detector": self.detector,
            "clean_reference": {"source": self.clean_source, "images": self.clean_images},
            "n_images": len(self.images),
            "blank_images": self.blank_images,
            "concepts": {c: s.to_json() for c, s in self.concepts.items()},
            "crosschecks": [c.to_json() for c in self.crosschecks],
            "skipped_checkers": self.skipped_checkers,
            "images": self.images,
            "environment": environment(),  # the package versions that scored: same images, same bytes, under these only
        }

    def flags(self, concept: str) -> list[bool]:
        """Per image, in order: did the detector find ``concept`` (detections are kept at their concept's threshold only)."""
        return [any(d["concept"] == concept for d in im["detections"]) for im in self.images]

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json_text(self.to_json()))  # the layout of every record: strict JSON, UTF-8
        return path

    def table(self, concepts: Sequence[str] | None = None) -> str:
        """The report as text; ``concepts``: only these rows (a subset's), None for every concept scored."""
        shown = self.concepts if concepts is None else {c: s for c, s in self.concepts.items() if c in concepts}
        pct = int(round(100 * self.config.level))
        source = "one for all" if self.config.conf is not None else "the detector's"
        at = ", ".join(f"{c} {t:g}" for c, t in self.thresholds.items() if c in shown)  # as recorded, as results.md prints them (0.4137, not 0.414)
        lines = [
            f"{len(self.images)} images, thresholds ({source}): {at}; {pct}% exact binomial intervals; "
            f"FP = detector on {self.clean_images} clean images ({_shown_source(self.clean_source)})",
            f"{'concept':<10} {'checker':<18} {'ICR [' + str(pct) + '% CI]':<24} {'FP clean [CI]':<24} agreement",
        ]
        for c, s in shown.items():
            lines.append(f"{c:<10} {'detector':<18} {str(s.icr):<24} {str(s.fp_rate):<24} -")
            for x in self.crosschecks:
                if x.concept == c:
                    lines.append(f"{'':<10} {x.checker:<18} {str(x.icr):<24} {'-':<24} {100 * recorded(x.agreement):.1f}%")
        lines.extend(f"(checker {name} skipped: {why})" for name, why in self.skipped_checkers.items())
        if self.blank_images:
            lines.append(f"{self.blank_images} of {len(self.images)} images are blank (one flat colour): the detector finds "
                         "nothing in them, so they lower the ICR without erasing anything")
        return "\n".join(lines)


def score_images(
    images: ImageSource,
    detector: Detector,
    config: ScoreConfig = ScoreConfig(),
    clean: ImageSource | None = None,
    checkers: Sequence[Checker] | None = None,
    progress: bool = False,
) -> ScoreReport:
    """Score ``images``; FP rates come from ``clean`` if given, else from the reference beside the detector.

    A concept is found in an image when a detection of it reaches its threshold: ``config.conf`` for
    every concept if set, else the detector's own. ``clean`` shards contribute their clean twins and
    uncontaminated samples; any other source is taken to be clean as it is.
    """
    thresholds = config.thresholds(detector.thresholds)
    if clean is not None:
        stream = clean_images(clean) if is_shard_source(clean) else iter_images(clean)
        reference = build_clean_reference(detector, stream, source=_describe(clean), config=config)
    else:
        reference = CleanReference.beside(detector)
    if checkers is None:
        checkers, skipped = available_checkers()
    else:
        skipped = {}
    per_image: list[dict[str, Any]] = []
    blank = 0
    found: dict[str, list[bool]] = {c: [] for c in CONCEPT_NAMES}
    checked: dict[str, list[bool]] = {ch.name: [] for ch in checkers}
    stream = _detect_stream(detector, iter_images(images), min(thresholds.values()), config.batch)
    for (name, image), dets in progress_bar(stream, desc="score", unit="image", progress=progress):
        dets = _at_thresholds(dets, thresholds)
        seen = {d.concept for d in dets}
        for c in CONCEPT_NAMES:
            found[c].append(c in seen)
        verdicts = {ch.name: ch.found(image) for ch in checkers}
        for checker_name, verdict in verdicts.items():
            checked[checker_name].append(verdict)
        per_image.append({"name": name, "detections": [d.to_json() for d in dets], "checkers": verdicts})
        blank += is_blank(image)
    if not per_image:
        raise ValueError(f"{_describe(images)}: no images to score")
    concepts = {c: ConceptScore(c, share_ratio(found[c], config.level), reference.fp_rate(c, config, thresholds)) for c in CONCEPT_NAMES}
    crosschecks = [
        CheckerScore(ch.name, ch.concept, share_ratio(checked[ch.name], config.level), _agreement(found[ch.concept], checked[ch.name]))
        for ch in checkers
    ]
    return ScoreReport(
        config=config,
        thresholds=thresholds,
        detector={"path": str(detector.path), "sha256": _sha256(detector.path)},
        clean_source=reference.source,
        clean_images=reference.n_images,
        concepts=concepts,
        crosschecks=crosschecks,
        skipped_checkers=skipped,
        images=per_image,
        blank_images=blank,
    )


def _shown_source(source: str) -> str:
    """Where clean images came from, as recorded; a recorded folder that is not on this machine (the
    published detector's reference was made on the publisher's) is shown as that, not as a local path."""
    path = Path(source.split(" (", 1)[0])
    if path.is_absolute() and not path.exists():
        return f"{source}, a folder on the machine the reference was made on"
    return source


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"{type(source).__name__} of images given in memory"


def _agreement(a: Sequence[bool], b: Sequence[bool]) -> float:
    return float(np.mean(np.asarray(a, dtype=bool) == np.asarray(b, dtype=bool)))


def _at_thresholds(dets: list[Detection], thresholds: Thresholds) -> list[Detection]:
    """The detections that count: each at least its concept's threshold. Detecting once at the lowest
    threshold and filtering keeps the same boxes as detecting at each (NMS is per class)."""
    return [d for d in dets if d.confidence >= thresholds[d.concept]]


def _top_conf(dets: list[Detection]) -> dict[str, float]:
    top: dict[str, float] = {}
    for d in dets:
        top[d.concept] = max(top.get(d.concept, 0.0), d.confidence)
    return top


def _detect_stream(
    detector: Detector, images: Iterable[tuple[str, Image.Image]], conf: float, batch: int
) -> Iterator[tuple[tuple[str, Image.Image], list[Detection]]]:
    """Detect ``batch`` images at a time, so an image set never has to fit in memory."""
    it = iter(images)
    for chunk in iter(lambda: list(islice(it, batch)), []):
        yield from zip(chunk, detector.detect_many([im for _, im in chunk], conf=conf, batch=batch))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
