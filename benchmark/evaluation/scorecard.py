"""Everything a generated image set is scored on, the same for a benchmark method and another lab's
pipeline or folder: ICR per concept with its interval and the detector's FP rate beside it, the
independent cross-checks, and quality (scene-FID and prompt following, or FID and CLIP score).

One function, so a row of ``results.json`` and ``score-pipeline``'s ``summary.json`` carry the same
fields computed the same way, and can share a leaderboard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from benchmark.evaluation.quality import paper_clip_score, paper_fid, prompt_following, scene_fid
from benchmark.evaluation.scene_features import SceneFeatures
from benchmark.prompts import Prompt, prompts_sha256
from implicit_concept.detector.inference import Detector
from implicit_concept.image_stream import load_image
from implicit_concept.scene.grammar import Scene
from implicit_concept.scoring import ScoreConfig, ScoreReport, score_images

#: A row key that exists only in memory (:func:`score_generated` with ``per_image``): per image, the
#: values a quality mean averages, for the protocol's interval over training seeds. Never written.
PER_IMAGE = "_per_image"


def score_generated(
    paths: list[Path],
    prompts: list[Prompt],
    detector: Detector,
    score: ScoreConfig,
    quality: dict[str, Any],
    reference: list[Image.Image],
    cache: Path,
    per_image: bool = False,
) -> tuple[ScoreReport, dict[str, dict[str, Any]]]:
    """The detector's report, and per concept the fields of a results row (``icr``, ``fp_rate``,
    ``crosscheck``, ``prompts_sha256``, ``blank_images``, ``quality``, ``quality_detail``, ``quality_kinds``, ``fid_x_icr``).

    ``quality`` is a track's ``[quality]`` table; ``reference`` the clean images FID compares with.
    ``per_image``: each row also holds, under :data:`PER_IMAGE`, the per-image values of the quality
    means that have them (prompt following), for the caller to combine over seeds and drop.
    """
    report = score_images(paths, detector, score)
    measured = quality_scores(paths, prompts, quality, reference, cache, seed=score.seed)
    values = measured.pop(PER_IMAGE, {})
    rows = {}
    for concept, concept_score in report.concepts.items():
        row = {
            "icr": concept_score.icr.to_json(),
            "fp_rate": concept_score.fp_rate.to_json(),
            "crosscheck": {x.checker: {"icr": x.icr.to_json(), "agreement": x.agreement} for x in report.crosschecks if x.concept == concept},
            "prompts_sha256": prompts_sha256(prompts),
            "blank_images": report.blank_images,
            **measured,
        }
        fid = measured["quality"].get("scene_fid", measured["quality"].get("fid"))
        if fid is not None:  # the paper's FID x ICR %, with whichever FID the track measures, and the ICR the row records
            row["fid_x_icr"] = fid * 100 * row["icr"]["value"]
        if per_image:
            row[PER_IMAGE] = values
        rows[concept] = row
    return report, rows


def quality_scores(
    paths: list[Path], prompts: list[Prompt], quality: dict[str, Any], reference: list[Image.Image], cache: Path, seed: int
) -> dict[str, Any]:
    kind = quality.get("kind", "scene")
    if kind == "none":
        return {"quality": {}, "quality_kinds": []}
    images = [load_image(p) for p in paths]
    if kind == "scene":
        options = {k: v for k, v in quality.items() if k not in ("kind", "image_size")}
        extractor = SceneFeatures.load_or_train(cache, image_size=quality.get("image_size", 64), **options)
        fid = scene_fid(images, reference, extractor)
        scenes = [Scene.from_json(p.scene) if p.scene else p.prompt for p in prompts]
        follow = prompt_following(images, scenes, extractor, seed=seed)
        return {
            "quality": {"scene_fid": fid.value, "prompt_following": follow.mean.value},
            "quality_detail": {"scene_fid": fid.to_json(), "prompt_following": follow.to_json()},
            "quality_kinds": [fid.kind, follow.kind],
            PER_IMAGE: {"prompt_following": list(follow.per_image)},
        }
    weights = {k: quality.get(k) for k in ("fid_weights", "clip_weights")}
    if not all(weights.values()):
        raise ValueError("[quality] needs fid_weights and clip_weights (local paths) for kind 'paper'")
    fid = paper_fid(images, reference, weights["fid_weights"])
    clip = paper_clip_score(images, [p.prompt for p in prompts], weights["clip_weights"])
    return {
        "quality": {"fid": fid.value, "clip_score": clip.value},
        "quality_detail": {"fid": fid.to_json(), "clip_score": clip.to_json()},
        "quality_kinds": [fid.kind, clip.kind],
    }
