"""The benchmark's cached stages: each returns what a later stage needs, building it only when
its inputs (named by content) have not built it before.

dataset -> base model -> detector (trained with the base's generations) -> fine-tunes; the protocol (:mod:`benchmark.protocol`) only
sequences them. A killed run resumes because every stage's output is renamed into place whole.
"""
from __future__ import annotations

import hashlib
from itertools import islice
from pathlib import Path
from typing import Any

from benchmark.benchmark_run import BenchmarkRun
from benchmark.generation import diffusers_generate_fn, generate_images
from benchmark.methods.interface import FineTune
from benchmark.models.base_model import pretrain_base
from benchmark.models.folder_seal import check_seal, seal
from benchmark.models.pipeline_identity import pipeline_sha256, weights_sha256
from benchmark.models.pipelines import load_pipeline as _load
from benchmark.prompts import shard_prompts
from benchmark.published_models import materialize_base, published_base, published_detector
from benchmark.track import DETECTOR_SUBSET, Track
from benchmark.training import PIPELINE_DIR, TrainingConfig, processes, train
from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe, source_from_spec
from builders.verify import require_verified
from implicit_concept.content_hashes import sha256_file
from implicit_concept.detector.inference import Detector
from implicit_concept.detector.training import load_scale, train_detector
from implicit_concept.detector.weights import FORMAT as DETECTOR_FORMAT
from implicit_concept.detector.weights import RECORD_NAME
from implicit_concept.detector.yolo_env import use_cache
from implicit_concept.file_locks import locked
from implicit_concept.geom_erasing.training_target import GeomErasingConfig
from implicit_concept.json_records import read_json_object_or_none
from implicit_concept.provenance import cache_key
from implicit_concept.scoring import clean_images

#: The subset whose train captions prompt the base's background and calibration images.
DETECTOR_PROMPT_SUBSET = DETECTOR_SUBSET
#: Their sampling seeds start here, far from the evaluation prompts'.
GENERATED_SEED_BASE = 900_000
#: Beside a fine-tune's pipeline: its files as they were made (:mod:`benchmark.models.folder_seal`).
SEAL_FILE = "sealed.json"


def dataset(run: BenchmarkRun, build: bool = True) -> Path:
    """The track's ICD shards under ``data_root`` (built, or resumed, and verified on the main
    process): data that does not verify is refused, naming its first problems."""
    recipe = load_recipe(run.track.recipe, {"source": source_from_spec(run.source)} if run.source else None)
    out = run.data_root / recipe.name
    if build:
        build_dataset(recipe, out, workers=run.workers, progress=run.progress)
        require_verified(out)
        if run.track.prompts == "test-split":
            for subset_name, _ in run.track.groups():
                _require_test_split(out / subset_name / "test", recipe.source, getattr(run.track, "num_prompts", 1))
        wanted = run.track.detector_backgrounds + run.track.detector_calibration
        if wanted and run.detector is None:
            _require_captions(out / DETECTOR_PROMPT_SUBSET / "train", wanted)
    return out


def _require_captions(train: Path, wanted: int) -> None:
    """The base's background and calibration images are prompted by these captions: a split of too
    few is refused once the dataset is built, not after the base is trained (where it was found)."""
    available = sum((read_json_object_or_none(path) or {}).get("successes", 0) for path in train.glob("*_stats.json"))
    if available < wanted:
        raise ValueError(f"{train}: the train split holds {available} captions, and this track's detector_backgrounds "
                         f"+ detector_calibration is {wanted}: lower them or build a larger split")


def _require_test_split(test: Path, source: dict[str, Any], num_prompts: int = 1) -> None:
    """Refuse before any training a track that draws its prompts from an empty test split (no
    shard, or shards whose every item was skipped: the shards' stats count what was written), or
    from one holding fewer captions than its ``num_prompts``: a run never scores silently fewer."""
    available = sum((read_json_object_or_none(path) or {}).get("successes", 0) for path in test.glob("*_stats.json"))
    if 0 < available < num_prompts:
        raise ValueError(
            f"{test}: the test split holds {available} captions, and this track's num_prompts is {num_prompts} "
            f"(prompts = \"test-split\"): lower num_prompts or build a larger test split"
        )
    if not available:
        if source.get("kind") == "procedural":
            why = f"the recipe's [source] test ({source.get('test')}) sets its size: raise it"
        else:
            why = (
                f"a source's test split takes test_fraction ({source.get('test_fraction', 0.1)}) of its "
                "items by a hash of their keys, so a source of few items may put none there: use a larger source"
            )
        raise ValueError(
            f"{test}: the test split is empty, and this track's evaluation prompts are its captions "
            f"(prompts = \"test-split\"). {why[0].upper()}{why[1:]}, or use a track whose prompts are a CSV"
        )


def detector(run: BenchmarkRun, dataset: Path, base: Path | None = None) -> Detector:
    """``--detector``; else the published detector trained from exactly this run's inputs; else the
    track's scale trained on icd-mixed (with the base's generations as background and calibration
    images), cached by those inputs.

    A detector is loaded only once its weights match the sha256 its record holds
    (:meth:`Detector.load` checks it); ultralytics' own files go under the run's cache folder.
    """
    use_cache(run.cache)
    if run.detector:
        return Detector.load(run.detector)
    identity = detector_identity(run, dataset, base)
    published = published_detector(identity)
    if published is not None:
        return Detector.load(published)
    out = detector_dir(run, identity)
    with locked(out):
        if not (out / RECORD_NAME).is_file():
            extra = {}
            if "generated" in identity:
                extra = dict(zip(("backgrounds", "calibration"), base_generations(run, dataset, base, identity["generated"])))
            train_detector(dataset / DETECTOR_SUBSET, out, load_scale(run.track.detector_scale), **extra)
    return Detector.load(out)


def detector_identity(run: BenchmarkRun, dataset: Path, base: Path | None = None) -> dict[str, Any]:
    """What a trained detector is a function of: its scale, the shards (their checksums), the
    detector's file format and, when the track asks for them, the base's generated images (named by
    the base's weights, the prompts and the sampler settings)."""
    scale = load_scale(run.track.detector_scale)
    checksums = (dataset / CHECKSUMS).read_text(encoding="utf-8")
    identity: dict[str, Any] = {"scale": dict(scale.__dict__), "data": hashlib.sha256(checksums.encode()).hexdigest(), "format": DETECTOR_FORMAT}
    backgrounds, calibration = run.track.detector_backgrounds, run.track.detector_calibration
    if backgrounds or calibration:
        if base is None:
            raise ValueError("the track asks for the base's generations as detector background images: pass the base")
        identity["generated"] = {
            "base_weights": weights_sha256(base),
            "prompts": f"{DETECTOR_PROMPT_SUBSET}/train captions",
            "seed_base": GENERATED_SEED_BASE,
            "backgrounds": backgrounds,
            "calibration": calibration,
            "settings": dict(run.track.generation),
        }
    return identity


def detector_dir(run: BenchmarkRun, identity: dict[str, Any]) -> Path:
    """Where the track's detector is cached: named by its :func:`detector_identity`."""
    return run.cache / "detectors" / f"{identity['scale']['name']}-{cache_key(identity)}"


def base_generations(run: BenchmarkRun, dataset: Path, base: Path, identity: dict[str, Any]) -> tuple[Path, Path]:
    """(backgrounds, calibration): folders of the base's images for clean prompts (icd-mixed's train
    captions, never the evaluation prompts), generated once (resumable) and cached under ``identity``
    (:func:`detector_identity`'s ``generated`` part)."""
    n_bg, n_cal = identity["backgrounds"], identity["calibration"]
    prompts = shard_prompts(dataset / DETECTOR_PROMPT_SUBSET / "train", n_bg + n_cal, seed_base=GENERATED_SEED_BASE)
    if len(prompts) < n_bg + n_cal:
        raise ValueError(f"{dataset / DETECTOR_PROMPT_SUBSET / 'train'}: {len(prompts)} captions, the track asks for {n_bg + n_cal} generated images")
    root = run.cache / "base-generations" / cache_key(identity)
    settings = run.track.generation_settings()
    pipe = load_pipeline(base)
    generate = diffusers_generate_fn(pipe, settings)
    folders = (root / "backgrounds", root / "calibration")
    for folder, chunk, desc in ((folders[0], prompts[:n_bg], "backgrounds"), (folders[1], prompts[n_bg:], "calibration")):
        generate_images(generate, chunk, folder, settings=settings, progress=run.progress, desc=f"base {desc}", source={"base_weights": identity["base_weights"]})
    return folders


def pretrain_base_model(run: BenchmarkRun) -> Path:
    """The embedded base model (a tiny pipeline pre-trained on procedural scenes): the published one
    when the repository holds the track's, else trained and cached by its config."""
    config = run.track.base_model_config()
    published = published_base(config)
    if published is not None:
        base = materialize_base(published, config, run.cache / "bases")
    else:
        base = pretrain_base(config, run.cache / "bases", progress=run.progress)
    check_shared(base, sealing=True)
    return base


def check_shared(folder: Path, sealing: bool = False) -> None:
    """Refuse a shared model folder of the run or cache that a method wrote into since it was made:
    the base every fine-tune, every later run and the ``base`` row start from (``ctx.base``), or a
    fine-tune; known by the seal beside it (``sealing``: sealed now if it has none). A folder of the
    user's (``--pretrained``) has no seal and is not checked."""
    folder = Path(folder)
    record = folder.parent / SEAL_FILE
    if sealing or record.is_file():
        check_seal(folder, record, "a method may have written into the model it was given (write a copy under ctx.work_dir "
                   f"instead); delete {folder.parent} to make it again")


def finetune(run: BenchmarkRun, base: Path, subset: Path, ft: FineTune, detector: Detector, may_train: bool = True) -> Path:
    """The fine-tune ``ft`` on ``subset``'s train split, from ``base`` or from the plain fine-tune
    (``ft.start``), cached under :func:`finetune_key`."""
    check_shared(base)
    if ft.start == "sd":
        base = finetune(run, base, subset, FineTune(seed=ft.seed), detector, may_train)
    config = finetune_config(run.track, ft)
    out = _finetune_folder(run, base, subset, ft, detector)
    if not may_train and not is_made(out):
        raise RuntimeError(
            f"a method asked for a fine-tune it does not declare in finetunes() ({ft}): over several "
            "processes only declared fine-tunes are trained, by all processes together"
        )
    if is_made(out):
        # Named by content: made from this base, even one loaded from another path. Every method
        # shares it, so one that wrote into it is caught here, before another samples its changes.
        check_seal(out / PIPELINE_DIR, out / SEAL_FILE, f"a method may have written into the fine-tune it was given (write a copy "
                   f"under ctx.work_dir instead); delete {out} to train it again")
        return out / PIPELINE_DIR
    detect = detector.detect if config.geom.geometry_source == "detector" else None
    state = processes()
    # Every process of a multi-GPU run trains it, while the main process holds its lock.
    with locked(out, holder=state.is_main_process):
        state.wait_for_everyone()
        made = train(base, subset / "train", out, config, detect=detect, progress=run.progress)
        if state.is_main_process:
            seal(made, out / SEAL_FILE)
        return made


def finetune_folder(run: BenchmarkRun, base: Path, subset: Path, ft: FineTune, detector: Detector) -> Path | None:
    """Where :func:`finetune` caches ``ft``, found without training; None for one that starts from
    ``sd`` while that is not made (its name hashes the weights it starts from)."""
    if ft.start == "sd":
        sd = finetune_folder(run, base, subset, FineTune(seed=ft.seed), detector)
        if sd is None or not is_made(sd):
            return None
        base = sd / PIPELINE_DIR
    return _finetune_folder(run, base, subset, ft, detector)


def _finetune_folder(run: BenchmarkRun, start: Path, subset: Path, ft: FineTune, detector: Detector) -> Path:
    """The folder of ``ft`` trained from the pipeline ``start``."""
    return run.root / "models" / subset.name / f"{ft.data}-{finetune_key(start, subset, finetune_config(run.track, ft), detector)}"


def is_made(folder: Path) -> bool:
    """Whether a fine-tune's folder holds its finished pipeline (renamed into place whole)."""
    return (folder / PIPELINE_DIR / "model_index.json").is_file()


def finetune_config(track: Track, ft: FineTune) -> TrainingConfig:
    """The config :func:`finetune` trains ``ft`` with: the track's ``[finetune]`` table, the seed, the
    fine-tune's own overrides and Geom-Erasing switches (one place, so the paper dry run checks the same)."""
    return TrainingConfig(
        **{**track.finetune, "seed": track.seed if ft.seed is None else ft.seed, **ft.training},
        geom=ft.geom or GeomErasingConfig.plain(),
        image_field="clean" if ft.data == "clean" else "image",
    )


def finetune_key(base: Path, subset: Path, config: Any, detector: Any) -> str:
    """What names a cached fine-tune: its inputs by content (the base pipeline's files, so changed
    weights at the same path train anew and a moved copy does not; the training shards, so a rebuilt
    dataset at the same path trains anew), the detector's weights when its boxes are the geometry, and
    the number of processes when several train (their weights differ from one's by float summation
    order; one process keeps the key it always had)."""
    listing = subset.parent / CHECKSUMS
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing; the dataset's checksums name the data a fine-tune is cached under")
    train = sorted(line for line in listing.read_text(encoding="utf-8").splitlines() if line.split("  ")[-1].startswith(f"{subset.name}/train/"))
    inputs = {"base": pipeline_sha256(base), "data": subset.name, "train_shards": train, "config": config.to_dict()}
    if config.geom.geometry_source == "detector":
        inputs["detector"] = sha256_file(detector.path)
    if processes().num_processes > 1:
        inputs["processes"] = processes().num_processes
    return cache_key(inputs)


def load_pipeline(path: Path) -> Any:
    """A saved pipeline, quiet (no per-step progress bars); a shared one a method wrote into is refused."""
    check_shared(path)
    pipe = _load(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(test_shards: Path, count: int) -> list:
    """Clean test images, in the order of the evaluation prompts (the test split's captions)."""
    return [image for _, image in islice(clean_images(test_shards), count)]
