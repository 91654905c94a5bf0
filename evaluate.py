"""Zero-shot interactive segmentation evaluation (the SAM paper's point-prompt protocol).

    python evaluate.py --config=configs/vit_b.py --checkpoint=sam_vit_b_01ec64.pth \
        --datasets=LVIS,DRAM --data_dir=/data/sam_eval --output_dir=/tmp/eval

    python evaluate.py --config=configs/tiny.py --checkpoint=CONVERTED_DIR \
        --datasets=synthetic --output_dir=/tmp/eval_synthetic

    python evaluate.py --inventory --datasets=all --data_dir=/data/sam_eval

Writes results.json, records.jsonl, results.md and miou_vs_clicks.png to --output_dir,
and resumes there after an interruption. Dataset layouts: `sam_jax/evaluation/registry.py`.
`--inventory` only lists what --data_dir holds for each dataset, beside the paper's counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from sam_jax.evaluation import EvalSettings, inventory, load_model, run_evaluation

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
flags.DEFINE_bool(
    "inventory",
    False,
    "Only list what --data_dir holds for each of --datasets (images and masks found beside "
    "the paper's counts, the layout recognised, problems met); loads no model. Exits 1 if "
    "a dataset has no masks.",
)
flags.DEFINE_integer(
    "inventory_sample",
    300,
    "Label-map datasets: decode at most this many label images to count masks (the rest "
    "is extrapolated); 0 counts them all.",
)
flags.DEFINE_bool(
    "allow_empty",
    False,
    "Go on when a dataset yields no masks (default: refuse to start, or fail at the end).",
)

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.inventory:
        return _inventory()
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (or --inventory)")
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
        allow_empty=FLAGS.allow_empty,
        inventory_sample=FLAGS.inventory_sample,
        **synthetic,
    )
    results = run_evaluation(settings, model)
    mean = results["mean_over_datasets"]["miou"]
    logging.info("mean mIoU over datasets: %s", {k: round(v, 4) for k, v in mean.items()})


def _inventory() -> int:
    rows = inventory.take_inventory(
        FLAGS.datasets,
        FLAGS.data_dir,
        sample_images=FLAGS.inventory_sample,
        open_options={"synthetic_images": FLAGS.synthetic_images},
    )
    print(inventory.format_table(rows))
    if FLAGS.output_dir:
        out = Path(FLAGS.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "inventory.json").write_text(
            json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
        )
    bad = [r.name for r in rows if r.status == "error"]
    if bad:
        print(f"error: no masks found for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
