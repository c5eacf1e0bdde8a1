"""``implicit-concept``: a thin command line over the library; every command maps to one call."""
from __future__ import annotations

if __name__ == "__main__":  # ``python -m benchmark.cli``: started as the installed command is, before this module's imports
    from benchmark.command import console_main as _run_command

    _run_command()  # exits

import argparse
import json
import os
import shlex
import signal
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

from benchmark.command import interrupted_while_starting
from benchmark.failures import MethodFailed
from benchmark.process_exit import exit_past_leftovers, last_words, stdout_closed
from benchmark.quiet_libraries import quiet_libraries
from implicit_concept.bounded_reads import file_kind
from implicit_concept.disk_space import out_of_space, space_message
from implicit_concept.files import atomic_write_json, within
from implicit_concept.json_records import finite_json
from implicit_concept.provenance import version
from implicit_concept.worker_processes import STOP_SIGNALS, Interrupted, interrupts, stop_taken, stopped_by


def _build(args: argparse.Namespace) -> int:
    from builders.build import build_dataset
    from builders.recipe import load_recipe, source_from_spec, with_screen_detector

    overrides = {"source": source_from_spec(args.source)} if args.source else None
    recipe = load_recipe(args.recipe, overrides)
    if args.screen_detector:
        recipe = with_screen_detector(recipe, args.screen_detector)
    out = Path(args.out or Path("data") / recipe.name)
    _check_json_apart(args.json, out, "the dataset folder it builds")
    report = build_dataset(
        recipe, out, workers=args.workers, progress=not args.quiet,
        distributor=args.distributor, ray_address=args.ray_address,
    )
    if _json_result(args.json, report.as_json()):
        return 0
    print(
        f"{out}: {report.samples} samples; {report.built} shards built, {report.skipped} already complete; "
        f"skipped source items (each counted once, whatever the subsets that read it): "
        f"{json.dumps(report.failures, sort_keys=True)}"
    )
    return 0


def _recipe_name(args: argparse.Namespace) -> int:
    from builders.recipe import recipe_name

    print(recipe_name(args.recipe))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from builders.verify import verify_dataset

    _check_json_apart(args.json, Path(args.dir), "the dataset folder it verifies")
    report = verify_dataset(Path(args.dir), progress=not args.quiet)
    for problem in report.problems:  # one line each, as every error, whatever the names in it
        print(one_line(problem), file=sys.stderr)
    for note in report.notes:
        print(f"note: {one_line(note)}", file=sys.stderr)
    if _json_result(args.json, report.as_json()):
        return 0 if report.ok else 1
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples, {report.instances} instances: {status}")
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    from builders.preview import preview_dataset

    out = _output_file(args.out, "--out", (".png", ".jpg", ".jpeg", ".webp"))
    dest = preview_dataset(Path(args.dir), out, count=args.count, contaminated_only=args.contaminated)
    print(dest)
    return 0


def _detector_train(args: argparse.Namespace) -> int:
    from implicit_concept.detector.training import load_scale, train_detector

    trained = train_detector(
        Path(args.shards), Path(args.out), load_scale(args.scale),
        backgrounds=Path(args.backgrounds) if args.backgrounds else None,
        calibration=Path(args.calibration) if args.calibration else None,
    )
    test = trained.summary["test_split"]
    per_class = ", ".join(f"{c} {m['map50']:.3f}/{m['map50_95']:.3f}" for c, m in test["per_class"].items())
    thresholds = ", ".join(f"{c} {t:.4g}" for c, t in trained.detector.thresholds.items())
    print(f"{trained.weights}: mAP50/mAP50-95 on the test split: {per_class}; thresholds: {thresholds}; metrics in {trained.metrics}")
    return 0


def _published_detector(track: str) -> Path:
    """The track's published evaluator; where none is published, the refusal says where a run's own is."""
    from benchmark.published_models import PUBLISHED_DIR, PublishedModelError, default_detector

    try:
        return default_detector(track)
    except PublishedModelError as e:
        if (PUBLISHED_DIR / f"detector-{track}").exists():
            raise  # published, but its files do not match their record: the message names the file
        raise PublishedModelError(
            f"{e} (a benchmark run's own evaluator is named in its results.json, detector.path)"
        ) from None


def _score(args: argparse.Namespace) -> int:
    from implicit_concept.detector.inference import Detector
    from implicit_concept.scoring import ScoreConfig, score_images

    detector_path = Path(args.detector or _published_detector("tiny"))
    _check_json_apart(args.json, Path(args.dir), "the images it scores")
    _check_json_apart(args.json, detector_path if detector_path.is_dir() else detector_path.parent, "the detector's folder")
    detector = Detector.load(detector_path)
    report = score_images(args.dir, detector, ScoreConfig(conf=args.conf), clean=args.clean, progress=not args.quiet)
    if args.json == "-":
        return 0 if _json_result("-", report.to_json()) else 1
    print(report.table())
    if args.json:
        print(report.write_json(args.json))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.protocol import run_benchmark
    from benchmark.track import load_track

    track = load_track(args.track)
    run = BenchmarkRun(
        track=track,
        name=track.name if args.name is None else args.name,  # "" (an unset variable) is refused, not the default
        runs_root=Path(args.runs),
        data_root=Path(args.data),
        cache=Path(args.cache),
        pretrained=Path(args.pretrained) if args.pretrained else None,
        detector=Path(args.detector) if args.detector else None,
        source=args.source,
        methods=tuple(args.method or ()),
        workers=args.workers,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    if run_benchmark(run):  # empty on the helper processes of a multi-process run
        print((run.root / "results.md").read_text(encoding="utf-8"))
        print(f"results: {run.root / 'results.json'}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.publish import publish_track_models
    from benchmark.track import load_track

    track = load_track(args.track)
    run = BenchmarkRun(track=track, name=f"publish-{track.name}", runs_root=Path(args.data) / ".publish", data_root=Path(args.data),
                       cache=Path(args.cache), workers=args.workers, progress=not args.quiet)
    for what, folder in publish_track_models(run).items():
        print(f"{what}: {folder}")
    return 0


def _judging(args: argparse.Namespace):
    from dataclasses import replace

    from benchmark.external import Judging, test_split
    from benchmark.track import load_track
    from implicit_concept.detector.inference import Detector

    track = load_track(args.track)
    test = test_split(track, Path(args.data), args.subset)
    judging = Judging(track=track, detector=None, reference=None, cache=Path(args.cache), num_prompts=args.num_prompts,
                      subset=args.subset, test_split=test)  # a wrong --subset fails first
    detector = Detector.load(Path(args.detector) if args.detector else _published_detector(track.name))  # then an unusable detector
    reference = None if args.no_quality else Path(args.reference) if args.reference else test if test.is_dir() else None
    if reference is None and not args.no_quality:
        # `make dataset` alone builds icd-tiny: name the track's own recipe and the folder it must reach.
        dataset = test.parent.parent
        raise FileNotFoundError(
            f"{test}: no such folder, the clean test split quality is measured against (track {track.name}'s recipe "
            f"{track.recipe}, built under --data {args.data}): build it (implicit-concept build {shlex.quote(track.recipe)} "
            f"--out {shlex.quote(str(dataset))}), "
            f"pass --reference SHARDS, or --no-quality"
        )
    return replace(judging, detector=detector, reference=reference)


def _score_pipeline(args: argparse.Namespace) -> int:
    from benchmark.external import score_pipeline

    summary = score_pipeline(
        Path(args.pipeline), Path(args.out), _judging(args), negative_prompt=args.negative_prompt, progress=not args.quiet,
        steps=args.steps, guidance_scale=args.guidance, image_size=args.size, images_per_prompt=args.images_per_prompt, own_scheduler=args.own_scheduler,
    )
    _print_summary(summary)
    return 0


def _score_images(args: argparse.Namespace) -> int:
    from benchmark.external import score_image_folder

    summary = score_image_folder(Path(args.dir), Path(args.out), _judging(args), images_per_prompt=args.images_per_prompt, image_size=args.size)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(summary["table"])
    if summary["overrides"]:
        print(f"off the track's protocol (recorded in summary.json): {json.dumps(summary['overrides'], sort_keys=True)}")


def _prompts(args: argparse.Namespace) -> int:
    from benchmark.prompts import procedural_prompts, write_prompts

    out = _output_file(args.out, "--out", (".csv",))
    prompts = procedural_prompts(args.recipe, args.count, seed_base=args.seed_base)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # as show's --out and every --json: a new folder is made
        write_prompts(out, prompts)
    except OSError as e:
        if out_of_space(e):
            raise  # said as every full disk is
        why = _not_a_folder(e) if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise ValueError(f"--out {out}: cannot be written ({why})") from None
    print(f"{args.out}: {args.count} prompts from {args.recipe}'s procedural test split")
    return 0


def _export(args: argparse.Namespace) -> int:
    from implicit_concept.detector.export import export_detection_dataset

    exported = export_detection_dataset(Path(args.shards), Path(args.out), formats=tuple(args.format or ("yolo", "coco")), progress=not args.quiet)
    for split, counts in exported.counts.items():
        print(f"{split}: {counts['images']} images, {counts['contaminated']} with a concept")
    if exported.data_yaml:
        print(f"YOLO: {exported.data_yaml}")
    for split, path in exported.coco.items():
        print(f"COCO {split}: {path}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import write_leaderboard

    board = write_leaderboard([Path(d) for d in args.runs], Path(args.out))
    print(board.markdown)
    print(f"{Path(args.out) / 'leaderboard.md'}, {Path(args.out) / 'leaderboard.html'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import SUMMARY_FILE
    from benchmark.results_file import read_results
    from benchmark.results_page import write_results_page
    from implicit_concept.file_locks import locked

    run = Path(args.run)
    if not run.is_dir():
        raise ValueError(f"{run}: {'not a run folder' if run.exists() else 'no such run folder'} (want runs/NAME, holding results.json)")
    if (run / "results.json").is_dir():  # a FIFO or device there is named by the reader
        raise ValueError(f"{run / 'results.json'}: a folder, not a results file")
    if not os.path.lexists(run / "results.json"):  # refused before the lock, whose file was left in any folder named
        if (run / SUMMARY_FILE).is_file():
            raise ValueError(f"{run}: a score-pipeline or score-images --out folder (its {SUMMARY_FILE}), not a benchmark run folder, "
                             f"which report pages; its table is in {SUMMARY_FILE}, and `implicit-concept leaderboard {run} RUN ... "
                             "--out BOARD` ranks it beside runs")
        raise ValueError(f"{run / 'results.json'}: no results.json (is {run} a benchmark run folder?)")
    try:
        # The run's lock, as the benchmark holds it: a page written meanwhile would be of the results it replaces.
        with locked(run, wait=False, refusal="wait for the run to finish, then report", inside=True):
            print(write_results_page(read_results(run), run))
    except OSError as e:
        if out_of_space(e):
            raise  # said as every full disk is
        raise ValueError(f"{e.filename or run}: cannot be read or written ({e.strerror or e})") from None
    return 0


def _json_result(dest: str | None, result: dict) -> bool:
    """``--json FILE`` writes ``result`` there; ``--json -`` prints it, one JSON object and nothing else
    on stdout, for scripts. True when stdout got it (the command prints no text then)."""
    if dest is None:
        return False
    if dest == "-":
        print(json.dumps(finite_json(result), sort_keys=True, allow_nan=False))  # strict JSON, as the files are
        return True
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return False


def _check_json_apart(dest: str | None, folder: Path, what: str) -> None:
    """Refuse a ``--json`` file inside a folder the command builds or reads (a dataset, a detector):
    written there, it replaced the folder's own record (``recipe.json``, ``detector.json``), or was
    found as a stray file of it."""
    if dest not in (None, "-") and within(Path(dest).parent, folder):
        raise ValueError(f"--json {Path(dest).resolve()}: lies inside {what}, {Path(folder).resolve()}, which it would change; "
                         "write it outside")


def path_value(text: str) -> str:
    """An argparse type for a path (or a name where one is also taken): an empty one, what ``--out "$OUT"``
    gives with ``OUT`` unset, meant the current folder (a build or export into it, a verify of it), so
    it is refused; a leading ``~``, which the shell leaves as it is when quoted or after ``--opt=``, is
    the home folder (a folder named ``~`` made in the current one looked like home to ``rm -rf ~``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: empty, where a path is expected (. names the current folder)")
    return os.path.expanduser(text)


def json_destination(text: str) -> str:
    """An argparse type: ``--json``'s file, refused before any work when it is a folder."""
    if text != "-":
        text = path_value(text)
    if text != "-" and Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder; want a file path, or - for stdout")
    return text


def _add_json_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", metavar="FILE", type=json_destination, help=f"also write the result as JSON ({what}) to FILE; "
                                                  "- prints it on stdout instead of the text")


def _output_file(value: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """An output file's path, refused at once when it is a folder or names no known format."""
    out = Path(value)
    if out.is_dir():
        raise ValueError(f"{option} {out}: a folder; want a file path ending in {' or '.join(suffixes)}")
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {out}: want a file path ending in {' or '.join(suffixes)}")
    return out


def int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (a usage error, exit code 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _add_scoring_arguments(p: argparse.ArgumentParser, out_help: str) -> dict[str, str]:
    """The options score-pipeline and score-images share; returns the kinds of its path arguments."""
    p.add_argument("--detector", type=path_value, help="the detector folder `detector train` wrote, or its weights file, such as a benchmark run's "
                                       "(its results.json's detector.path) (default: the track's published evaluator)")
    p.add_argument("--track", type=path_value, default="tiny", help="the track whose prompts, seeds, sampler, threshold and quality measures judge (default: tiny)")
    p.add_argument("--num-prompts", type=int_at_least(1), help="score only the first N of the track's prompts (default: the track's count)")
    p.add_argument("--subset", help="the track's training subset the model stands for (a per-subset track such as paper: "
                                    "icd-qrcode, ...): its concepts are scored, its test split is the quality reference and, "
                                    "on a track whose prompts are test-split captions, the prompts (default: every concept "
                                    "is scored, with the track's first subset's test split)")
    p.add_argument("--images-per-prompt", type=int_at_least(1), help="images per prompt (default: the track's)")
    p.add_argument("--data", type=path_value, default="data", help="where the track's dataset is built: its clean test split is the quality reference (default: data)")
    p.add_argument("--reference", type=path_value, help="clean test shards to compare with, instead of the track's dataset under --data")
    p.add_argument("--no-quality", action="store_true", help="ICR only, no quality scores")
    _add_cache_argument(p, "folder for the scene-feature network quality is measured with (trained once, then reused) "
                           "and ultralytics' settings and font and matplotlib's caches (default: .cache/implicit-concept)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=path_value, required=True, help=out_help)
    return {"detector": "path", "reference": "source"}


def _add_cache_argument(p: argparse.ArgumentParser, help_text: str = "folder for ultralytics' settings and font and "
                                                                       "matplotlib's caches (default: .cache/implicit-concept)") -> None:
    p.add_argument("--cache", type=path_value, default=".cache/implicit-concept", help=help_text)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line of stderr (exit 2), as every other error of the command,
    and long options spelled out: argparse's own prefix matching took ``benchmark --run NAME`` as
    ``--runs NAME`` (results under NAME/tiny), and a prefix that works today is taken by tomorrow's option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


class _CommandParser(Parser):
    """A command's parser: an argument it does not take is its error, named by the command (argparse
    leaves it to the top-level parser, whose usage says nothing of the command's options)."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


#: What a path argument must be: ``folder``; ``path`` (a file or a folder); ``source`` (a path, or a
#: brace pattern, ``pipe:`` command or URL, left to the reader).
PATH_KINDS = ("folder", "path", "source")


def _paths(p: argparse.ArgumentParser, **kinds: str) -> None:
    """Name ``p``'s path arguments, checked by :func:`_check_paths` once the whole command line parsed."""
    assert set(kinds.values()) <= set(PATH_KINDS), kinds
    p.set_defaults(path_arguments=(p, kinds))


def path_problem(text: str, kind: str) -> str | None:
    """Why ``text`` cannot be the ``kind`` of path an argument wants (None when it can)."""
    if kind == "source" and ("{" in text or "::" in text or text.startswith(("pipe:", "http://", "https://"))):
        return None
    path = Path(text)
    if not path.exists():
        return f"{text}: {'a broken symbolic link' if path.is_symlink() else 'no such ' + ('folder' if kind == 'folder' else 'file or folder')}"
    if kind == "folder" and not path.is_dir():
        return f"{text}: {file_kind(path.stat().st_mode)}, where a folder is expected"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return f"{text}: cannot be read (permission denied)"
    return None


def _check_paths(args: argparse.Namespace) -> None:
    """A path argument that is missing, of the wrong kind or unreadable is refused (exit 2, as every bad
    input) naming the argument and the path, before any import or work: a bad ``--clean`` was found
    after scoring every image, a missing pipeline after loading the detector."""
    parser, kinds = getattr(args, "path_arguments", (None, {}))
    for dest, kind in kinds.items():
        value = getattr(args, dest)
        problem = None if value is None else path_problem(value, kind)
        if problem:
            action = next(a for a in parser._actions if a.dest == dest)
            raise ValueError(f"argument {'/'.join(action.option_strings) or dest}: {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="implicit-concept", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    p = sub.add_parser("build", help="synthesize an ICD dataset from a recipe into WebDataset shards")
    p.add_argument("recipe", type=path_value, help="a recipe TOML file, or the name of one in manifests/ (icd-tiny, icd-v1, ...)")
    p.add_argument("--out", type=path_value, help="output folder (default: data/<recipe name>)")
    p.add_argument("--source", type=path_value, help="replace the recipe's source: a folder of name.jpg + name.txt, or tars: local ('dir/{00000..00009}.tar'), "
                                     "http(s) URLs or 'pipe:' commands ('pipe:aws s3 cp s3://bucket/{00000..00009}.tar -')")
    p.add_argument("--workers", type=int_at_least(0), default=1, help="worker processes (0 or 1: built in this process), or Ray actors (0: one per cluster CPU; at most that many) (default: 1)")
    p.add_argument("--distributor", choices=("multiprocessing", "ray"), default="multiprocessing",
                   help="local processes, or a Ray cluster for builds across machines (default: multiprocessing)")
    p.add_argument("--ray-address", help="the Ray cluster to join ('auto', 'ray://head:10001'); default: ray.init's own choice")
    p.add_argument("--screen-detector", type=path_value, metavar="DETECTOR",
                   help="screen source images with this detector folder: concepts already there are flagged or dropped (the recipe's [source_screen])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json_argument(p, "out, samples, shards_built, shards_already_complete, skipped_source_items")
    p.set_defaults(func=_build)

    p = sub.add_parser("recipe-name", help="print a recipe's name, its dataset's folder under a data root (what `make dataset` builds into)")
    p.add_argument("recipe", type=path_value, help="a recipe TOML file, or the name of one in manifests/")
    p.set_defaults(func=_recipe_name)

    p = sub.add_parser("verify", help="check a built dataset: checksums, schema, boxes, counts")
    p.add_argument("dir", type=path_value, help="a dataset folder `build` wrote (holding recipe.json), e.g. data/icd-tiny")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json_argument(p, "ok, shards, samples, instances, problems, notes; the exit status is 1 unless ok")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="write a contact sheet of samples with their boxes")
    p.add_argument("dir", type=path_value, help="a dataset folder, shard set folder, tar, or brace pattern")
    p.add_argument("--out", type=path_value, required=True, help="image to write (.png, .jpg, .jpeg or .webp)")
    p.add_argument("--count", type=int_at_least(1), default=24, help="samples on the sheet (default: 24)")
    p.add_argument("--contaminated", action="store_true", help="only samples that carry a concept")
    _paths(p, dir="source")
    p.set_defaults(func=_show)

    p = sub.add_parser("detector", help="the concept detector (YOLO) that scores every method")
    detector_sub = p.add_subparsers(dest="detector_command", required=True)
    p = detector_sub.add_parser("train", help="train on SHARDS/train (thresholds set on its validation share), report per-class mAP on SHARDS/test (unseen assets)")
    p.add_argument("shards", type=path_value, help="an ICD subset folder with train/ and test/ shard sets, e.g. data/icd-tiny/icd-mixed")
    p.add_argument("--out", type=path_value, required=True, help="output folder: detector.safetensors and detector.json, metrics.json, pr_curve.png, ...")
    p.add_argument("--scale", default="cpu", help="a scale in implicit_concept/detector/scales.toml: debug, cpu, gpu (default: cpu)")
    p.add_argument("--backgrounds", type=path_value, metavar="DIR",
                   help="a folder of images showing no concept (e.g. a base model's generations from clean prompts), trained on as background")
    p.add_argument("--calibration", type=path_value, metavar="DIR",
                   help="a folder of held-out images showing no concept (not the backgrounds): each concept's threshold keeps their false positives "
                        "at most the scale's calibration_max_fp, as on the validation split's clean images")
    _add_cache_argument(p)
    _paths(p, shards="folder", backgrounds="folder", calibration="folder")
    p.set_defaults(func=_detector_train)

    p = sub.add_parser("score", help="ICR per concept of a set of images, beside the detector's false-positive rate")
    p.add_argument("dir", type=path_value, help="a folder of images, or a shard set (folder of .tar, one tar, or a brace pattern); not a folder holding both")
    p.add_argument("--detector", type=path_value, help="the folder `detector train` wrote, or its detector.safetensors (default: the tiny track's published evaluator)")
    _add_cache_argument(p)
    p.add_argument("--conf", type=float,
                   help="one confidence threshold at which every concept counts (default: the detector's per-concept thresholds)")
    p.add_argument("--clean", type=path_value, help="clean images to measure false positives on (default: the reference saved with the detector)")
    _add_json_argument(p, "per concept and per image, detections included")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _paths(p, dir="source", detector="path", clean="source")
    p.set_defaults(func=_score)

    p = sub.add_parser("benchmark", help="fine-tune with and without removal methods, generate, score, report")
    p.add_argument("--track", type=path_value, default="tiny", help="debug, tiny, paper, or a track TOML (default: tiny)")
    p.add_argument("--name", help="run name: results go to RUNS/NAME (default: the track's name)")
    p.add_argument("--method", action="append", help="run only this method (repeatable): a registered name, package.module:Class, or path/to/file.py:Class")
    p.add_argument("--pretrained", type=path_value, help="a local diffusers Stable Diffusion directory to start from (paper track)")
    p.add_argument("--detector", type=path_value, help="use this detector (a folder `detector train` wrote, or its detector.safetensors) "
                                       "instead of the track's published evaluator or one the run trains")
    p.add_argument("--source", type=path_value, help="your own image-text shards or folder, replacing the recipe's source")
    p.add_argument("--runs", type=path_value, default="runs", help="folder of run folders: results go to RUNS/NAME (default: runs)")
    p.add_argument("--data", type=path_value, default="data", help="folder the track's dataset is built in, as DATA/<recipe name> (default: data)")
    p.add_argument("--cache", type=path_value, default=".cache/implicit-concept",
                   help="folder for what runs share (bases, detectors, the base's generations, scene features) and "
                        "ultralytics' and matplotlib's caches (default: .cache/implicit-concept)")
    p.add_argument("--workers", type=int_at_least(0), default=2, help="dataset build processes (default: 2)")
    p.add_argument("--jobs", type=int_at_least(1), default=1, help="fine-tunes, then methods (build, sample, score), run side by side: one process and torch thread each; the results of one at a time (default: 1; make benchmark passes 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _paths(p, pretrained="path", detector="path")  # a file given as --pretrained: its check says how to convert it
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("publish", help="train a track's base and detector as make benchmark would and write them into benchmark/published/ (maintainers)")
    p.add_argument("--track", type=path_value, default="tiny", help="a track whose base and detector the repository ships (default: tiny)")
    p.add_argument("--data", type=path_value, default="data", help="folder the track's dataset is built in, as DATA/<recipe name> (default: data)")
    p.add_argument("--cache", type=path_value, default=".cache/implicit-concept", help="folder for what runs share (default: .cache/implicit-concept)")
    p.add_argument("--workers", type=int_at_least(0), default=2, help="dataset build processes (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_publish)

    p = sub.add_parser("export", help="export a subset's shards for detection tools: YOLO (data.yaml, labels) and/or COCO JSON")
    p.add_argument("shards", type=path_value, help="an ICD subset folder with train/ and test/ shard sets, e.g. data/icd-tiny/icd-mixed")
    p.add_argument("--out", type=path_value, required=True, help="export folder, new or an earlier export (ICD train becomes 'train' and the held-out 'val' share; ICD test becomes 'test')")
    p.add_argument("--format", action="append", choices=("yolo", "coco"), help="repeatable (default: both)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _paths(p, shards="folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("leaderboard", help="merge runs' results.json into one table (Markdown and HTML), checking they compare")
    p.add_argument("runs", type=path_value, nargs="+", help="run folders (runs/NAME, holding results.json) or score-pipeline/score-images --out folders (holding summary.json)")
    p.add_argument("--out", type=path_value, required=True, help="folder for leaderboard.md and leaderboard.html")
    p.set_defaults(func=_leaderboard)

    p = sub.add_parser("report", help="write a run's self-contained results.html from its results.json")
    p.add_argument("run", type=path_value, help="a run folder (runs/NAME)")
    p.set_defaults(func=_report)

    p = sub.add_parser("prompts", help="write evaluation prompts (ESD/I2P CSV) from a procedural recipe's test split")
    p.add_argument("recipe", type=path_value, help="a recipe with a procedural source, e.g. icd-tiny (which made benchmark/prompts/icd-tiny-eval.csv)")
    p.add_argument("--count", type=int_at_least(1), default=512, help="prompts to write (default: 512)")
    p.add_argument("--seed-base", type=int_at_least(0), default=1000, help="evaluation_seed of prompt i is SEED_BASE + i (default: 1000)")
    p.add_argument("--out", type=path_value, required=True, help="CSV to write")
    p.set_defaults(func=_prompts)

    p = sub.add_parser("score-pipeline", help="score an already-erased diffusers pipeline on the benchmark's prompts")
    p.add_argument("pipeline", type=path_value, help="a local diffusers pipeline directory")
    p.add_argument("--negative-prompt", help="default: the one the pipeline records (negative_prompt.txt or Geom-Erasing's metadata)")
    p.add_argument("--steps", type=int_at_least(1), help="sampler steps (default: the track's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the track's)")
    p.add_argument("--size", type=int_at_least(8), help="image size (default: the track's)")
    p.add_argument("--own-scheduler", action="store_true",
                   help="sample with the folder's own scheduler instead of the track's (listed in summary.json's overrides)")
    _paths(p, pipeline="path", **_add_scoring_arguments(p, "folder for the images drawn (images/), scores.json and summary.json"))
    p.set_defaults(func=_score_pipeline)

    p = sub.add_parser("score-images", help="score a folder of images named {case_number}_{i}.png after the prompts CSV")
    p.add_argument("dir", type=path_value, help="a folder of images named {case_number}_{i}.png (or .jpg, .webp, ...) after the track's prompts")
    p.add_argument("--size", type=int_at_least(8), help="the images' side in pixels (default: the track's; any other is refused unless given here)")
    _paths(p, dir="folder", **_add_scoring_arguments(p, "folder for scores.json and summary.json"))
    p.set_defaults(func=_score_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    from implicit_concept.detector.yolo_env import use_cache

    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "detector_command", None))))  # "detector train"
    if getattr(args, "cache", None):
        use_cache(args.cache)  # before anything imports matplotlib or ultralytics
    try:
        _check_paths(args)
        with interrupts(), quiet_libraries() if getattr(args, "quiet", False) else nullcontext():
            try:
                code = args.func(args)
            except Exception as e:  # after a stop: what the interrupt broke, not the command's failure
                stop = stop_taken()
                if stop is None:
                    raise
                raise Interrupted(stop.name) from e
        sys.stdout.flush()  # a reader that closed the pipe early is found here, not at exit
        return code
    except BrokenPipeError as e:
        if stdout_closed():  # `implicit-concept ... | head`: stop quietly, as a program killed by SIGPIPE
            return 128 + 13
        _error(command, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return 1
    except UnicodeDecodeError as e:  # a ValueError, whose own text names no file: the loaders name theirs
        _error(command, f"a file given is not UTF-8 text ({e})")
        return 2
    except (FileExistsError, NotADirectoryError) as e:  # made with exist_ok: a file stands where a folder goes
        _error(command, _not_a_folder(e))
        return 1
    except (ValueError, FileNotFoundError) as e:
        _error(command, str(e))
        return 2
    except OSError as e:  # the safety net: unreadable or unwritable paths the commands did not check themselves
        where = f"{e.filename}: " if e.filename else ""
        _error(command, space_message(e) or f"{where}{e.strerror or e}")
        return 1
    except MethodFailed as e:
        print(e.cause_traceback, file=sys.stderr, end="")  # the method's own code: where its author looks
        _error(command, str(e))
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (Interrupted): workers are stopped; all written so far is whole
        stopped = stopped_by(e)
        last_words(f"implicit-concept {command}: {STOP_SIGNALS[stopped]}; rerun the same command to resume"
                    + (" (nohup keeps a command running when its terminal closes)" if stopped == signal.SIGHUP else ""))
        return 128 + stopped


def console_main() -> None:
    """``implicit-concept``: :func:`main`, exiting with its status even if code the toolkit called
    (a method's ``build``, its pipeline) left a non-daemon thread or ``multiprocessing`` child
    running: the interpreter's exit waits for every such thread and child, so one that never ends
    kept a finished run from ever exiting. A child still running after the grace is ended with the
    command (as a daemon child is); a thread cannot be ended, so the process exits past it (``os._exit``).
    An error no command caught (a bug) is shown as Python shows it and exits 1, past them too. What
    is printed after the command ends (such a thread's lines, an exit handler a plug-in registered)
    goes to stderr: stdout holds the command's results, which ``> results.md`` keeps."""
    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C before the command's own handling began (reading its command line)
        code = interrupted_while_starting()
    except Exception:
        traceback.print_exc()
        code = 1
    exit_past_leftovers(code)


def _error(command: str, text: str) -> None:
    """A command's error, on one line of stderr whatever the names in it: a file named with a newline
    or a terminal escape sequence is shown escaped, as Python writes it (``\\n``, ``\\x1b``)."""
    print(f"implicit-concept {command}: error: {one_line(text)}", file=sys.stderr)


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (line breaks, escapes) written as Python does."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _not_a_folder(e: OSError) -> str:
    """What a ``FileExistsError`` or ``NotADirectoryError`` of making a folder means, naming the path."""
    path = Path(e.filename) if e.filename else None
    if path is None:
        return str(e)
    if path.exists() and not path.is_dir():
        return f"{path}: is a file, where a folder is expected; move it away or choose another path"
    above = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if above is not None:
        return f"{path}: cannot be made below {above}, which is a file where a folder is expected"
    return f"{path}: {e.strerror or e}"

