"""The training sections of a config (everything but `model`), with the paper's recipe as
defaults; configs/*.py adjust them per model size."""

from __future__ import annotations

import ml_collections

from sam_jax.modeling.configs import model_config


def base_config(model_type: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model_config(model_type)
    c.model.drop_path_rate = 0.4
    c.model.decoder_dropout = 0.1

    c.seed = 0
    c.num_train_steps = 90_000
    c.batch_size = 256  # images per step, global
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.init_from = ""  # SAM .pth / converted dir (fine-tuning), or "mae:PATH.pth" (encoder only)

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 8e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 250
    c.optimizer.schedule = "step"  # step (the paper's: x decay_factor at decay_steps) | cosine
    c.optimizer.decay_steps = (60_000, 86_666)
    c.optimizer.decay_factor = 0.1  # cosine: the final lr is lr * decay_factor
    c.optimizer.layer_decay = 0.8
    c.optimizer.grad_clip_norm = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.masks_per_image = 64
    c.train.num_iterations = 11
    c.train.num_point_rounds = 8
    c.train.box_prob = 0.5
    # Probability that a click (the first point and each error point) is drawn from the
    # deeper half of its region (`prompts.interior`) instead of uniformly over it. The
    # paper draws uniformly (0.0); the evaluation protocol clicks the deepest point.
    c.train.interior_prob = 0.0
    c.train.box_noise_frac = 0.1
    c.train.box_max_noise = 20.0
    c.train.focal_weight = 20.0
    c.train.dice_weight = 1.0
    c.train.iou_weight = 1.0
    c.train.focal_alpha = 0.25
    c.train.focal_gamma = 2.0
    # Every round's decoder gradient is taken right after the round, so the backward pass
    # holds one round's activations; rolled (unroll False), the rounds also run strictly one
    # after another. Unrolled, XLA fuses across rounds: faster for a few small rounds.
    c.train.unroll_rounds = model_type == "tiny"
    # Masks per image decoded and differentiated at a time (0 or >= masks_per_image: all at
    # once; otherwise it must divide masks_per_image). A chunk bounds the decoder activations
    # in memory (at full size, each mask's image tokens and 256 x 256 upscaled features);
    # same result up to float summation order (and decoder dropout, drawn per chunk).
    c.train.masks_per_chunk = 0 if model_type == "tiny" else 16

    c.data = ml_collections.ConfigDict()
    c.data.source = "sa1b"  # sa1b (dir or .tar shards) | coco | tfds | synthetic
    c.data.path = ""  # sa1b: directory; coco: "ANN_JSON:IMAGE_DIR"; tfds: data_dir
    c.data.num_threads = 8
    c.data.max_area_fraction = 0.9
    c.data.synthetic_images = 512
    c.data.synthetic_size = (256, 320)
    c.data.synthetic_max_objects = 8
    c.data.synthetic_classes = False  # named shape/colour classes, for text prompts

    # Text prompts (the paper's text-to-mask variant; off in the released models). Masks
    # with an embedding (CLIP of the mask's crop, or of its category name) get it as their
    # first prompt with probability `prob`, instead of a point or box; the error-point
    # rounds follow as usual. Needs model.text_embed_dim = the embedding size.
    c.text = ml_collections.ConfigDict()
    c.text.source = ""  # "" (off) | clip | categories
    c.text.prob = 0.5
    c.text.min_area = 100 * 100  # pixels of the original image (the paper: 100^2)
    c.text.crop_expand = 1.5  # clip: the crop is the mask's box grown this much, squared
    c.text.clip_checkpoint = ""  # clip: open_clip / OpenAI CLIP weights (ViT-L/14@336: 768-d)
    c.text.clip_quick_gelu = True  # OpenAI-trained CLIP uses QuickGELU
    c.text.cache_dir = ""  # clip: per-image embedding cache (default WORKDIR/mask_embeddings)
    # categories: a .npz of category name -> vector (e.g. CLIP text embeddings of the names),
    # or "synthetic" for the stand-in vectors of the synthetic classes
    c.text.category_embeddings = ""
    c.text.category_noise = 0.0  # categories: per-mask noise on the unit vectors

    c.eval = ml_collections.ConfigDict()
    c.eval.synthetic_images = 20  # held out (another seed) after training
    c.eval.num_clicks = (1, 2, 3, 5, 9)
    return c
