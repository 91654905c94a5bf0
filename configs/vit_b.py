"""Config for SAM vit_b.

python train.py --config=configs/vit_b.py   (training sections arrive with the training issue)
"""

import ml_collections

from sam_jax.model_configs import model_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = model_config("vit_b")
    return config
