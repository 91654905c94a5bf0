"""The click protocol and the metrics, on hand-made masks and a scripted predictor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam_jax.evaluation import interactive, protocol, report
from sam_jax.evaluation.readers import Sample
from sam_jax.evaluation.runner import select_samples


def _full_dt(region):
    """The definition: EDT of the region padded with zeros, so the border is boundary."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _argmax_yx(dist):
    return divmod(int(np.argmax(dist)), dist.shape[1])


def test_first_click_is_the_padded_distance_transform_argmax():
    gt = np.zeros((20, 40), bool)
    gt[:, :12] = True  # touches the top, bottom and left borders
    click = protocol.first_click(gt)
    y, x = _argmax_yx(_full_dt(gt))
    assert (click.y, click.x, click.label) == (y, x, 1)
    # Without the padding the left border would not count and the click would sit farther
    # right; with it the point is equidistant from the left border and the right edge.
    unpadded = _argmax_yx(ndimage.distance_transform_edt(gt))
    assert (y, x) != unpadded
    assert x == 5  # first maximum in row-major order (x = 5 and x = 6 tie)


def test_crop_equals_full_image_distance_transform():
    rng = np.random.default_rng(0)
    for _ in range(25):
        region = ndimage.binary_opening(rng.random((30, 45)) > 0.45)
        if not region.any():
            continue
        excluded = [tuple(int(v) for v in np.argwhere(region)[0])]
        dist, y, x = protocol.farthest_from_boundary(region, excluded)
        full = _full_dt(region)
        full[excluded[0]] = 0
        assert dist == pytest.approx(full.max())
        assert (y, x) == _argmax_yx(full)
        np.testing.assert_allclose(protocol.distance_map(region), _full_dt(region))


def test_next_click_positive_on_false_negative():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = np.zeros_like(gt)
    pred[5:35, 5:12] = True  # misses most of the object
    click = protocol.next_click(gt, pred)
    fn = gt & ~pred
    assert click.positive and click.label == 1
    assert (click.y, click.x) == _argmax_yx(_full_dt(fn))


def test_next_click_negative_on_false_positive():
    gt = np.zeros((40, 40), bool)
    gt[5:15, 5:15] = True
    pred = gt.copy()
    pred[20:38, 10:38] = True  # a large spurious region
    pred[5:7, 5:15] = False  # a thin miss: shallower than the spurious region
    click = protocol.next_click(gt, pred)
    fp = pred & ~gt
    assert not click.positive and click.label == 0
    assert (click.y, click.x) == _argmax_yx(_full_dt(fp))


def test_error_regions_compared_by_depth_not_area():
    # A compact FN (64 px, depth 4) beats a thin FP of larger area (98 px, depth 1).
    gt = np.zeros((50, 50), bool)
    gt[10:18, 10:18] = True
    pred = np.zeros_like(gt)
    pred[40:42, 1:50] = True
    click = protocol.next_click(gt, pred)
    assert click.positive
    assert (click.y, click.x) == _argmax_yx(_full_dt(gt & ~pred))
    # A thin FN strip along the border (150 px, depth 2) loses to a compact FP (100 px,
    # depth 5).
    gt2 = np.zeros((50, 50), bool)
    gt2[0:3, :] = True
    pred2 = np.zeros_like(gt2)
    pred2[20:30, 20:30] = True
    click2 = protocol.next_click(gt2, pred2)
    assert not click2.positive
    assert (click2.y, click2.x) == _argmax_yx(_full_dt(pred2 & ~gt2))


def test_ties_go_to_the_negative_click_and_clicked_pixels_are_excluded():
    gt = np.zeros((30, 30), bool)
    gt[2:7, 2:7] = True
    pred = np.zeros_like(gt)
    pred[20:25, 20:25] = True  # FN and FP: identical 5x5 squares
    click = protocol.next_click(gt, pred)
    assert not click.positive and (click.y, click.x) == (22, 22)
    click2 = protocol.next_click(gt, pred, clicked=[(22, 22)])
    fp_dt = _full_dt(pred & ~gt)
    fn_dt = _full_dt(gt & ~pred)
    fp_dt[22, 22] = 0
    assert fn_dt.max() > fp_dt.max()
    assert click2.positive and (click2.y, click2.x) == _argmax_yx(fn_dt)


def test_exact_prediction_gives_no_click():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 2:5] = True
    assert protocol.next_click(gt, gt.copy()) is None
    with pytest.raises(ValueError):
        protocol.first_click(np.zeros((5, 5), bool))


def test_ious_against_direct_computation():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 3, 12, 17)) > 0.5
    gts = rng.random((4, 12, 17)) > 0.6
    got = protocol.batch_ious(masks, gts)
    for b in range(4):
        for c in range(3):
            inter = np.logical_and(masks[b, c], gts[b]).sum()
            union = np.logical_or(masks[b, c], gts[b]).sum()
            assert got[b, c] == pytest.approx(inter / union)
            assert protocol.mask_iou(masks[b, c], gts[b]) == pytest.approx(inter / union)
    assert protocol.mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


class ScriptedPredictor:
    """Stands in for SamPredictor: the first call (three outputs) returns a wrong mask with
    the highest predicted IoU, the exact mask second and an empty one third; later calls
    return the exact mask (for the third prompt: minus its top rows). Low-res logits
    encode (row, output index) so the feedback can be checked."""

    def __init__(self, gts):
        self.gts = gts
        self.calls = []

    def predict_batch(self, point_coords, point_labels, mask_input=None, multimask_output=True):
        b = point_coords.shape[0]
        self.calls.append(
            dict(
                coords=point_coords.copy(),
                labels=point_labels.copy(),
                mask_input=None if mask_input is None else mask_input.copy(),
                multimask=multimask_output,
            )
        )
        n = len(self.gts)
        gts = np.concatenate([self.gts, np.repeat(self.gts[:1], b - n, axis=0)])
        wrong = np.zeros_like(gts)
        wrong[:, :3, :3] = True
        c = 3 if multimask_output else 1
        if multimask_output:
            masks = np.stack([wrong, gts, np.zeros_like(gts)], axis=1)
            iou = np.tile([0.9, 0.5, 0.1], (b, 1))
        else:
            exact = gts.copy()
            if n > 2:
                exact[2, :2] = False  # the third mask stays imperfect
            masks, iou = exact[:, None], np.full((b, 1), 0.8)
        low = np.zeros((b, c, 4, 4), np.float32)
        low += np.arange(b)[:, None, None, None] * 10 + np.arange(c)[None, :, None, None]
        return masks, iou, low


def test_interactive_steps_feedback_and_oracle():
    gts = np.zeros((3, 20, 20), bool)
    gts[0, 5:15, 5:15] = True
    gts[1, 10:18, 2:18] = True
    gts[2, 0:8, 10:20] = True
    pred = ScriptedPredictor(gts)
    out = interactive.evaluate_masks(
        pred, list(gts), ["a", "b", "c"], 3, batch_size=4, fixed_batch_shape=True
    )
    assert [r.annotation_id for r in out] == ["a", "b", "c"]
    first, second = pred.calls[0], pred.calls[1]
    assert first["multimask"] and not second["multimask"]
    assert first["coords"].shape == (4, 1, 2)  # padded to the batch size
    assert second["coords"].shape == (4, 2, 2)
    # The most confident output (index 0) of the first call is fed back.
    np.testing.assert_array_equal(second["mask_input"][:3, 0, 0, 0], [0, 10, 20])
    wrong = np.zeros((20, 20), bool)
    wrong[:3, :3] = True
    for i, r in enumerate(out):
        assert r.ious[0] == pytest.approx(protocol.mask_iou(wrong, gts[i]))
        assert r.oracle_ious[0] == 1.0
        c0 = protocol.first_click(gts[i])
        assert r.clicks[0] == (c0.x, c0.y, 1)
        c1 = protocol.next_click(gts[i], wrong, [(c0.y, c0.x)])
        assert r.clicks[1] == (c1.x, c1.y, c1.label)
    # Click 2 corrects masks a and b exactly: nothing is left to click at step 3 and
    # their IoUs carry over. Mask c is still wrong and gets a third click.
    for r in out[:2]:
        assert r.ious[1:] == [1.0, 1.0] and r.oracle_ious[1:] == [1.0, 1.0]
        assert len(r.clicks) == 2
    c = out[2]
    assert len(c.clicks) == 3 and 0 < c.ious[1] == c.ious[2] < 1
    # At step 3 the finished masks send a padding point (label -1).
    labels3 = pred.calls[2]["labels"]
    assert (labels3[:2, 2] == -1).all() and labels3[2, 2] in (0, 1)
    # When every prediction is exact no further call is made.
    two = ScriptedPredictor(gts[:2])
    res = interactive.evaluate_masks(two, list(gts[:2]), ["a", "b"], 3, batch_size=4)
    assert len(two.calls) == 2 and [r.ious[2] for r in res] == [1.0, 1.0]
    # Without a fixed shape the calls carry only the real prompts.
    unpadded = ScriptedPredictor(gts)
    again = interactive.evaluate_masks(unpadded, list(gts), ["a", "b", "c"], 3, batch_size=4)
    assert unpadded.calls[0]["coords"].shape == (3, 1, 2)
    assert [r.ious for r in again] == [r.ious for r in out]


def _samples(counts):
    return [Sample(str(i), lambda: None, lambda: None, num_masks=c) for i, c in enumerate(counts)]


def test_subsampling_by_image():
    small = _samples([5] * 10)
    chosen, sub = select_samples(small, max_masks=20, threshold=60, seed=0, name="x")
    assert not sub and len(chosen) == 10
    big = _samples([7] * 100)
    chosen, sub = select_samples(big, max_masks=50, threshold=75, seed=0, name="x")
    assert sub and sum(s.num_masks for s in chosen) == 56  # whole images until >= 50
    again, _ = select_samples(big, max_masks=50, threshold=75, seed=0, name="x")
    other, _ = select_samples(big, max_masks=50, threshold=75, seed=1, name="x")
    assert [s.image_id for s in again] == [s.image_id for s in chosen]
    assert [s.image_id for s in other] != [s.image_id for s in chosen]
    ids = [int(s.image_id) for s in chosen]
    assert ids == sorted(ids)


def test_first_click_summary():
    # mask 0: output 1 is best, the head picks it; mask 1: outputs 0 and 2 tie for best,
    # the head picks 1 (wrong); mask 2: output 0 best, the head picks 0.
    actual = [[0.5, 0.9, 0.6], [0.8, 0.4, 0.8], [0.7, 0.6, 0.5]]
    pred = [[0.4, 0.8, 0.5], [0.6, 0.7, 0.5], [0.9, 0.1, 0.2]]
    f = report.first_click_summary(list(zip(actual, pred)))
    assert f["num_masks"] == 3
    assert f["head_top1"] == pytest.approx(2 / 3)
    assert f["output_miou"] == pytest.approx([2.0 / 3, 1.9 / 3, 1.9 / 3])
    assert f["output_best"] == pytest.approx([1.5 / 3, 1 / 3, 0.5 / 3])
    assert f["head_pick"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert f["picked_miou"] == pytest.approx((0.9 + 0.4 + 0.7) / 3)
    assert f["oracle_miou"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert f["first_output_miou"] == pytest.approx(2.0 / 3)
    err = np.abs(np.subtract(pred, actual)).mean()
    assert f["head_abs_err"] == pytest.approx(err)
    d = report.dataset_summary(
        [[0.9], [0.4], [0.7]],
        [[0.9], [0.8], [0.7]],
        (1,),
        1,
        0,
        [],
        first_outputs=list(zip(actual, pred)),
    )
    assert d["first_click"] == f
    assert "head top-1" in report.markdown(
        {
            "datasets": {"synthetic": d},
            "mean_over_datasets": report.mean_over_datasets({"synthetic": d}, (1,)),
        },
        (1,),
    )


def test_summary_means():
    ious = [[0.2, 0.5, 0.9], [0.4, 0.7, 1.0]]
    oracle = [[0.3, 0.5, 0.9], [0.8, 0.7, 1.0]]
    d = report.dataset_summary(ious, oracle, (1, 3), 2, 1, [])
    assert d["miou"] == {"1": pytest.approx(0.3), "3": pytest.approx(0.95)}
    assert d["oracle_miou"]["1"] == pytest.approx(0.55)
    e = report.dataset_summary([[0.6, 0.6, 0.6]], [[0.6, 0.6, 0.6]], (1, 3), 1, 0, [])
    empty = report.dataset_summary([], [], (1, 3), 0, 4, [])
    mean = report.mean_over_datasets({"a": d, "b": e, "c": empty}, (1, 3))
    assert mean["num_datasets"] == 2
    assert mean["miou"]["1"] == pytest.approx((0.3 + 0.6) / 2)


def test_fixed_comparison_set_holds_500_masks():
    from sam_jax.evaluation.readers import synthetic
    from sam_jax.training import held_out

    d = synthetic("synthetic", held_out.FIXED_IMAGES, seed=held_out.FIXED_SEED)
    assert sum(s.count_masks() for s in d.samples) >= 500
