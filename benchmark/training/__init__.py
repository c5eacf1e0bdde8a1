"""Training diffusion pipelines: base pretraining and every fine-tune run the one loop, :func:`train`.

:mod:`.config` holds what decides a run, :mod:`.data` the way from samples to a step's tensors,
:mod:`.new_tokens` the trainable embeddings of Geom-Erasing's tokens, :mod:`.memory` the memory
options (mixed precision, attention kernel, gradient checkpointing), :mod:`.checkpoints` the run's
folder (``run.json``, checkpoints, the final pipeline), :mod:`.state_files` the plain-data format a
checkpoint's state is written in, and :mod:`.loop` the loop itself.
"""
from benchmark.training.checkpoints import CHECKPOINTS_DIR, PIPELINE_DIR, RUN_FILE
from benchmark.training.config import TrainingConfig
from benchmark.training.data import SampleSource, ShardSource
from benchmark.training.loop import launch_size, launched_processes, processes, train

__all__ = ["CHECKPOINTS_DIR", "PIPELINE_DIR", "RUN_FILE", "SampleSource", "ShardSource", "TrainingConfig", "launch_size", "launched_processes", "processes", "train"]
