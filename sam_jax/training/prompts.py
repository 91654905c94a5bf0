"""Simulated interactive prompting for training (paper, appendix A).

Each training mask goes through `interactive_schedule` iterations: a first prompt (a point
inside the mask or a noisy box, equally likely), then points sampled from the error region of
the previous prediction, with two iterations that add nothing and only feed the previous
logits back. Everything here works on one mask with an explicit key and static shapes, so a
batch is a `jax.vmap` over masks and keys, and the whole loop jits once.

Coordinate frame. Points and boxes come out in the model's input frame as `Sam.decode` takes
them: the reference convention of pixel indices, where the prompt encoder adds 0.5 to reach a
pixel's centre. A mask given on a grid `scale` times coarser than that frame (the 256 x 256
low-res grid against the 1024 input: `scale=4`) maps its pixel (row, col), whose centre lies
at ((col + 0.5) * scale, (row + 0.5) * scale) in continuous frame coordinates, to
x = (col + 0.5) * scale - 0.5, y = (row + 0.5) * scale - 0.5. With `scale=1` that is (col, row),
exactly how the reference predictor takes a click, and boxes follow the reference's
`batched_mask_to_box` (inclusive extreme pixel indices).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_ITERATIONS = 11
NUM_POINT_ROUNDS = 8
# The first prompt's point plus one point per error round.
MAX_POINTS = 1 + NUM_POINT_ROUNDS


class PromptState(NamedTuple):
    """The prompts of one mask so far, in fixed-size buffers (a pytree, so it vmaps).

    point_coords (P, 2) float32 (x, y) in the model frame; point_labels (P,) int32, 1
    foreground, 0 background, -1 in unused slots; point_valid (P,) bool, False for unused
    slots (pass as `Sam.decode(point_valid=...)`); box (4,) float32 XYXY; has_box () bool;
    text (D,) float32, a text-prompt embedding (D = 0 when training without text prompts);
    has_text () bool.
    """

    point_coords: jax.Array
    point_labels: jax.Array
    point_valid: jax.Array
    box: jax.Array
    has_box: jax.Array
    text: jax.Array
    has_text: jax.Array


def empty_state(max_points: int = MAX_POINTS, text_dim: int = 0) -> PromptState:
    """A state with no points, no box and no text."""
    return PromptState(
        point_coords=jnp.zeros((max_points, 2), jnp.float32),
        point_labels=jnp.full((max_points,), -1, jnp.int32),
        point_valid=jnp.zeros((max_points,), bool),
        box=jnp.zeros((4,), jnp.float32),
        has_box=jnp.zeros((), bool),
        text=jnp.zeros((text_dim,), jnp.float32),
        has_text=jnp.zeros((), bool),
    )


def _grid_to_frame(index: jax.Array, scale: float) -> jax.Array:
    return (index.astype(jnp.float32) + 0.5) * scale - 0.5


def _sample_pixel(key: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(row, col, found): a pixel drawn uniformly from the True pixels of a (H, W) mask.

    Draws a rank k among the n True pixels and takes the first pixel whose running count
    exceeds k: exactly uniform, unlike an argmax over random scores, whose float ties favour
    early pixels. For an empty mask, (0, 0, False).
    """
    w = mask.shape[1]
    flat = mask.reshape(-1).astype(jnp.int32)
    count = jnp.cumsum(flat)
    n = count[-1]
    k = jax.random.randint(key, (), 0, jnp.maximum(n, 1))
    index = jnp.argmax(count > k)
    found = n > 0
    index = jnp.where(found, index, 0)
    return index // w, index % w, found


def depth(mask: jax.Array, max_depth: int = 16) -> jax.Array:
    """Chessboard distance of each pixel of a (H, W) bool mask to the outside (1 on the
    mask's edge, 0 off it; the image border counts as outside), counted up to
    max_depth + 1 by repeated 3 x 3 erosion -> (H, W) float32."""

    def erode(carry, _):  # a 3 x 3 minimum as two 3-wide ones
        x, total = carry
        p = jnp.pad(x, 1)
        x = jnp.minimum(jnp.minimum(p[:-2], p[1:-1]), p[2:])[:, 1:-1]
        p = jnp.pad(x, ((0, 0), (1, 1)))
        x = jnp.minimum(jnp.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
        return (x, total + x), None

    m = mask.astype(jnp.float32)
    (_, total), _ = jax.lax.scan(erode, (m, m), None, length=max_depth)
    return total


def deeper_half(d: jax.Array) -> jax.Array:
    """Pixels of a `depth` map at least half as deep as its deepest: never empty when any
    pixel is inside. Depths are capped, so deep inside a large region every pixel at least
    about max_depth / 2 from the edge qualifies."""
    return (d > 0) & (2 * d >= d.max())


def interior(mask: jax.Array, max_depth: int = 16) -> jax.Array:
    """The deeper half of a (H, W) bool mask (see `depth` and `deeper_half`)."""
    return deeper_half(depth(mask, max_depth))


def deepest(d: jax.Array) -> jax.Array:
    """Pixels of a `depth` map at its maximum (the evaluation protocol's click goes to one
    of them): empty only when no pixel is inside."""
    return (d > 0) & (d >= d.max())


def _region_with_prob(key, prob: float, region, other):
    """-> (key left for the sampler, `other` with probability prob, else `region`)."""
    k_in, key = jax.random.split(key)
    return key, jnp.where(jax.random.bernoulli(k_in, prob), other, region)


def _click_region(key, region, d_fn, interior_prob: float, center_prob: float):
    """The region a click is drawn from -> (key left for the sampler, region): with
    probability center_prob the deepest pixels of `d_fn()` (uncapped depth), else with
    interior_prob its deeper half (depth capped at 16), else all of `region`."""
    full = d_fn(max(region.shape) // 2 + 1) if center_prob > 0 else None
    if interior_prob > 0:
        # depth capped at 16 is the full depth clipped at 17: one erosion pass serves both
        capped = d_fn(16) if full is None else jnp.minimum(full, 17.0)
        key, region = _region_with_prob(key, interior_prob, region, deeper_half(capped))
    if center_prob > 0:
        key, region = _region_with_prob(key, center_prob, region, deepest(full))
    return key, region


def sample_point_in_mask(
    key: jax.Array, mask: jax.Array, scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """A point uniform over the True pixels of `mask` (H, W) -> (xy (2,) float32, found ()).

    `xy` is the pixel's centre in the model frame (module docstring); (0, 0) when the mask is
    empty, with found=False.
    """
    row, col, found = _sample_pixel(key, mask)
    xy = jnp.stack([_grid_to_frame(col, scale), _grid_to_frame(row, scale)])
    return jnp.where(found, xy, 0.0), found


def mask_box(mask: jax.Array, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Tight box of a (H, W) mask in the model frame -> (XYXY (4,) float32, found ()).

    The corners are the frame pixel indices of the outermost frame pixels covered by the
    mask: with `scale=1`, (min col, min row, max col, max row) as the reference's
    `batched_mask_to_box`. An empty mask gives zeros and found=False.
    """
    h, w = mask.shape
    rows = jnp.any(mask, axis=1)
    cols = jnp.any(mask, axis=0)
    found = jnp.any(rows)
    r = jnp.arange(h)
    c = jnp.arange(w)
    r0 = jnp.min(jnp.where(rows, r, h))
    r1 = jnp.max(jnp.where(rows, r, -1))
    c0 = jnp.min(jnp.where(cols, c, w))
    c1 = jnp.max(jnp.where(cols, c, -1))
    box = jnp.stack([c0 * scale, r0 * scale, (c1 + 1) * scale - 1, (r1 + 1) * scale - 1])
    return jnp.where(found, box.astype(jnp.float32), 0.0), found


def noisy_box(
    key: jax.Array,
    mask: jax.Array,
    noise_frac: float = 0.1,
    max_noise: float = 20.0,
    scale: float = 1.0,
    frame_hw: jax.Array | tuple[float, float] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The mask's box with the paper's noise -> (XYXY (4,) float32, found ()).

    Each coordinate moves by Gaussian noise of std `noise_frac` times the box side along its
    axis (the side counted as the covered extent, (max col - min col + 1) * scale), each
    move clipped to +-`max_noise` frame pixels. The result is clipped to the frame, (H * scale,
    W * scale) or `frame_hw` (h, w) (e.g. the real image inside the padded input), and
    reordered so that x0 <= x1 and y0 <= y1. An empty mask gives zeros and found=False.
    """
    box, found = mask_box(mask, scale)
    side = jnp.stack([box[2] - box[0], box[3] - box[1]]) + 1.0
    std = noise_frac * jnp.concatenate([side, side])
    noise = jnp.clip(jax.random.normal(key, (4,)) * std, -max_noise, max_noise)
    box = box + noise
    if frame_hw is None:
        frame_hw = (mask.shape[0] * scale, mask.shape[1] * scale)
    fh, fw = jnp.asarray(frame_hw, jnp.float32)
    hi = jnp.stack([fw, fh, fw, fh]) - 1.0
    box = jnp.clip(box, 0.0, hi)
    box = jnp.stack(
        [
            jnp.minimum(box[0], box[2]),
            jnp.minimum(box[1], box[3]),
            jnp.maximum(box[0], box[2]),
            jnp.maximum(box[1], box[3]),
        ]
    )
    return jnp.where(found, box, 0.0), found


def add_point(state: PromptState, xy: jax.Array, label: jax.Array, found: jax.Array) -> PromptState:
    """Write a point into the first unused slot; unchanged when `found` is False or the
    buffer is full (shapes never change, so this runs inside jit/vmap/scan)."""
    free = ~state.point_valid
    slot = jnp.argmax(free)
    write = jnp.asarray(found, bool) & free[slot]
    coords = state.point_coords.at[slot].set(
        jnp.where(write, xy.astype(jnp.float32), state.point_coords[slot])
    )
    labels = state.point_labels.at[slot].set(
        jnp.where(write, jnp.asarray(label, jnp.int32), state.point_labels[slot])
    )
    valid = state.point_valid.at[slot].set(state.point_valid[slot] | write)
    return state._replace(point_coords=coords, point_labels=labels, point_valid=valid)


def first_prompt(
    key: jax.Array,
    mask: jax.Array,
    max_points: int = MAX_POINTS,
    scale: float = 1.0,
    box_prob: float = 0.5,
    noise_frac: float = 0.1,
    max_noise: float = 20.0,
    frame_hw: jax.Array | tuple[float, float] | None = None,
    text: jax.Array | None = None,
    text_ok: jax.Array | None = None,
    text_prob: float = 0.0,
    interior_prob: float = 0.0,
    center_prob: float = 0.0,
) -> tuple[PromptState, jax.Array]:
    """Iteration 0: a foreground point uniform in the mask (with `center_prob` uniform over
    its deepest pixels, else with `interior_prob` uniform in its deeper half, `interior`), or
    (with `box_prob`) its noisy box -> (state, found). With an empty mask the state holds no
    prompt and found=False.

    With a text-prompt embedding `text` (D,) for the mask (`text_ok` True), the first prompt
    is that embedding alone with probability `text_prob` (the paper's text-to-mask
    training); the state then carries D-wide text fields either way.
    """
    k_choice, k_point, k_box = jax.random.split(key, 3)
    use_box = jax.random.bernoulli(k_choice, box_prob)
    k_point, region = _click_region(
        k_point, mask, lambda cap: depth(mask, cap), interior_prob, center_prob
    )
    xy, found = sample_point_in_mask(k_point, region, scale)
    box, _ = noisy_box(k_box, mask, noise_frac, max_noise, scale, frame_hw)
    state = empty_state(max_points, 0 if text is None else text.shape[-1])
    use_text = jnp.zeros((), bool)
    if text is not None:
        ok = jnp.ones((), bool) if text_ok is None else jnp.asarray(text_ok, bool)
        use_text = ok & jax.random.bernoulli(jax.random.fold_in(key, 1), text_prob)
        state = state._replace(text=text.astype(jnp.float32), has_text=found & use_text)
    use_box = use_box & ~use_text
    state = add_point(state, xy, 1, found & ~use_box & ~use_text)
    has_box = found & use_box
    state = state._replace(box=jnp.where(has_box, box, 0.0), has_box=has_box)
    return state, found


def error_region_point(
    key: jax.Array,
    pred_mask: jax.Array,
    gt_mask: jax.Array,
    scale: float = 1.0,
    interior_prob: float = 0.0,
    center_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A point uniform over the error region `pred_mask ^ gt_mask` (both (H, W) bool, e.g.
    `low_res_logits > 0` against the target on the same grid) -> (xy (2,), label (), found ()).
    With probability `center_prob` it is uniform over the error's deepest pixels instead
    (where the evaluation protocol clicks), else with `interior_prob` over its deeper half.

    label is 1 on a false negative (in the target, not predicted), 0 on a false positive.
    Without errors found=False (xy zeros, label -1), and `add_point` then adds nothing.
    """
    pred_mask = pred_mask.astype(bool)
    gt_mask = gt_mask.astype(bool)
    errors = pred_mask ^ gt_mask

    def d_fn(cap):
        # Missed and spurious pixels are separate regions (as the evaluation protocol
        # measures them), even where they touch.
        return depth(gt_mask & ~pred_mask, cap) + depth(pred_mask & ~gt_mask, cap)

    key, errors = _click_region(key, errors, d_fn, interior_prob, center_prob)
    row, col, found = _sample_pixel(key, errors)
    xy = jnp.stack([_grid_to_frame(col, scale), _grid_to_frame(row, scale)])
    label = jnp.where(found, gt_mask[row, col].astype(jnp.int32), -1)
    return jnp.where(found, xy, 0.0), label, found


def interactive_schedule(
    key: jax.Array,
    num_iterations: int = NUM_ITERATIONS,
    num_point_rounds: int = NUM_POINT_ROUNDS,
) -> jax.Array:
    """Which iterations add a prompt -> adds_point (num_iterations,) bool.

    adds_point[0] is always True: iteration 0 is the first prompt (point or box, see
    `first_prompt`), not an error point. For i >= 1, adds_point[i] says whether iteration i
    samples one error point from the previous prediction before running the model; when
    False it only feeds the previous logits back. Exactly `num_point_rounds` of iterations
    1.. are True; the last iteration is always False, and the remaining False ones
    (num_iterations - 2 - num_point_rounds of them, one in the paper's 11 / 8) sit at
    uniformly random places among iterations 1 .. num_iterations - 2.
    """
    num_random = num_iterations - 2 - num_point_rounds
    if num_random < 0:
        raise ValueError(
            f"{num_iterations} iterations cannot hold the first prompt, {num_point_rounds}"
            " point rounds and a final no-point iteration"
        )
    middle = num_iterations - 2
    scores = jax.random.uniform(key, (middle,))
    rank = jnp.argsort(jnp.argsort(scores))
    middle_adds = rank >= num_random
    return jnp.concatenate([jnp.ones((1,), bool), middle_adds, jnp.zeros((1,), bool)])


def select_for_feedback(low_res_logits: jax.Array, iou_pred: jax.Array) -> jax.Array:
    """Logits (M, h, w) and predicted IoUs (M,) -> the (h, w) logits with the highest
    predicted IoU: the mask fed back as the next mask prompt and used for error sampling."""
    return low_res_logits[jnp.argmax(iou_pred)]
