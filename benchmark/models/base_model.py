"""The embedded base model: the tiny pipeline pre-trained on procedural scenes.

Like SD before the benchmark fine-tunes it, the base draws what captions say and has never seen an
implicit concept: a concept appears in its data only where the caption names it
(:mod:`benchmark.models.named_scenes`), so it knows the names the baselines erase. The UNet and the whole text encoder learn text-to-image from scratch with
:func:`benchmark.training.train` (the same loop as every fine-tune), captions dropped at
``caption_dropout`` for classifier-free guidance. The tiny pipeline's autoencoder has no weights (see
:mod:`benchmark.models.patch_autoencoder`), so there is no autoencoder stage.

The result is cached under ``cache_root/base-<hash of config>`` and saved with ``save_pretrained``,
so it loads through the same :func:`~benchmark.models.pipelines.load_pipeline` as SD v1.5.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from benchmark.models.named_scenes import NamedConcepts, NamedSceneMaker
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, save_portable_pipeline
from benchmark.training import PIPELINE_DIR, TrainingConfig, processes, train
from builders.sources.procedural import ProceduralSource
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_dir, atomic_write_json
from implicit_concept.provenance import cache_key, config_hash, environment, version
from implicit_concept.sample import Sample, SampleMeta
from implicit_concept.scene.grammar import ProceduralConfig
from implicit_concept.validate import MAX_SEED, check_int

BASE_FILE = "base.json"
#: Seeds the named-concept draw apart from the scene's own seed.
NAMED_STREAM = 1


@dataclass(frozen=True)
class BaseModelConfig:
    """The whole recipe of a base model: its hash names the cache entry.

    The defaults are the tiny track's: 3000 steps of batch 32 reached two-object layouts with the right
    colours and places and rough shapes (about 15 minutes on 2 free cores, 30 with 1 thread on a shared
    machine); 1500 steps gave coloured blobs only.
    """

    pipeline: TinyPipelineConfig = field(default_factory=TinyPipelineConfig)
    scenes: ProceduralConfig = field(default_factory=lambda: ProceduralConfig(train=10_000, test=0))
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            steps=3000, batch_size=32, learning_rate=1e-3, lr_schedule="cosine", warmup_steps=100,
            train_text="text_encoder", caption_dropout=0.1, checkpoint_every=250,
        )
    )
    named: NamedConcepts = field(default_factory=NamedConcepts)
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.scenes.train < 1:
            raise ValueError("scenes.train must be at least 1")
        if self.training.train_text != "text_encoder":
            raise ValueError("training.train_text must be 'text_encoder': the base's text encoder starts untrained")
        if self.training.geom.active or self.training.image_field != "image":
            raise ValueError("training: the base is pre-trained plainly on clean scenes (no Geom-Erasing, image_field 'image')")

    def to_dict(self) -> dict[str, Any]:
        record = {**asdict(self), "training": self.training.to_dict()}
        if not self.named.share:
            del record["named"]  # bases without named scenes keep the cache keys they had before them
        return record

    @property
    def sha256(self) -> str:
        return config_hash(self.to_dict())


@dataclass(frozen=True)
class ProceduralSamples:
    """Procedural scenes as :class:`Sample` objects, drawn on the fly in a fixed order; ``named.share``
    of them show a concept their caption names."""

    config: ProceduralConfig
    image_size: int
    seed: int
    named: NamedConcepts = field(default_factory=NamedConcepts)

    def _source(self) -> ProceduralSource:
        return ProceduralSource(self.config, image_size=self.image_size, shard_size=max(1, self.config.train), seed=self.seed)

    def samples(self) -> Iterator[Sample]:
        package_version = version()
        maker = NamedSceneMaker(self.named)
        for item in self._source().read("train", 0):
            index = item.meta["index"]
            image, caption, instances = maker.make(item.image, item.caption or "", [self.seed, NAMED_STREAM, index])
            meta = SampleMeta(
                key=f"{index:09d}", caption=caption, width=self.image_size, height=self.image_size,
                split="train", subset="procedural", source={"kind": "procedural", "id": item.source_id}, instances=instances,
                seed=item.meta["seed"], recipe="base-pretraining", recipe_sha256="", version=package_version,
            )
            yield Sample(meta=meta, image=image)

    def describe(self) -> dict[str, Any]:
        described = {"kind": "procedural", "config": asdict(self.config), "image_size": self.image_size, "seed": self.seed}
        return {**described, "named": asdict(self.named)} if self.named.share else described


def base_dir(config: BaseModelConfig, cache_root: str | Path) -> Path:
    return Path(cache_root) / f"base-{cache_key(config.to_dict())}"


def pretrain_base(config: BaseModelConfig, cache_root: str | Path, progress: bool = True) -> Path:
    """The base pipeline's directory, trained now unless the cache already holds it.

    A killed run resumes from its last checkpoint. One run at a time trains it: another waits for
    the cache entry's lock, then loads what the first trained.
    """
    root = base_dir(config, cache_root)
    state = processes()
    # Every process of a multi-GPU run trains it, while the main process holds its lock.
    with locked(root, holder=state.is_main_process):
        state.wait_for_everyone()
        return _pretrain(config, root, progress)


def _pretrain(config: BaseModelConfig, root: Path, progress: bool) -> Path:
    final = root / "diffusion" / PIPELINE_DIR
    if (root / BASE_FILE).is_file() and (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    init = root / "init"
    started = time.time()
    # Under accelerate launch the main process writes the initial weights, then all processes train.
    with processes().main_process_first():
        if not (init / "model_index.json").is_file():
            with atomic_dir(init) as tmp:
                save_portable_pipeline(build_tiny_pipeline(config.pipeline, root / "tokenizer", seed=config.seed), tmp)
    data = ProceduralSamples(config.scenes, config.pipeline.image_size, config.seed, config.named)
    train(init, data, root / "diffusion", replace(config.training, seed=config.seed), progress=progress)
    record = {
        "config": config.to_dict(),
        "sha256": config.sha256,
        "seconds": round(time.time() - started, 1),
        "environment": environment(),
    }
    atomic_write_json(root / BASE_FILE, record)
    return final
