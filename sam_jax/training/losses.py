"""SAM's training losses (paper, appendix A): focal + dice on the masks at 20:1, MSE of the
IoU head against the actual IoU, and with multimask output only the lowest-loss mask trained.

Per-mask functions reduce over the last two axes (h, w), so they take one mask (h, w) or a
stack (..., h, w). `sam_loss` handles one ground-truth mask and vmaps over masks; the caller
averages over the valid ones (sum of `loss` over masks / max(number valid, 1)).

The paper gives neither the focal loss's alpha nor its gamma; the defaults are the common
RetinaNet / DETR values, alpha 0.25 and gamma 2, and both are arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def sigmoid_focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    alpha: float | None = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> jax.Array:
    """Focal loss of logits (..., h, w) against 0/1 targets, mean over pixels -> (...).

    alpha weighs positives (alpha) against negatives (1 - alpha); None turns it off. gamma
    >= 0; gamma = 0 is the (alpha-weighted) binary cross-entropy.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    # softplus(x) - x t is the binary cross-entropy with logits, stable for large |x|.
    ce = jax.nn.softplus(logits) - logits * targets
    one_minus_pt = p + targets - 2.0 * p * targets
    # x ** gamma has an infinite (0 < gamma < 1) or NaN (gamma = 0) gradient at x = 0, where a
    # saturated pixel's sigmoid puts it in float32; the floor changes the loss by < 1e-30.
    loss = ce * jnp.maximum(one_minus_pt, 1e-30) ** gamma
    if alpha is not None:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return jnp.mean(loss, axis=(-2, -1))


def dice_loss(logits: jax.Array, targets: jax.Array, eps: float = 1.0) -> jax.Array:
    """1 - soft Dice of sigmoid(logits) (..., h, w) and targets, per mask -> (...).

    `eps` is added to numerator and denominator (as in DETR), so an empty target with an
    empty prediction costs nothing and the gradient stays finite.
    """
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    targets = targets.astype(jnp.float32)
    inter = jnp.sum(p * targets, axis=(-2, -1))
    total = jnp.sum(p, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1))
    return 1.0 - (2.0 * inter + eps) / (total + eps)


def mask_iou(pred_logits: jax.Array, targets: jax.Array) -> jax.Array:
    """IoU of `pred_logits > 0` with `targets` (..., h, w), per mask -> (...).

    When both are empty the union is empty and the IoU is 1: the prediction is exactly
    right, and that is what the IoU head should learn to say. An empty target with a
    non-empty prediction has IoU 0. No gradient flows through the threshold.
    """
    pred = pred_logits > 0
    gt = targets if targets.dtype == jnp.bool_ else targets > 0.5
    inter = jnp.sum(pred & gt, axis=(-2, -1))
    union = jnp.sum(pred | gt, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0).astype(jnp.float32)


def iou_head_loss(iou_pred: jax.Array, actual_iou: jax.Array) -> jax.Array:
    """Squared error of predicted against actual IoU, elementwise (average as needed)."""
    return jnp.square(iou_pred.astype(jnp.float32) - jax.lax.stop_gradient(actual_iou))


def iou_rank_loss(iou_pred: jax.Array, actual_iou: jax.Array, temperature: float) -> jax.Array:
    """Cross-entropy between softmax(actual / T) and softmax(predicted / T) over the M
    outputs (..., M) -> (...): zero gradient when the predictions rank and space the
    outputs as their actual IoUs do, whatever their common offset."""
    target = jax.nn.softmax(jax.lax.stop_gradient(actual_iou) / temperature, axis=-1)
    logp = jax.nn.log_softmax(iou_pred.astype(jnp.float32) / temperature, axis=-1)
    return -(target * logp).sum(-1)


def sam_loss(
    low_res_logits: jax.Array,
    iou_pred: jax.Array,
    target: jax.Array,
    valid: jax.Array | bool = True,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    multimask: bool = True,
    focal_alpha: float | None = FOCAL_ALPHA,
    focal_gamma: float = FOCAL_GAMMA,
    iou_loss_all_outputs: bool = True,
    iou_region: jax.Array | None = None,
    others_weight: float = 0.0,
    rank_weight: float = 0.0,
    rank_temperature: float = 0.05,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss of one ground-truth mask -> (loss (), terms).

    low_res_logits (M, h, w) and iou_pred (M,) are the decoder's outputs for this mask,
    target (h, w) the ground truth on the same grid. Mask loss per output =
    focal_weight * focal + dice_weight * dice. With `multimask` only the output with the
    lowest mask loss gets mask-loss gradient (the choice itself is not differentiated);
    without it every output is trained and the mask loss is their mean (normally M == 1).

    IoU head: MSE between each output's predicted and actual IoU. With
    `iou_loss_all_outputs` (the default) every output's prediction is trained, since at
    inference the IoU head ranks all the outputs and the paper trains it against "the
    predicted mask's IoU" without restricting it to the backpropagated mask; otherwise only
    the chosen output's. `iou_region` (h, w) bool limits the actual IoU (the head's target)
    to its pixels, e.g. the image inside the padded input, the only part a user ever sees.

    `valid` False (a padding mask) makes the loss and every term zero, and so its gradient.
    terms: loss, mask_loss, focal, dice, iou_mse (the weighted parts before weighting, of the
    chosen output or averaged), actual_iou and pred_iou of the chosen output, best_index.
    """
    target = jnp.broadcast_to(target, low_res_logits.shape)
    focal = sigmoid_focal_loss(low_res_logits, target, focal_alpha, focal_gamma)
    dice = dice_loss(low_res_logits, target)
    per_output = focal_weight * focal + dice_weight * dice
    if iou_region is None:
        actual_iou = mask_iou(low_res_logits, target)
    else:
        actual_iou = mask_iou(
            jnp.where(iou_region, low_res_logits, -1.0), jnp.where(iou_region, target, 0)
        )
    iou_se = iou_head_loss(iou_pred, actual_iou)

    if multimask:
        best = jnp.argmin(jax.lax.stop_gradient(per_output))
        mask_loss, focal_t, dice_t = per_output[best], focal[best], dice[best]
        if others_weight:
            mask_loss = mask_loss + others_weight * per_output.mean()
    else:
        best = jnp.zeros((), jnp.int32)
        mask_loss, focal_t, dice_t = per_output.mean(), focal.mean(), dice.mean()
    iou_mse = iou_se.mean() if iou_loss_all_outputs else iou_se[best]
    loss = mask_loss + iou_weight * iou_mse
    if rank_weight and low_res_logits.shape[0] > 1:
        loss = loss + rank_weight * iou_rank_loss(iou_pred, actual_iou, rank_temperature)

    valid = jnp.asarray(valid, bool)
    terms = {
        "loss": loss,
        "mask_loss": mask_loss,
        "focal": focal_t,
        "dice": dice_t,
        "iou_mse": iou_mse,
        "actual_iou": actual_iou[best],
        "pred_iou": iou_pred[best].astype(jnp.float32),
    }
    # where, not a product: a NaN in a padding mask's outputs must not leak into the sum.
    terms = {k: jnp.where(valid, v, 0.0) for k, v in terms.items()}
    terms["best_index"] = jnp.where(valid, best, 0).astype(jnp.int32)
    return terms["loss"], terms
