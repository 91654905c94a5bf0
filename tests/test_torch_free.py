"""What a user does without torch: load a converted checkpoint, predict, generate masks,
train the tiny model and load its workdir. CI runs this file a second time in a virtualenv
with only requirements.txt installed (`SAM_JAX_TORCH_FREE=1`), where torch must be absent."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from test_train import small_config

from sam_jax import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from sam_jax.data.synthetic import make_example
from sam_jax.io.checkpoint import save_converted
from sam_jax.training import trainer as trainer_lib


def test_torch_is_absent_where_promised():
    if os.environ.get("SAM_JAX_TORCH_FREE") != "1":
        pytest.skip("only meaningful in the torch-free CI environment")
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("segment_anything") is None


@pytest.fixture(scope="module")
def picture():
    image, masks = make_example(3, 7, (96, 128), 4)
    return image, masks


def test_converted_checkpoint_predicts_and_generates(tmp_path, picture):
    image, masks = picture
    model = sam_model_registry["tiny"](seed=1)
    save_converted(model.params, model.config, tmp_path / "converted")
    loaded = sam_model_registry["tiny"](checkpoint=str(tmp_path / "converted"))

    ys, xs = np.nonzero(masks[0])
    point = np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]])
    outputs = []
    for m in (model, loaded):
        predictor = SamPredictor(m)
        predictor.set_image(image)
        outputs.append(predictor.predict(point_coords=point, point_labels=np.array([1])))
    (m0, s0, l0), (m1, s1, l1) = outputs
    assert m1.shape == (3, *image.shape[:2]) and m1.dtype == np.bool_
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_allclose(l0, l1, rtol=1e-5, atol=1e-5)

    generator = SamAutomaticMaskGenerator(
        loaded, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = generator.generate(image)
    assert records and {"segmentation", "area", "bbox", "predicted_iou"} <= set(records[0])


def test_train_tiny_and_load_its_workdir(tmp_path):
    result = trainer_lib.train_and_evaluate(small_config(2), tmp_path / "run")
    assert result["status"] == "finished" and result["step"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    model = sam_model_registry["tiny"](checkpoint=str(tmp_path / "run"))
    assert model.image_size == 128
