"""One process of a fine-tune (``torchrun --nproc_per_node N tests/train_worker.py BASE SHARDS OUT``): the
micro Geom-Erasing run of test_training.py, global batch 4 whatever the number of processes."""
import sys

import torch

from benchmark.training import TrainingConfig, train
from implicit_concept.geom_erasing.training_target import GeomErasingConfig

if __name__ == "__main__":
    base, shards, out = sys.argv[1:4]
    torch.set_num_threads(1)
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), concept_token=True)
    config = TrainingConfig(steps=2, batch_size=4, learning_rate=1e-3, checkpoint_every=1, shuffle_buffer=8,
                            threads=1, seed=7, geom=geom)
    train(base, shards, out, config, progress=False)
