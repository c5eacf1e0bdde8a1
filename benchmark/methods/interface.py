"""The one interface every removal method follows.

A method receives a :class:`MethodContext` (the concepts, a cached fine-tuning service, the track's
settings) and returns a :class:`Generator`: the pipeline to sample from and the negative prompt to
sample with. Another lab's method is a class with the same shape, named on the command line as
``package.module:Class`` or registered under the ``implicit_concept.methods`` entry point group
(how one is found by name and keyed by its code: :mod:`benchmark.methods.plugins`).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from benchmark.failures import plugin_failure, plugin_output, toolkit_error
from benchmark.library_patches import kept_library_functions
from benchmark.models.pipelines import save_portable_pipeline
from benchmark.plugin_state import kept_plugin_state
from benchmark.training.config import TrainingConfig
from implicit_concept.concepts import concept
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_dir
from implicit_concept.provenance import cache_key, canonical_json
from implicit_concept.torch_settings import kept_torch_settings, torch_threads
from implicit_concept.validate import check_fields

#: Pipeline call arguments the benchmark sets itself, the same for every method being compared, and
#: those that set the same under another name (a custom ``timesteps`` or ``sigmas`` schedule replaces
#: the step count; ``prompt_embeds`` the prompt).
FIXED_BY_TRACK = ("prompt", "negative_prompt", "generator", "latents", "num_inference_steps", "guidance_scale",
                  "height", "width", "num_images_per_prompt", "output_type", "timesteps", "sigmas", "prompt_embeds")


@dataclass(frozen=True)
class FineTune:
    """What to fine-tune on (the contaminated subset or its clean twins), from what ("base", or "sd":
    the plain fine-tune, as Model Removal starts from the model that learned the concept), and how:
    Geom-Erasing's config and overrides of the track's ``[finetune]`` table."""

    data: str = "contaminated"
    geom: Any = None
    start: str = "base"
    training: dict[str, Any] = field(default_factory=dict)
    #: The training seed; None: the track's (for a track's ``seed_methods``, each of its ``seeds``
    #: in turn). A seed set here is the method's own and is kept under every training seed.
    seed: int | None = None

    def __post_init__(self) -> None:
        # ``data`` names the fine-tune's folder and what it trains on: anything but these two (a
        # typo, a path) is refused rather than trained as the contaminated data under another name.
        if self.data not in FINETUNE_DATA:
            raise ValueError(f"FineTune.data must be one of {', '.join(map(repr, FINETUNE_DATA))}, got {self.data!r}")
        if self.start not in ("base", "sd"):
            raise ValueError(f"FineTune.start must be 'base' or 'sd', got {self.start!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"FineTune.seed must be None or a non-negative int, got {self.seed!r}")
        if not isinstance(self.training, dict):
            raise ValueError(f"FineTune.training must be a dict of [finetune] overrides, got {type(self.training).__name__}")
        # A misspelt override ("lerning_rate") failed only when trained: a TypeError from inside the
        # toolkit, after the other methods' fine-tunes under --jobs (hours), naming no method.
        check_fields(self.training, [k for k in TrainingConfig.__dataclass_fields__ if k not in SET_BY_FINETUNE], "FineTune.training")

    def under_seed(self, seed: int) -> "FineTune":
        """This fine-tune under a training seed of the track: its own seed if it set one, else ``seed``."""
        return self if self.seed is not None else replace(self, seed=seed)


#: What a fine-tune can train on: the contaminated subset, or its clean twins.
FINETUNE_DATA = ("contaminated", "clean")
#: The training settings a :class:`FineTune` sets through its own fields (``geom``, ``data``), not ``training``.
SET_BY_FINETUNE = ("geom", "image_field")


@dataclass
class MethodContext:
    """What a method is given: the concepts its training subset carries, and shared services."""

    concepts: tuple[str, ...]
    work_dir: Path
    seed: int
    finetune: Callable[[FineTune], Path]
    load_pipeline: Callable[[Path], Any]
    train_shards: Path
    settings: dict[str, Any] = field(default_factory=dict)
    detector: Any = None
    base: Path | None = None
    #: Torch threads an edit of ``sd`` runs under (the track's fine-tune threads): its weights then
    #: do not depend on the machine's core count or on the process it runs in.
    threads: int | None = None
    #: Whether a method's own loops show a progress bar (False under the command's ``--quiet``).
    progress: bool = True
    #: The toolkit's working folder, which ``work_dir`` (relative under a relative ``--runs``) is read
    #: from; None: the working folder when a service is called.
    home: Path | None = None

    def edited_sd(self, tag: str, record: dict[str, Any], edit: Callable[[Any], None]) -> Path:
        """The plainly fine-tuned model with ``edit`` applied in place, saved once under ``work_dir``
        in a folder named by the ``sd`` model and the edit's ``record``.

        Post-hoc methods (ESD, FMN) start from ``sd``; a rerun loads what an earlier run saved, and
        a new ``sd`` (other data, other settings) is edited anew. ``sd`` is named as seen from
        ``work_dir`` (its cache folder's name is its content key), so a run folder moved or copied
        whole keeps its edits.
        """
        sd = self.finetune(FineTune())
        home = Path(os.getcwd() if self.home is None else self.home)
        seen_from_here = os.path.relpath(home / sd, home / self.work_dir)
        out = self.work_dir / f"pipeline-{cache_key({'sd': seen_from_here, 'tag': tag, 'record': record, 'threads': self.threads})}"
        # Made where the run's files are, whatever working folder the method's build moved to (os.chdir):
        # saved below it, a relative --runs' edit was written outside the run and then not found.
        made = home / out
        with locked(made):
            if not (made / "model_index.json").exists():
                pipe = self.load_pipeline(sd)
                with torch_threads(self.threads):
                    edit(pipe)
                try:
                    with atomic_dir(made) as tmp:
                        save_portable_pipeline(pipe, tmp)
                        (tmp / f"{tag}.json").write_text(canonical_json(record) + "\n", encoding="utf-8")
                except OSError as e:  # the toolkit's writing (a full disk), not the method's edit
                    raise toolkit_error(e) from e
        return out

    @property
    def phrase(self) -> str:
        """The concepts' names as one prompt ("QR code, watermark, text" on a mixed subset)."""
        return ", ".join(concept(c).phrase for c in self.concepts)


@dataclass
class Generator:
    """A pipeline ready to sample from, the negative prompt to use, and extra call arguments."""

    pipeline: Any
    negative_prompt: str = ""
    call_kwargs: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    name: str = ""
    description: str = ""

    @abstractmethod
    def build(self, ctx: MethodContext) -> Generator:
        """Train or load what the method needs (cache it under ``ctx.work_dir``) and return it."""

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        """The fine-tunes ``build`` will ask ``ctx.finetune`` for. A benchmark run over several
        processes (``accelerate launch``) trains these with all of them first, then builds, generates
        and scores on the main process alone. None by default: a method that trains no fine-tune."""
        return []


def declared_finetunes(method: Any, ctx: MethodContext) -> list[FineTune]:
    """``method.finetunes(ctx)`` (none for a plug-in without it), each checked to be a :class:`FineTune`."""
    try:
        with plugin_output(), kept_plugin_state(), kept_torch_settings(), kept_library_functions():
            declared = list(getattr(method, "finetunes", lambda ctx: [])(ctx))
    except NotImplementedMethod:
        return []  # its build says so too: reported as missing, not as a failure
    except BaseException as e:
        raise plugin_failure(f"method {method.name}", "finetunes(ctx)", e) from e
    for ft in declared:
        if not isinstance(ft, FineTune):
            raise ValueError(f"method {method.name}: finetunes() gave {type(ft).__name__}, not a FineTune")
    return declared


def checked_generator(method: Any, generator: Any) -> Generator:
    """What ``method.build`` returned, refused with the method's name unless it is a usable :class:`Generator`."""
    if not isinstance(generator, Generator):
        raise ValueError(f"method {method.name}: build() returned {type(generator).__name__}, not a Generator(pipeline, negative_prompt, call_kwargs)")
    if not callable(generator.pipeline):
        raise ValueError(f"method {method.name}: Generator.pipeline is a {type(generator.pipeline).__name__}, not a callable diffusers pipeline")
    if not isinstance(generator.negative_prompt, str):
        raise ValueError(f"method {method.name}: Generator.negative_prompt is a {type(generator.negative_prompt).__name__}, not a str")
    if not isinstance(generator.call_kwargs, dict):
        raise ValueError(f"method {method.name}: Generator.call_kwargs is a {type(generator.call_kwargs).__name__}, not a dict")
    fixed = sorted(set(generator.call_kwargs) & set(FIXED_BY_TRACK))
    if fixed:
        raise ValueError(f"method {method.name}: Generator.call_kwargs sets {', '.join(fixed)}, which the track fixes "
                         "for every method (prompts, seeds, steps, guidance, size)")
    for key, value in generator.call_kwargs.items():
        try:
            canonical_json(value)
        except (TypeError, ValueError) as e:
            # negative_prompt_embeds, callback_on_step_end: research code's way, and a wrapper's to give.
            raise ValueError(f"method {method.name}: Generator.call_kwargs must hold JSON values, as they are recorded "
                             f"with the images; its {key!r} is a {type(value).__name__} ({e}). Give a tensor or a callback "
                             "through a pipeline of your own: a function that calls your pipeline with it (every tensor "
                             "and module it holds keys its images)") from None
    return generator


class NotImplementedMethod(Exception):
    """Raised by a method the benchmark names but does not carry yet; the report marks it missing."""


