"""One process of a multi-process fine-tune (``accelerate launch tests/train_worker.py BASE SHARDS OUT BATCH``):
the micro Geom-Erasing run of test_training.py, with the per-process batch given."""
import sys

import torch

from implicit_concept.geom_erasing import GeomErasingConfig
from implicit_concept.training import TrainingConfig, train

if __name__ == "__main__":
    base, shards, out, batch = sys.argv[1:5]
    torch.set_num_threads(1)
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), concept_token=True)
    config = TrainingConfig(steps=2, batch_size=int(batch), learning_rate=1e-3, checkpoint_every=1, shuffle_buffer=8,
                            threads=1, seed=7, geom=geom)
    train(base, shards, out, config, progress=False)
