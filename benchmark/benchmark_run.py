"""One benchmark run: where it lives, what it was asked to do, and the record that claims its folder."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from benchmark.models.pipeline_identity import weights_sha256
from benchmark.models.pretrained_check import check_base_sampler, check_pretrained
from benchmark.results_file import read_results
from benchmark.track import Track
from benchmark.track_check import check_track
from benchmark.training import launch_size
from builders.recipe import Recipe, load_recipe, source_from_spec
from builders.sources import make_source
from implicit_concept.content_hashes import sha256_file
from implicit_concept.detector.inference import Detector
from implicit_concept.detector.weights import weights_path
from implicit_concept.files import FolderClaimError, atomic_write_json, check_apart, visible_entries
from implicit_concept.json_records import json_differences, read_json_object, shown_differences
from implicit_concept.provenance import environment, package_changes
from implicit_concept.utf8_paths import shown_path, utf8_path_problem
from implicit_concept.validate import check_folder_name

DEFAULT_CACHE = Path(".cache") / "implicit-concept"
#: What of ``run.json`` a resume must find unchanged: what the run's results are made from, by content.
CLAIMED = ("track", "track_sha256", "recipe", "recipe_sha256", "source_fingerprint", "detector_sha256")
#: The content fields, each with what its difference means: a ``run.json`` without them was written
#: before they were recorded, and is compared on :data:`EARLIER_CLAIMED`, as it was then.
CONTENT = {"source_fingerprint": "the source's files (names, sizes, times) are not those the run was made from",
           "detector_sha256": "--detector's weights are not those the run was made with"}
EARLIER_CLAIMED = ("track", "track_sha256", "recipe", "recipe_sha256", "pretrained", "detector", "source")


@dataclass
class BenchmarkRun:
    """Where one run lives and what it was asked to do (recorded in ``run.json``)."""

    track: Track
    name: str
    runs_root: Path = Path("runs")
    data_root: Path = Path("data")
    cache: Path = DEFAULT_CACHE
    pretrained: Path | None = None
    detector: Path | None = None
    source: str | None = None
    methods: tuple[str, ...] = ()
    workers: int = 2
    #: Fine-tunes, then methods, run side by side (one process, one torch thread each); the results of one at a time.
    jobs: int = 1
    progress: bool = True
    #: Wall seconds per stage (``results.json``'s ``timings``): those of the run folder's earlier
    #: invocations, read by :meth:`check_start`, with each stage timed now replacing its own entry.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.runs_root / self.name

    def record(self) -> dict[str, Any]:
        """What the run was asked to do (``run.json``, claimed by its folder, and ``results.json``'s
        ``config``): the track, and the recipe it names as resolved (``--source`` in place of its
        source) with that recipe's sha256, the one its dataset's ``recipe.json`` and every sample
        record; what the source held (its fingerprint, as the build records it) and ``--detector``'s
        weights (sha256). So an edited recipe file, other images or other detector weights are refused
        on a resume (:data:`CLAIMED`), and results say which data made them; the options as typed
        (``source``, ``pretrained``, ``detector``) are kept for people, not compared: the same folder
        typed another way, or moved whole, is the same run. ``--pretrained``'s weights are checked
        against the base the run's rows record (:meth:`_check_same_base`)."""
        recipe = self._recipe
        return {
            "track": self.track.identity(),
            "track_sha256": self.track.sha256,
            "recipe": recipe.to_dict(),
            "recipe_sha256": recipe.sha256,
            "source_fingerprint": self._source_fingerprint,
            "detector_sha256": self._detector_sha256,
            "pretrained": str(self.pretrained) if self.pretrained else None,
            "detector": str(self.detector) if self.detector else None,
            "source": self.source,
        }

    @cached_property
    def _recipe(self) -> Recipe:
        """The track's recipe as the dataset stage builds it, read once per run."""
        return load_recipe(self.track.recipe, {"source": source_from_spec(self.source)} if self.source else None)

    @cached_property
    def _source_fingerprint(self) -> dict[str, Any]:
        """What the recipe's source holds, as its build's ``recipe.json`` records it (file names, sizes
        and times; not where they lie)."""
        recipe = self._recipe
        return make_source(recipe.source, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed).fingerprint()

    @cached_property
    def _detector_sha256(self) -> str | None:
        """``--detector``'s weights by content (None: the track's detector, a function of the run's inputs)."""
        return sha256_file(weights_path(self.detector)) if self.detector is not None else None

    def claim(self) -> None:
        """Write ``run.json``, or refuse a run folder whose ``run.json`` records other inputs
        (:meth:`_check_record`); the main process calls this holding the folder's lock."""
        record_file = self.root / "run.json"
        if record_file.is_file():
            self._check_record(record_file)
        else:
            self._require_unclaimed_empty()
            atomic_write_json(record_file, {**self.record(), "environment": environment()})

    def _require_unclaimed_empty(self) -> None:
        """Refuse a run folder with no ``run.json`` that is not empty: a run writes ``results.json``,
        ``results.html``, ``images/``, ``methods/``, ``models/`` and ``scores/`` into its folder, so a
        lab's folder named by ``--runs``/``--name`` had its own files of those names replaced or mixed
        with the run's. Hidden files (a lock, a killed writer's temporaries) do not count."""
        held = visible_entries(self.root)
        if held and not (self.root / "run.json").is_file():
            raise FolderClaimError(f"{self.root}: a folder no benchmark run claimed (no run.json), and not empty (it holds {held[0]}); "
                                   "a run writes results.json, images/, methods/, models/ and scores/ there: use another --name or --runs")

    def _check_record(self, record_file: Path) -> None:
        """Refuse ``record_file`` unless it records what this run is given, in :data:`CLAIMED` (a
        record written before the content was recorded: in :data:`EARLIER_CLAIMED`, as it was then)."""
        try:
            previous = read_json_object(record_file)
        except OSError as e:
            raise FolderClaimError(f"{record_file}: not readable ({e.strerror or e}); remove the folder or use another --name") from None
        except ValueError as e:
            raise FolderClaimError(f"{e}; remove the folder or use another --name") from None
        now = json.loads(json.dumps(self.record()))
        keys = CLAIMED if all(k in previous for k in CONTENT) else EARLIER_CLAIMED
        differ = json_differences({k: previous.get(k) for k in keys}, {k: now.get(k) for k in keys})
        if differ:
            said = "".join(f": {CONTENT[k]}" for k in CONTENT if any(d == k or d.startswith(f"{k}.") for d in differ))
            raise FolderClaimError(
                f"{self.root}: was made with another config (run.json differs in {shown_differences(differ)}{said}); "
                "use another --name or remove the folder"
            )

    def check_start(self) -> None:
        """Everything a run is given, checked before any stage runs and before its folder is claimed:
        the run's name, ``--runs``, ``--pretrained`` (every part ``load_pipeline`` would load, from its
        JSON and file listing: :func:`check_pretrained`), ``--detector``, the whole track, and a run folder
        already there (which must hold the same config; the refusal names the fields that differ).
        Raises ValueError (or FileNotFoundError) with one line naming the option or field.

        A run folder that already holds results (``--method X`` added to a finished run, a resume)
        keeps their stage timings: they seed :attr:`timings`, so the run's record lists the stages of
        every invocation, a stage timed again replacing its own entry."""
        check_folder_name("--name", self.name)
        if self.jobs > 1 and launch_size() > 1:  # the launch's branch of the protocol wins: --jobs was dropped, yet recorded in every row
            raise ValueError(f"--jobs {self.jobs}: this command is one of the {launch_size()} processes of a launch (accelerate launch, "
                             "torchrun), which train together, then evaluate on the main process alone; --jobs runs work side by side "
                             "in one process: drop --jobs, or launch one process")
        for option, folder in (("--runs", self.runs_root), ("--cache", self.cache)):
            _check_utf8_path(option, folder)
        if self.pretrained is not None:
            try:
                check_pretrained(self.pretrained)
                if self.track.needs_pretrained:  # the track samples with SD v1.5's scheduler: so must its base
                    check_base_sampler(self.pretrained, self.track.sampler())
            except FileNotFoundError as e:
                raise FileNotFoundError(f"--pretrained {e}") from None
            except (ValueError, OSError) as e:
                raise ValueError(f"--pretrained {e}") from None
        if self.detector is not None:
            try:
                Detector.load(self.detector)
            except (ValueError, OSError) as e:
                raise ValueError(f"--detector: {e}") from None
        check_track(self.track, self.methods, self.source, self.pretrained, self.detector)
        # A run named as the recipe, with --runs and --data one folder, wrote its files into the dataset.
        check_apart(self.root, "the run folder (--runs, --name)",
                    {"the dataset folder (--data, the recipe's name)": self.data_root / self._recipe.name})
        if self.runs_root.exists() and not self.runs_root.is_dir():
            raise ValueError(f"--runs {self.runs_root}: exists and is not a folder")
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root}: exists and is not a folder; use another --name")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--runs {self.runs_root}: cannot make the run folder {self.root} ({e.strerror or e})") from None
        if (self.root / "run.json").is_file():
            self._check_record(self.root / "run.json")
        self._require_unclaimed_empty()
        earlier = self._earlier_results()
        self._check_same_packages(earlier.get("environment"))
        self._check_same_base(earlier.get("base"))
        self.timings = {**dict(earlier.get("timings", {})), **self.timings}

    def _check_same_packages(self, results_environment: Any) -> None:
        """Refuse a run folder made under other package versions: its images, fine-tunes and rows
        change with them, and the rows not rerun are kept beside new ones under one ``environment``, so
        a resume (or a method added) would make one result of two. Made under: what ``run.json``
        recorded when the run started, else (a folder of a release that did not) its ``results.json``'s."""
        record_file = self.root / "run.json"
        started = read_json_object(record_file).get("environment") if record_file.is_file() else None
        if not isinstance(started, dict):
            started = results_environment
        then = started.get("packages") if isinstance(started, dict) else None
        if not isinstance(then, dict):
            return
        changes = package_changes(then, environment()["packages"])
        if changes is None:
            return
        shown, pins = changes
        raise FolderClaimError(
            f"{self.root}: made under other package versions ({shown}); they change its images and scores, so "
            f"resuming would mix rows of both. Reinstall the versions it was made under{pins}, or use another --name"
        )

    def _earlier_results(self) -> dict[str, Any]:
        """The run folder's ``results.json`` (empty when it holds no results)."""
        results_file = self.root / "results.json"
        if not results_file.is_file():
            return {}
        try:  # checked field by field: the run's rows are merged with this run's when it ends
            return read_results(self.root)
        except (OSError, ValueError) as e:
            raise ValueError(f"{results_file}: cannot be read ({e}); remove the folder or use another --name") from None

    def _check_same_base(self, recorded: dict[str, Any] | None) -> None:
        """Refuse a base other than the one the run folder's rows were made from: ``run.json`` keeps
        ``--pretrained`` as typed, not compared, and the weights at a path change (a link moved to a
        newer snapshot, a folder re-downloaded), while the rows of methods not rerun are kept beside
        the new ones, all under the new base's record; so are rows made on ``--pretrained`` resumed
        without it. Hashes the weights only when there are rows (the run's own record hashes them
        again at the end: seconds at SD v1.5's size, once per resume)."""
        if not recorded or not recorded.get("weights_sha256"):
            return
        if self.pretrained is None:
            if recorded.get("from") == "--pretrained":
                raise ValueError(f"{self.root / 'results.json'}: its rows were made from a --pretrained base "
                                 f"({str(recorded['weights_sha256'])[:12]}), and none is given; give it, or use another --name")
            return
        now = weights_sha256(self.pretrained)
        if now != recorded["weights_sha256"]:
            raise ValueError(f"--pretrained {self.pretrained}: its weights (sha256 {now[:12]}) are not the base "
                             f"{self.root / 'results.json'}'s rows were made from ({str(recorded['weights_sha256'])[:12]}); "
                             "use another --name or remove the folder")


def _check_utf8_path(option: str, folder: Path) -> None:
    """Refuse a folder the pipelines a run saves cannot be written under (:func:`utf8_path_problem`:
    the tokenizers library takes UTF-8 paths only) before any stage runs: the first fine-tune
    failed on one, blamed on its method."""
    absolute = os.path.abspath(folder)
    problem = utf8_path_problem(absolute, "the models a run saves")
    if problem is not None:
        raise ValueError(f"{option} {shown_path(absolute)}: {problem}")
