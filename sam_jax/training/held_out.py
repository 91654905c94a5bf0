"""The end-of-run check of a training run: interactive mIoU on held-out synthetic pictures
(`eval.json`), run by the evaluation harness exactly as `evaluate.py --config=CONFIG
--checkpoint=WORKDIR --datasets=synthetic` runs it: the same pictures (the evaluation
stream of the training seed, which no training picture comes from) and the same clicks."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from sam_jax.evaluation.runner import EvalSettings, run_evaluation
from sam_jax.inference.build import SamModel
from sam_jax.modeling.configs import build_sam

EVAL_DIR = "eval"  # the harness's files of the check (records.jsonl, results.md, ...)

# The fixed held-out set for comparing recipes across training seeds: the same pictures
# whatever the seed (the evaluation stream of seed 1000, which no training picture of any
# seed comes from), enough of them for over 500 masks with the tiny configs' generator
# settings (256 x 320, up to 8 objects: 120 pictures hold 548 masks).
FIXED_SEED = 1000
FIXED_IMAGES = 120


def evaluate_held_out(
    config: ml_collections.ConfigDict,
    params,
    workdir,
    *,
    fixed: bool = False,
    num_clicks: tuple[int, ...] | None = None,
) -> dict:
    """The harness's summary of the `synthetic` dataset (`miou`, `oracle_miou`: the best
    of the three first-click outputs, `num_masks`, `first_click`: how the outputs and the
    IoU head did, ...) plus the seed; with text prompts on synthetic named objects, also the
    text-prompt evaluation (`text`).

    fixed: score the fixed comparison set (`FIXED_SEED`, `FIXED_IMAGES`) instead of the
    training seed's own pictures, in `<workdir>/eval_fixed`; num_clicks: instead of the
    config's `eval.num_clicks`."""
    e, d = config.eval, config.data
    model = SamModel(build_sam(config.model), params, config.model)
    settings = EvalSettings(
        datasets=["synthetic"],
        output_dir=str(Path(workdir) / (EVAL_DIR + "_fixed" if fixed else EVAL_DIR)),
        num_clicks=tuple(int(k) for k in (num_clicks or e.num_clicks)),
        synthetic_images=FIXED_IMAGES if fixed else e.synthetic_images,
        synthetic_size=tuple(d.synthetic_size),
        synthetic_max_objects=d.synthetic_max_objects,
        synthetic_classes=d.synthetic_classes,
        synthetic_seed=FIXED_SEED if fixed else config.seed,
        model_type=config.model.model_type,
        overwrite=True,  # the check of these weights, not a resumed earlier one
    )
    result = dict(run_evaluation(settings, model)["datasets"]["synthetic"])
    result.pop("paper_sam_minus_ritm", None)
    result["seed"] = config.seed
    if d.synthetic_classes and config.model.text_embed_dim and not fixed:
        from sam_jax.evaluation.text_prompts import evaluate_text_prompts

        result["text"] = evaluate_text_prompts(
            model, e.synthetic_images, config.seed, tuple(d.synthetic_size), d.synthetic_max_objects
        )
    return result
