"""Simulated interactive segmentation of all the masks of one image, in batches.

The image is embedded once (`set_image`); its masks are then decoded `batch_size` at a
time with `predict_batch`. At step k every prompt has exactly k points (the predictor pads
point counts and prompt counts to power-of-two buckets with masked padding, so the result
equals prompting each mask alone). `fixed_batch_shape=True` pads every call to
`batch_size` prompts (copies of the first, outputs dropped): one compiled shape per point
bucket whatever the number of masks per image, at the price of decoding the padding - worth
it for short runs where compilation dominates, not for long ones.

Per step (see `protocol` for where the clicks go):
- step 1: one positive click, `multimask_output=True`; the scored mask is the one with the
  highest predicted IoU, the oracle is the best of the three against the ground truth;
- later steps: all clicks so far plus the previous scored mask's low-res logits as
  `mask_input`, with `multimask_output=False` (the reference's advice for prompts that are
  no longer ambiguous, and what the paper trains: "with more than one prompt the
  single-mask output token is used"). With a single output the oracle equals the scored
  mask. `multimask_all_clicks=True` keeps three outputs at every step instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sam_jax.evaluation import protocol


@dataclasses.dataclass
class MaskResult:
    """One ground-truth mask's run: clicks as (x, y, label) and, for k = 1..num_clicks,
    the IoU after k clicks of the scored mask and of the oracle mask; for the first click,
    every output's actual IoU and the IoU head's prediction of it (what ranks them)."""

    annotation_id: str
    clicks: list[tuple[int, int, int]]
    ious: list[float]
    oracle_ious: list[float]
    first_output_ious: list[float] = dataclasses.field(default_factory=list)
    first_pred_ious: list[float] = dataclasses.field(default_factory=list)


def evaluate_masks(
    predictor,
    gt_masks: list[np.ndarray],
    annotation_ids: list[str],
    num_clicks: int,
    batch_size: int = 16,
    multimask_all_clicks: bool = False,
    fixed_batch_shape: bool = False,
) -> list[MaskResult]:
    """Run the click protocol on masks of the image currently set in `predictor`.

    gt_masks: (H, W) bool masks at the image's original resolution, none empty.
    """
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be >= 1, got {num_clicks}")
    out = []
    for start in range(0, len(gt_masks), batch_size):
        gts = np.stack(gt_masks[start : start + batch_size])
        ids = annotation_ids[start : start + batch_size]
        out.extend(
            _evaluate_batch(
                predictor,
                gts,
                ids,
                num_clicks,
                multimask_all_clicks,
                batch_size if fixed_batch_shape else 0,
            )
        )
    return out


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Pad the batch axis to n rows with copies of row 0 (n <= rows: unchanged)."""
    if x.shape[0] >= n:
        return x
    return np.concatenate([x, np.repeat(x[:1], n - x.shape[0], axis=0)])


def _evaluate_batch(predictor, gts, ids, num_clicks, multimask_all_clicks, pad_to):
    b = gts.shape[0]
    coords = np.zeros((b, num_clicks, 2), np.float64)
    labels = np.full((b, num_clicks), -1, np.int32)
    clicks: list[list[protocol.Click]] = [[] for _ in range(b)]
    ious = np.zeros((b, num_clicks))
    oracle = np.zeros((b, num_clicks))
    active = np.ones(b, bool)  # False once a mask's prediction is exact
    first_ious = first_pred = None
    scored_masks = None
    mask_input = None
    for k in range(num_clicks):
        for i in range(b):
            if k == 0:
                click = protocol.first_click(gts[i])
            elif active[i]:
                done = [(c.y, c.x) for c in clicks[i]]
                click = protocol.next_click(gts[i], scored_masks[i], done)
                if click is None:
                    active[i] = False
            else:
                click = None
            if click is not None:
                clicks[i].append(click)
                coords[i, k] = (click.x, click.y)
                labels[i, k] = click.label
            # A finished mask still fills its slot (label -1, ignored by SAM's prompt
            # encoder as "not a point"); its outputs are discarded below.
        if not active.any():  # every prediction is exact: nothing left to decode
            ious[:, k], oracle[:, k] = ious[:, k - 1], oracle[:, k - 1]
            continue
        multimask = k == 0 or multimask_all_clicks
        masks, iou_pred, low_res = predictor.predict_batch(
            point_coords=_pad(coords[:, : k + 1], pad_to),
            point_labels=_pad(labels[:, : k + 1], pad_to),
            mask_input=None if mask_input is None else _pad(mask_input, pad_to),
            multimask_output=multimask,
        )
        masks, iou_pred, low_res = masks[:b], iou_pred[:b], low_res[:b]
        best = np.argmax(iou_pred, axis=1)
        rows = np.arange(b)
        step_ious = protocol.batch_ious(masks, gts)
        new_scored = masks[rows, best]
        new_iou = step_ious[rows, best]
        new_oracle = step_ious.max(axis=1)
        new_low = low_res[rows, best][:, None]
        if k == 0:
            first_ious, first_pred = step_ious, np.asarray(iou_pred, np.float64)
            scored_masks, mask_input = new_scored, new_low
            ious[:, 0], oracle[:, 0] = new_iou, new_oracle
            continue
        keep = active
        ious[:, k] = np.where(keep, new_iou, ious[:, k - 1])
        oracle[:, k] = np.where(keep, new_oracle, oracle[:, k - 1])
        scored_masks = np.where(keep[:, None, None], new_scored, scored_masks)
        mask_input = np.where(keep[:, None, None, None], new_low, mask_input)
    return [
        MaskResult(
            annotation_id=ids[i],
            clicks=[(c.x, c.y, c.label) for c in clicks[i]],
            ious=[float(v) for v in ious[i]],
            oracle_ious=[float(v) for v in oracle[i]],
            first_output_ious=[float(v) for v in first_ious[i]],
            first_pred_ious=[float(v) for v in first_pred[i]],
        )
        for i in range(b)
    ]
