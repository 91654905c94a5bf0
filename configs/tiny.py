"""Tiny SAM on generated synthetic data: the embedded default of `python train.py`.

    python train.py --config=configs/tiny.py --workdir=workdir/tiny

Sized to finish on 2 CPU cores in about ten minutes and then report held-out mIoU.
"""

import ml_collections

from sam_jax.train_config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config("tiny")
    c.model.drop_path_rate = 0.0
    c.model.decoder_dropout = 0.0
    c.num_train_steps = 1500
    c.batch_size = 8
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.decay_steps = (1200,)
    c.optimizer.layer_decay = 1.0
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip_norm = 1.0
    c.train.masks_per_image = 8
    c.data.source = "synthetic"
    c.data.num_threads = 2
    return c
