"""The training sections of a config (everything but `model`), with the paper's recipe as
defaults; configs/*.py adjust them per model size. `validate_config` checks a whole config
(keys, ranges, mesh, named files) before any work."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import ml_collections
import numpy as np

from sam_jax.modeling.attention import IMPLEMENTATIONS
from sam_jax.modeling.configs import DTYPES, MODEL_TYPES, model_config


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
    # Comma-separated parameter paths (or path prefixes, "/"-separated: "mask_decoder",
    # "mask_decoder/iou_prediction_head") that train; every other parameter stays as loaded
    # (no update, no weight decay, no optimizer state). "" trains everything.
    c.optimizer.trainable = ""

    c.train = ml_collections.ConfigDict()
    c.train.masks_per_image = 64
    c.train.num_iterations = 11
    c.train.num_point_rounds = 8
    c.train.box_prob = 0.5
    # Probability that a click (the first point and each error point) is drawn from the
    # deeper half of its region (`prompts.interior`) instead of uniformly over it. The
    # paper draws uniformly (0.0); the evaluation protocol clicks the deepest point.
    c.train.interior_prob = 0.0
    # Probability that a click is drawn from the deepest pixels of its region instead (where
    # the evaluation protocol clicks; depth by 3 x 3 erosion on the training grid).
    c.train.center_prob = 0.0
    c.train.box_noise_frac = 0.1
    c.train.box_max_noise = 20.0
    c.train.focal_weight = 20.0
    c.train.dice_weight = 1.0
    c.train.iou_weight = 1.0
    c.train.focal_alpha = 0.25
    c.train.focal_gamma = 2.0
    # True: error clicks and the IoU head's target only inside the image, not in the zero
    # padding below or right of it that the predictor crops away and the evaluation never
    # clicks. False (as before): over the whole padded grid.
    c.train.clip_to_image = False
    # With a single click, the paper trains only the lowest-loss of the three outputs (0.0);
    # > 0 adds this times the mean loss of all three (`losses.sam_loss`'s others_weight).
    c.train.multimask_others_weight = 0.0
    # > 0: with a single click, add this times a ranking loss of the IoU head's three
    # predictions (`losses.iou_rank_loss`) to its squared error (0.0: the paper's recipe).
    c.train.iou_rank_weight = 0.0
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


# ---------------------------------------------------------------------------- validation
class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what it may be."""


DATA_SOURCES = ("sa1b", "coco", "tfds", "synthetic")
TEXT_SOURCES = ("", "clip", "categories")
SCHEDULES = ("step", "cosine")


def _flatten(config, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _suggest(word: str, choices) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def validate_config(
    config, num_devices: int | None = None, num_processes: int = 1, training: bool = True
) -> None:
    """Check a training config before any work: every key known (against `base_config` of
    its model type), every value in range, the mesh and batch size fitting `num_devices`
    (skipped when None) and `num_processes`, and the files it names present. Raises
    ConfigError naming each problem's key and what it may be (with a 'did you mean'
    suggestion for a misspelt key or choice), problems separated by '; '.

    training=False (evaluate.py, which reads only the model and the synthetic-picture
    settings): unknown keys and those two parts only; missing sections are fine."""
    problems: list[str] = []
    flat = _flatten(config)

    def bad(path: str, rule: str, suggestion: str = "") -> None:
        problems.append(f"config key {path}={flat.get(path)!r}: {rule}{suggestion}")

    model_type = flat.get("model.model_type")
    if model_type not in MODEL_TYPES:
        if "model.model_type" in flat:
            bad(
                "model.model_type",
                f"must be one of {MODEL_TYPES}",
                _suggest(model_type, MODEL_TYPES),
            )
        else:
            problems.append("config key model.model_type is missing")
        model_type = "tiny"
    reference = _flatten(base_config(model_type))
    for path in sorted(set(flat) - set(reference)):
        parent, _, leaf = path.rpartition(".")
        prefix = f"{parent}." if parent else ""
        siblings = sorted(
            {p[len(prefix) :].split(".")[0] for p in reference if p.startswith(prefix)}
        )
        match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        if match:  # misspelt within its section
            hint = f" (did you mean {'.'.join(filter(None, (parent, match[0])))!r}?)"
        else:  # or put in the wrong section
            elsewhere = [p for p in reference if p.rpartition(".")[2] == leaf]
            if elsewhere:
                hint = f" (did you mean {elsewhere[0]!r}?)"
            elif siblings:
                hint = f" (keys of {parent or 'the top level'}: {', '.join(siblings)})"
            else:
                hint = ""
        problems.append(f"unknown config key {path!r}{hint}")
    for path in sorted(set(reference) - set(flat)) if training else []:
        problems.append(f"config key {path} is missing (base_config has {reference[path]!r})")
    if problems:  # ranges are only checked on a config of the right shape
        raise ConfigError("; ".join(problems))

    # Each check passes over a key that is not there (allowed only with training=False).
    def integer(path, minimum=None):
        if path not in flat:
            return False
        v = flat[path]
        if not _is_int(v) or (minimum is not None and v < minimum):
            bad(path, "must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
            return False
        return True

    def number(path, lo=None, hi=None, lo_open=False, hi_open=False):
        if path not in flat:
            return False
        v = flat[path]
        ok = _is_number(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            if lo is not None and hi is not None:
                left, right = "(" if lo_open else "[", ")" if hi_open else "]"
                rule = f"must be a number in {left}{lo:g}, {hi:g}{right}"
            elif lo is not None:
                rule = f"must be a number {'>' if lo_open else '>='} {lo:g}"
            else:
                rule = "must be a finite number"
            bad(path, rule)
        return ok

    def choice(path, choices):
        if path not in flat:
            return False
        v = flat[path]
        if v not in choices:
            bad(path, f"must be one of {', '.join(repr(c) for c in choices)}", _suggest(v, choices))
            return False
        return True

    def existing(path, value=None, what="file or directory"):
        target = flat[path] if value is None else value
        if not Path(str(target)).exists():
            bad(path, f"{what} {target} does not exist")

    # model (always)
    integer("model.patch_size", 1)
    if integer("model.image_size", 1) and _is_int(flat.get("model.patch_size")):
        if flat["model.patch_size"] >= 1 and flat["model.image_size"] % flat["model.patch_size"]:
            bad(
                "model.image_size",
                f"must be a multiple of model.patch_size={flat['model.patch_size']}",
            )
    choice("model.dtype", tuple(DTYPES))
    choice("model.attention_impl", IMPLEMENTATIONS)
    number("model.drop_path_rate", 0.0, 1.0, hi_open=True)
    number("model.decoder_dropout", 0.0, 1.0, hi_open=True)
    integer("model.text_embed_dim", 0)

    # synthetic pictures (always: evaluate.py draws its held-out set with them)
    d = "data."
    integer(d + "synthetic_images", 1)
    if d + "synthetic_size" in flat:
        size = flat[d + "synthetic_size"]
        if not (
            isinstance(size, (tuple, list))
            and len(size) == 2
            and all(_is_int(s) and s >= 16 for s in size)
        ):
            bad(d + "synthetic_size", "must be (height, width), each an integer >= 16")
    integer(d + "synthetic_max_objects", 1)

    if not training:
        if problems:
            raise ConfigError("; ".join(problems))
        return

    # top level
    integer("seed")
    integer("num_train_steps", 1)
    batch_ok = integer("batch_size", 1)
    integer("log_every_steps", 1)
    integer("checkpoint_every_steps", 1)
    integer("keep_checkpoints", 1)
    init_from = str(flat["init_from"] or "")
    if init_from:
        existing(
            "init_from", init_from[len("mae:") :] if init_from.startswith("mae:") else init_from
        )

    # mesh and batch
    sizes = [flat[f"mesh.{axis}"] for axis in ("data", "fsdp", "tensor")]
    mesh_ok = True
    for axis, size in zip(("data", "fsdp", "tensor"), sizes):
        if not _is_int(size) or (size < 1 and size != -1):
            bad(f"mesh.{axis}", "must be an integer >= 1, or -1 (the remaining devices)")
            mesh_ok = False
    if mesh_ok and sizes.count(-1) > 1:
        problems.append(
            f"config key mesh={dict(zip(('data', 'fsdp', 'tensor'), sizes))}: at most one axis "
            "may be -1"
        )
        mesh_ok = False
    if mesh_ok and num_devices is not None:
        known = int(np.prod([s for s in sizes if s != -1]))
        full = [num_devices // known if s == -1 else s for s in sizes]
        if num_devices % known or int(np.prod(full)) != num_devices:
            problems.append(
                f"config key mesh={dict(zip(('data', 'fsdp', 'tensor'), sizes))}: data x fsdp x "
                f"tensor must be {num_devices} (the number of devices)"
            )
        elif batch_ok and flat["batch_size"] % (full[0] * full[1]):
            bad(
                "batch_size",
                f"must be divisible by mesh data x fsdp = {full[0] * full[1]} (the data-parallel "
                "ways)",
            )
    if batch_ok and flat["batch_size"] % num_processes:
        bad("batch_size", f"must be divisible by the {num_processes} processes")

    # optimizer
    o = "optimizer."
    number(o + "lr", 0.0, lo_open=True)
    number(o + "b1", 0.0, 1.0, hi_open=True)
    number(o + "b2", 0.0, 1.0, hi_open=True)
    number(o + "eps", 0.0, lo_open=True)
    number(o + "weight_decay", 0.0)
    integer(o + "warmup_steps", 0)
    if choice(o + "schedule", SCHEDULES) and flat[o + "schedule"] == "cosine":
        if _is_int(flat[o + "warmup_steps"]) and _is_int(flat["num_train_steps"]):
            if flat["num_train_steps"] <= flat[o + "warmup_steps"]:
                bad(o + "warmup_steps", "a cosine schedule needs num_train_steps above it")
    steps = flat[o + "decay_steps"]
    if not isinstance(steps, (tuple, list)) or not all(_is_int(s) and s >= 0 for s in steps):
        bad(o + "decay_steps", "must be a list of step numbers >= 0")
    number(o + "decay_factor", 0.0, 1.0)
    number(o + "layer_decay", 0.0, 1.0, lo_open=True)
    number(o + "grad_clip_norm", 0.0)
    trainable = flat[o + "trainable"]
    if not isinstance(trainable, str):
        bad(o + "trainable", "must be a string of comma-separated parameter paths")
    elif trainable.strip() and model_type in MODEL_TYPES:
        from sam_jax.training.optimizer import parameter_paths, trainable_prefixes

        paths = parameter_paths(config.model)
        for prefix in trainable_prefixes(trainable):
            if not any(p == prefix or p.startswith(prefix + "/") for p in paths):
                modules = sorted({"/".join(p.split("/")[:2]) for p in paths})
                bad(
                    o + "trainable",
                    f"{prefix!r} names no parameter of this model (paths like "
                    f"{', '.join(modules[:3])}, ...)",
                    _suggest(prefix, modules + sorted(paths)),
                )

    # train
    t = "train."
    k_ok = integer(t + "masks_per_image", 1)
    rounds_ok = integer(t + "num_point_rounds", 0)
    if integer(t + "num_iterations", 1) and rounds_ok:
        need = flat[t + "num_point_rounds"] + 2
        if flat[t + "num_iterations"] < need:
            bad(
                t + "num_iterations",
                f"must be >= train.num_point_rounds + 2 = {need} (the first prompt, the point "
                "rounds and a final mask-only round)",
            )
    for key in ("box_prob", "interior_prob", "center_prob", "focal_alpha"):
        number(t + key, 0.0, 1.0)
    for key in (
        "box_noise_frac",
        "box_max_noise",
        "focal_weight",
        "dice_weight",
        "iou_weight",
        "multimask_others_weight",
        "iou_rank_weight",
    ):
        number(t + key, 0.0)
    number(t + "focal_gamma", 0.0)
    if integer(t + "masks_per_chunk", 0) and k_ok:
        chunk, k = flat[t + "masks_per_chunk"], flat[t + "masks_per_image"]
        if 0 < chunk < k and k % chunk:
            bad(t + "masks_per_chunk", f"must be 0, >= or a divisor of train.masks_per_image={k}")

    # data
    d = "data."
    if choice(d + "source", DATA_SOURCES):
        source, path = flat[d + "source"], str(flat[d + "path"] or "")
        if source == "sa1b":
            if not path:
                bad(
                    d + "path", "data.source 'sa1b' needs a directory of SA-1B files or .tar shards"
                )
            else:
                existing(d + "path")
        elif source == "coco":
            if path.count(":") < 1:
                bad(d + "path", "data.source 'coco' needs 'ANNOTATIONS_JSON:IMAGE_DIR'")
            else:
                ann, images = path.split(":", 1)
                existing(d + "path", ann, "annotation file")
                existing(d + "path", images, "image directory")
    integer(d + "num_threads", 1)
    number(d + "max_area_fraction", 0.0, 1.0, lo_open=True)

    # text prompts
    x = "text."
    if choice(x + "source", TEXT_SOURCES) and flat[x + "source"]:
        if not (_is_int(flat["model.text_embed_dim"]) and flat["model.text_embed_dim"] >= 1):
            bad(
                "model.text_embed_dim",
                f"text.source={flat[x + 'source']!r} needs it >= 1 (the embedding size)",
            )
        if flat[x + "source"] == "clip":
            if not flat[x + "clip_checkpoint"]:
                bad(x + "clip_checkpoint", "text.source 'clip' needs a CLIP checkpoint file")
            else:
                existing(x + "clip_checkpoint")
        if flat[x + "source"] == "categories":
            table = flat[x + "category_embeddings"]
            if not table:
                bad(
                    x + "category_embeddings",
                    "text.source 'categories' needs a .npz or 'synthetic'",
                )
            elif table != "synthetic":
                existing(x + "category_embeddings")
    number(x + "prob", 0.0, 1.0)
    number(x + "min_area", 0.0)
    number(x + "crop_expand", 1.0)
    number(x + "category_noise", 0.0)

    # held-out evaluation
    integer("eval.synthetic_images", 0)
    clicks = flat["eval.num_clicks"]
    if (
        not isinstance(clicks, (tuple, list))
        or not clicks
        or not all(_is_int(c) and c >= 1 for c in clicks)
    ):
        bad("eval.num_clicks", "must be a non-empty list of click counts >= 1")

    if problems:
        raise ConfigError("; ".join(problems))


def override_error(error: Exception, argv: list[str]) -> str:
    """One line for a `--config.KEY=VALUE` that ml_collections' config_flags could not
    apply (its KeyError / AttributeError / ValueError), naming the overrides in argv."""
    overrides = [a.split("=", 1)[0] for a in argv[1:] if re.match(r"--?(no)?config\.", a)]
    detail = " ".join(str(error.args[0] if error.args else error).split()).strip("'\"")
    if isinstance(error, (KeyError, AttributeError)):
        detail = f"unknown config key {detail!r}"
    return f"cannot apply {', '.join(overrides) or '--config'}: {detail}"
