"""SAM ViT-L training with the paper's recipe (appendix A): lr 4e-4, layer decay 0.8,
drop path 0.4 (iterations, batch and schedule as for ViT-H: 90k, 256, decay at 60k/86,666).

    python train.py --config=configs/vit_l.py --workdir=WORKDIR \
        --config.data.path=/data/sa1b --config.init_from=mae:mae_pretrain_vit_large.pth

Memory knobs: --config.model.remat (on by default here), --config.model.dtype=bfloat16 and
--config.train.masks_per_chunk (16 masks per image decoded at a time by default).
`model` stays a full model config, so `get_config().model` builds the network.
"""

import ml_collections

from sam_jax.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config("vit_l")
    c.optimizer.lr = 4e-4
    c.optimizer.layer_decay = 0.8
    c.model.drop_path_rate = 0.4
    c.model.remat = True
    return c
