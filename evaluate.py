"""Zero-shot evaluation: the SAM paper's point-prompt protocol, and its other transfer tasks.

    python evaluate.py --config=configs/vit_b.py --checkpoint=sam_vit_b_01ec64.pth \
        --datasets=LVIS,DRAM --data_dir=/data/sam_eval --output_dir=/tmp/eval

    python evaluate.py --config=configs/tiny.py --checkpoint=CONVERTED_DIR \
        --datasets=synthetic --output_dir=/tmp/eval_synthetic

    python evaluate.py --inventory --datasets=all --data_dir=/data/sam_eval

    python evaluate.py --task=instances --boxes=vitdet_h_coco_val2017.json \
        --datasets=COCO2017 --data_dir=/data/sam_eval --config=configs/vit_h.py \
        --checkpoint=sam_vit_h_4b8939.pth --output_dir=/tmp/eval_instances
    python evaluate.py --task=proposals --datasets=LVISv1 ...   # class-agnostic AR@1000
    python evaluate.py --task=edges --datasets=BSDS500 ...      # ODS / OIS / AP / R50
    python evaluate.py --task=text --clip_checkpoint=ViT-L-14-336.pt ...

--task=points (the default) is the click protocol on the 23 datasets; the other tasks are
the paper's section 7 (`sam_jax/evaluation/tasks.py`), each writing its folder under
--output_dir, resumable, with results in results.json under datasets.<name>.<task>.

Writes results.json, records.jsonl, results.md and miou_vs_clicks.png to --output_dir,
and resumes there after an interruption. Dataset layouts: `sam_jax/evaluation/registry.py`.

A mistake in the flags or the config, a missing checkpoint or dataset, and a dataset that
yields no evaluated mask (unless --allow_empty) are reported as one `error: ...` line
with exit status 1; results of the datasets already done stay in --output_dir.
`--inventory` only lists what --data_dir holds for each dataset, beside the paper's counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from sam_jax.evaluation import EvalSettings, inventory, load_model, run_evaluation, tasks
from sam_jax.evaluation.runner import open_datasets
from sam_jax.training.config import ConfigError, override_error, validate_config

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file; its .model section (model_type) picks the model, and its "
    "data.synthetic_* settings and seed the held-out pictures the 'synthetic' entry draws.",
    lock_config=False,
    accept_new_attributes=True,  # an unknown --config.KEY reaches validate_config
)
flags.DEFINE_enum(
    "task",
    "points",
    list(tasks.TASKS),
    "points: the click protocol; instances: masks from detector boxes (--boxes), mask AP; "
    "proposals: automatic masks, class-agnostic AR@1000; edges: BSDS500 ODS/OIS/AP/R50; "
    "text: instances prompted by CLIP text embeddings of their category names.",
)
flags.DEFINE_string(
    "boxes",
    None,
    "--task=instances: detections in COCO results format (JSON list of "
    "{image_id, category_id, bbox [x, y, w, h], score}).",
)
flags.DEFINE_integer("max_images", 0, "Other tasks than points: only the first N images (0: all).")
flags.DEFINE_string(
    "clip_checkpoint",
    None,
    "--task=text: an open_clip / OpenAI CLIP checkpoint for the text embeddings of category names.",
)
flags.DEFINE_string("text_template", "{}", "--task=text: the phrase for a category name.")
flags.DEFINE_integer(
    "max_proposals", 1000, "--task=proposals: masks kept per image (the paper's AR@1000)."
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
    "allow_empty",
    False,
    "Accept a dataset in which no masks are found or none is evaluated (default: an error, "
    "exit status 1).",
)
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

FLAGS = flags.FLAGS


def _error(message, code: int = 1):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors (and --config.KEY override errors) as one
    `error:` line and exit status 1."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _error(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        _error(override_error(e, argv))


def _settings(config) -> EvalSettings:
    """The run's settings from the flags (ValueError naming a bad one)."""
    clicks = []
    for n in FLAGS.num_clicks:
        try:
            clicks.append(int(n))
        except ValueError:
            raise ValueError(f"--num_clicks: {n!r} is not a whole number of clicks") from None
    # The `synthetic` entry draws held-out pictures of the kind the config trains on.
    data = config.get("data", {}) if config is not None else {}
    synthetic = {
        key: data[key]
        for key in ("synthetic_size", "synthetic_max_objects", "synthetic_classes")
        if key in data
    }
    if config is not None and "seed" in config:  # the held-out stream of the training seed
        synthetic["synthetic_seed"] = int(config.seed)
    return EvalSettings(
        datasets=FLAGS.datasets,
        output_dir=FLAGS.output_dir,
        data_dir=FLAGS.data_dir,
        num_clicks=tuple(clicks),
        max_masks_per_dataset=FLAGS.max_masks_per_dataset,
        subsample_above=FLAGS.subsample_above,
        seed=FLAGS.seed,
        batch_size=FLAGS.batch_size,
        synthetic_images=FLAGS.synthetic_images,
        multimask_all_clicks=FLAGS.multimask_all_clicks,
        fixed_batch_shape=FLAGS.fixed_batch_shape,
        checkpoint=FLAGS.checkpoint,
        overwrite=FLAGS.overwrite,
        allow_empty=FLAGS.allow_empty,
        inventory_sample=FLAGS.inventory_sample,
        **synthetic,
    )


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


def _run_task(config) -> None:
    """--task other than points."""
    datasets = FLAGS.datasets if FLAGS["datasets"].present else []
    settings = tasks.TaskSettings(
        task=FLAGS.task,
        datasets=datasets,
        output_dir=FLAGS.output_dir,
        data_dir=FLAGS.data_dir,
        boxes=FLAGS.boxes,
        batch_size=FLAGS.batch_size if FLAGS["batch_size"].present else 64,
        max_images=FLAGS.max_images,
        checkpoint=FLAGS.checkpoint,
        overwrite=FLAGS.overwrite,
        max_proposals=FLAGS.max_proposals,
        text_template=FLAGS.text_template,
    )
    tasks.open_all(settings)  # data mistakes surface before the model loads
    if settings.task == "text" and not FLAGS.clip_checkpoint:
        raise ValueError(
            "--task=text needs --clip_checkpoint (CLIP weights for the text embeddings)"
        )
    model = load_model(config.model if config is not None else None, FLAGS.checkpoint, FLAGS.seed)
    settings.model_type = model.model_type
    encoder = None
    if settings.task == "text":
        from sam_jax.inference.text import ClipEncoder

        encoder = ClipEncoder.from_checkpoint(FLAGS.clip_checkpoint)
    results = tasks.run_task(settings, model, text_encoder=encoder)
    for name, d in results["datasets"].items():
        if settings.task in d:
            summary = {k: v for k, v in d[settings.task].items() if isinstance(v, float)}
            logging.info(
                "%s %s: %s", name, settings.task, {k: round(v, 4) for k, v in summary.items()}
            )


def main(argv):
    if len(argv) > 1:
        _error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.inventory:
        return _inventory()
    if FLAGS.task != "points":
        if not FLAGS.output_dir:
            _error("--output_dir is required")
        config = _CONFIG.value
        try:
            if config is not None:
                validate_config(config, training=False)
            _run_task(config)
        except ConfigError as e:
            _error(e)
        except (ValueError, RuntimeError) as e:
            _error(" ".join(str(e).split()))
        return 0
    if FLAGS.boxes:
        _error("--boxes is for --task=instances")
    if not FLAGS.output_dir:
        _error("--output_dir is required (or --inventory)")
    config = _CONFIG.value
    if config is not None:
        try:
            validate_config(config, training=False)
        except ConfigError as e:
            _error(e)
        except OSError as e:  # the config file did not load (raised on first use)
            path = config_flags.get_config_filename(FLAGS["config"])
            _error(f"cannot load --config {path}: {str(e).strip().splitlines()[-1].strip()}")
    try:
        settings = _settings(config)  # flag mistakes surface before the model loads
        datasets = open_datasets(settings)  # and data mistakes too
        model_config = config.model if config is not None else None
        model = load_model(model_config, FLAGS.checkpoint, FLAGS.seed)
        settings.model_type = model.model_type
        results = run_evaluation(settings, model, datasets=datasets)
    except ValueError as e:  # CheckpointError, DataError (EmptyDatasetError), bad settings
        _error(" ".join(str(e).split()))
    mean = results["mean_over_datasets"]["miou"]
    logging.info("mean mIoU over datasets: %s", {k: round(v, 4) for k, v in mean.items()})


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
