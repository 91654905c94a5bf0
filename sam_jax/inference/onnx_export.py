"""The prompt decoder as ONNX, with the reference's ONNX interface.

`export_onnx_decoder(model, path)` writes a model with the inputs and outputs of the
reference's `SamOnnxModel` (`scripts/export_onnx_model.py`, multimask: all four mask
tokens):

- image_embeddings (1, C, h, w) float32, as `SamPredictor.get_image_embedding()`
- point_coords (1, N, 2) float32, (x, y) in the model's input frame (ResizeLongestSide)
- point_labels (1, N) float32: 1 fg, 0 bg, 2 / 3 box top-left / bottom-right, -1 padding
  (a "not a point" token that takes part, as in the reference: add one when there is no box)
- mask_input (1, 1, 4h, 4w) float32, has_mask_input (1,) float32 (1: use mask_input)
- orig_im_size (2,) float32: (H, W) of the original image
- outputs masks (1, 4, H, W) logits, iou_predictions (1, 4), low_res_masks (1, 4, 4h, 4w)

N is dynamic. The decoder is traced from our Flax modules by jax2onnx (its parameters
become initializers); the post-processing that depends on orig_im_size's *value* (the
output size) cannot come from a JAX trace, so it is appended as ONNX Resize / Slice nodes,
as the reference's graph has them. `export_onnx_encoder` writes the image encoder too.
jax2onnx and onnx are optional dependencies (requirements-onnx.txt).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.inference.build import SamModel
from sam_jax.modeling.sam import Sam

INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"
FORMAT = "sam_jax.onnx/1"


def reference_interface_decode(
    sam: Sam,
    image_embeddings,
    point_coords,
    point_labels,
    mask_input,
    has_mask_input,
    max_points: int | None = None,
):
    """The reference ONNX model's decoder on our modules (NCHW in, as the reference):
    -> (low-res logits (1, 4, 4h, 4w), iou (1, 4)). Every given token takes part: label -1
    is the "not a point" token, 2 and 3 the box corners.

    max_points: place the N point tokens in a buffer of this many, the rest masked out of
    attention (results unchanged), so that the transformer's shapes are static while N
    stays dynamic; jax2onnx loses a dynamic length inside the transformer's reshapes."""
    pe = sam.prompt_encoder
    emb = jnp.transpose(image_embeddings, (0, 2, 3, 1))
    coords = (point_coords + 0.5) / jnp.array(pe.input_image_size[::-1], jnp.float32)
    sparse = pe.pe_layer._pe_encoding(coords)
    labels = point_labels[..., None]
    sparse = jnp.where(labels == -1, 0.0, sparse)
    sparse = sparse + jnp.where(labels == -1, pe._embedding(pe.not_a_point_embed), 0.0)
    for i, table in enumerate(pe.point_embeddings):
        sparse = sparse + jnp.where(labels == i, pe._embedding(table), 0.0)
    valid = None
    if max_points is not None:
        # a one-hot placement (max_points, N): traceable with N symbolic, unlike a slice
        n = point_coords.shape[1]
        shape = (max_points, n)
        place = jax.lax.broadcasted_iota(jnp.int32, shape, 0) == jax.lax.broadcasted_iota(
            jnp.int32, shape, 1
        )
        sparse = jnp.einsum("mn,bnc->bmc", place.astype(sparse.dtype), sparse)
        valid = jnp.broadcast_to(place.any(axis=1), (sparse.shape[0], max_points))
    mask_dense = pe.embed_masks(mask_input[:, 0])
    has = has_mask_input.reshape(-1, 1, 1, 1)
    dense = has * mask_dense + (1.0 - has) * pe._embedding(pe.no_mask_embed)
    return sam.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, None, sparse_valid=valid)


def _import_onnx_tools():
    try:
        import jax2onnx
        import onnx
    except ImportError as e:
        raise ValueError(
            f"ONNX export needs jax2onnx and onnx ({e}); pip install --no-deps -r "
            "requirements-onnx.txt"
        ) from e
    return jax2onnx, onnx


@contextlib.contextmanager
def _quiet_plugin_loading():
    """jax2onnx imports every plugin it ships and logs a traceback for each whose framework
    (equinox, dm-pix) is absent; none of them is needed for Flax modules."""
    log = logging.getLogger("jax2onnx.plugins.plugin_system")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _postprocess_nodes(image_size: int):
    """ONNX nodes: low_res (1, M, 4h, 4w) -> masks (1, M, H, W) with (H, W) = orig_im_size,
    the reference's upsample to image_size, crop of the padding, resize to the image."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value, dtype):
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name)
        )

    s = float(image_size)
    nodes = [
        const("pp_empty", [], np.float32),
        const("pp_square", [s, s], np.float32),
        const("pp_zero2", [0, 0], np.int64),
        const("pp_axes23", [2, 3], np.int64),
        const("pp_half", [0.5], np.float32),
        const("pp_long", [s], np.float32),
        helper.make_node("Shape", ["low_res_masks"], ["pp_shape"], end=2),
        # upsample to the model input size
        helper.make_node("Cast", ["pp_square"], ["pp_square_i"], to=TensorProto.INT64),
        helper.make_node("Concat", ["pp_shape", "pp_square_i"], ["pp_size1"], axis=0),
        helper.make_node(
            "Resize",
            ["low_res_masks", "", "", "pp_size1"],
            ["pp_up"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        # crop to the resized image: floor(orig * s / max(orig) + 0.5)
        helper.make_node("ReduceMax", ["orig_im_size"], ["pp_max"], keepdims=1),
        helper.make_node("Div", ["pp_long", "pp_max"], ["pp_scale"]),
        helper.make_node("Mul", ["orig_im_size", "pp_scale"], ["pp_scaled"]),
        helper.make_node("Add", ["pp_scaled", "pp_half"], ["pp_scaled_half"]),
        helper.make_node("Floor", ["pp_scaled_half"], ["pp_floor"]),
        helper.make_node("Cast", ["pp_floor"], ["pp_input_size"], to=TensorProto.INT64),
        helper.make_node("Slice", ["pp_up", "pp_zero2", "pp_input_size", "pp_axes23"], ["pp_crop"]),
        # resize to the original image
        helper.make_node("Cast", ["orig_im_size"], ["pp_orig_i"], to=TensorProto.INT64),
        helper.make_node("Concat", ["pp_shape", "pp_orig_i"], ["pp_size2"], axis=0),
        helper.make_node(
            "Resize",
            ["pp_crop", "", "", "pp_size2"],
            ["masks"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
    ]
    return nodes


def export_onnx_decoder(model: SamModel, path, max_points: int = 64, opset: int = 17) -> Path:
    """Write the decoder with the reference's ONNX interface to `path` (see the module
    docstring); it takes up to `max_points` points (box corners and padding included).
    Needs jax2onnx and onnx."""
    jax2onnx, onnx = _import_onnx_tools()
    from onnx import TensorProto, helper

    module, params = model.module, model.params
    e = module.image_embedding_size
    c = module.prompt_embed_dim
    low = 4 * e

    def decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        low_res, iou = module.apply(
            {"params": params},
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            max_points,
            method=reference_interface_decode,
        )
        return low_res, iou

    with _quiet_plugin_loading():
        core = jax2onnx.to_onnx(
            decode,
            # shapes as tuples: float32, and a string is a dynamic dimension
            [(1, c, e, e), (1, "num_points", 2), (1, "num_points"), (1, 1, low, low), (1,)],
            model_name="sam_jax_decoder",
            opset=opset,
            input_names=list(INPUT_NAMES[:5]),
            output_names=["low_res_masks", "iou_predictions"],
        )
    graph = core.graph
    graph.input.append(helper.make_tensor_value_info("orig_im_size", TensorProto.FLOAT, [2]))
    graph.node.extend(_postprocess_nodes(module.image_size))
    outputs = {o.name: o for o in graph.output}
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(
                "masks", TensorProto.FLOAT, [1, 1 + module.num_multimask_outputs, "H", "W"]
            ),
            outputs["iou_predictions"],
            outputs["low_res_masks"],
        ]
    )
    onnx.checker.check_model(core)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(core, str(path))
    return path


def export_onnx_encoder(model: SamModel, path, opset: int = 17) -> Path:
    """The image encoder as ONNX: images (1, S, S, 3) float32 0..255, the resized image at
    the top left of a zero canvas, and input_sizes (1, 2) int32, its (h, w) -> image
    embeddings (1, C, h', w'), NCHW as the decoder takes them."""
    jax2onnx, onnx = _import_onnx_tools()

    module, params = model.module, model.params
    s = module.image_size

    def encode(images, input_sizes):
        emb = module.apply({"params": params}, images, input_sizes, method=Sam.embed_images)
        return jnp.transpose(emb, (0, 3, 1, 2))

    with _quiet_plugin_loading():
        proto = jax2onnx.to_onnx(
            encode,
            [
                jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
                jax.ShapeDtypeStruct((1, 2), jnp.int32),
            ],
            model_name="sam_jax_encoder",
            opset=opset,
            input_names=["images", "input_sizes"],
            output_names=["image_embeddings"],
        )
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, str(path))
    return path


def export_onnx(model: SamModel, directory, max_points: int = 64) -> dict:
    """`decoder.onnx`, `encoder.onnx` and `manifest.json` in `directory`; returns the
    manifest."""
    import json

    from sam_jax.inference.exported import MANIFEST_FILE

    directory = Path(directory)
    export_onnx_decoder(model, directory / DECODER_FILE, max_points=max_points)
    export_onnx_encoder(model, directory / ENCODER_FILE)
    m = model.module
    manifest = {
        "format": FORMAT,
        "model_type": model.model_type,
        "image_size": m.image_size,
        "embedding_shape": [m.prompt_embed_dim, m.image_embedding_size, m.image_embedding_size],
        "max_points": max_points,
        "decoder": {
            "file": DECODER_FILE,
            "inputs": list(INPUT_NAMES),
            "outputs": list(OUTPUT_NAMES),
        },
        "encoder": {
            "file": ENCODER_FILE,
            "inputs": ["images (1,S,S,3) float32 0..255", "input_sizes (1,2) int32"],
            "outputs": ["image_embeddings (1,C,h,w)"],
        },
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
