"""Segment one image from point, box or text prompts; write the mask and an overlay.

    python -m sam_jax.cli.segment --checkpoint sam_vit_b_01ec64.pth --model-type vit_b \
        --image photo.jpg --point 500,375 --output out/mask.png

Text prompts need a model trained with them (`text.source` in training) and the CLIP whose
embeddings it was trained on:

    python -m sam_jax.cli.segment --checkpoint workdir/text --model-type vit_h \
        --clip-checkpoint ViT-L-14-336.pt --text "a red car" --image street.jpg --output car.png

With no --image, a built-in synthetic picture is used; with no --checkpoint, the model is
randomly initialised (the masks then mean nothing: it only shows the pipeline runs). With
no prompt, one foreground point at the image centre is used. Writes OUT (the best mask by
predicted IoU, 0/255 PNG), OUT's stem + "_overlay.png", and prints a JSON summary. Text
combines with points and boxes; with text alone no centre point is added.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.modeling.configs import MODEL_TYPES


def demo_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic RGB picture: shaded background, a few solid shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([60 + 80 * xx / width, 90 + 60 * yy / height, 140 - 40 * xx / width], -1)
    img += rng.normal(0, 4, img.shape)
    shapes = [
        ((xx - 0.5 * width) ** 2 + (yy - 0.5 * height) ** 2 < (0.18 * height) ** 2, (230, 70, 60)),
        (
            (abs(xx - 0.2 * width) < 0.08 * width) & (abs(yy - 0.3 * height) < 0.15 * height),
            (250, 210, 40),
        ),
        ((abs(xx - 0.8 * width) + abs(yy - 0.7 * height)) < 0.15 * height, (40, 160, 80)),
    ]
    for mask, color in shapes:
        img[mask] = np.asarray(color, np.float32) + rng.normal(0, 4, (mask.sum(), 3))
    return img.round().clip(0, 255).astype(np.uint8)


def _parse_floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r}: expected comma-separated numbers"
        ) from None
    if len(values) not in n:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r}: expected {' or '.join(map(str, n))} comma-separated numbers"
        )
    return values


def load_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 (the package's one decoder, `decode.decode_image`),
    with a clear ValueError for missing, corrupt or unscalable files."""
    from sam_jax.data.decode import decode_image

    return decode_image(path)


def _load_embedding(path) -> np.ndarray:
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"text embedding not found: {path}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read text embedding {path}: {e}") from None
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise ValueError(f"text embedding {path} must hold one (D,) vector")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam_jax.cli.segment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help=".pth or converted directory (default: random)")
    parser.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES)
    parser.add_argument("--image", help="image file (default: built-in synthetic picture)")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        type=lambda s: _parse_floats(s, (2, 3), "--point"),
        help="prompt point in pixels; LABEL 1 foreground (default), 0 background",
    )
    parser.add_argument(
        "--box", metavar="X0,Y0,X1,Y1", type=lambda s: _parse_floats(s, (4,), "--box")
    )
    parser.add_argument("--text", help="text prompt, embedded by --clip-checkpoint's text tower")
    parser.add_argument(
        "--clip-checkpoint", help="open_clip / OpenAI CLIP weights (.pt, .bin, .safetensors)"
    )
    parser.add_argument(
        "--clip-gelu",
        action="store_true",
        help="the CLIP uses exact GELU (most open_clip trainings) instead of QuickGELU (OpenAI)",
    )
    parser.add_argument(
        "--text-embedding",
        metavar="FILE.npy",
        help="a precomputed (D,) CLIP embedding to prompt with, instead of --text",
    )
    parser.add_argument(
        "--single-mask",
        action="store_true",
        help="ask for one mask instead of choosing the best of three",
    )
    parser.add_argument("--output", required=True, help="mask PNG to write")
    args = parser.parse_args(argv)
    if args.text is not None and args.text_embedding is not None:
        parser.error("give --text or --text-embedding, not both")
    if args.text is not None and args.clip_checkpoint is None:
        parser.error("--text needs --clip-checkpoint (the CLIP the model was trained with)")

    from sam_jax import SamPredictor, sam_model_registry
    from sam_jax.inference.visualize import overlay_masks
    from sam_jax.io.checkpoint import CheckpointError

    try:
        image = demo_image() if args.image is None else load_image(args.image)
        t0 = time.perf_counter()
        model = sam_model_registry[args.model_type](checkpoint=args.checkpoint)
        if args.checkpoint is None:
            print(
                "note: no --checkpoint, using random weights (masks are meaningless)",
                file=sys.stderr,
            )
        text_encoder = None
        if args.text is not None:
            from sam_jax.inference.text import ClipEncoder

            text_encoder = ClipEncoder.from_checkpoint(
                args.clip_checkpoint, quick_gelu=not args.clip_gelu, chunk=1
            )
        text_embedding = None
        if args.text_embedding is not None:
            text_embedding = _load_embedding(args.text_embedding)
        has_text = args.text is not None or text_embedding is not None
        predictor = SamPredictor(model, text_encoder=text_encoder)
        t1 = time.perf_counter()
        predictor.set_image(image)
        t2 = time.perf_counter()
        h, w = image.shape[:2]
        points = labels = None
        if args.point:
            points = np.array([p[:2] for p in args.point])
            labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point])
        elif args.box is None and not has_text:
            points, labels = np.array([[w / 2, h / 2]]), np.array([1])
        box = None if args.box is None else np.array(args.box)
        masks, scores, _ = predictor.predict(
            points,
            labels,
            box,
            multimask_output=not args.single_mask,
            text=args.text,
            text_embedding=text_embedding,
        )
        t3 = time.perf_counter()
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    best = int(np.argmax(scores))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(masks[best].astype(np.uint8) * 255).save(out)
    overlay_path = out.with_name(out.stem + "_overlay.png")
    overlay_masks(image, masks[best], points, labels, box).save(overlay_path)
    summary = {
        "mask": str(out),
        "overlay": str(overlay_path),
        "image_size": [h, w],
        "text": args.text,
        "predicted_iou": float(scores[best]),
        "area": int(masks[best].sum()),
        "all_predicted_ious": [round(float(s), 4) for s in scores],
        "seconds": {
            "load": round(t1 - t0, 2),
            "set_image": round(t2 - t1, 2),
            "predict": round(t3 - t2, 3),
        },
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
