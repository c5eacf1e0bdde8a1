"""One method on one training subset: build its generator, sample the evaluation prompts, score.

The unit the protocol repeats for every method and training seed, in the main process or, under
``--jobs``, in a worker process (:mod:`benchmark.parallel_methods`): everything it needs is
rebuilt here from the run and paths, so both places evaluate a method the same way.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.evaluation.scorecard import score_generated
from benchmark.failures import ToolkitIOError, plugin_failure, plugin_output, toolkit_io
from benchmark.generation import GenerationSettings, call_problem, diffusers_generate_fn, generate_images, image_prompts
from benchmark.library_patches import kept_library_functions, without_plugin_replacements
from benchmark.methods import REGISTRY, NotImplementedMethod, get_method
from benchmark.methods.interface import FineTune, Generator, MethodContext, checked_generator
from benchmark.methods.plugins import code_sha256, is_toolkit_class
from benchmark.models.folder_seal import FolderChanged, check_listing, stat_listing
from benchmark.models.pipeline_checks import pipeline_problem
from benchmark.models.pipeline_identity import model_record, pipeline_source, remember_loaded
from benchmark.plugin_state import in_working_folder, kept_plugin_state, seeded_rngs
from benchmark.prompts import Prompt, read_prompts, shard_prompts, write_prompts
from benchmark.sample_grid import method_grid
from implicit_concept.detector.inference import Detector
from implicit_concept.scoring import ScoreConfig, ScoreReport
from implicit_concept.torch_settings import kept_torch_settings, under_toolkit_settings


@dataclass(frozen=True)
class Evaluation:
    """What every method on one training subset is judged with: the same prompts, sampler settings,
    detector and clean reference images."""

    subset: str
    prompts: list[Prompt]
    settings: GenerationSettings
    detector: Detector
    reference: list[Image.Image]


def evaluation_for(run: BenchmarkRun, subset: Path, detector: Detector) -> Evaluation:
    prompts = evaluation_prompts(run, subset)
    return Evaluation(subset.name, prompts, run.track.generation_settings(), detector, quality_reference(subset / "test", prompts))


def quality_reference(test_shards: Path, prompts: list[Prompt]) -> list[Image.Image]:
    """The clean images FID compares with: one per evaluation prompt, however many images each prompt
    is drawn with, so a method here and ``score-pipeline``/``score-images`` compare with the same set."""
    return stages.reference_images(test_shards, len(prompts))


def evaluation_prompts(run: BenchmarkRun, subset: Path) -> list[Prompt]:
    """The track's prompts CSV, or (``prompts = "test-split"``) the captions of the subset's test split."""
    if run.track.prompts != "test-split":
        return read_prompts(run.track.prompts, limit=run.track.num_prompts)
    path = run.root / f"prompts-{subset.name}.csv"
    if not path.exists():
        write_prompts(path, shard_prompts(subset / "test", run.track.num_prompts))
    return read_prompts(path)


def method_context(run: BenchmarkRun, base: Path, subset: Path, concepts: tuple[str, ...], detector: Detector) -> MethodContext:
    """What every method on ``subset`` is given: its concepts, the cached fine-tuning service and the track's settings."""
    track = run.track
    data = stat_listing(subset / "train")

    def finetune(ft: FineTune) -> Path:
        check_listing(subset / "train", data, DATA_REMEDY)  # before a fine-tune, cached under the data's checksums, trains on it
        return stages.finetune(run, base, subset, ft, detector)

    return MethodContext(
        concepts=concepts,
        work_dir=run.root / "methods" / subset.name,
        seed=track.seed,
        # The toolkit's services run under its own torch settings and working folder, not a plug-in's build's (no_grad, float64, chdir).
        finetune=_service(finetune),
        load_pipeline=_service(lambda path: remember_loaded(stages.load_pipeline(path))),
        train_shards=subset / "train",
        settings={"esd": track.esd, "fmn": track.fmn, "geom_erasing": track.geom_erasing},
        detector=detector,
        base=Path(base),
        threads=track.finetune.get("threads"),
        progress=run.progress,
        home=Path.cwd(),
    )


#: What training data a method wrote into (``ctx.train_shards``) is, and what to do about it.
DATA_REMEDY = ("the training data every method's fine-tunes read, cached under the dataset's recorded checksums: write a "
               "filtered copy under ctx.work_dir instead, and rebuild the dataset (make dataset)")


def _service(call: Callable[..., Any]) -> Callable[..., Any]:
    """A toolkit service handed to methods: run under the toolkit's torch settings, library functions
    and working folder, whatever a plug-in's build set around the call; its I/O errors its own."""
    return toolkit_io(under_toolkit_settings(without_plugin_replacements(in_working_folder(call))))


def own_context(ctx: MethodContext, work_dir: Path) -> MethodContext:
    """``ctx`` for one method: its own folder, and its own copies of what the next method and the
    scoring are given too. The settings tables are the track's (a method that sets
    ``ctx.settings["esd"]["steps"]`` would change ESD's edit for every method after it), and the
    detector's thresholds and network are those every method's images are scored with (a method that
    lowers the thresholds to find more boxes for its own training, or runs the network as a critic in
    train mode, would change its own ICR and every later method's)."""
    detector = ctx.detector.own_copy() if isinstance(ctx.detector, Detector) else copy.copy(ctx.detector)
    if detector is not None:
        detector.thresholds = dict(ctx.detector.thresholds)
    return replace(ctx, work_dir=work_dir, settings=copy.deepcopy(ctx.settings), detector=detector)


def seeded(ctx: MethodContext, seed: int) -> MethodContext:
    """``ctx`` for one training seed: the seed its fine-tunes are trained with, unless a fine-tune
    sets its own (``FineTune(seed=N)``, a plug-in's choice, kept)."""
    return replace(ctx, seed=seed, finetune=lambda ft, finetune=ctx.finetune: finetune(ft.under_seed(seed)))


def evaluate_method(
    run: BenchmarkRun, spec: str, ctx: MethodContext, evaluation: Evaluation, label: str = ""
) -> tuple[list[dict[str, Any]], ScoreReport | None]:
    """Build, generate and score one method on one training subset: a row per concept scored, and the
    detector's report. ``label`` tells apart the folders of a method's other training seeds."""
    method = get_method(spec)
    # Its name as checked when named (folders under the run's): one its build sets anew ("../x", "sd")
    # would draw outside the run's images, or over another method's.
    name = method.name
    rows = [{"concept": c, "method": name, "subset": evaluation.subset, "description": _description(method)}
            for c in ctx.concepts]
    ctx = own_context(ctx, ctx.work_dir / (name + label))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    data = stat_listing(ctx.train_shards)
    try:
        # A plug-in that sets torch's threads, default dtype, grad mode or numerics switches, or replaces a library
        # function, does so for itself; what it prints goes to stderr.
        with kept_torch_settings(), plugin_output(), kept_library_functions():
            generator, paths, timings, source = _draw(run, method, ctx, evaluation, label)
    except NotImplementedMethod as e:
        return [{**row, "status": f"missing: {e}"} for row in rows], None
    if ctx.base is not None:  # named here, where the method that wrote into it is known
        try:
            stages.check_shared(ctx.base)
        except FolderChanged as e:
            raise FolderChanged(f"{evaluation.subset}/{name}{label} wrote into the base model it was given: {e}") from None
    try:
        check_listing(ctx.train_shards, data, DATA_REMEDY)
    except FolderChanged as e:
        raise FolderChanged(f"{evaluation.subset}/{name}{label} wrote into the training data it was given: {e}") from None
    start = time.perf_counter()
    score = ScoreConfig(conf=run.track.conf, seed=run.track.seed)
    report, scores = score_generated(paths, image_prompts(evaluation.prompts, evaluation.settings), evaluation.detector, score,
                                     run.track.quality, evaluation.reference, run.cache, per_image=True)
    report.write_json(run.root / "scores" / evaluation.subset / f"{name}{label}.json")
    timings["score"] = time.perf_counter() - start
    for row in rows:
        row.update(
            status="ok",
            model=_read_pipeline(f"{evaluation.subset}/{name}{label}", "after sampling",
                                 lambda: model_record(generator.pipeline, source)),
            negative_prompt=generator.negative_prompt,
            timings={k: round(v / len(rows), 1) for k, v in timings.items()},
            **plugin_record(spec, source),
            **scores[row["concept"]],
        )
    method_grid(paths[:8], report.images[:8], run.root / "grids" / evaluation.subset / f"{name}{label}.png",
                title=f"{evaluation.subset} / {name}{label}")
    return rows, report


def _draw(run: BenchmarkRun, method: Any, ctx: MethodContext, evaluation: Evaluation, label: str
          ) -> tuple[Generator, list[Path], dict[str, float], dict[str, Any]]:
    """The method's generator and its images of the evaluation prompts (made or found), with the
    seconds each took and what the images are drawn from (:func:`pipeline_source`, the call
    arguments, the method's code). A method that says it is not implemented raises NotImplementedMethod."""
    folder = method.name + label  # read before its build, which may set another name
    where = f"{evaluation.subset}/{folder}"
    start = time.perf_counter()
    try:
        with kept_plugin_state(), seeded_rngs("build", where):
            built = method.build(ctx)
    except (NotImplementedMethod, ToolkitIOError):  # not carried yet; the toolkit's own writing failed
        raise
    except BaseException as e:
        raise plugin_failure(where, "build(ctx)", e) from e
    generator = checked_generator(method, built)
    pipeline = generator.pipeline
    problem = _read_pipeline(where, "before sampling", lambda: pipeline_problem(pipeline)
                             or call_problem(pipeline, evaluation.settings, generator.call_kwargs))
    if problem is not None:
        raise ValueError(f"{where}: the pipeline build(ctx) returned cannot be sampled: {problem}")
    timings = {"build": time.perf_counter() - start}
    start = time.perf_counter()
    held = _read_pipeline(where, "before sampling", lambda: _quiet_source(pipeline))
    source = {**held, "call_kwargs": generator.call_kwargs, "method_code": code_sha256(method)}
    paths = generate_images(
        diffusers_generate_fn(generator.pipeline, evaluation.settings, **generator.call_kwargs),
        evaluation.prompts,
        run.root / "images" / evaluation.subset / folder,
        negative_prompt=generator.negative_prompt,
        settings=evaluation.settings,
        progress=run.progress,
        desc=where,
        source=source,
    )
    timings["generate"] = time.perf_counter() - start
    return generator, paths, timings, source


def _read_pipeline(where: str, when: str, read: Callable[[], Any]) -> Any:
    """``read()``, a read of the pipeline a plug-in's build returned (its attributes at any depth, its
    ``set_progress_bar_config``), run as the plug-in's code is: a wrapper's ``__getattr__`` that raises
    ``KeyError`` for a name it lacks, a property, a method of its own that raises, is the method's
    failure, named with its traceback, not a bare error from inside the toolkit."""
    try:
        with kept_plugin_state():
            return read()
    except NotImplementedMethod:
        raise
    except BaseException as e:
        raise plugin_failure(where, f"its pipeline, read {when},", e) from e


def _quiet_source(pipeline: Any) -> dict[str, Any]:
    """What ``pipeline`` holds (:func:`pipeline_source`), its own progress bars turned off first
    where it has them (the toolkit draws one per method)."""
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    return pipeline_source(pipeline)


def plugin_record(spec: str, source: dict[str, Any]) -> dict[str, Any]:
    """A plug-in's row fields: how it was named (``--method``'s ``module:Class``, a file path or an
    entry point) and the sha256 of its code (:func:`~benchmark.methods.plugins.method_sources`), so a
    result says what made it; nothing for a built-in method, which the toolkit's version names."""
    if spec in REGISTRY:
        return {}
    return {"method_spec": spec, "method_code_sha256": source.get("method_code")}


def _description(method: Any) -> str:
    """The method's ``description``, else the first line of its own class docstring. A plug-in that
    subclasses a built-in method without a description of its own is not described as that method
    (np's "the concept's name as negative prompt" for a plug-in that samples with another one)."""
    said = getattr(method, "description", "")
    by = next((cls for cls in type(method).__mro__ if "description" in cls.__dict__), None)
    inherited = by is not None and by is not type(method) and is_toolkit_class(by) and not is_toolkit_class(type(method))
    if said and not inherited:
        return said
    doc = type(method).__dict__.get("__doc__") or ""
    if doc.strip():
        return doc.strip().splitlines()[0]
    return f"{type(method).__name__}, a subclass of {getattr(by, 'name', '') or by.__name__}: {said}" if said else ""


