"""`SamPredictor` against `segment_anything.SamPredictor` on the same weights and image,
plus its input checking and compiled-shape reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as RefPredictor

import sam_jax.inference.predictor
from sam_jax import SamPredictor

# Low-res logits: max abs diff as a fraction of the reference logits' std (measured ~5e-6).
LOGIT_REL_TOL = 1e-4
# Upsampled logits (return_logits=True) go through two more bilinear resizes.
UPSAMPLED_LOGIT_REL_TOL = 1e-4
# Pixels may flip only where a logit sits within float error of the 0 threshold.
MIN_MASK_AGREEMENT = 0.999
IOU_ATOL = 1e-4
EMBEDDING_REL_TOL = 1e-4

H, W = 300, 450  # the `image` fixture
LOW_RES = 64  # tiny model: 4 * 256 / 16


def to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def ref_predict(ref_predictor, **kwargs):
    with torch.no_grad():
        return ref_predictor.predict(**kwargs)


def assert_max_rel(actual, expected, rel_tol, what):
    std = float(expected.std())
    assert std > 0, f"{what}: constant reference output, comparison would be vacuous"
    err = float(np.abs(actual - expected).max())
    assert err <= rel_tol * std, f"{what}: max abs diff {err:.3g} > {rel_tol:g} * std {std:.3g}"


def assert_matches_reference(ours, ref, batched=False):
    masks, iou, low = ours
    ref_masks, ref_iou, ref_low = (to_np(x) for x in ref)
    lead = ref_iou.shape  # (C,) or (B, C)
    assert masks.shape == (*lead, H, W) == ref_masks.shape
    assert iou.shape == lead and low.shape == (*lead, LOW_RES, LOW_RES) == ref_low.shape
    assert masks.dtype == np.bool_ and iou.dtype == np.float32 and low.dtype == np.float32
    assert_max_rel(low, ref_low, LOGIT_REL_TOL, "low-res logits")
    # Thresholding must matter for the agreement check to mean anything.
    assert 0.0 < ref_masks.mean() < 1.0
    agreement = float((masks == ref_masks).mean())
    assert agreement >= MIN_MASK_AGREEMENT, f"only {agreement:.5f} of mask pixels agree"
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=IOU_ATOL)


ONE_POINT = dict(point_coords=np.array([[180, 120]]), point_labels=np.array([1]))
PROMPTS = {
    "one_point": ONE_POINT,
    "three_points": dict(
        point_coords=np.array([[180, 120], [300, 60], [420, 250]]),
        point_labels=np.array([1, 0, 1]),
    ),
    # Five points (padded to a bucket of 8), including an explicit -1 "not a point".
    "five_points_with_ignored": dict(
        point_coords=np.array([[180, 120], [300, 60], [420, 250], [10, 290], [225.5, 149.5]]),
        point_labels=np.array([1, 0, -1, 0, 1]),
    ),
    "box": dict(box=np.array([60, 40, 320, 280])),
    "box_and_point": dict(
        point_coords=np.array([[180, 120]]),
        point_labels=np.array([0]),
        box=np.array([60, 40, 320, 280]),
    ),
    # Points padded to a bucket of 4, then the box tokens after the padding.
    "three_points_and_box": dict(
        point_coords=np.array([[180, 120], [300, 60], [100, 250]]),
        point_labels=np.array([1, 0, 1]),
        box=np.array([60, 40, 320, 280]),
    ),
    "no_prompt": dict(),
}


# ------------------------------------------------------------------------------- embedding
def test_image_embedding_matches_reference(predictor, ref_predictor):
    ours = predictor.get_image_embedding()
    ref = to_np(ref_predictor.get_image_embedding())
    assert ours.shape == ref.shape == (1, 64, 16, 16)
    assert ours.dtype == np.float32
    assert_max_rel(ours, ref, EMBEDDING_REL_TOL, "image embedding")
    assert predictor.original_size == ref_predictor.original_size == (H, W)
    assert predictor.input_size == tuple(ref_predictor.input_size)


def test_bgr_image_format(predictor, tiny_ref, image):
    rgb_embedding = predictor.get_image_embedding()
    bgr = np.ascontiguousarray(image[..., ::-1])
    predictor.set_image(bgr, image_format="BGR")
    np.testing.assert_array_equal(predictor.get_image_embedding(), rgb_embedding)
    ref = RefPredictor(tiny_ref)
    with torch.no_grad():
        ref.set_image(bgr, image_format="BGR")
    assert_max_rel(
        predictor.get_image_embedding(),
        to_np(ref.get_image_embedding()),
        EMBEDDING_REL_TOL,
        "BGR image embedding",
    )
    # Read as RGB, the same pixels are a different image.
    predictor.set_image(bgr)
    assert not np.allclose(predictor.get_image_embedding(), rgb_embedding)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_image_same_as_uint8(predictor, dtype):
    x = np.random.default_rng(7).uniform(0, 1, (H, W, 3)).astype(dtype)
    predictor.set_image(x)
    float_embedding = predictor.get_image_embedding()
    predictor.set_image(np.round(x * 255).astype(np.uint8))
    np.testing.assert_array_equal(float_embedding, predictor.get_image_embedding())


def test_integer_image_same_as_uint8(predictor, image):
    uint8_embedding = predictor.get_image_embedding()
    predictor.set_image(image.astype(np.int64))
    np.testing.assert_array_equal(predictor.get_image_embedding(), uint8_embedding)


# --------------------------------------------------------------------------- single prompt
@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_predict_matches_reference(predictor, ref_predictor, prompt, multimask):
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask)
    ours = predictor.predict(**kwargs)
    assert_matches_reference(ours, ref_predict(ref_predictor, **kwargs))
    assert ours[1].shape == ((3,) if multimask else (1,))


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_predict_with_mask_input(predictor, ref_predictor, multimask):
    _, ref_iou, ref_low = ref_predict(ref_predictor, **ONE_POINT)
    mask_input = ref_low[np.argmax(ref_iou)][None]  # the reference's own low-res logits
    assert mask_input.shape == (1, LOW_RES, LOW_RES)
    kwargs = dict(
        point_coords=np.array([[300, 200]]),
        point_labels=np.array([1]),
        mask_input=mask_input,
        multimask_output=multimask,
    )
    ours = predictor.predict(**kwargs)
    assert_matches_reference(ours, ref_predict(ref_predictor, **kwargs))
    without_mask = predictor.predict(**{**kwargs, "mask_input": None})
    assert not np.allclose(ours[2], without_mask[2]), "mask_input had no effect"
    # The mask alone, with no sparse prompt at all.
    kwargs = dict(mask_input=mask_input, multimask_output=multimask)
    assert_matches_reference(predictor.predict(**kwargs), ref_predict(ref_predictor, **kwargs))


def test_predict_return_logits(predictor, ref_predictor):
    kwargs = dict(PROMPTS["three_points"], return_logits=True)
    logits, iou, low = predictor.predict(**kwargs)
    ref_logits, ref_iou, ref_low = ref_predict(ref_predictor, **kwargs)
    assert logits.shape == (3, H, W) == ref_logits.shape
    assert logits.dtype == np.float32
    assert_max_rel(logits, ref_logits, UPSAMPLED_LOGIT_REL_TOL, "upsampled logits")
    assert_max_rel(low, ref_low, LOGIT_REL_TOL, "low-res logits")
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=IOU_ATOL)
    # Thresholding the logits gives the boolean masks.
    masks, _, _ = predictor.predict(**PROMPTS["three_points"])
    np.testing.assert_array_equal(masks, logits > 0.0)


def test_return_types(predictor):
    for multimask, num in ((True, 3), (False, 1)):
        masks, iou, low = predictor.predict(**ONE_POINT, multimask_output=multimask)
        assert isinstance(masks, np.ndarray) and masks.dtype == np.bool_
        assert masks.shape == (num, H, W)
        assert isinstance(iou, np.ndarray) and iou.dtype == np.float32 and iou.shape == (num,)
        assert isinstance(low, np.ndarray) and low.dtype == np.float32
        assert low.shape == (num, LOW_RES, LOW_RES)
        assert predictor.low_res_size == LOW_RES


# ------------------------------------------------------------------------- batched prompts
BOXES = np.array(
    [[60, 40, 320, 280], [10, 10, 100, 100], [200, 100, 440, 290], [0, 0, 450, 300], [5, 5, 6, 6]]
)
BATCH_COORDS = np.array(
    [
        [[180, 120], [300, 60]],
        [[50, 50], [400, 280]],
        [[225, 150], [0, 0]],
        [[449, 299], [100, 200]],
        [[300, 150], [301, 151]],
    ]
)
BATCH_LABELS = np.array([[1, 0], [1, 1], [1, -1], [0, 1], [1, 0]])


def ref_predict_batch(ref_predictor, coords=None, labels=None, boxes=None, multimask=True):
    t = ref_predictor.transform
    size = ref_predictor.original_size
    with torch.no_grad():
        tc = tl = tb = None
        if coords is not None:
            tc = t.apply_coords_torch(torch.as_tensor(coords, dtype=torch.float), size)
            tl = torch.as_tensor(labels, dtype=torch.int)
        if boxes is not None:
            tb = t.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), size)
        return ref_predictor.predict_torch(tc, tl, boxes=tb, multimask_output=multimask)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_predict_batch_boxes(predictor, ref_predictor, multimask):
    ours = predictor.predict_batch(boxes=BOXES, multimask_output=multimask)
    ref = ref_predict_batch(ref_predictor, boxes=BOXES, multimask=multimask)
    assert ours[0].shape == (len(BOXES), 3 if multimask else 1, H, W)
    assert_matches_reference(ours, ref)


def test_predict_batch_points(predictor, ref_predictor):
    ours = predictor.predict_batch(BATCH_COORDS, BATCH_LABELS)
    assert_matches_reference(ours, ref_predict_batch(ref_predictor, BATCH_COORDS, BATCH_LABELS))


def test_predict_batch_with_mask_input(predictor, ref_predictor):
    coords, labels = BATCH_COORDS[:3], BATCH_LABELS[:3]
    _, ref_iou, ref_low = ref_predict_batch(ref_predictor, coords, labels)
    best = to_np(ref_low)[np.arange(3), to_np(ref_iou).argmax(1)][:, None]  # (3, 1, 64, 64)
    ours = predictor.predict_batch(coords, labels, mask_input=best)
    with torch.no_grad():
        t = ref_predictor.transform
        ref = ref_predictor.predict_torch(
            t.apply_coords_torch(torch.as_tensor(coords, dtype=torch.float), (H, W)),
            torch.as_tensor(labels, dtype=torch.int),
            mask_input=torch.from_numpy(best),
        )
    assert_matches_reference(ours, ref)


def test_predict_batch_points_and_boxes_in_chunks(predictor, ref_predictor):
    """More prompts than max_batch: decoded in several compiled calls, same results."""
    predictor.max_batch = 2
    ours = predictor.predict_batch(BATCH_COORDS, BATCH_LABELS, BOXES, multimask_output=False)
    ref = ref_predict_batch(ref_predictor, BATCH_COORDS, BATCH_LABELS, BOXES, multimask=False)
    assert_matches_reference(ours, ref)


def test_predict_batch_row_equals_single_predict(predictor):
    masks, iou, low = predictor.predict_batch(boxes=BOXES)
    one = predictor.predict(box=BOXES[2])
    np.testing.assert_allclose(one[2], low[2], rtol=0, atol=1e-5 * float(low.std()))
    np.testing.assert_allclose(one[1], iou[2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3), (5, 700), (1000, 257), (256, 256)])
def test_unusual_image_sizes(predictor, tiny_ref, shape):
    """Tiny, extremely elongated, upsampled and already model-sized images."""
    img = np.random.default_rng(10).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = RefPredictor(tiny_ref)
    with torch.no_grad():
        ref.set_image(img)
    predictor.set_image(img)
    assert predictor.input_size == tuple(ref.input_size)
    assert_max_rel(
        predictor.get_image_embedding(),
        to_np(ref.get_image_embedding()),
        EMBEDDING_REL_TOL,
        "image embedding",
    )
    kwargs = dict(point_coords=np.array([[shape[1] / 2, shape[0] / 3]]), point_labels=np.array([1]))
    masks, iou, low = predictor.predict(**kwargs)
    ref_masks, ref_iou, ref_low = ref_predict(ref, **kwargs)
    assert masks.shape == ref_masks.shape == (3, *shape)
    assert_max_rel(low, ref_low, LOGIT_REL_TOL, "low-res logits")
    assert (masks == ref_masks).mean() >= MIN_MASK_AGREEMENT
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=IOU_ATOL)


# ------------------------------------------------------------------------- recompilation
def test_point_count_changes_reuse_compiled_buckets(tiny_model, image, monkeypatch):
    traces, mask_traces = [], []
    sparse_path = sam_jax.inference.point_decoder.decode_prompt_arrays
    mask_path = sam_jax.inference.predictor._decode

    def counting_sparse(module, params, terms, coords, *args, **kwargs):
        traces.append(None if coords is None else tuple(coords.shape))
        return sparse_path(module, params, terms, coords, *args, **kwargs)

    def counting_mask_path(module, params, features, coords, *args, **kwargs):
        mask_traces.append(None if coords is None else tuple(coords.shape))
        return mask_path(module, params, features, coords, *args, **kwargs)

    # The predictor jits both decoders when constructed: patch first so every trace is seen.
    monkeypatch.setattr(sam_jax.inference.point_decoder, "decode_prompt_arrays", counting_sparse)
    monkeypatch.setattr(sam_jax.inference.predictor, "_decode", counting_mask_path)
    p = SamPredictor(tiny_model)
    p.set_image(image)
    rng = np.random.default_rng(8)
    # n points -> the bucket of n (power of two); a new trace only on a new bucket.
    expected_traces = [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (8, 4), (1, 4), (2, 4)]
    for n, want in expected_traces:
        coords = rng.uniform(0, [W, H], (n, 2))
        labels = rng.integers(0, 2, n)
        p.predict(coords, labels)
        assert len(traces) == want, f"{n} points: {len(traces)} traces, shapes {traces}"
        assert p._decode_sparse._cache_size() == want
    assert traces == [(1, 1, 2), (1, 2, 2), (1, 4, 2), (1, 8, 2)]
    # Batches are bucketed too: 3 and 4 boxes share one compiled function.
    p.predict_batch(boxes=BOXES[:3])
    p.predict_batch(boxes=BOXES[:4])
    assert len(traces) == 5
    # With a mask input (the general decoder), the same buckets.
    low = np.zeros((1, p.low_res_size, p.low_res_size), np.float32)
    for n, want in [(1, 1), (1, 1), (3, 2), (4, 2)]:
        p.predict(rng.uniform(0, [W, H], (n, 2)), np.ones(n, int), mask_input=low)
        assert len(mask_traces) == want, f"{n} points: {mask_traces}"
    assert len(traces) == 5
    # An image of another size compiles only the small upsampling, not the decoder.
    upsampling = p._postprocess._cache_size()
    p.set_image(np.zeros((H // 2 + 3, W - 5, 3), np.uint8))
    masks, _, _ = p.predict(np.array([[5.0, 5.0]]), np.array([1]))
    assert masks.shape == (3, H // 2 + 3, W - 5)
    assert len(traces) == 5 and p._decode_sparse._cache_size() == 5
    assert p._postprocess._cache_size() == upsampling + 1


# ---------------------------------------------------------------------------- bad images
BAD_IMAGES = {
    "grayscale": (np.zeros((20, 30), np.uint8), "grayscale"),
    "rgba": (np.zeros((20, 30, 4), np.uint8), "RGBA"),
    "channels_first": (np.zeros((3, 20, 30), np.uint8), "channels first"),
    "empty": (np.zeros((0, 10, 3), np.uint8), "empty"),
    "bool": (np.ones((20, 30, 3), bool), "bool"),
    "float_0_255": (np.full((20, 30, 3), 200.0, np.float32), r"\[0, 1\]"),
    "float_negative": (np.full((20, 30, 3), -0.5), r"\[0, 1\]"),
    "float_nan": (np.where(np.eye(20, 30)[..., None] > 0, np.nan, 0.5) * np.ones(3), "NaN"),
    "int_above_255": (np.full((20, 30, 3), 300, np.int32), r"0\.\.255"),
    "int_negative": (np.full((20, 30, 3), -1, np.int16), r"0\.\.255"),
    "object": (np.full((20, 30, 3), "x", dtype=object), "object"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_set_image_rejects_bad_images(predictor, case):
    bad, message = BAD_IMAGES[case]
    before = predictor.get_image_embedding()
    with pytest.raises(ValueError, match=message):
        predictor.set_image(bad)
    # A rejected image leaves the previous one in place.
    assert predictor.is_image_set
    np.testing.assert_array_equal(predictor.get_image_embedding(), before)


def test_set_image_rejects_bad_image_format(predictor, image):
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(image, image_format="BRG")


# --------------------------------------------------------------------------- bad prompts
def test_predict_before_set_image(tiny_model):
    p = SamPredictor(tiny_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(**ONE_POINT)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict_batch(boxes=BOXES)
    with pytest.raises(RuntimeError, match="set_image"):
        p.get_image_embedding()


def test_predict_after_reset_image(predictor):
    predictor.predict(**ONE_POINT)
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(**ONE_POINT)


def test_predictor_needs_model_bundle(tiny_ref):
    with pytest.raises(TypeError, match="sam_model_registry"):
        SamPredictor(tiny_ref)


BAD_PROMPTS = {
    "labels_shape_mismatch": (
        dict(point_coords=np.array([[10, 10], [20, 20]]), point_labels=np.array([1, 0, 1])),
        "point_labels",
    ),
    "labels_2d": (
        dict(point_coords=np.array([[10, 10]]), point_labels=np.array([[1]])),
        "point_labels",
    ),
    "coords_without_labels": (
        dict(point_coords=np.array([[10, 10]])),
        "point_labels must be supplied",
    ),
    "labels_without_coords": (dict(point_labels=np.array([1])), "without point_coords"),
    "coords_1d": (dict(point_coords=np.array([10, 10]), point_labels=np.array([1])), r"\(N, 2\)"),
    "coords_xyz": (
        dict(point_coords=np.array([[10, 10, 1]]), point_labels=np.array([1])),
        "point_coords must be",
    ),
    "label_2": (dict(point_coords=np.array([[10, 10]]), point_labels=np.array([2])), r"\[2\]"),
    "label_minus_2": (
        dict(point_coords=np.array([[10, 10], [5, 5]]), point_labels=np.array([1, -2])),
        "point_labels must be 1",
    ),
    "point_right_of_image": (
        dict(point_coords=np.array([[W + 50, 10]]), point_labels=np.array([1])),
        "outside",
    ),
    "point_negative": (
        dict(point_coords=np.array([[10, -1]]), point_labels=np.array([1])),
        "outside",
    ),
    "point_nan": (
        dict(point_coords=np.array([[np.nan, 10]]), point_labels=np.array([1])),
        "NaN",
    ),
    "box_3_values": (dict(box=np.array([1, 2, 3])), "box must be"),
    "box_two_rows": (dict(box=np.array([[1, 2, 3, 4], [1, 2, 3, 4]])), "box must be"),
    "box_inverted_x": (dict(box=np.array([100, 10, 50, 50])), "x0 <= x1"),
    "box_inverted_y": (dict(box=np.array([10, 100, 50, 50])), "y0 <= y1"),
    "box_outside": (dict(box=np.array([10, 10, 50, H + 1])), "outside"),
    "mask_wrong_size": (dict(mask_input=np.zeros((1, 256, 256))), "mask_input must be"),
    "mask_no_channel": (dict(mask_input=np.zeros((LOW_RES, LOW_RES))), "mask_input must be"),
}


@pytest.mark.parametrize("case", BAD_PROMPTS)
def test_predict_rejects_bad_prompts(predictor, case):
    kwargs, message = BAD_PROMPTS[case]
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


BAD_BATCHES = {
    "points_vs_boxes": (
        dict(point_coords=BATCH_COORDS[:2], point_labels=BATCH_LABELS[:2], boxes=BOXES[:3]),
        "batch size",
    ),
    "boxes_vs_masks": (
        dict(boxes=BOXES[:2], mask_input=np.zeros((3, 1, LOW_RES, LOW_RES))),
        "batch size",
    ),
    "labels_vs_points": (
        dict(point_coords=BATCH_COORDS[:2], point_labels=BATCH_LABELS[:3]),
        "does not match",
    ),
    "boxes_1d": (dict(boxes=BOXES[0]), r"boxes must be \(B, 4\)"),
    "empty_batch": (dict(boxes=np.zeros((0, 4))), "empty"),
    "no_points_per_prompt": (
        dict(point_coords=np.zeros((2, 0, 2)), point_labels=np.zeros((2, 0))),
        "N >= 1",
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_predict_batch_rejects_bad_prompts(predictor, case):
    kwargs, message = BAD_BATCHES[case]
    with pytest.raises(ValueError, match=message):
        predictor.predict_batch(**kwargs)


def test_set_images_predicts_as_set_image(tiny_model, image):
    """Several images embedded in one call (3, padded to a batch of 4), then one prompt set
    per image: the results equal those of each image set alone."""
    from skimage import data

    images = [image, np.ascontiguousarray(data.coffee()[::3, ::3]), image[::2, ::2]]
    coords = [BATCH_COORDS[:2], np.array([[[30, 40]], [[100, 90]]]), None]
    labels = [BATCH_LABELS[:2], np.array([[1], [1]]), None]
    boxes = [None, None, np.array([[10, 10, 120, 90]])]
    batched = SamPredictor(tiny_model)
    batched.set_images(images)
    assert batched.num_images == 3
    assert batched.get_image_embedding().shape[0] == 3
    masks, ious, lows = batched.predict_batch(coords, labels, boxes)
    single = SamPredictor(tiny_model)
    for i, im in enumerate(images):
        single.set_image(im)
        want = single.predict_batch(coords[i], labels[i], boxes[i])
        assert masks[i].shape == want[0].shape
        np.testing.assert_allclose(lows[i], want[2], rtol=0, atol=1e-4 * np.abs(want[2]).max())
        np.testing.assert_allclose(ious[i], want[1], rtol=0, atol=IOU_ATOL)
        assert float((masks[i] == want[0]).mean()) >= MIN_MASK_AGREEMENT
    # an image with no prompt gets empty results
    m, io, _ = batched.predict_batch(boxes=[None, None, np.array([[5, 5, 50, 50]])])
    assert m[0].shape[0] == 0 and m[2].shape[0] == 1 and io[1].shape == (0, 3)


def test_set_images_errors_and_compilations(tiny_model, image):
    p = SamPredictor(tiny_model)
    with pytest.raises(ValueError, match="sequence of images"):
        p.set_images(image)
    with pytest.raises(ValueError, match="at least one image"):
        p.set_images([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        p.set_images([image, image[..., :2]])
    p.set_images([image, image])
    with pytest.raises(RuntimeError, match="2 images are set"):
        p.predict(**ONE_POINT)
    with pytest.raises(ValueError, match="sequence of 2 entries"):
        p.predict_batch(BATCH_COORDS, BATCH_LABELS)
    with pytest.raises(ValueError, match="image 1: point_coords outside"):
        p.predict_batch([BATCH_COORDS[:1], np.array([[[9999, 5]]])], [BATCH_LABELS[:1], [[1]]])
    # batches are padded to powers of two: 3 images reuse the program compiled for 4
    p.set_images([image] * 4)
    compiled = p._embed._cache_size()
    p.set_images([image] * 3)
    assert p._embed._cache_size() == compiled
    # set_image returns to single-image use
    p.set_image(image)
    assert p.num_images == 1
    assert p.predict(**ONE_POINT)[0].shape == (3, H, W)


# bfloat16 compute against float32 on real photographs (tiny model, random weights scaled
# as trained ones): measured mean |diff| about 0.9% and max about 9% of the logits' std,
# 99.6% identical mask pixels.
BF16_MEAN_REL = 0.02
BF16_MAX_REL = 0.15
BF16_MIN_MASK_AGREEMENT = 0.99


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_bfloat16_against_float32_on_photos(tiny_ref, tiny_model, photo):
    from reference import model_from_reference
    from skimage import data

    img = getattr(data, photo)()
    h, w = img.shape[:2]
    f32 = SamPredictor(tiny_model)
    b16 = SamPredictor(model_from_reference(tiny_ref, "tiny", dtype="bfloat16"))
    f32.set_image(img)
    b16.set_image(img)
    points = np.random.default_rng(0).uniform([0, 0], [w, h], (16, 1, 2))
    labels = np.ones((16, 1))
    want = f32.predict_batch(points, labels)
    got = b16.predict_batch(points, labels)
    std = float(want[2].std())
    assert float(np.abs(got[2] - want[2]).mean()) / std <= BF16_MEAN_REL
    assert float(np.abs(got[2] - want[2]).max()) / std <= BF16_MAX_REL
    assert float((got[0] == want[0]).mean()) >= BF16_MIN_MASK_AGREEMENT
