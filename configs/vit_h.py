"""SAM ViT-H training with the paper's recipe (appendix A): 90k iterations, batch 256,
lr 8e-4 with 250 warmup steps and x0.1 decays at 60k and 86,666, layer decay 0.8,
drop path 0.4, MAE-initialised encoder (the paper used 256 A100s for 68 hours).

    python train.py --config=configs/vit_h.py --workdir=WORKDIR \
        --config.data.path=/data/sa1b --config.init_from=mae:mae_pretrain_vit_huge.pth \
        --config.mesh.data=-1 --config.mesh.fsdp=8

Memory knobs: --config.model.remat (on by default: activations of the 32 blocks do not
fit otherwise) and --config.model.dtype=bfloat16 (bf16 activations, float32 parameters
and optimizer state), and --config.train.masks_per_chunk (16 of the 64 masks per image
decoded and differentiated at a time; smaller saves more). `model` stays a full model config,
so `get_config().model` works.
"""

import ml_collections

from sam_jax.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config("vit_h")
    c.num_train_steps = 90_000
    c.batch_size = 256
    c.optimizer.lr = 8e-4
    c.optimizer.warmup_steps = 250
    c.optimizer.decay_steps = (60_000, 86_666)
    c.optimizer.layer_decay = 0.8
    c.model.drop_path_rate = 0.4
    c.model.remat = True
    return c
