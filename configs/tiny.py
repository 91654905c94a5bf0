"""Tiny SAM on generated synthetic data: the embedded default of `python train.py`.

    python train.py --config=configs/tiny.py --workdir=workdir/tiny

Recipe: 128 px inputs with 8 px patches (16 x 16 tokens, 64 x 64 mask logits), 2 encoder
blocks, a 64-wide decoder with 2 heads; 2800 steps of 8 images x 4 masks x 3 prompting
rounds (a click, one error-point round, the mask-only round), clicks only, half of them
from the deeper half of their region; AdamW lr 1e-3 (b2 0.99), x0.1 at step 2333;
focal:dice 2:1 with alpha 0.5. Expected: 9 minutes on an idle 2-core machine, then 0.584
1-click mIoU on its 78 held-out masks (seed 0; 0.585 +- 0.034 over seeds 0-3 on earlier
held-out sets). What was tried and why this is the default: docs/experiments/tiny.md.
"""

import ml_collections

from sam_jax.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config("tiny")
    c.model.drop_path_rate = 0.0
    c.model.decoder_dropout = 0.0
    c.model.image_size = 128
    c.model.patch_size = 8
    c.model.decoder_num_heads = 2
    c.num_train_steps = 2800
    c.batch_size = 8
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.b2 = 0.99
    c.optimizer.decay_steps = (2333,)
    c.optimizer.layer_decay = 1.0
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip_norm = 1.0
    # From scratch, the paper's 20:1 focal:dice with alpha 0.25 collapses a model this small
    # to all background for hundreds of steps; a dice-led mix with alpha 0.5 (positives and
    # negatives weighted alike) starts learning the shapes sooner.
    c.train.focal_weight = 2.0
    c.train.focal_alpha = 0.5
    # The held-out check prompts with clicks only. At this budget, giving half of the first
    # prompts to boxes (the paper's mix) cost 1-click mIoU in three paired 2400-step runs:
    # 0.520 -> 0.581 without boxes (GPU, 185 held-out masks), 0.519 -> 0.542 (2 CPU cores,
    # the same masks) and 0.533 -> 0.548 (evaluate.py's 96). So the tiny model's box
    # embeddings stay untrained; the full-size configs keep the paper's even mix.
    c.train.box_prob = 0.0
    # Half of the clicks (first points and error points) from the deeper half of their
    # region, the other half uniform as in the paper: the held-out check clicks the deepest
    # point. See the docstring for the measurements.
    c.train.interior_prob = 0.5
    c.train.masks_per_image = 4
    c.train.num_iterations = 3  # first prompt, 1 error-point round, 1 mask-only round
    c.train.num_point_rounds = 1
    c.eval.num_clicks = (1, 2, 3, 5)
    c.data.source = "synthetic"
    c.data.num_threads = 2
    return c
