"""What made an output: package versions and a stable hash of the config, recorded beside results."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from typing import Any

#: Packages whose version can change an output's bytes or numbers.
TRACKED_PACKAGES = (
    "implicit-concept",
    "pillow",
    "qrcode",
    "numpy",
    "matplotlib",
    "opencv-python",
    "webdataset",
    "pandas",
    "pyarrow",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "ultralytics",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form: equal configs hash equal, whatever the key order."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def cache_key(obj: Any) -> str:
    """The 16 hex digits that name a cached folder: it changes whenever its inputs do."""
    return config_hash(obj)[:16]


def version() -> str:
    return package_versions(("implicit-concept",))["implicit-concept"] or "0+unknown"
