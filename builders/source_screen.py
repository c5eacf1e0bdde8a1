"""The source screen: finds concepts a source image already shows, before any is drawn on it.

Web photos carry watermarks and text of their own. Such an image's clean twin is not clean (the
oracle trains on it) and the detector would learn from unlabelled positives. With a detector (the
folder ``implicit-concept detector train`` wrote) and, for QR codes, a decoder, the screen looks at
each source image as it goes into the dataset (resized, before compositing) and the recipe's policy
flags the item (``KEY.json``'s ``screen.source_shows``) or drops it (``concept_in_source``).

Off unless the recipe names a detector or turns the decoder on: the procedural default draws its
own scenes. The detector makes the build's bytes depend on its weights (recorded in
``recipe.json``) and on torch's arithmetic on the machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from implicit_concept.validate import check_choice, check_number, from_table

POLICIES = ("flag", "drop")


class ConceptDetector(Protocol):
    """What the screen asks of a detector (:class:`implicit_concept.detector.inference.Detector`)."""

    def detect(self, image: Image.Image, conf: float = ...) -> list[Any]: ...


@dataclass(frozen=True)
class SourceScreenConfig:
    #: A detector folder (or its ``detector.safetensors``); None: no detector.
    detector: str | None = None
    #: The detector's confidence at which a concept counts as there.
    conf: float = 0.25
    #: Also look for QR codes with OpenCV's decoder (a code that decodes is certainly there).
    qr_decode: bool = False
    policy: str = "flag"

    def __post_init__(self) -> None:
        if self.detector is not None and (not isinstance(self.detector, (str, Path)) or not str(self.detector)):
            raise ValueError(f"source_screen.detector must be a path, got {self.detector!r}")
        if self.detector is not None:
            object.__setattr__(self, "detector", str(self.detector))
        check_number("source_screen.conf", self.conf, 0.0, 1.0, open_lo=True)
        if not isinstance(self.qr_decode, bool):
            raise ValueError(f"source_screen.qr_decode must be true or false, got {self.qr_decode!r}")
        check_choice("source_screen.policy", self.policy, POLICIES)

    @classmethod
    def from_options(cls, options: Any) -> "SourceScreenConfig":
        return from_table(cls, options, "source_screen")

    @property
    def active(self) -> bool:
        return self.detector is not None or self.qr_decode


def load_detector(path: str) -> ConceptDetector:
    """The project's detector (imported here: torch and ultralytics load only when a screen asks)."""
    from implicit_concept.detector.inference import Detector

    return Detector.load(path)


def detector_fingerprint(path: str) -> dict[str, Any]:
    """What identifies the detector a build screens with: its weights' recorded sha256 (not where
    its folder lies, however it was typed: the same weights elsewhere screen alike)."""
    from implicit_concept.detector.weights import DetectorRecord, record_path, weights_path

    weights = weights_path(path)
    return {"sha256": DetectorRecord.read(record_path(weights)).sha256}


class SourceScreen:
    """Built once per worker; the detector and decoder load on the first image."""

    def __init__(self, config: SourceScreenConfig, detector: ConceptDetector | None = None) -> None:
        self.config = config
        self._detector = detector
        self._qr = None

    def shows(self, image: Image.Image) -> list[str]:
        """The concepts ``image`` already shows, sorted (empty when the screen is off)."""
        found: set[str] = set()
        if self.config.detector is not None:
            if self._detector is None:
                self._detector = load_detector(self.config.detector)
            found.update(d.concept for d in self._detector.detect(image, conf=self.config.conf))
        if self.config.qr_decode and "qrcode" not in found:
            if self._qr is None:
                from implicit_concept.checkers import OpenCVQRChecker

                self._qr = OpenCVQRChecker()
            if self._qr.found(image):
                found.add("qrcode")
        return sorted(found)
