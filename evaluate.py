"""Zero-shot interactive segmentation evaluation (the SAM paper's point-prompt protocol).

    python evaluate.py --config=configs/vit_b.py --checkpoint=sam_vit_b_01ec64.pth \
        --datasets=LVIS,DRAM --data_dir=/data/sam_eval --output_dir=/tmp/eval

    python evaluate.py --config=configs/tiny.py --checkpoint=CONVERTED_DIR \
        --datasets=synthetic --output_dir=/tmp/eval_synthetic

Writes results.json, records.jsonl, results.md and miou_vs_clicks.png to --output_dir,
and resumes there after an interruption. Dataset layouts: `sam_jax/evaluation/registry.py`.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from sam_jax.evaluation import EvalSettings, load_model, run_evaluation

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file; its .model section (model_type) picks the model, and its "
    "data.synthetic_* settings the kind of pictures the 'synthetic' entry draws.",
)
flags.DEFINE_string(
    "checkpoint", None, "A .pth state dict or a converted checkpoint directory (none: random)."
)
flags.DEFINE_list(
    "datasets",
    ["synthetic"],
    "Registry names (or 'all'), 'synthetic', 'sa1b:DIR', 'coco:ANN_JSON:IMAGE_DIR'.",
)
flags.DEFINE_string("data_dir", None, "Folder holding <NAME>/ for each registry dataset.")
flags.DEFINE_list("num_clicks", ["1", "2", "3", "5", "9"], "Click counts to report.")
flags.DEFINE_integer(
    "max_masks_per_dataset", 10000, "Subsample large datasets by image to about this many masks."
)
flags.DEFINE_integer(
    "subsample_above",
    -1,
    "Subsample only datasets with more masks than this (-1: 1.5 x max_masks_per_dataset, the "
    "paper's 15k for 10k; 0: always cap).",
)
flags.DEFINE_string("output_dir", None, "Where results go.")
flags.DEFINE_integer("seed", 0, "Seed of the subsampling (and of a random-init model).")
flags.DEFINE_integer("batch_size", 16, "Masks decoded per predictor call.")
flags.DEFINE_integer("synthetic_images", 20, "Images of the 'synthetic' dataset.")
flags.DEFINE_bool(
    "multimask_all_clicks", False, "Three outputs at every click (default: only at the first)."
)
flags.DEFINE_bool(
    "fixed_batch_shape",
    False,
    "Pad every decoder call to --batch_size prompts: fewer compilations, more decoding "
    "(helps short runs).",
)
flags.DEFINE_bool("overwrite", False, "Discard results of a different run in --output_dir.")
flags.mark_flag_as_required("output_dir")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    model_config = config.model if config is not None else None
    model = load_model(model_config, FLAGS.checkpoint, FLAGS.seed)
    # The `synthetic` entry draws held-out pictures of the kind the config trains on.
    data = config.get("data", {}) if config is not None else {}
    synthetic = {
        key: data[key]
        for key in ("synthetic_size", "synthetic_max_objects", "synthetic_classes")
        if key in data
    }
    settings = EvalSettings(
        datasets=FLAGS.datasets,
        output_dir=FLAGS.output_dir,
        data_dir=FLAGS.data_dir,
        num_clicks=tuple(int(n) for n in FLAGS.num_clicks),
        max_masks_per_dataset=FLAGS.max_masks_per_dataset,
        subsample_above=FLAGS.subsample_above,
        seed=FLAGS.seed,
        batch_size=FLAGS.batch_size,
        synthetic_images=FLAGS.synthetic_images,
        multimask_all_clicks=FLAGS.multimask_all_clicks,
        fixed_batch_shape=FLAGS.fixed_batch_shape,
        checkpoint=FLAGS.checkpoint,
        model_type=model.model_type,
        overwrite=FLAGS.overwrite,
        **synthetic,
    )
    results = run_evaluation(settings, model)
    mean = results["mean_over_datasets"]["miou"]
    logging.info("mean mIoU over datasets: %s", {k: round(v, 4) for k, v in mean.items()})


if __name__ == "__main__":
    app.run(main)
