"""Models exported as StableHLO (`jax.export`), and a predictor that runs them.

`export_stablehlo(model, directory)` writes

- `encoder.stablehlo`: (param leaves, images (B, S, S, 3) uint8 in an S x S canvas,
  input_sizes (B, 2) int32) -> image embeddings (B, h, w, C) float32; B is symbolic.
- `decoder.stablehlo`: (param leaves, image_embeddings (1, h, w, C), point_coords
  (B, N, 2), point_labels (B, N), point_valid (B, N), boxes (B, 4), box_valid (B,),
  mask_input (B, 4h, 4w), has_mask_input (B,), rows (H, 4h), cols (W, 4w)) ->
  (masks (B, 1 + K, H, W) logits, iou_predictions (B, 1 + K), low_res_masks (B, 1 + K, 4h, 4w)).
  B, N, H and W are symbolic: one artefact serves any prompt count and image size.
  Index 0 along the mask axis is the single-mask output, 1: the K multimask outputs.
  Coordinates are in the model's input frame; rows and cols are
  `sam_jax.modeling.sam.postprocess_matrices` for the image (the reference's upsample,
  crop and resize as two matrices).
- `params.npz`: the parameter leaves in the order both functions take them.
- `manifest.json`: model type, dtype, sizes and the calling conventions above.

The parameters are arguments, not constants baked into the programs, so the two programs
stay small and share one copy of the weights. `ExportedSam.load(directory)` deserialises
them and `ExportedPredictor` offers `set_image` / `predict` as `SamPredictor` does, without
building or calling the Flax modules. Text prompts are not exported.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.inference.build import SamModel
from sam_jax.inference.predictor import VALID_LABELS, _bucket, as_uint8_rgb, fill_canvas
from sam_jax.inference.transforms import ResizeLongestSide
from sam_jax.modeling.sam import Sam, postprocess_masks, postprocess_matrices

ENCODER_FILE = "encoder.stablehlo"
DECODER_FILE = "decoder.stablehlo"
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
FORMAT = "sam_jax.stablehlo/1"


def decode_prompts(
    sam: Sam,
    image_embeddings,
    point_coords,
    point_labels,
    point_valid,
    boxes,
    box_valid,
    mask_input=None,
    has_mask_input=None,
):
    """Every prompt kind at fixed arity: a missing box or mask is switched off by a flag.
    Use as `module.apply(variables, ..., method=decode_prompts)`; mask_input None: no row
    has one (the mask branch is left out of the program).

    Box tokens of rows without a box are masked out of attention (the "not a point" token
    takes part instead, as in the reference); rows without a mask input take the learned
    no-mask embedding. Results equal `Sam.decode_all` with the prompt left out.
    """
    pe = sam.prompt_encoder
    sparse, sparse_valid, no_mask_dense = pe(
        (point_coords, point_labels), boxes, None, point_valid=point_valid, box_valid=box_valid
    )
    dense = no_mask_dense
    if mask_input is not None:
        mask_dense = pe.embed_masks(mask_input)
        dense = jnp.where(has_mask_input[:, None, None, None] > 0, mask_dense, no_mask_dense)
    return sam.mask_decoder(
        image_embeddings, pe.get_dense_pe(), sparse, dense, None, sparse_valid=sparse_valid
    )


def _manifest(model: SamModel, treedef) -> dict:
    m = model.module
    e = m.image_embedding_size
    return {
        "format": FORMAT,
        "model_type": model.model_type,
        "dtype": str(model.config.dtype),
        "image_size": m.image_size,
        "embedding_shape": [e, e, m.prompt_embed_dim],
        "low_res_size": 4 * e,
        "num_multimask_outputs": m.num_multimask_outputs,
        "num_param_leaves": treedef.num_leaves,
        "jax_version": jax.__version__,
        "encoder": {
            "inputs": ["params", "images (B,S,S,3) uint8", "input_sizes (B,2) int32"],
            "outputs": ["image_embeddings (B,h,w,C) float32"],
        },
        "decoder": {
            "inputs": [
                "params",
                "image_embeddings (1,h,w,C) float32",
                "point_coords (B,N,2) float32, model input frame",
                "point_labels (B,N) int32: 1 fg, 0 bg, -1 not a point",
                "point_valid (B,N) bool",
                "boxes (B,4) float32 XYXY, model input frame",
                "box_valid (B,) bool",
                "mask_input (B,4h,4w) float32 logits",
                "has_mask_input (B,) float32",
                "rows (H,4h) float32",
                "cols (W,4w) float32",
            ],
            "outputs": [
                "masks (B,1+K,H,W) float32 logits",
                "iou_predictions (B,1+K) float32",
                "low_res_masks (B,1+K,4h,4w) float32",
            ],
        },
    }


def export_stablehlo(model: SamModel, directory) -> dict:
    """Export `model`'s encoder and decoder into `directory` (created; files overwritten).
    Returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = model.module
    leaves, treedef = jax.tree.flatten(model.params)
    leaf_specs = [jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype) for x in leaves]
    s = module.image_size
    e = module.image_embedding_size
    c = module.prompt_embed_dim
    low = 4 * e

    def encoder(param_leaves, images, input_sizes):
        params = jax.tree.unflatten(treedef, param_leaves)
        return module.apply({"params": params}, images, input_sizes, method=Sam.embed_images)

    def decoder(param_leaves, emb, coords, labels, valid, boxes, box_valid, masks, has_mask, r, c_):
        params = jax.tree.unflatten(treedef, param_leaves)
        low_res, iou = module.apply(
            {"params": params},
            emb,
            coords,
            labels,
            valid,
            boxes,
            box_valid,
            masks,
            has_mask,
            method=decode_prompts,
        )
        return postprocess_masks(low_res, r, c_), iou, low_res

    (b,) = jax.export.symbolic_shape("b")
    enc = jax.export.export(jax.jit(encoder))(
        leaf_specs,
        jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8),
        jax.ShapeDtypeStruct((b, 2), jnp.int32),
    )
    b, n, h, w = jax.export.symbolic_shape("b, n, h, w")
    f32 = jnp.float32
    dec = jax.export.export(jax.jit(decoder))(
        leaf_specs,
        jax.ShapeDtypeStruct((1, e, e, c), f32),
        jax.ShapeDtypeStruct((b, n, 2), f32),
        jax.ShapeDtypeStruct((b, n), jnp.int32),
        jax.ShapeDtypeStruct((b, n), jnp.bool_),
        jax.ShapeDtypeStruct((b, 4), f32),
        jax.ShapeDtypeStruct((b,), jnp.bool_),
        jax.ShapeDtypeStruct((b, low, low), f32),
        jax.ShapeDtypeStruct((b,), f32),
        jax.ShapeDtypeStruct((h, low), f32),
        jax.ShapeDtypeStruct((w, low), f32),
    )
    (directory / ENCODER_FILE).write_bytes(enc.serialize())
    (directory / DECODER_FILE).write_bytes(dec.serialize())
    np.savez(
        directory / PARAMS_FILE, **{f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    )
    manifest = _manifest(model, treedef)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class ExportedSam:
    """The deserialised programs and their parameters (see the module docstring)."""

    def __init__(self, manifest: dict, encoder, decoder, param_leaves: list):
        self.manifest = manifest
        self.encoder = encoder
        self.decoder = decoder
        self.param_leaves = param_leaves
        self.image_size = int(manifest["image_size"])
        self.low_res_size = int(manifest["low_res_size"])

    @classmethod
    def load(cls, directory) -> ExportedSam:
        directory = Path(directory)
        missing = [
            f
            for f in (MANIFEST_FILE, ENCODER_FILE, DECODER_FILE, PARAMS_FILE)
            if not (directory / f).is_file()
        ]
        if missing:
            raise ValueError(f"{directory} is not an exported model: missing {missing}")
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{directory}: unknown export format {manifest.get('format')!r}")
        encoder = jax.export.deserialize(bytearray((directory / ENCODER_FILE).read_bytes()))
        decoder = jax.export.deserialize(bytearray((directory / DECODER_FILE).read_bytes()))
        with np.load(directory / PARAMS_FILE) as f:
            leaves = [jnp.asarray(f[f"leaf_{i:05d}"]) for i in range(len(f.files))]
        if len(leaves) != manifest["num_param_leaves"]:
            raise ValueError(
                f"{directory}: {len(leaves)} parameter arrays, manifest says "
                f"{manifest['num_param_leaves']}"
            )
        return cls(manifest, encoder, decoder, leaves)

    def embed(self, images: np.ndarray, input_sizes: np.ndarray) -> jax.Array:
        """(B, S, S, 3) uint8 canvases and their real (h, w) -> (B, h, w, C) embeddings."""
        return self.encoder.call(
            self.param_leaves, jnp.asarray(images, jnp.uint8), jnp.asarray(input_sizes, jnp.int32)
        )

    def decode(
        self,
        image_embeddings,
        point_coords,
        point_labels,
        point_valid,
        boxes,
        box_valid,
        mask_input,
        has_mask_input,
        rows,
        cols,
    ):
        """See the module docstring; returns (masks, iou_predictions, low_res_masks)."""
        return self.decoder.call(
            self.param_leaves,
            jnp.asarray(image_embeddings, jnp.float32),
            jnp.asarray(point_coords, jnp.float32),
            jnp.asarray(point_labels, jnp.int32),
            jnp.asarray(point_valid, bool),
            jnp.asarray(boxes, jnp.float32),
            jnp.asarray(box_valid, bool),
            jnp.asarray(mask_input, jnp.float32),
            jnp.asarray(has_mask_input, jnp.float32),
            jnp.asarray(rows, jnp.float32),
            jnp.asarray(cols, jnp.float32),
        )


class ExportedPredictor:
    """`SamPredictor`'s single-prompt interface over an `ExportedSam`.

    Prompt count and points per prompt are padded to powers of two, as in `SamPredictor`,
    so a new number of points reuses a compiled program (the symbolic shapes compile once
    per concrete shape).
    """

    def __init__(self, exported: ExportedSam):
        self.exported = exported
        self.transform = ResizeLongestSide(exported.image_size)
        self.features = None
        self.original_size = None

    def set_image(self, image: np.ndarray) -> None:
        image = as_uint8_rgb(image)
        s = self.exported.image_size
        canvas = np.zeros((1, s, s, 3), np.uint8)
        input_size = fill_canvas(canvas[0], image, self.transform)
        self.features = self.exported.embed(canvas, np.array([input_size], np.int32))
        self.original_size = tuple(int(v) for v in image.shape[:2])
        low = self.exported.low_res_size
        self._rows, self._cols = postprocess_matrices((low, low), s, input_size, self.original_size)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `SamPredictor.predict` (without text): (masks (C, H, W), iou (C,),
        low-res logits (C, 4h, 4w))."""
        if self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if point_coords is None and box is None:
            raise ValueError("give point_coords or a box")
        low = self.exported.low_res_size
        n = 0 if point_coords is None else len(point_coords)
        p = _bucket(max(n, 1))
        coords = np.zeros((1, p, 2), np.float32)
        labels = np.full((1, p), -1, np.int32)
        valid = np.zeros((1, p), bool)
        if n:
            labels_in = np.asarray(point_labels)
            if labels_in.shape != (n,) or not np.isin(labels_in, VALID_LABELS).all():
                raise ValueError("point_labels must be (N,) values in 1, 0, -1")
            coords[0, :n] = self.transform.apply_coords(point_coords, self.original_size)
            labels[0, :n] = labels_in
            valid[0, :n] = True
        boxes = np.zeros((1, 4), np.float32)
        if box is not None:
            boxes[0] = self.transform.apply_boxes(np.asarray(box), self.original_size)[0]
        masks = np.zeros((1, low, low), np.float32)
        if mask_input is not None:
            masks[0] = np.asarray(mask_input, np.float32).reshape(low, low)
        out, iou, low_res = jax.device_get(
            self.exported.decode(
                self.features,
                coords,
                labels,
                valid,
                boxes,
                np.array([box is not None]),
                masks,
                np.array([float(mask_input is not None)], np.float32),
                self._rows,
                self._cols,
            )
        )
        pick = slice(1, None) if multimask_output else slice(0, 1)
        out, iou, low_res = out[0, pick], iou[0, pick], low_res[0, pick]
        return (out if return_logits else out > Sam.mask_threshold), iou, low_res
