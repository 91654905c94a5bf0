"""Training losses against direct numpy computations, the multimask minimum (value and
where its gradient goes), and padding masks contributing nothing."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.training import losses

H = W = 16


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_focal(logits, t, alpha, gamma):
    p = sigmoid(logits.astype(np.float64))
    t = t.astype(np.float64)
    pos = -t * (1 - p) ** gamma * np.log(p)
    neg = -(1 - t) * p**gamma * np.log(1 - p)
    if alpha is not None:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return (pos + neg).mean(axis=(-2, -1))


def np_dice(logits, t, eps=1.0):
    p = sigmoid(logits.astype(np.float64))
    t = t.astype(np.float64)
    inter = (p * t).sum(axis=(-2, -1))
    return 1 - (2 * inter + eps) / (p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + eps)


def np_iou(logits, t):
    pred, t = logits > 0, t.astype(bool)
    inter = (pred & t).sum(axis=(-2, -1))
    union = (pred | t).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def disk(cy, cx, r, h=H, w=W):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, H, W)).astype(np.float32)
    targets = rng.random((5, H, W)) < 0.3
    return logits, targets


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (None, 1.5)])
def test_focal_matches_numpy(batch, alpha, gamma):
    logits, targets = batch
    got = jax.jit(partial(losses.sigmoid_focal_loss, alpha=alpha, gamma=gamma))(logits, targets)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, np_focal(logits, targets, alpha, gamma), rtol=1e-5)


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5, 0.0])
def test_focal_stable_for_large_logits(gamma):
    # Saturated pixels, right and wrong: (1 - p_t) is exactly 0 in float32 for the right ones,
    # where x ** gamma has no finite gradient for gamma < 1 (0 ** 0 included).
    logits = jnp.array([[-200.0, 200.0], [50.0, -50.0]])
    targets = jnp.array([[0.0, 1.0], [0.0, 1.0]])
    loss = losses.sigmoid_focal_loss(logits, targets, gamma=gamma)
    grad = jax.grad(lambda x: losses.sigmoid_focal_loss(x, targets, gamma=gamma))(logits)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, (0.75 * 50 + 0.25 * 50) / 4, rtol=1e-5)
    # Right pixels get no push; wrong ones the cross-entropy's, weighted by alpha, / 4 pixels.
    np.testing.assert_allclose(grad, [[0.0, 0.0], [0.75 / 4, -0.25 / 4]], atol=1e-6)


def test_focal_rejects_negative_gamma(batch):
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        losses.sigmoid_focal_loss(*batch, gamma=-1.0)


def test_dice_matches_numpy(batch):
    logits, targets = batch
    got = jax.jit(losses.dice_loss)(logits, targets)
    np.testing.assert_allclose(got, np_dice(logits, targets), rtol=1e-5)
    # Perfect confident prediction: no loss; empty target and empty prediction: none either.
    t = disk(8, 8, 5)
    assert float(losses.dice_loss(jnp.where(t, 50.0, -50.0), t)) < 1e-6
    assert float(losses.dice_loss(jnp.full((H, W), -50.0), np.zeros((H, W), bool))) < 1e-6


def test_mask_iou_matches_numpy_and_empty_cases(batch):
    logits, targets = batch
    np.testing.assert_allclose(jax.jit(losses.mask_iou)(logits, targets), np_iou(logits, targets))
    empty = np.zeros((H, W), bool)
    neg = jnp.full((H, W), -1.0)
    assert float(losses.mask_iou(neg, empty)) == 1.0  # nothing to find, nothing found
    assert float(losses.mask_iou(-neg, empty)) == 0.0  # nothing to find, all predicted
    assert float(losses.mask_iou(neg, ~empty)) == 0.0  # everything missed
    # Float targets threshold at 0.5.
    assert float(losses.mask_iou(-neg, jnp.full((H, W), 1.0))) == 1.0


def test_iou_head_loss_is_squared_error():
    pred, actual = jnp.array([0.2, 0.9, 0.5]), jnp.array([0.5, 0.4, 0.5])
    np.testing.assert_allclose(losses.iou_head_loss(pred, actual), [0.09, 0.25, 0.0], atol=1e-7)
    # The target is a label: no gradient into it.
    grad = jax.grad(lambda a: losses.iou_head_loss(pred, a).sum())(actual)
    assert (grad == 0).all()


def three_outputs():
    """Logits for three outputs against a disk target: output 1 is the closest."""
    target = disk(8, 8, 5)
    logits = np.stack(
        [
            np.where(disk(4, 4, 3), 4.0, -4.0),  # too small, off centre
            np.where(disk(8, 9, 5), 4.0, -4.0),  # near miss
            np.where(disk(8, 8, 7), 1.0, -1.0),  # too big, unsure
        ]
    ).astype(np.float32)
    iou_pred = np.array([0.3, 0.6, 0.9], np.float32)
    return logits, iou_pred, target


def test_sam_loss_multimask_value():
    logits, iou_pred, target = three_outputs()
    loss, terms = jax.jit(losses.sam_loss)(logits, iou_pred, target, True)
    focal = np_focal(logits, target, 0.25, 2.0)
    dice = np_dice(logits, target)
    per_output = 20 * focal + dice
    best = int(np.argmin(per_output))
    assert best == 1 and int(terms["best_index"]) == best
    iou = np_iou(logits, target)
    iou_mse = np.mean((iou_pred - iou) ** 2)
    np.testing.assert_allclose(loss, per_output[best] + iou_mse, rtol=1e-5)
    np.testing.assert_allclose(terms["focal"], focal[best], rtol=1e-5)
    np.testing.assert_allclose(terms["dice"], dice[best], rtol=1e-5)
    np.testing.assert_allclose(terms["mask_loss"], per_output[best], rtol=1e-5)
    np.testing.assert_allclose(terms["iou_mse"], iou_mse, rtol=1e-5)
    np.testing.assert_allclose(terms["actual_iou"], iou[best], rtol=1e-6)
    np.testing.assert_allclose(terms["pred_iou"], iou_pred[best])
    # Weights and the chosen-output-only IoU variant.
    loss2, _ = losses.sam_loss(
        logits,
        iou_pred,
        target,
        True,
        focal_weight=3.0,
        dice_weight=2.0,
        iou_weight=0.5,
        iou_loss_all_outputs=False,
    )
    per2 = 3 * focal + 2 * dice
    b2 = int(np.argmin(per2))
    np.testing.assert_allclose(loss2, per2[b2] + 0.5 * (iou_pred[b2] - iou[b2]) ** 2, rtol=1e-5)


def test_sam_loss_gradient_reaches_only_the_best_mask():
    logits, iou_pred, target = three_outputs()
    grad_fn = jax.jit(jax.grad(lambda x, q: losses.sam_loss(x, q, target)[0], argnums=(0, 1)))
    g_logits, g_iou = grad_fn(logits, iou_pred)
    g_logits = np.asarray(g_logits)
    assert np.abs(g_logits[1]).sum() > 0
    assert (g_logits[0] == 0).all() and (g_logits[2] == 0).all()
    # The chosen mask's gradient is exactly that of its own mask loss.
    own = jax.grad(
        lambda x: 20 * losses.sigmoid_focal_loss(x, target) + losses.dice_loss(x, target)
    )(logits[1])
    np.testing.assert_allclose(g_logits[1], own, rtol=1e-5, atol=1e-9)
    # Every output's IoU prediction is trained (mean of the three squared errors) ...
    iou = np_iou(logits, target)
    np.testing.assert_allclose(g_iou, 2 * (iou_pred - iou) / 3, rtol=1e-5)
    # ... or only the chosen one's when asked.
    g_iou_best = jax.grad(
        lambda q: losses.sam_loss(logits, q, target, iou_loss_all_outputs=False)[0]
    )(iou_pred)
    np.testing.assert_allclose(g_iou_best, [0.0, 2 * (iou_pred[1] - iou[1]), 0.0], rtol=1e-5)


def test_sam_loss_single_mask():
    logits, iou_pred, target = three_outputs()
    loss, terms = losses.sam_loss(logits[2:], iou_pred[2:], target, multimask=False)
    expected = (
        20 * np_focal(logits[2], target, 0.25, 2.0)
        + np_dice(logits[2], target)
        + (iou_pred[2] - np_iou(logits[2], target)) ** 2
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert int(terms["best_index"]) == 0


def test_invalid_masks_contribute_nothing():
    logits, iou_pred, target = three_outputs()
    loss, terms = losses.sam_loss(logits, iou_pred, target, False)
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in terms.values())
    g = jax.grad(lambda x, q: losses.sam_loss(x, q, target, False)[0], argnums=(0, 1))(
        logits, iou_pred
    )
    assert all((np.asarray(x) == 0).all() for x in g)
    # Garbage in a padding slot does not leak into the value.
    nan_loss, _ = losses.sam_loss(np.full_like(logits, np.nan), iou_pred, target, False)
    assert float(nan_loss) == 0.0


def test_sam_loss_vmaps_over_masks():
    logits, iou_pred, target = three_outputs()
    rng = np.random.default_rng(1)
    n = 4
    batch_logits = np.stack([logits + rng.normal(0, 1, logits.shape) for _ in range(n)])
    batch_logits = batch_logits.astype(np.float32)
    batch_iou = np.stack([iou_pred] * n)
    batch_target = np.stack([target, disk(5, 5, 3), target, disk(10, 6, 4)])
    valid = np.array([True, False, True, True])

    def total(x):
        per_mask, _ = jax.vmap(losses.sam_loss)(x, batch_iou, batch_target, valid)
        return per_mask.sum() / jnp.maximum(valid.sum(), 1)

    value, grad = jax.jit(jax.value_and_grad(total))(batch_logits)
    singles = [
        float(losses.sam_loss(batch_logits[i], batch_iou[i], batch_target[i])[0])
        for i in range(n)
        if valid[i]
    ]
    np.testing.assert_allclose(value, np.sum(singles) / valid.sum(), rtol=1e-5)
    grad = np.asarray(grad)
    assert (grad[1] == 0).all()
    # One output per valid mask receives gradient.
    assert ((np.abs(grad).sum(axis=(2, 3)) > 0).sum(axis=1) == valid.astype(int)).all()


def test_ranking_sums_of_the_first_round():
    from sam_jax.training.step import ranking_means, ranking_sums

    output_iou = jnp.array([[0.5, 0.9, 0.6], [0.8, 0.4, 0.8], [0.7, 0.6, 0.5], [0.0, 1.0, 0.0]])
    iou_pred = jnp.array([[0.4, 0.8, 0.5], [0.6, 0.7, 0.5], [0.9, 0.1, 0.2], [1.0, 0.0, 0.0]])
    best = jnp.array([1, 2, 0, 1])
    counted = jnp.array([True, True, True, False])  # the last is padding
    sums = ranking_sums(output_iou, iou_pred, best, counted)
    assert float(sums["count"]) == 3
    m = ranking_means(sums)
    np.testing.assert_allclose(m["iou_head_top1"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["output_wins"], [1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(m["output_iou"], [2.0 / 3, 1.9 / 3, 1.9 / 3], rtol=1e-6)
    np.testing.assert_allclose(m["picked_iou"], (0.9 + 0.4 + 0.7) / 3, rtol=1e-6)
    np.testing.assert_allclose(m["oracle_iou"], (0.9 + 0.8 + 0.7) / 3, rtol=1e-6)
    err = np.abs(np.asarray(iou_pred - output_iou))[:3].mean()
    np.testing.assert_allclose(m["iou_head_abs_err"], err, rtol=1e-6)


def test_iou_region_limits_the_head_target():
    target = jnp.zeros((8, 8), bool).at[2:4, 2:4].set(True)
    logits = jnp.full((1, 8, 8), -5.0).at[0, 2:4, 2:4].set(5.0).at[0, 6:, :].set(5.0)
    _, whole = losses.sam_loss(logits, jnp.zeros(1), target, multimask=False)
    region = jnp.zeros((8, 8), bool).at[:6].set(True)  # rows 6, 7: padding
    _, inside = losses.sam_loss(logits, jnp.zeros(1), target, multimask=False, iou_region=region)
    np.testing.assert_allclose(whole["actual_iou"], 4 / 20)
    np.testing.assert_allclose(inside["actual_iou"], 1.0)


def test_others_weight_trains_every_output():
    target = jnp.zeros((8, 8), bool).at[2:6, 2:6].set(True)
    logits = jax.random.normal(jax.random.key(0), (3, 8, 8))
    iou_pred = jnp.zeros(3)
    _, t0 = losses.sam_loss(logits, iou_pred, target)
    _, t1 = losses.sam_loss(logits, iou_pred, target, others_weight=0.5)
    per_output = 20.0 * losses.sigmoid_focal_loss(logits, target) + losses.dice_loss(logits, target)
    np.testing.assert_allclose(
        t1["mask_loss"], t0["mask_loss"] + 0.5 * per_output.mean(), rtol=1e-5
    )
    grads = jax.grad(lambda x: losses.sam_loss(x, iou_pred, target, others_weight=0.5)[0])(logits)
    assert all(float(jnp.abs(g).sum()) > 0 for g in grads)


def test_iou_rank_loss_pulls_the_predictions_towards_the_actual_order():
    actual = jnp.array([0.5, 0.9, 0.6])
    wrong = jnp.array([0.9, 0.5, 0.6])
    right = actual + 0.2  # same order and spacing, another offset: nothing to learn
    g_right = jax.grad(lambda p: losses.iou_rank_loss(p, actual, 0.05))(right)
    np.testing.assert_allclose(g_right, 0.0, atol=1e-5)
    g_wrong = jax.grad(lambda p: losses.iou_rank_loss(p, actual, 0.05))(wrong)
    assert g_wrong[1] < 0 < g_wrong[0]  # raise output 1's prediction, lower output 0's
    target = jnp.zeros((8, 8), bool).at[2:6, 2:6].set(True)
    logits = jax.random.normal(jax.random.key(0), (3, 8, 8))
    base, t = losses.sam_loss(logits, wrong, target)
    ranked, _ = losses.sam_loss(logits, wrong, target, rank_weight=0.5)
    extra = 0.5 * losses.iou_rank_loss(wrong, losses.mask_iou(logits, target), 0.05)
    np.testing.assert_allclose(ranked, base + extra, rtol=1e-5)
