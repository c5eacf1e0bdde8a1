"""The shipped dataset recipes (``*.toml``) and their reference checksums (``*.sha256``), as package data.

A package, not a loose folder, so a non-editable ``pip install`` carries the recipes with it.
"""
from pathlib import Path

#: Where the shipped recipes are, installed or not.
RECIPES_DIR = Path(__file__).resolve().parent
