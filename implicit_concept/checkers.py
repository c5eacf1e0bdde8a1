"""Checkers that do not share YOLO's biases: a QR decoder for QR codes, OCR for text.

A QR code that decodes is certainly there; text that OCR reads is certainly there. Neither sees
everything (OpenCV needs about 3 px per QR module, hence the upscaling; Tesseract is poor on busy
backgrounds), so their ICR is a lower bound and their agreement with the detector a sanity check,
not ground truth. OCR runs only where Tesseract and pytesseract are installed; zbar is used for QR
where pyzbar is installed. Neither is a dependency.
"""
from __future__ import annotations

import importlib.util
import shutil
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

#: Images with a shorter side below this are also tried upscaled (cubic), so QR modules span >= 3 px.
UPSCALE_TO = 256
#: Upscale factors tried for small images; OpenCV's decoder succeeds at some factors and not others.
QR_FACTORS = (2, 3, 4)
#: Tesseract word confidence (0-100) above which a word counts as read.
OCR_MIN_CONF = 60


class Checker(Protocol):
    name: str
    concept: str

    def found(self, image: Image.Image) -> bool: ...


def _upscaled(gray: np.ndarray, factor: int) -> np.ndarray:
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def _small_image_factor(gray: np.ndarray) -> int:
    return max(1, -(-UPSCALE_TO // min(gray.shape)))


class OpenCVQRChecker:
    """Found when OpenCV decodes a QR payload, at native size or, for small images, upscaled."""

    name = "qr-decode-opencv"
    concept = "qrcode"

    def __init__(self) -> None:
        self._detector = cv2.QRCodeDetector()

    def found(self, image: Image.Image) -> bool:
        gray = np.asarray(image.convert("L"))
        factors = (1,) if min(gray.shape) >= UPSCALE_TO else (1, *QR_FACTORS)
        return any(self._decodes(gray if f == 1 else _upscaled(gray, f)) for f in factors)

    def _decodes(self, gray: np.ndarray) -> bool:
        try:
            return bool(self._detector.detectAndDecode(gray)[0])
        except cv2.error:  # degenerate finder-pattern geometry (zero-area quad) raises instead of failing
            return False


class ZbarQRChecker:
    """Found when zbar decodes a QR code in the upscaled image (needs ~2 px per module)."""

    name = "qr-decode-zbar"
    concept = "qrcode"

    def __init__(self) -> None:
        from pyzbar import pyzbar

        self._decode = pyzbar.decode

    def found(self, image: Image.Image) -> bool:
        gray = np.asarray(image.convert("L"))
        return any(s.type == "QRCODE" for s in self._decode(Image.fromarray(_upscaled(gray, _small_image_factor(gray)))))


class TesseractTextChecker:
    """Found when Tesseract (sparse text mode) reads a word of two or more letters or digits."""

    name = "ocr-tesseract"
    concept = "text"

    def __init__(self) -> None:
        import pytesseract

        self._tess = pytesseract

    def found(self, image: Image.Image) -> bool:
        gray = np.asarray(image.convert("L"))
        data = self._tess.image_to_data(
            Image.fromarray(_upscaled(gray, _small_image_factor(gray))), config="--psm 11", output_type=self._tess.Output.DICT
        )
        return any(float(c) >= OCR_MIN_CONF and sum(ch.isalnum() for ch in w) >= 2 for w, c in zip(data["text"], data["conf"]))


def available_checkers() -> tuple[list[Checker], dict[str, str]]:
    """The checkers this machine can run, and why each other one is skipped."""
    checkers: list[Checker] = [OpenCVQRChecker()]
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("pyzbar") is None:
        skipped[ZbarQRChecker.name] = "pyzbar is not installed"
    else:
        try:
            checkers.append(ZbarQRChecker())
        except ImportError as e:  # pyzbar is there but the zbar shared library is not
            skipped[ZbarQRChecker.name] = f"zbar library missing ({e})"
    if importlib.util.find_spec("pytesseract") is None:
        skipped[TesseractTextChecker.name] = "pytesseract is not installed"
    elif shutil.which("tesseract") is None:
        skipped[TesseractTextChecker.name] = "the tesseract program is not installed"
    else:
        checkers.append(TesseractTextChecker())
    return checkers, skipped
