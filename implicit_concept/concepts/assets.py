"""Asset pools (fonts, brand words, logo seeds, QR payload families, words, phrases) split train/test.

Every asset's side is a pure function of its own name (``asset_split``), so train and test never
share one and adding assets never moves an existing one. By default the fonts come only from
matplotlib's wheel, which pins them: the default dataset then renders byte-identically on any
machine. System fonts widen the pool but make the output depend on the machine.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from fontTools.agl import toUnicode
from fontTools.ttLib import TTFont
from PIL import ImageFont

from implicit_concept.sample import SPLITS

#: Glyphs a font must really have (not a placeholder or a symbol remapped onto the code point).
REQUIRED_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\u00a9"
SYSTEM_FONT_DIR = Path("/usr/share/fonts")
N_LOGO_SEEDS = 1000

BRAND_WORDS: tuple[str, ...] = (
    "Stockora", "PixelVault", "Imagetta", "Snapwell", "Frameloft", "Photonix", "Lumigrid",
    "Clickwise", "Viewstock", "Shutterbay", "Pictura", "Glimmerlab", "Fotomint", "Lensbury",
    "Stockwave", "Snapora", "Pixora", "Fotavia", "Lumora", "Kamerix", "Vistaloom", "Pixlane",
    "Picsmith", "Framewell", "Snaptide", "Clickora", "Imagenta", "Photavo", "Lumivista",
    "Optiqo", "Stillbay", "Focalyn", "Apertix", "Brightframe", "Clearshot", "Viewmint",
    "Pixelroot", "Shotvale", "Stockmere", "Fotogrove", "Lensmark", "Picvana", "Imagorn",
    "Vistamo", "Snapquill", "Framora", "Photelle", "Glintbox", "Stockhaven", "Pixmoor",
    "Zoomwell", "Lumacrest", "Shutterfen", "Fotoquay", "Imagrove", "Visiondale", "Snapcove",
    "Pictorix", "Lensfield", "Clicktide", "Stockpeak", "Pixelbrook", "Framevale", "Photorift",
    "Glowstock", "Aperturo", "Focusmere", "Imagemill", "Viewlark", "Snapfjord", "Pixtura",
    "Stockline", "Lumenka", "Fotokeep", "Shotmint", "Picnora", "Framequest", "Lensora",
    "Vividora", "Stillmark", "Photobrae", "Clickmoor", "Imaxel", "Snapvane",
)

TEXT_WORDS: tuple[str, ...] = (
    "sale", "open", "wow", "lol", "omg", "yes", "no", "hello", "love", "free", "new", "hot",
    "stop", "exit", "cafe", "menu", "today", "best", "win", "fun", "cool", "nice", "epic",
    "fail", "mood", "goals", "vibes", "yum", "boom", "help", "go", "sun", "joy", "hi", "bye",
    "oops", "why", "sure", "nope", "okay", "deal", "shop", "more", "now", "here", "look",
    "live", "play", "food", "home", "city", "wild", "blue", "gold", "dream", "peace", "party",
    "beach", "night", "happy", "friday", "monday", "coffee", "pizza", "summer", "winter",
    "travel", "family", "style", "fresh", "local", "urban", "retro", "vintage", "classic",
    "super", "mega", "offer", "click", "follow", "share", "news", "update", "max", "art",
)

TEXT_PHRASES: tuple[str, ...] = (
    "when you see it", "me on a monday", "this is fine", "I can explain", "wait for it",
    "not again", "so this happened", "best day ever", "how it started", "how it's going",
    "we need to talk", "trust me", "I have no idea", "later that day", "meanwhile at home",
    "that moment when", "when the wifi drops", "five minutes later", "plot twist",
    "you had one job", "expectation vs reality", "keep calm", "happy birthday", "grand opening",
    "for sale", "now open", "welcome home", "see you soon", "thank you", "limited time only",
    "50% off everything", "buy one get one", "coming soon", "we are open", "no parking",
    "wet paint", "mind the gap", "I told you we should have left earlier.",
    "Where were you last night?", "It's not what it looks like.", "We don't have much time.",
    "Can you hear me now?", "Let's get out of here.", "I'll be right back.", "Did you hear that?",
    "This changes everything.", "Are you sure about this?", "I never said that.", "Follow me.",
    "Stay close.", "What is that?", "We have to go back.", "Look out!", "Good morning, everyone.",
    "Thanks for watching!", "[music playing]", "[door creaks]", "[crowd cheering]",
    "nobody asked but here we go", "my face when", "one more time", "that escalated quickly",
    "i regret nothing", "send help", "worth it", "too real", "big mood", "it's a trap",
    "hold my drink", "not today", "living my best life", "no regrets", "game over",
    "level up", "every single time", "are you kidding me", "mission accomplished",
)

#: QR payload templates by family; fields are filled by ``AssetPool.qr_payload``. Hosts are
#: reserved example domains and phone numbers the fictional 555-01xx block.
QR_FAMILIES: dict[str, str] = {
    "url_example_com": "https://www.example.com/{w}/{id}",
    "url_example_org": "https://{w}.example.org/?id={id}",
    "url_example_net": "http://example.net/{id}",
    "url_test_tld": "https://{b}.test/{w}-{w2}",
    "url_example_tld": "https://{b}.example/p/{id}?src=qr",
    "url_tracking": "https://go.example.com/r?c={id}&utm_source=qr&utm_medium=print",
    "wifi": "WIFI:T:WPA;S:{B}-{nn};P:{id}{ID};;",
    "mailto": "mailto:{w}@example.org?subject={W}",
    "tel": "tel:+1-202-555-01{nn}",
    "sms": "SMSTO:+1-202-555-01{nn}:{phrase}",
    "mecard": "MECARD:N:{B};EMAIL:info@{b}.example;;",
    "vcard": "BEGIN:VCARD\nVERSION:3.0\nFN:{W} {B}\nEMAIL:{w}@example.com\nEND:VCARD",
    "geo": "geo:{lat},{lon}",
    "product_id": "SKU-{ID}",
    "ticket": "TKT{digits}",
    "plain_text": "{phrase}",
    "otpauth": "otpauth://totp/{B}:{w}@example.com?secret={secret}&issuer={B}",
    "event": "BEGIN:VEVENT\nSUMMARY:{phrase}\nDTSTART:2024{mm}{dd}T{hh}0000Z\nEND:VEVENT",
}

_ALNUM = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
_BASE32 = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"))


def asset_split(kind: str, name: str) -> str:
    """The split an asset belongs to: a hash of its kind and name, so it never moves."""
    return "test" if hashlib.sha256(f"{kind}:{name}".encode()).digest()[0] % 2 else "train"


def _side(kind: str, names: tuple[str, ...], split: str) -> tuple[str, ...]:
    return tuple(n for n in names if asset_split(kind, n) == split)


@lru_cache(maxsize=None)
def _font_family(path: str) -> str | None:
    """The font's family name, or None when it lacks a real glyph for any ``REQUIRED_CHARS``."""
    try:
        font = TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        if any(toUnicode(cmap.get(ord(c), "")) != c for c in REQUIRED_CHARS if c != " "):
            return None
        names = font["name"]
        return names.getDebugName(16) or names.getDebugName(1)
    except Exception:  # noqa: BLE001 - any unreadable font file is simply not a candidate
        return None


def _font_files(system_fonts: bool) -> list[str]:
    """Candidate font files, one per file name, matplotlib's copy winning over a system one."""
    dirs = [Path(matplotlib.get_data_path()) / "fonts" / "ttf"]
    if system_fonts:
        dirs.append(SYSTEM_FONT_DIR)
    chosen: dict[str, str] = {}
    for d in dirs:
        for root, _, files in sorted(os.walk(d)):
            for f in sorted(files):
                if f.lower().endswith((".ttf", ".otf")) and f not in chosen:
                    chosen[f] = str(Path(root) / f)
    return [chosen[f] for f in sorted(chosen)]


@lru_cache(maxsize=2048)
def load_font(path: str, px: int) -> ImageFont.FreeTypeFont:
    """A font at ``px`` pixels, with the basic layout engine so glyph placement never depends on
    whether libraqm happens to be installed."""
    return ImageFont.truetype(path, max(1, int(px)), layout_engine=ImageFont.Layout.BASIC)


@dataclass(frozen=True)
class AssetPool:
    """The assets one split may draw from. Fonts are split by family, the rest by name."""

    split: str
    fonts: tuple[str, ...]
    brand_words: tuple[str, ...]
    logo_seeds: tuple[int, ...]
    qr_payload_families: tuple[str, ...]
    text_words: tuple[str, ...]
    text_phrases: tuple[str, ...]

    @classmethod
    def for_split(cls, split: str, system_fonts: bool = False) -> "AssetPool":
        """The pool of ``split`` ("train" or "test"); cached, since scanning fonts takes a moment."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
        return _pool(split, bool(system_fonts))

    def qr_payload(self, rng: np.random.Generator) -> tuple[str, str]:
        """A payload drawn from this split's families and words: ``(family, text)``."""
        family = self.qr_payload_families[int(rng.integers(len(self.qr_payload_families)))]
        w, w2 = (self.text_words[int(i)] for i in rng.integers(len(self.text_words), size=2))
        brand = self.brand_words[int(rng.integers(len(self.brand_words)))]
        fields = {
            "w": w, "w2": w2, "W": w.capitalize(), "b": brand.lower(), "B": brand,
            "id": "".join(rng.choice(_ALNUM, size=int(rng.integers(5, 11)))),
            "ID": "".join(rng.choice(_ALNUM, size=8)).upper(),
            "nn": f"{int(rng.integers(100)):02d}",
            "digits": "".join(str(d) for d in rng.integers(10, size=12)),
            "lat": f"{rng.uniform(-60, 70):.5f}", "lon": f"{rng.uniform(-180, 180):.5f}",
            "phrase": self.text_phrases[int(rng.integers(len(self.text_phrases)))],
            "secret": "".join(rng.choice(_BASE32, size=16)),
            "mm": f"{int(rng.integers(1, 13)):02d}", "dd": f"{int(rng.integers(1, 29)):02d}",
            "hh": f"{int(rng.integers(24)):02d}",
        }
        return family, QR_FAMILIES[family].format(**fields)


@lru_cache(maxsize=None)
def _pool(split: str, system_fonts: bool) -> AssetPool:
    fonts = tuple(
        p for p in _font_files(system_fonts)
        if (family := _font_family(p)) is not None and asset_split("family", family) == split
    )
    if not fonts:
        raise ValueError(f"no usable font for split {split!r} (system_fonts={system_fonts})")
    return AssetPool(
        split=split,
        fonts=fonts,
        brand_words=_side("brand", BRAND_WORDS, split),
        logo_seeds=tuple(s for s in range(N_LOGO_SEEDS) if asset_split("logo", str(s)) == split),
        qr_payload_families=_side("qr", tuple(QR_FAMILIES), split),
        text_words=_side("word", TEXT_WORDS, split),
        text_phrases=_side("phrase", TEXT_PHRASES, split),
    )
