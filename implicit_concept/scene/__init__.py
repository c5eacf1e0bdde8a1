"""Procedural scenes: the grammar that draws and captions them, and the renderer that paints them."""
from implicit_concept.scene.grammar import (
    BACKGROUNDS,
    PALETTE,
    SHAPES,
    ProceduralConfig,
    Scene,
    SceneObject,
    caption,
    sample_scene,
)
from implicit_concept.scene.render import render_scene

__all__ = [
    "BACKGROUNDS", "PALETTE", "SHAPES", "ProceduralConfig", "Scene", "SceneObject", "caption", "render_scene", "sample_scene",
]
