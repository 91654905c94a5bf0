"""Automatic mask generation: `SamAutomaticMaskGenerator` against the reference generator on
the same weights and image, its helpers against direct computation (and the reference's
own helpers), and the `python -m sam_jax.cli.amg` command line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from reference import build_reference, localize_masks, model_from_reference
from segment_anything import SamAutomaticMaskGenerator as RefGenerator
from segment_anything.utils import amg as ref_amg
from torchvision.ops import nms as torch_nms

from sam_jax import SamAutomaticMaskGenerator, sam_model_registry
from sam_jax.cli import amg
from sam_jax.inference import automatic_mask_generator as amg_module
from sam_jax.inference import mask_utils, point_decoder
from sam_jax.inference.visualize import show_anns
from sam_jax.modeling.sam import Sam

TINY = "tiny"
# Large logits and IoU predictions so the stability score spreads over (0, 1] and float
# differences between the implementations cannot move a mask across a threshold.
OUTPUT_SCALE = 3000.0
POINTS_PER_SIDE = 12
MIN_MATCH_IOU = 0.9
MIN_MATCHED_FRACTION = 0.95
MAX_COUNT_DIFF = 0.10
MIN_MASKS = 5

RECORD_KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}

CONFIGS = {
    # pred_iou_thresh 0 switches that filter off (as in the reference): stability, box NMS
    # and the empty-mask corner cases decide alone.
    "whole_image": dict(pred_iou_thresh=0.0, stability_score_thresh=0.3),
    # 1 + 4 crops with half the points per side in the second layer: crop-edge filtering
    # and NMS across crops; both thresholds active.
    "crops": dict(
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.5,
    ),
    "crops_small_regions": dict(
        crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.3, min_mask_region_area=300
    ),
}


@pytest.fixture(scope="module")
def amg_ref():
    return localize_masks(build_reference(TINY, seed=0, output_scale=OUTPUT_SCALE))


@pytest.fixture(scope="module")
def amg_model(amg_ref):
    return model_from_reference(amg_ref, TINY)


@pytest.fixture(scope="module")
def reference_records(amg_ref, image):
    cache = {}

    def get(name):
        if name not in cache:
            gen = RefGenerator(amg_ref, points_per_side=POINTS_PER_SIDE, **CONFIGS[name])
            with torch.no_grad():
                cache[name] = gen.generate(image)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def our_records(amg_model, image):
    cache = {}

    def get(name, output_mode="binary_mask"):
        key = (name, output_mode)
        if key not in cache:
            gen = SamAutomaticMaskGenerator(
                amg_model,
                points_per_side=POINTS_PER_SIDE,
                output_mode=output_mode,
                **CONFIGS[name],
            )
            cache[key] = gen.generate(image)
        return cache[key]

    return get


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of two stacks of bool masks; two empty masks count as identical."""
    a = a.reshape(len(a), -1).astype(np.float32)
    b = b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(name, reference_records, our_records):
    ref, ours = reference_records(name), our_records(name)
    assert len(ref) >= MIN_MASKS, f"only {len(ref)} reference masks: the comparison is vacuous"
    assert abs(len(ours) - len(ref)) <= MAX_COUNT_DIFF * len(ref), (len(ours), len(ref))
    assert all(set(r) == RECORD_KEYS for r in ours)
    assert set(ref[0]) == RECORD_KEYS

    iou = mask_iou_matrix(
        np.stack([r["segmentation"] for r in ref]), np.stack([r["segmentation"] for r in ours])
    )
    best = iou.argmax(1)
    matched = iou.max(1) >= MIN_MATCH_IOU
    assert matched.mean() >= MIN_MATCHED_FRACTION, f"matched {matched.mean():.3f}"
    for i in np.flatnonzero(matched):
        r, o = ref[i], ours[best[i]]
        assert o["segmentation"].dtype == np.bool_
        assert o["segmentation"].shape == r["segmentation"].shape
        assert isinstance(o["area"], int) and o["area"] == int(o["segmentation"].sum())
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        np.testing.assert_array_equal(o["crop_box"], r["crop_box"])
        np.testing.assert_allclose(o["bbox"], r["bbox"], atol=2)
        np.testing.assert_allclose(o["predicted_iou"], r["predicted_iou"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(o["stability_score"], r["stability_score"], atol=0.01)


def test_crop_masks_come_from_sub_crops(our_records, image):
    """The crop configuration must actually keep masks found in the smaller crops."""
    h, w = image.shape[:2]
    crop_boxes = {tuple(r["crop_box"]) for r in our_records("crops")}
    assert (0, 0, w, h) in crop_boxes and len(crop_boxes) > 1


def test_small_regions_removed(our_records):
    from scipy import ndimage

    for rec in our_records("crops_small_regions"):
        mask = rec["segmentation"]
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        if n > 1:  # a lone small island may remain only when every island is small
            assert np.bincount(labels.ravel())[1:].min() >= 300


def test_rle_outputs_decode_to_binary_masks(our_records):
    binary = our_records("crops")
    unc = our_records("crops", "uncompressed_rle")
    coco = our_records("crops", "coco_rle")
    assert len(binary) == len(unc) == len(coco) >= MIN_MASKS
    h, w = binary[0]["segmentation"].shape
    for b, u, c in zip(binary, unc, coco):
        mask = b["segmentation"]
        assert u["segmentation"]["size"] == [h, w] == c["segmentation"]["size"]
        np.testing.assert_array_equal(mask_utils.rle_to_mask(u["segmentation"]), mask)
        assert isinstance(c["segmentation"]["counts"], str)
        json.dumps(c)  # serializable as is
        decoded = coco_mask.decode({"size": [h, w], "counts": c["segmentation"]["counts"]})
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        # uncompressed RLE as pycocotools reads it
        via_coco = coco_mask.decode(coco_mask.frPyObjects(u["segmentation"], h, w))
        np.testing.assert_array_equal(via_coco.astype(bool), mask)
        assert u["area"] == c["area"] == b["area"] == mask_utils.area_from_rle(u["segmentation"])
        for key in ("bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert u[key] == b[key] == c[key]


@pytest.mark.parametrize("chunk", [None, 1000])
def test_padded_last_batch_and_batch_size_do_not_change_results(
    chunk, amg_model, image, our_records, monkeypatch
):
    """144 points in batches of 50 (last one padded) decode as in batches of 64, also when
    a batch is decoded in one piece (as on accelerators) rather than in CPU-sized chunks."""
    if chunk is not None:
        monkeypatch.setattr(amg_module, "_CPU_CHUNK", chunk)
    gen = SamAutomaticMaskGenerator(
        amg_model, points_per_side=POINTS_PER_SIDE, points_per_batch=50, **CONFIGS["whole_image"]
    )
    ours = gen.generate(image)
    base = our_records("whole_image")
    assert len(ours) == len(base)
    for a, b in zip(ours, base):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["point_coords"] == b["point_coords"]


def test_explicit_point_grids_match_points_per_side(amg_model, image, our_records):
    grids = [mask_utils.build_point_grid(POINTS_PER_SIDE)]
    gen = SamAutomaticMaskGenerator(
        amg_model, points_per_side=None, point_grids=grids, **CONFIGS["whole_image"]
    )
    ours = gen.generate(image)
    assert [r["bbox"] for r in ours] == [r["bbox"] for r in our_records("whole_image")]


def test_no_masks_gives_empty_list(amg_model, image):
    # (the reference raises an IndexError here when crops are on)
    gen = SamAutomaticMaskGenerator(
        amg_model, points_per_side=4, pred_iou_thresh=1e9, crop_n_layers=1
    )
    assert gen.generate(image) == []


def test_decode_points_matches_module_decode(amg_model):
    module, params = amg_model.module, amg_model.params
    e = module.image_embedding_size
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(1, e, e, module.prompt_embed_dim)), jnp.float32)
    coords = jnp.asarray(rng.uniform(0, module.image_size, (5, 2)), jnp.float32)
    ours = jax.jit(lambda p, f, c: point_decoder.decode_points(module, p, f, c))
    low, iou = ours(params, features, coords)
    ref_low, ref_iou = jax.jit(
        lambda p, f, c: module.apply(
            {"params": p}, f, c[:, None], jnp.ones((len(c), 1), jnp.int32), method=Sam.decode
        )
    )(params, features, coords)
    assert low.shape == ref_low.shape == (5, 3, 4 * e, 4 * e)
    scale = float(np.abs(ref_low).max())
    np.testing.assert_allclose(low, ref_low, atol=1e-5 * scale)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-5 * float(np.abs(ref_iou).max()))


@pytest.mark.parametrize("multimask", [True, False])
def test_decode_sparse_matches_module_decode_with_padding_and_boxes(amg_model, multimask):
    # What SamPredictor runs for prompts without a mask input: several clicks of both labels
    # padded to a bucket (padding tokens masked out), and a box on some rows.
    module, params = amg_model.module, amg_model.params
    e = module.image_embedding_size
    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.normal(size=(1, e, e, module.prompt_embed_dim)), jnp.float32)
    coords = jnp.asarray(rng.uniform(0, module.image_size, (4, 4, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, (4, 4)), jnp.int32)
    valid = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    boxes = jnp.asarray([[10, 20, 120, 200]] * 4, jnp.float32)

    def fast(p, f, c, lab, v, b):
        sparse, sparse_valid, _ = module.apply(
            {"params": p}, method=lambda m: m.prompt_encoder((c, lab), b, None, point_valid=v)
        )
        image = point_decoder.image_terms(module, p, f)
        return point_decoder.decode_sparse(module, p, image, sparse, sparse_valid, multimask)

    def general(p, f, c, lab, v, b):
        return module.apply({"params": p}, f, c, lab, b, None, multimask, v, method=Sam.decode)

    for b in (None, boxes):
        low, iou = jax.jit(fast)(params, features, coords, labels, valid, b)
        ref_low, ref_iou = jax.jit(general)(params, features, coords, labels, valid, b)
        assert low.shape == ref_low.shape == (4, 3 if multimask else 1, 4 * e, 4 * e)
        scale = float(np.abs(ref_low).max())
        np.testing.assert_allclose(low, ref_low, atol=1e-5 * scale)
        np.testing.assert_allclose(iou, ref_iou, atol=1e-5 * float(np.abs(ref_iou).max()))


# ------------------------------------------------------------------------------ arguments
def test_argument_errors(amg_model):
    def make(**kw):
        return SamAutomaticMaskGenerator(amg_model, **kw)

    with pytest.raises(ValueError, match="exactly one"):
        make(points_per_side=8, point_grids=[mask_utils.build_point_grid(4)])
    with pytest.raises(ValueError, match="exactly one"):
        make(points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        make(output_mode="png")
    with pytest.raises(ValueError, match="points_per_side"):
        make(points_per_side=0)
    with pytest.raises(ValueError, match="points_per_batch"):
        make(points_per_batch=2.5)
    with pytest.raises(ValueError, match="box_nms_thresh"):
        make(box_nms_thresh=1.5)
    with pytest.raises(ValueError, match="crop_n_layers"):
        make(crop_n_layers=-1)
    with pytest.raises(ValueError, match="no points"):
        make(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2)
    with pytest.raises(ValueError, match="one per layer"):
        make(points_per_side=None, point_grids=[mask_utils.build_point_grid(4)], crop_n_layers=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make(points_per_side=None, point_grids=[np.array([[0.5, 2.0]])])
    with pytest.raises(ValueError, match="min_mask_region_area"):
        make(min_mask_region_area=-1)
    with pytest.raises(TypeError, match="model bundle"):
        SamAutomaticMaskGenerator(amg_model.module)


def test_image_errors(amg_model):
    gen = SamAutomaticMaskGenerator(amg_model, points_per_side=2)
    with pytest.raises(ValueError, match="H x W x 3"):
        gen.generate(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="float"):
        gen.generate(np.full((32, 32, 3), 2.0))


# -------------------------------------------------------------------------------- helpers
def test_point_grids_and_crop_boxes_match_reference():
    for n in (1, 4, 7, 32):
        np.testing.assert_array_equal(mask_utils.build_point_grid(n), ref_amg.build_point_grid(n))
    for args in [(16, 2, 2), (32, 1, 1), (9, 3, 2)]:
        ours, ref = (
            mask_utils.build_all_layer_point_grids(*args),
            ref_amg.build_all_layer_point_grids(*args),
        )
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)
    for size in [(300, 450), (1024, 768), (37, 53)]:
        for layers in (0, 1, 2):
            for overlap in (512 / 1500, 0.0, 0.5):
                assert mask_utils.generate_crop_boxes(size, layers, overlap) == (
                    ref_amg.generate_crop_boxes(size, layers, overlap)
                )


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, size / 2, (n, 2))
    wh[: n // 10] = 0  # some degenerate boxes (0/0 IoU must not suppress)
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_torchvision(threshold):
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 300)
    scores = rng.permutation(300).astype(
        np.float32
    )  # distinct: torchvision's tie order is unspecified
    ours = mask_utils.nms(boxes, scores, threshold)
    ref = torch_nms(torch.as_tensor(boxes), torch.as_tensor(scores), threshold).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_nms_ties_keep_input_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_array_equal(mask_utils.nms(boxes, np.ones(3), 0.5), [0, 2])
    assert mask_utils.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_box_helpers():
    rng = np.random.default_rng(2)
    a, b = _random_boxes(rng, 20), _random_boxes(rng, 30)
    from torchvision.ops import box_iou

    ref = box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(mask_utils.box_iou(a, b), ref, rtol=1e-6, equal_nan=True)
    assert mask_utils.box_xyxy_to_xywh(np.array([3, 4, 10, 20])) == [3, 4, 7, 16]
    crop, orig = [0, 0, 200, 150], [0, 0, 400, 300]
    boxes = rng.integers(0, 200, (50, 4))
    boxes[:, 2:] = boxes[:, :2] + rng.integers(0, 60, (50, 2))
    ref = ref_amg.is_box_near_crop_edge(torch.as_tensor(boxes), crop, orig).numpy()
    np.testing.assert_array_equal(mask_utils.is_box_near_crop_edge(boxes, crop, orig), ref)


def _random_masks(rng, n, h=23, w=31):
    masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.95, (n, 1, 1))
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2, :, :] = False
    masks[2, 5, 7] = True  # one pixel
    return masks


def test_mask_boxes_and_rle_match_reference():
    rng = np.random.default_rng(3)
    masks = _random_masks(rng, 12)
    ref_boxes = ref_amg.batched_mask_to_box(torch.as_tensor(masks)).numpy()
    np.testing.assert_array_equal(mask_utils.batched_mask_to_box(masks), ref_boxes)
    ref_rles = ref_amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    for mask, ref_rle in zip(masks, ref_rles):
        rle = mask_utils.mask_to_rle(mask)
        assert rle == ref_rle
        np.testing.assert_array_equal(mask_utils.rle_to_mask(rle), mask)
        assert mask_utils.area_from_rle(rle) == mask.sum()
        coco = mask_utils.coco_encode_rle(rle)
        assert coco == ref_amg.coco_encode_rle(ref_rle) == mask_utils.coco_encode_mask(mask)
        np.testing.assert_array_equal(
            coco_mask.decode(coco_mask.frPyObjects(rle, *mask.shape)), mask
        )


def test_device_boxes_stability_and_packing_match_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (6, 23, 31)).astype(np.float32)
    logits[0] = -5  # empty mask, empty union: stability 0/0
    masks = logits > 0
    boxes = amg_module._mask_boxes(jnp.asarray(masks.any(-1)), jnp.asarray(masks.any(-2)))
    np.testing.assert_array_equal(boxes, mask_utils.batched_mask_to_box(masks))
    packed = np.asarray(amg_module._pack_bits(jnp.asarray(masks)))
    np.testing.assert_array_equal(packed, np.packbits(masks, axis=-1))
    np.testing.assert_array_equal(amg_module._unpack(packed[1], [0, 0, 31, 23]), masks[1])
    ref = ref_amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0).numpy()
    inter = (logits > 1).sum((1, 2), dtype=np.int32)
    union = (logits > -1).sum((1, 2), dtype=np.int32)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(inter / union, ref, equal_nan=True)


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_reference(mode):
    rng = np.random.default_rng(5)
    masks = rng.random((20, 40, 50)) < 0.5
    masks[:10] = rng.random((10, 40, 50)) < 0.12  # sparse: all islands small
    masks[10:15] = rng.random((5, 40, 50)) < 0.88  # dense: small holes
    for mask in masks:
        for area in (3, 10, 40):
            ours, changed = mask_utils.remove_small_regions(mask, area, mode)
            ref, ref_changed = ref_amg.remove_small_regions(mask, area, mode)
            assert changed == ref_changed
            np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match="mode"):
        mask_utils.remove_small_regions(masks[0], 3, "both")


def test_show_anns(image, our_records):
    records = our_records("crops")
    pil = show_anns(image, records, draw_points=True)
    assert pil.size == (image.shape[1], image.shape[0])
    out = np.asarray(pil)
    assert not np.array_equal(out, image)
    unc = show_anns(image, our_records("crops", "uncompressed_rle"))
    coco = show_anns(image, our_records("crops", "coco_rle"))
    np.testing.assert_array_equal(np.asarray(unc), np.asarray(coco))


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, image):
    folder = tmp_path_factory.mktemp("amg_inputs")
    Image.fromarray(image).save(folder / "astronaut.png")
    Image.fromarray(image[:200, :160]).save(folder / "corner.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


CLI_OPTIONS = ["--model-type", TINY, "--points-per-side", "4", "--pred-iou-thresh", "0"]


def test_cli_writes_masks_and_reports_skipped(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = amg.main(["--input", str(image_dir), "--output", str(out), *CLI_OPTIONS])
    captured = capsys.readouterr()
    assert code == 1
    assert "done: 2 image(s), skipped: 1" in captured.out
    assert "broken.png" in captured.out and "broken.png" in captured.err
    assert "random weights" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "corner"]
    for name, shape in (("astronaut", (300, 450)), ("corner", (200, 160))):
        lines = (out / name / "metadata.csv").read_text().splitlines()
        assert lines[0] == amg.METADATA_HEADER
        pngs = sorted(p.name for p in (out / name).glob("*.png"))
        assert len(pngs) == len(lines) - 1
        for row in lines[1:]:
            values = row.split(",")
            assert len(values) == 14
            mask = np.asarray(Image.open(out / name / f"{values[0]}.png"))
            assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
            assert int(values[1]) == int((mask > 0).sum())


def test_cli_single_image_to_sa1b_json(image_dir, tmp_path, capsys):
    out = tmp_path / "rle"
    path = image_dir / "corner.jpg"
    code = amg.main(["--input", str(path), "--output", str(out), "--convert-to-rle", *CLI_OPTIONS])
    assert code == 0
    assert "done: 1 image(s), skipped: 0" in capsys.readouterr().out
    doc = json.loads((out / "corner.json").read_text())
    assert doc["image"]["file_name"] == "corner.jpg"
    assert (doc["image"]["height"], doc["image"]["width"]) == (200, 160)
    for i, ann in enumerate(doc["annotations"]):
        assert ann["id"] == i and RECORD_KEYS <= set(ann)
        mask = coco_mask.decode(ann["segmentation"])
        assert mask.shape == (200, 160) and int(mask.sum()) == ann["area"]


def test_cli_missing_input(tmp_path, capsys):
    assert amg.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_registry_model_on_small_image():
    """A model from the registry (random init) on an image far smaller than its input."""
    gen = SamAutomaticMaskGenerator(
        sam_model_registry[TINY](), points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0
    )
    records = gen.generate(np.zeros((40, 60, 3), np.uint8))
    assert all(r["segmentation"].shape == (40, 60) for r in records)


@pytest.mark.parametrize("config", ["whole_image", "crops"])
def test_generate_batch_equals_generate(config, amg_model, image, our_records):
    """Whole-image embeddings computed together (a batch of 3 padded to 4) give the masks
    each image gives alone; crops are embedded one by one either way."""
    from skimage import data

    other = np.ascontiguousarray(data.coffee()[::2, ::2])
    gen = SamAutomaticMaskGenerator(amg_model, points_per_side=POINTS_PER_SIDE, **CONFIGS[config])
    batch = gen.generate_batch([image, other, image[:, ::-1]])
    assert len(batch) == 3 and len(gen.last_stats) == 3
    singles = [our_records(config), gen.generate(other), gen.generate(image[:, ::-1])]
    for got, want in zip(batch, singles, strict=True):
        assert len(got) == len(want) > 0
        agreement = [
            float((a["segmentation"] == b["segmentation"]).mean()) for a, b in zip(got, want)
        ]
        assert min(agreement) >= 0.999
        for a, b in zip(got, want):
            assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
    with pytest.raises(ValueError, match="sequence of images"):
        gen.generate_batch(image)
