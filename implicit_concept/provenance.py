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


def package_changes(then: dict[str, Any], now: dict[str, Any]) -> tuple[str, str] | None:
    """None where the versions ``then`` and ``now`` (package -> version) agree; else what changed, in
    words, and how to put ``then``'s back: ``("torch 2.1 then, 2.2 now", " (pip install torch==2.1)")``.
    One wording for every output a resume under other versions would make one of two."""
    changed = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if not changed:
        return None
    shown = "; ".join(f"{k} {then.get(k) or 'not installed'} then, {now.get(k) or 'not installed'} now" for k in changed[:4])
    pins = " ".join(f"{k}=={then[k]}" for k in changed if isinstance(then.get(k), str) and then[k])
    return shown + ("; ..." if len(changed) > 4 else ""), f" (pip install {pins})" if pins else ""


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
