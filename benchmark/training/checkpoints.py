"""A training run's folder: ``run.json``, the checkpoints a resume starts from, the final pipeline.

A run can be killed at any point and started again with the same call: ``run.json`` is written first
and checked on every start (a changed config is refused), checkpoints and the final pipeline are
written under temporary names and renamed into place, so whatever is found complete is whole.

A checkpoint holds no pickle: a resume reads only JSON and safetensors (:mod:`.state_files`), so a
file planted in a run folder on a shared filesystem cannot run code. accelerate's ``save_state``
pickles registered objects, the optimizer, the LR schedule and the RNG states, hence this module
writes and reads each part itself.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from benchmark.models.pipelines import save_portable_pipeline
from benchmark.training.config import TrainingConfig
from benchmark.training.new_tokens import NewTokenRows
from benchmark.training.state_files import JSON_SUFFIX, TENSORS_SUFFIX, load_state, save_state
from implicit_concept.disk_space import writing
from implicit_concept.files import atomic_dir, atomic_write_json, umask_modes
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, write_metadata
from implicit_concept.json_records import json_differences, read_json_object, shown_differences
from implicit_concept.provenance import config_hash, environment, package_versions
from implicit_concept.tensor_checks import SAFETENSORS_FLOATS, all_finite, non_finite

log = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
CHECKPOINTS_DIR = "checkpoints"
RUN_FILE = "run.json"
#: What a checkpoint's state files hold beyond :func:`checkpoint_bytes` (headers, RNG states, step
#: counts): a state file larger than both together is no state of this run.
STATE_SLACK_BYTES = 64 << 20


#: The packages a training step's numbers depend on: a resume under other versions would not end
#: with the uninterrupted run's weights. The toolkit's own (its data path, captions, loss weights) too.
TRAINING_PACKAGES = ("implicit-concept", "torch", "diffusers", "transformers", "accelerate", "numpy")


class TrainState:
    """What besides weights a resume needs: progress, data position and the training generator; and
    whose it is: the run (its record's hash) and the package versions that wrote it. A checkpoint
    found in a run folder is resumed only by the run that wrote it (another seed's, config's or
    method's fits every tensor, and would end with neither run's weights), under the same versions."""

    def __init__(self, seed: int, run: str = "") -> None:
        self.step = 0
        self.epoch = 0
        self.consumed = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.run = run
        self.packages = package_versions(TRAINING_PACKAGES)
        #: The last step's loss (run.json's final_loss): kept in checkpoints, so that a run killed
        #: after its last checkpoint and resumed with no step left still records it, not NaN.
        self.loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "consumed": self.consumed, "generator": self.generator.get_state(),
                "run": self.run, "packages": self.packages, "loss": self.loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = [state["step"], state["epoch"], state["consumed"]]
        if not all(type(n) is int and n >= 0 for n in counts):
            raise ValueError(f"step, epoch and consumed must be counts, not {counts}")
        # Checkpoints written before these were recorded hold neither, and are taken as this run's.
        if (run := state.get("run", self.run)) != self.run:
            raise ValueError(f"a checkpoint of another run (config, base or data: record sha256 {str(run)[:16]}..., this run's "
                             f"{self.run[:16]}...); move it away, or train in another output directory")
        if not isinstance(packages := state.get("packages", self.packages), dict):
            raise ValueError(f"packages = {packages!r}, not a table of package versions")
        if differ := [name for name, version in self.packages.items() if packages.get(name) != version]:
            then = {n: packages[n] if n in packages else "(not recorded)" for n in differ}
            raise ValueError(f"written under {', '.join(f'{n} {then[n]}' for n in differ)}, here "
                             f"{', '.join(f'{n} {self.packages[n]}' for n in differ)}: a resume would not end with the "
                             "uninterrupted run's weights; resume under those versions, or remove the checkpoints to start over")
        loss = state.get("loss")  # checkpoints written before it was kept have none
        if loss is not None and not (type(loss) is float and math.isfinite(loss)):
            raise ValueError(f"loss must be a finite number or null, not {loss!r}")
        self.generator.set_state(state["generator"])
        self.step, self.epoch, self.consumed = counts
        self.loss = loss


@dataclass
class Resumable:
    """What a checkpoint saves and a resume restores: the training state, the models that train (as
    accelerate prepared them), the optimizer and LR schedule, and the new-token rows and EMA if any."""

    state: TrainState
    models: dict[str, torch.nn.Module]
    optimizer: Any
    lr_scheduler: Any
    new_rows: NewTokenRows | None = None
    ema: EMAModel | None = None

    def shared(self, accelerator: Accelerator) -> dict[str, Any]:
        """The parts every process holds alike (the main process writes them), by file name."""
        parts = {"train_state": self.state, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler,
                 "new_token_rows": self.new_rows, "ema": self.ema, "grad_scaler": accelerator.scaler}
        return {name: part for name, part in parts.items() if part is not None}


def _rng_stem(folder: Path, process: int) -> Path:
    return folder / f"rng_{process}"


def _rng_states() -> dict[str, Any]:
    """This process's global generators (accelerate saves the same ones per process)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _restore(stem: Path, restore: Any, most: int, current: Any = None, optimizer: Any = None) -> None:
    """Call ``restore`` on the state at ``stem``; a state it refuses raises naming the file, and so does
    one of over ``most`` bytes (unread), one with NaN or infinite values, or a tensor of another dtype
    or shape than ``current`` (the part's own state) holds there (see :func:`check_state_values`),
    or, for an ``optimizer``'s state, than its parameter (see :func:`check_optimizer_state`)."""
    state = load_state(stem, most)
    check_state_values(state, current, stem)
    if optimizer is not None:
        check_optimizer_state(state, optimizer, stem.with_suffix(TENSORS_SUFFIX))
    try:
        restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(f"{stem.with_suffix(JSON_SUFFIX)}: does not fit this run ({type(e).__name__}: {e})") from None


def check_state_values(state: Any, current: Any, stem: Path, label: str = "") -> None:
    """Refuse, naming the file, a restored state holding NaN or infinite floats, or where ``current``
    (what this run holds) has a float tensor, a tensor of another dtype or shape, or a list of
    another length: ``load_state_dict`` methods cast (an optimizer, the new rows) or take as they
    are (an EMA's shadow weights, copied into the UNet at the end) what they are given."""
    if isinstance(state, torch.Tensor):
        where = stem.with_suffix(TENSORS_SUFFIX)
        if isinstance(current, torch.Tensor) and current.is_floating_point() and (state.dtype, state.shape) != (current.dtype, current.shape):
            raise ValueError(f"{where}: {label or 'the tensor'} is {state.dtype} {tuple(state.shape)}, where this run holds "
                             f"{current.dtype} {tuple(current.shape)}")
        if state.is_floating_point() and not all_finite(state):
            raise ValueError(f"{where}: {label or 'a tensor'} holds NaN or infinite values; resuming would train, "
                             "and save, a model that draws blank images")
    elif isinstance(state, float):
        if not math.isfinite(state):
            raise ValueError(f"{stem.with_suffix(JSON_SUFFIX)}: {label or 'a value'} is {state}, not a finite number")
    elif isinstance(state, dict):
        for key, value in state.items():
            check_state_values(value, current.get(key) if isinstance(current, dict) else None, stem, f"{label}.{key}" if label else str(key))
    elif isinstance(state, (list, tuple)):
        paired = isinstance(current, (list, tuple)) and len(current) == len(state)
        if (isinstance(current, (list, tuple)) and not paired and current
                and all(isinstance(t, torch.Tensor) for t in current)):
            raise ValueError(f"{stem.with_suffix(TENSORS_SUFFIX)}: {label or 'the state'} holds {len(state)} tensors, "
                             f"where this run has {len(current)}")
        for i, value in enumerate(state):
            check_state_values(value, current[i] if paired else None, stem, f"{label}[{i}]")


def check_optimizer_state(state: Any, optimizer: Any, where: Path) -> None:
    """Refuse, naming the file, an optimizer state whose per-parameter tensors (AdamW's moments) are
    not of their parameter's shape and dtype. Before its first step an optimizer holds no such state
    to compare with, and ``load_state_dict`` casts them to the parameter's dtype and never checks a
    shape: the first step would fail with torch's broadcast error naming no file, or train on a
    moment it broadcasts. Scalars (the step count) are the optimizer's own."""
    per_param = state.get("state") if isinstance(state, dict) else None
    if not isinstance(per_param, dict):
        return  # load_state_dict names a state without one
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in per_param.items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(values, dict):
            raise ValueError(f"{where}: state[{index!r}] is not that of one of this run's {len(params)} trained parameters")
        param = params[index]
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and (value.dtype, value.shape) != (param.dtype, param.shape):
                raise ValueError(f"{where}: state[{index}].{key} is {value.dtype} {tuple(value.shape)}, where parameter {index} "
                                 f"is {param.dtype} {tuple(param.shape)}")


def _check_model_file(path: Path, name: str, state: dict[str, torch.Tensor]) -> None:
    """Refuse, from its header alone (before a byte of tensor data is read), a model file that is
    not of this run's model (``state``): a tensor the model lacks (``load_model`` reads every tensor
    before it refuses one, so a huge or sparse one would be allocated whole), one of another shape,
    or one of another dtype where the model holds floats (``load_model`` casts it silently). A FIFO
    or device in its place is refused unopened (opening a FIFO waits for a writer)."""
    if not path.is_file():
        raise ValueError(f"{path}: not this run's {name} weights ({'not a regular file' if path.exists() else 'missing from the checkpoint'})")
    try:
        with safe_open(str(path), "pt") as f:
            headers = {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}
    except (SafetensorError, OSError, ValueError):
        raise ValueError(f"{path}: not this run's {name} weights (not a readable safetensors file)") from None
    for key, (dtype, shape) in headers.items():
        tensor = state.get(key)
        if tensor is None:
            raise ValueError(f"{path}: tensor {key} is not in this run's {name}")
        if shape != tuple(tensor.shape):
            raise ValueError(f"{path}: tensor {key} is {shape}, where this run's {name} holds {tuple(tensor.shape)}")
        if tensor.is_floating_point() and dtype != SAFETENSORS_FLOATS.get(tensor.dtype, dtype):
            raise ValueError(f"{path}: tensor {key} is {dtype}, where this run's {name} holds {tensor.dtype}")


def require_finite(module: torch.nn.Module, where: Path | str, what: str) -> None:
    """Refuse ``module`` when a float tensor of it holds NaN or infinite values, naming ``where``
    and the tensor. One sum per tensor (:func:`~implicit_concept.tensor_checks.all_finite`: 0.15 s per GiB
    of float32 on 2 shared CPU cores)."""
    if (key := non_finite(module.state_dict().items())) is not None:
        raise ValueError(f"{where}: {what}: tensor {key} holds NaN or infinite values; a model with them "
                         "draws blank images, which would score as a perfect erasure")


def write_checkpoint(accelerator: Accelerator, folder: Path, parts: Resumable) -> None:
    """Write ``parts`` into ``folder``: the main process the models and the shared state, every
    process its own RNG states."""
    if accelerator.is_main_process:
        for name, model in parts.models.items():
            save_model(accelerator.unwrap_model(model), str(folder / f"{name}{TENSORS_SUFFIX}"))
        for name, part in parts.shared(accelerator).items():
            save_state(folder / name, part.state_dict())
    save_state(_rng_stem(folder, accelerator.process_index), _rng_states())


def read_checkpoint(accelerator: Accelerator, folder: Path, parts: Resumable) -> None:
    """Restore ``parts`` from ``folder`` (every process reads the shared files and its own RNG states).
    Weights and states with NaN or infinite values, or with a tensor of another dtype than this run
    holds there, are refused naming the file."""
    if not (folder / f"train_state{JSON_SUFFIX}").is_file():
        raise ValueError(f"{folder}: holds no train_state{JSON_SUFFIX}, so it is no checkpoint of this version "
                         "(older ones were pickled and are never loaded); remove it to start the run over")
    for name, model in parts.models.items():
        path = folder / f"{name}{TENSORS_SUFFIX}"
        module = accelerator.unwrap_model(model)
        _check_model_file(path, name, module.state_dict())
        try:
            load_model(module, str(path))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not this run's {name} weights ({type(e).__name__}: {e})") from None
        require_finite(module, path, f"the {name} weights")
    most = checkpoint_bytes(parts) + STATE_SLACK_BYTES  # no one state file holds more than a whole checkpoint
    for name, part in parts.shared(accelerator).items():
        _restore(folder / name, part.load_state_dict, most, part.state_dict(), optimizer=part if part is parts.optimizer else None)
    if parts.ema is not None:
        parts.ema.to(accelerator.device)
    rng = _rng_stem(folder, accelerator.process_index)
    if rng.with_suffix(JSON_SUFFIX).is_file():
        _restore(rng, _set_rng_states, most)
    else:
        log.warning("%s: no RNG states for process %d (written by fewer processes); kept the seeded ones",
                    folder, accelerator.process_index)


def resume_latest(accelerator: Accelerator, output_dir: Path, parts: Resumable) -> None:
    """Restore ``parts`` from the newest checkpoint in ``output_dir``, if any."""
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is not None:
        read_checkpoint(accelerator, checkpoint, parts)
        log.info("resumed from %s at step %d", checkpoint, parts.state.step)


def start_or_resume(output_dir: Path, record: dict[str, Any]) -> str:
    """Check ``run.json`` against this run: "new", "resume" or "finished"; a changed config raises."""
    run_file = output_dir / RUN_FILE
    if run_file.is_file():
        previous = read_json_object(run_file)  # a damaged one is named, not a bare JSON error or a traceback
        mine = {k: previous.get(k) for k in record}
        differ = json_differences(mine, json.loads(json.dumps(record)))
        if differ:
            raise ValueError(f"{output_dir} holds a run with another config, base or data ({RUN_FILE} differs in "
                             f"{shown_differences(differ)}): use a new output directory")
        return "finished" if previous.get("finished") and (output_dir / PIPELINE_DIR / "model_index.json").is_file() else "resume"
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, record)
    return "new"


def checkpoint_bytes(parts: Resumable) -> int:
    """At most what one checkpoint of ``parts`` writes: the trained models' and EMA's parameters and
    AdamW's two moments of each trained parameter (no RNG states or headers), for the check that the
    disk holds a checkpoint before training starts."""
    trained = [p for m in parts.models.values() for p in m.parameters() if p.requires_grad]
    if parts.new_rows is not None:
        trained.append(parts.new_rows.rows)
    models = sum(p.numel() * p.element_size() for m in parts.models.values() for p in m.parameters())
    ema = sum(p.numel() * p.element_size() for p in parts.ema.shadow_params) if parts.ema is not None else 0
    return models + ema + sum(2 * p.numel() * p.element_size() for p in trained)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (directories are renamed into place only when written)."""
    found = sorted(Path(output_dir, CHECKPOINTS_DIR).glob("step-*"))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, parts: Resumable, kept: int) -> Path:
    """Write a checkpoint of ``parts`` to a temporary name, rename it into place once every process
    has written, then drop the oldest beyond ``kept``. Weights (models, new token rows, EMA) with
    NaN or infinite values raise ``ValueError`` instead, naming the step and the tensor.

    Every process writes into the folder (its own RNG states), so its temporary name is one for all
    processes, not :func:`~implicit_concept.files.temporary_name`'s per-process one.
    """
    # Weights with NaN or infinite values are refused, never saved; every process checks its own
    # copy, so that all stop together.
    for name, model in parts.models.items():
        require_finite(accelerator.unwrap_model(model), output_dir, f"step {parts.state.step}, the {name}")
    _require_finite_extras(parts.ema, parts.new_rows, output_dir, f"step {parts.state.step}, ")
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"step-{parts.state.step:07d}"
    tmp = root / f".tmp-step-{parts.state.step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with writing(tmp):
            write_checkpoint(accelerator, tmp, parts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps no partial checkpoint: its bytes are the room a rerun needs
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        umask_modes(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-kept]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def require_finite_result(accelerator: Accelerator, unet: Any, text_encoder: Any, ema: EMAModel | None,
                          new_rows: NewTokenRows | None, final_dir: Path) -> None:
    """Refuse to save a trained pipeline whose weights (or EMA weights, or new token rows) hold NaN
    or infinite values; every process checks its own copy, so that all stop together."""
    require_finite(accelerator.unwrap_model(unet), final_dir, "the trained UNet")
    require_finite(accelerator.unwrap_model(text_encoder), final_dir, "the trained text encoder")
    _require_finite_extras(ema, new_rows, final_dir, "")


def _require_finite_extras(ema: EMAModel | None, new_rows: NewTokenRows | None, where: Path, when: str) -> None:
    """:func:`require_finite` for the new token rows and the EMA's shadow weights."""
    if new_rows is not None:
        require_finite(new_rows, where, f"{when}the new token rows")
    if ema is not None:
        if (i := non_finite((str(i), t) for i, t in enumerate(ema.shadow_params))) is not None:
            raise ValueError(f"{where}: {when}the UNet's EMA weights: shadow_params[{i}] holds NaN or infinite values; "
                             "a model with them draws blank images, which would score as a perfect erasure")


def save_pipeline(
    accelerator: Accelerator, pipe: StableDiffusionPipeline, unet: Any, text_encoder: Any, noise_scheduler: DDPMScheduler,
    ema: EMAModel | None, new_rows: NewTokenRows | None, final_dir: Path, geom: GeomErasingConfig,
) -> None:
    """Save the trained models as a diffusers pipeline directory at ``final_dir`` (EMA weights when
    averaged, the new rows written into the embedding matrix) with Geom-Erasing's metadata (every
    process has checked them with :func:`require_finite_result` first)."""
    unet = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(unet.parameters())
    if new_rows is not None:
        new_rows.write_back()
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=noise_scheduler.config.prediction_type)
    trained = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=accelerator.unwrap_model(text_encoder), tokenizer=pipe.tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(final_dir, replace_existing=True) as tmp:
        save_portable_pipeline(trained, tmp, negative_prompt=geom.negative_prompt())
        write_metadata(tmp, geom)


@dataclass
class Session:
    """What this session (a resumed run's last one) measured, for ``run.json``."""

    first_step: int
    prepare_seconds: float
    #: How many processes trained (this session): two train weights about 1e-5 apart from one.
    processes: int = 1
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    examples: int = 0
    truncated: int = 0

    def count(self, examples: list[Any]) -> None:
        """Count a global batch's examples and how many of their captions were truncated."""
        self.examples += len(examples)
        self.truncated += sum(e.truncated for e in examples)


def write_finished_run(output_dir: Path, record: dict[str, Any], config: TrainingConfig, state: TrainState, session: Session) -> None:
    """Complete ``run.json``: finished, with the last step's loss, the session's numbers and the environment."""
    steps = state.step
    record.update(
        finished=True,
        seed=config.seed,
        config_sha256=config_hash(record["config"]),
        steps=steps,
        final_loss=state.loss,  # None (null) where a checkpoint from before losses were kept was resumed with no step left
        seconds_this_session=round(session.seconds, 2),
        seconds_per_step=round(session.seconds / max(1, steps - session.first_step), 4),
        step_seconds_median=round(float(np.median(session.step_seconds)), 4) if session.step_seconds else None,
        step_seconds=[round(t, 3) for t in session.step_seconds],
        prepare_seconds=round(session.prepare_seconds, 2),
        captions_truncated_this_session=session.truncated,
        examples_seen_this_session=session.examples,
        processes_this_session=session.processes,
        negative_prompt=config.geom.negative_prompt(),
        environment=environment(),
    )
    atomic_write_json(output_dir / RUN_FILE, record)
