"""Exported models against the in-process model: the StableHLO encoder and decoder (run
without the Flax modules) give the predictor's outputs, and the export command line
refuses bad input with one line.

Tolerances: the exported programs are the same XLA computations as the in-process ones, so
on CPU they agree to float32 rounding (measured: 1e-7): embeddings, logits and IoU
predictions within EXPORT_ATOL (the tiny model's mask logits have a standard deviation of
0.2 to 0.4 here, so this is 5e-5 of it), thresholded masks exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam_jax.cli import export as export_cli
from sam_jax.inference.exported import ExportedPredictor, ExportedSam, export_stablehlo

EXPORT_ATOL = 1e-5

PROMPTS = {
    "one point": dict(point_coords=np.array([[200.0, 120.0]]), point_labels=np.array([1])),
    "three points": dict(
        point_coords=np.array([[200.0, 120.0], [50.0, 250.0], [400.0, 30.0]]),
        point_labels=np.array([1, 0, 1]),
    ),
    "box": dict(box=np.array([100.0, 40.0, 330.0, 260.0])),
    "points and box": dict(
        point_coords=np.array([[200.0, 120.0], [20.0, 20.0]]),
        point_labels=np.array([1, 0]),
        box=np.array([100.0, 40.0, 330.0, 260.0]),
    ),
}


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    export_stablehlo(tiny_model, directory)
    return ExportedSam.load(directory), directory


@pytest.fixture(scope="module")
def exported_predictor(exported, image):
    p = ExportedPredictor(exported[0])
    p.set_image(image)
    return p


def test_manifest_states_the_calling_convention(exported, tiny_model):
    manifest = json.loads((exported[1] / "manifest.json").read_text())
    assert manifest["model_type"] == "tiny"
    assert manifest["image_size"] == tiny_model.image_size
    assert len(manifest["decoder"]["inputs"]) == 11
    assert manifest["decoder"]["outputs"][0].startswith("masks")


def test_exported_encoder_equals_in_process(exported_predictor, predictor):
    np.testing.assert_allclose(
        np.asarray(exported_predictor.features), np.asarray(predictor.features), atol=EXPORT_ATOL
    )


def test_exported_encoder_is_batch_polymorphic(exported, predictor, tiny_model):
    s = tiny_model.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    sizes = np.array([[s, s], [s // 2, s]], np.int32)
    ours = np.asarray(exported[0].embed(images, sizes))
    ref = np.asarray(predictor._embed(tiny_model.params, images, sizes))
    assert ours.shape[0] == 2
    np.testing.assert_allclose(ours, ref, atol=EXPORT_ATOL)


@pytest.mark.parametrize("name", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_exported_decoder_equals_in_process(name, multimask, exported_predictor, predictor):
    kwargs = PROMPTS[name]
    ref = predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)
    ours = exported_predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=EXPORT_ATOL)
    assert ref[0].std() > 0.1  # the logits spread: the tolerance is a tight one
    masks = exported_predictor.predict(**kwargs, multimask_output=multimask)[0]
    ref_masks = predictor.predict(**kwargs, multimask_output=multimask)[0]
    assert masks.dtype == bool and np.array_equal(masks, ref_masks)


def test_exported_decoder_takes_a_mask_input(exported_predictor, predictor):
    kwargs = PROMPTS["one point"]
    _, scores, low_res = predictor.predict(**kwargs)
    prior = low_res[int(np.argmax(scores))][None]
    ref = predictor.predict(**kwargs, mask_input=prior, multimask_output=False, return_logits=True)
    ours = exported_predictor.predict(
        **kwargs, mask_input=prior, multimask_output=False, return_logits=True
    )
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=EXPORT_ATOL)
    without = predictor.predict(**kwargs, multimask_output=False, return_logits=True)
    assert np.abs(without[2] - ref[2]).max() > 1e-3  # the mask input changed something


def test_export_cli_writes_and_refuses_with_one_line(tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_cli.main(["--model-type", "tiny", "--output", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == [
        "decoder.stablehlo",
        "encoder.stablehlo",
        "manifest.json",
        "params.npz",
    ]
    capsys.readouterr()
    (tmp_path / "keep.txt").write_text("x")
    tiny = ["--model-type", "tiny", "--output"]
    cases = [
        (tiny + [str(out)], "exists; pass --overwrite"),
        (tiny + [str(tmp_path), "--overwrite"], "other than an export"),
        (tiny + [str(tmp_path / "y"), "--checkpoint", str(tmp_path / "no.pth")], "not found"),
    ]
    for argv, message in cases:
        assert export_cli.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert (tmp_path / "keep.txt").exists()
    assert export_cli.main(["--model-type", "tiny", "--output", str(out), "--overwrite"]) == 0
    with pytest.raises(SystemExit):
        export_cli.main(["--model-type", "vit_x", "--output", str(out)])


def test_loading_something_else_says_what_is_missing(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="not an exported model: missing"):
        ExportedSam.load(tmp_path)


@pytest.mark.fullsize
def test_vit_b_export_equals_in_process(tmp_path):
    """ViT-B (seeded random weights): the exported encoder and decoder against the
    in-process predictor on one image, within 1e-4 of the embedding's spread and of the
    largest logit (twelve blocks at 1024 px leave more room for float32 reordering)."""
    from sam_jax import SamPredictor, sam_model_registry

    embedding_rel_tol = 1e-4
    model = sam_model_registry["vit_b"](seed=0)
    export_stablehlo(model, tmp_path)
    ours = ExportedPredictor(ExportedSam.load(tmp_path))
    ref = SamPredictor(model)
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ours.set_image(image)
    ref.set_image(image)
    a, b = np.asarray(ours.features), np.asarray(ref.features)
    assert np.abs(a - b).max() <= embedding_rel_tol * b.std()
    kwargs = PROMPTS["points and box"]
    for x, y in zip(
        ours.predict(**kwargs, return_logits=True), ref.predict(**kwargs, return_logits=True)
    ):
        np.testing.assert_allclose(x, y, atol=1e-4 * max(1.0, float(np.abs(y).max())))
