"""The ONNX export run by onnxruntime, against the in-process model and against the
reference's own ONNX model (`segment_anything.utils.onnx.SamOnnxModel`, multimask).

Tolerances (tiny model, float32 on CPU): the decoder's low-res logits and IoU predictions
within 1e-5 (measured: 2e-6); the full-size masks within 1e-4 (measured: 2e-5; ONNX
Resize and our matrices sum in a different order), against logits with a standard deviation
of 0.3 to 0.7; the encoder's embedding within 1e-4 (measured: 3e-6) of a unit-variance one.

Skipped where jax2onnx or onnxruntime is missing (pip install --no-deps -r
requirements-onnx.txt).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="ONNX export needs requirements-onnx.txt")
ort = pytest.importorskip("onnxruntime", reason="ONNX tests need requirements-onnx.txt")

from sam_jax.cli import export as export_cli  # noqa: E402
from sam_jax.inference.onnx_export import INPUT_NAMES, OUTPUT_NAMES, export_onnx  # noqa: E402

LOW_RES_ATOL = 1e-5
MASK_ATOL = 1e-4
EMBEDDING_ATOL = 1e-4
POINTS = np.array([[200.0, 120.0], [50.0, 250.0]])
POINT_LABELS = np.array([1, 0])
BOX = np.array([100.0, 40.0, 330.0, 260.0])


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the optimizer's notes on unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx")
    export_onnx(tiny_model, directory)
    return directory


@pytest.fixture(scope="module")
def decoder(onnx_dir):
    return _session(onnx_dir / "decoder.onnx")


def _feeds(predictor, points, labels, box=None, mask_input=None):
    """The reference notebook's way: box corners as labels 2 and 3, else a padding point."""
    coords = predictor.transform.apply_coords(points, predictor.original_size)
    labels = np.asarray(labels, np.float32)
    if box is not None:
        corners = predictor.transform.apply_boxes(box, predictor.original_size).reshape(2, 2)
        coords, labels = np.concatenate([coords, corners]), np.concatenate([labels, [2, 3]])
    else:
        coords, labels = np.concatenate([coords, [[0.0, 0.0]]]), np.concatenate([labels, [-1]])
    low = predictor.low_res_size
    return {
        "image_embeddings": predictor.get_image_embedding().astype(np.float32),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": labels[None].astype(np.float32),
        "mask_input": (
            np.zeros((1, 1, low, low)) if mask_input is None else mask_input.reshape(1, 1, low, low)
        ).astype(np.float32),
        "has_mask_input": np.array([mask_input is not None], np.float32),
        "orig_im_size": np.array(predictor.original_size, np.float32),
    }


def test_decoder_has_the_reference_interface(decoder):
    assert tuple(i.name for i in decoder.get_inputs()) == INPUT_NAMES
    assert tuple(o.name for o in decoder.get_outputs()) == OUTPUT_NAMES
    assert decoder.get_inputs()[1].shape[1] == "num_points"  # any number of points


@pytest.mark.parametrize("with_box", [False, True])
def test_onnxruntime_decoder_equals_in_process(decoder, predictor, with_box):
    box = BOX if with_box else None
    masks, iou, low_res = decoder.run(None, _feeds(predictor, POINTS, POINT_LABELS, box))
    ref = predictor.predict(POINTS, POINT_LABELS, box, return_logits=True)
    assert masks.shape == (1, 4, *predictor.original_size)
    # ONNX returns every mask token; index 0 is the single-mask output, 1: the multimask ones
    np.testing.assert_allclose(low_res[0, 1:], ref[2], atol=LOW_RES_ATOL)
    np.testing.assert_allclose(iou[0, 1:], ref[1], atol=LOW_RES_ATOL)
    np.testing.assert_allclose(masks[0, 1:], ref[0], atol=MASK_ATOL)
    single = predictor.predict(
        POINTS, POINT_LABELS, box, multimask_output=False, return_logits=True
    )
    np.testing.assert_allclose(low_res[0, :1], single[2], atol=LOW_RES_ATOL)
    assert ref[0].std() > 0.1


def test_onnxruntime_decoder_equals_the_reference_onnx_model(decoder, predictor, tiny_ref):
    import torch
    from segment_anything.utils.onnx import SamOnnxModel

    reference = SamOnnxModel(tiny_ref, return_single_mask=False).eval()
    _, _, prior = predictor.predict(POINTS, POINT_LABELS)
    for n in (1, 3, 6):  # the number of points is dynamic
        rng = np.random.default_rng(n)
        points = rng.uniform(0, 300, (n, 2))
        labels = rng.integers(0, 2, n)
        for box, mask in ((None, None), (BOX, prior[0])):
            feeds = _feeds(predictor, points, labels, box, mask)
            ours = decoder.run(None, feeds)
            with torch.no_grad():
                theirs = reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            for name, a, b, atol in zip(
                OUTPUT_NAMES, ours, theirs, (MASK_ATOL, LOW_RES_ATOL, LOW_RES_ATOL)
            ):
                np.testing.assert_allclose(a, b.numpy(), atol=atol, err_msg=name)


def test_onnxruntime_encoder_equals_in_process(onnx_dir, predictor, image):
    encoder = _session(onnx_dir / "encoder.onnx")
    resized = predictor.transform.apply_image(image)
    s = predictor.model.image_size
    canvas = np.zeros((1, s, s, 3), np.float32)
    canvas[0, : resized.shape[0], : resized.shape[1]] = resized
    sizes = np.array([resized.shape[:2]], np.int32)
    (emb,) = encoder.run(None, {"images": canvas, "input_sizes": sizes})
    np.testing.assert_allclose(emb, predictor.get_image_embedding(), atol=EMBEDDING_ATOL)


def test_export_cli_onnx(tmp_path, capsys):
    out = tmp_path / "onnx"
    argv = ["--model-type", "tiny", "--format", "onnx", "--output", str(out)]
    assert export_cli.main(argv) == 0
    assert sorted(f.name for f in out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
    ]
    assert export_cli.main(argv) == 1
    assert "pass --overwrite" in capsys.readouterr().err
