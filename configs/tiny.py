"""Config for SAM tiny.

python train.py --config=configs/tiny.py   (training sections arrive with the training issue)
"""

import ml_collections

from sam_jax.model_configs import model_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = model_config("tiny")
    return config
