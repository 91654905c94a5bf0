"""Text-prompt evaluation on synthetic named objects (`synthetic.make_class_example`).

Every object of a held-out picture is prompted by a text embedding alone (no point, no
box), three ways, and the predicted mask (of the three outputs, the one with the highest
predicted IoU) is scored against that object:

- named: its own class name's embedding;
- wrong name: the name of another object in the same picture (the next one in drawing
  order), so a model that follows the text segments something else;
- absent name: a class that is not in the picture.

The embeddings are the stand-in vectors of `synthetic.class_embeddings` (what a CLIP text
tower would give for the names, in this synthetic world).
"""

from __future__ import annotations

import numpy as np

from sam_jax.data import synthetic
from sam_jax.evaluation.protocol import mask_iou


def evaluate_text_prompts(
    model,
    num_images: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 4,
    table: dict[str, np.ndarray] | None = None,
) -> dict:
    """mIoU of text-only prompts on `num_images` held-out pictures of `seed` -> a report
    {"miou": {"named", "wrong_name", "absent_name"}, "num_masks", ...}; `model` is a
    `SamModel` with text_embed_dim > 0 (table: class name -> vector, by default the
    synthetic stand-ins of that size)."""
    from sam_jax.inference.predictor import SamPredictor

    dim = model.module.text_embed_dim
    if not dim:
        raise ValueError("the model takes no text prompts (model.text_embed_dim is 0)")
    table = synthetic.class_embeddings(dim) if table is None else table
    predictor = SamPredictor(model)
    rng = np.random.default_rng(seed)
    scores = {"named": [], "wrong_name": [], "absent_name": []}
    per_class: dict[str, list[float]] = {}
    for index in range(num_images):
        image, masks, names = synthetic.make_class_example(
            index, seed, size, max_objects, held_out=True
        )
        if len(masks) < 2:
            continue  # no wrong name to give
        predictor.set_image(image)
        absent = [c for c in synthetic.CLASSES if c not in names]
        prompts = {
            "named": names,
            "wrong_name": names[1:] + names[:1],
            "absent_name": [absent[int(rng.integers(len(absent)))] for _ in names],
        }
        for kind, prompt_names in prompts.items():
            emb = np.stack([table[n] for n in prompt_names])
            out, iou_pred, _ = predictor.predict_batch(text_embeddings=emb)
            for gt, name, m, p in zip(masks, names, out, iou_pred, strict=True):
                value = mask_iou(m[int(np.argmax(p))], gt)
                scores[kind].append(value)
                if kind == "named":
                    per_class.setdefault(name, []).append(value)
    return {
        "num_images": num_images,
        "num_masks": len(scores["named"]),
        "seed": seed,
        "miou": {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()},
        "named_miou_per_class": {k: float(np.mean(v)) for k, v in sorted(per_class.items())},
    }
