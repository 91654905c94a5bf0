"""SAM ViT-B training with the paper's recipe (appendix A): 180k iterations, batch 128,
lr 8e-4, layer decay 0.6, drop path 0.6, MAE-initialised encoder.

    python train.py --config=configs/vit_b.py --workdir=WORKDIR \
        --config.data.path=/data/sa1b --config.init_from=mae:mae_pretrain_vit_base.pth

Memory knobs: --config.model.remat=True (recompute encoder blocks in the backward pass)
--config.model.dtype=bfloat16 (bf16 activations, float32 parameters and optimizer) and
--config.train.masks_per_chunk (16 masks per image decoded at a time by default).
`model` stays a full model config, so `get_config().model` builds the network.
"""

import ml_collections

from sam_jax.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config("vit_b")
    c.num_train_steps = 180_000
    c.batch_size = 128
    c.optimizer.lr = 8e-4
    c.optimizer.layer_decay = 0.6
    c.model.drop_path_rate = 0.6
    # The paper states the schedule for ViT-H's 90k iterations; scaled to 180k here.
    c.optimizer.decay_steps = (120_000, 173_333)
    c.model.remat = True
    return c
