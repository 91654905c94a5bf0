"""Prompt simulation for training: samplers land where they should, uniformly, with the
right labels; box noise has the paper's size; the schedule has the paper's structure; and all
of it jits, vmaps and is a function of the key."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sam_jax.training import prompts

# Fixed keys make every statistical check deterministic; the tolerances are still chosen so
# that a correct sampler would pass for almost any key (p-value floors of 1e-4, 4-5 sigma).
P_FLOOR = 1e-4


def keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def irregular_mask(h: int = 24, w: int = 32) -> np.ndarray:
    """An L shape plus a separate blob: not convex, not connected, off-centre."""
    m = np.zeros((h, w), bool)
    m[3:15, 4:7] = True
    m[12:15, 4:16] = True
    m[18:22, 24:30] = True
    return m


def to_pixel(xy: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Invert the frame convention; asserts the coordinates are exact pixel centres."""
    grid = (np.asarray(xy, np.float64) + 0.5) / scale - 0.5
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)
    grid = np.round(grid).astype(int)
    return grid[..., 1], grid[..., 0]


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_point_in_mask_is_inside_and_uniform(scale):
    mask = irregular_mask()
    n = 30_000
    sample = jax.jit(jax.vmap(partial(prompts.sample_point_in_mask, scale=scale), (0, None)))
    xy, found = sample(keys(n), jnp.asarray(mask))
    assert bool(np.all(found))
    rows, cols = to_pixel(xy, scale)
    assert mask[rows, cols].all()
    # Pixel-count chi-square against uniform over the mask's pixels.
    counts = np.zeros(mask.shape, int)
    np.add.at(counts, (rows, cols), 1)
    observed = counts[mask]
    assert stats.chisquare(observed).pvalue > P_FLOOR
    # And the mean location sits on the centroid (5 standard errors).
    rr, cc = np.nonzero(mask)
    for got, pix in ((rows, rr), (cols, cc)):
        assert abs(got.mean() - pix.mean()) < 5 * pix.std() / np.sqrt(n)


def test_point_frame_convention():
    # scale=1: the pixel index itself, as the reference predictor takes a click (its prompt
    # encoder adds 0.5); scale=4: the centre of the 4x4 block, 4 * col + 1.5.
    mask = np.zeros((8, 8), bool)
    mask[5, 2] = True
    sample = jax.jit(prompts.sample_point_in_mask, static_argnames="scale")
    xy, found = sample(jax.random.key(0), jnp.asarray(mask))
    assert bool(found) and xy.tolist() == [2.0, 5.0]
    xy, _ = sample(jax.random.key(0), jnp.asarray(mask), scale=4.0)
    assert xy.tolist() == [9.5, 21.5]


def test_empty_mask():
    empty = jnp.zeros((16, 16), bool)

    @jax.jit
    def everything(key):
        return (
            prompts.sample_point_in_mask(key, empty),
            prompts.noisy_box(key, empty),
            prompts.first_prompt(key, empty),
            prompts.error_region_point(key, empty, empty),
        )

    (xy, found), (box, box_found), (state, first_found), (_, _, err_found) = everything(
        jax.random.key(1)
    )
    assert not bool(found) and xy.tolist() == [0.0, 0.0]
    assert not bool(box_found) and box.tolist() == [0.0] * 4
    assert not bool(first_found)
    assert not bool(state.point_valid.any()) and not bool(state.has_box)
    assert not bool(err_found)


def test_error_region_point_region_and_labels():
    h, w = 20, 24
    gt = np.zeros((h, w), bool)
    gt[2:12, 3:15] = True
    pred = np.zeros((h, w), bool)
    pred[6:16, 8:20] = True
    error = gt ^ pred
    n = 20_000
    sample = jax.jit(jax.vmap(partial(prompts.error_region_point, scale=4.0), (0, None, None)))
    xy, label, found = sample(keys(n, 1), jnp.asarray(pred), jnp.asarray(gt))
    assert bool(np.all(found))
    rows, cols = to_pixel(xy, 4.0)
    assert error[rows, cols].all()
    label = np.asarray(label)
    # false negative -> positive click, false positive -> negative click
    np.testing.assert_array_equal(label, gt[rows, cols].astype(int))
    assert set(np.unique(label)) == {0, 1}
    counts = np.zeros((h, w), int)
    np.add.at(counts, (rows, cols), 1)
    assert stats.chisquare(counts[error]).pvalue > P_FLOOR
    fn_share = (gt & ~pred).sum() / error.sum()
    assert abs(label.mean() - fn_share) < 5 * np.sqrt(fn_share * (1 - fn_share) / n)


def test_error_region_without_errors_adds_nothing():
    gt = jnp.zeros((16, 16), bool).at[4:9, 4:9].set(True)
    state = prompts.empty_state(4)

    @jax.jit
    def no_error(key):
        xy, label, found = prompts.error_region_point(key, gt, gt)
        return found, prompts.add_point(state, xy, label, found)

    found, after = no_error(jax.random.key(0))
    assert not bool(found)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, after, state))


def test_depth_is_the_chessboard_distance_to_the_outside():
    mask = irregular_mask()
    mask[0:3, 20:32] = True  # touches the image border, which counts as outside
    got = np.asarray(prompts.depth(jnp.asarray(mask), max_depth=30))
    # Brute force: 1 + the largest r with the (2r+1)-square around the pixel inside the mask.
    padded = np.pad(mask, 40)
    want = np.zeros(mask.shape)
    for r, c in zip(*np.nonzero(mask), strict=True):
        k = 0
        while padded[40 + r - k - 1 : 40 + r + k + 2, 40 + c - k - 1 : 40 + c + k + 2].all():
            k += 1
        want[r, c] = k + 1
    np.testing.assert_array_equal(got, want)
    # Counting stops at max_depth + 1.
    capped = np.asarray(prompts.depth(jnp.asarray(mask), max_depth=1))
    np.testing.assert_array_equal(capped, np.minimum(want, 2))


def test_interior_is_the_deeper_half():
    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:25] = True  # depth up to 5
    mask[15:17, 0:30] = True  # a thin bar: depth 1, not in the deeper half
    inner = np.asarray(prompts.interior(jnp.asarray(mask)))
    want = np.zeros_like(mask)
    want[4:10, 5:23] = True  # depth >= 3 (2.5 rounded up)
    np.testing.assert_array_equal(inner, want)
    # Never empty: a one-pixel-wide mask is all interior.
    bar = np.zeros((8, 8), bool)
    bar[3, 1:7] = True
    np.testing.assert_array_equal(np.asarray(prompts.interior(jnp.asarray(bar))), bar)
    assert not bool(prompts.interior(jnp.zeros((8, 8), bool)).any())


def test_interior_clicks():
    n = 4000
    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:25] = True
    mask[15:17, 0:30] = True
    inner = np.asarray(prompts.interior(jnp.asarray(mask)))
    assert 0 < inner.sum() < mask.sum()

    def first_point(key, prob):
        state, found = prompts.first_prompt(
            key, jnp.asarray(mask), box_prob=0.0, interior_prob=prob
        )
        return state.point_coords[0], found

    for prob, want_inner in ((1.0, 1.0), (0.5, 0.5 + 0.5 * inner.sum() / mask.sum())):
        xy, found = jax.jit(jax.vmap(partial(first_point, prob=prob)))(keys(n, 3))
        assert bool(np.all(found))
        rows, cols = to_pixel(xy, 1.0)
        assert mask[rows, cols].all()
        share = inner[rows, cols].mean()
        assert abs(share - want_inner) < 5 * np.sqrt(want_inner * (1 - want_inner) / n) + 1e-9
    # Error points: the deeper half of the missed and the spurious regions, each measured on
    # its own although they touch; labels as before.
    gt = np.zeros((20, 24), bool)
    gt[2:12, 3:9] = True
    pred = np.zeros((20, 24), bool)
    pred[2:12, 9:15] = True  # beside the target: a missed 10 x 6 block touching a spurious one
    sample = jax.jit(
        jax.vmap(partial(prompts.error_region_point, interior_prob=1.0), (0, None, None))
    )
    xy, label, found = sample(keys(n, 4), jnp.asarray(pred), jnp.asarray(gt))
    assert bool(np.all(found))
    rows, cols = to_pixel(xy, 1.0)
    # Each block is 3 deep; its deeper half (depth >= 1.5) drops its outer ring. (As one
    # 10 x 12 region it would be 5 deep, with the deeper half straddling the two.)
    fn = np.zeros_like(gt)
    fn[3:11, 4:8] = True
    fp = np.zeros_like(gt)
    fp[3:11, 10:14] = True
    assert (fn | fp)[rows, cols].all()
    np.testing.assert_array_equal(np.asarray(label), gt[rows, cols].astype(int))
    assert 0.4 < np.asarray(label).mean() < 0.6


def test_center_clicks():
    """center_prob: clicks at the deepest pixels of their region (depth uncapped), the rest
    as before; error points at the deepest pixels of the deeper of the two error regions."""
    n = 2000
    mask = np.zeros((64, 64), bool)
    mask[4:60, 2:42] = True  # 56 x 40: depth 20 on rows 23-40 of column 21 (deeper than 16)
    mask[61:63, :] = True  # a thin bar
    d = np.asarray(prompts.depth(jnp.asarray(mask), max_depth=40))
    deepest = (d == d.max()) & mask
    assert d.max() == 20 and deepest.sum() < 40

    def first_point(key, prob):
        state, found = prompts.first_prompt(
            key, jnp.asarray(mask), box_prob=0.0, interior_prob=0.5, center_prob=prob
        )
        return state.point_coords[0], found

    for prob in (1.0, 0.3):
        xy, found = jax.jit(jax.vmap(partial(first_point, prob=prob)))(keys(n, 5))
        assert bool(np.all(found))
        rows, cols = to_pixel(xy, 1.0)
        assert mask[rows, cols].all()
        share = deepest[rows, cols].mean()
        want = prob + (1 - prob) * 0.5 * deepest.sum() / prompts.interior(mask).sum()
        assert abs(share - want) < 5 * np.sqrt(want * (1 - want) / n) + 1e-9
    gt = np.zeros((20, 24), bool)
    gt[2:12, 3:9] = True  # missed: 10 x 6, depth 3
    pred = np.zeros((20, 24), bool)
    pred[14:18, 2:22] = True  # spurious: 4 x 20, depth 2
    sample = jax.jit(
        jax.vmap(partial(prompts.error_region_point, center_prob=1.0), (0, None, None))
    )
    xy, label, found = sample(keys(200, 6), jnp.asarray(pred), jnp.asarray(gt))
    assert bool(np.all(found)) and (np.asarray(label) == 1).all()
    rows, cols = to_pixel(xy, 1.0)
    assert ((rows >= 4) & (rows <= 9) & ((cols == 5) | (cols == 6))).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 12  # all of them


def gt_box(mask: np.ndarray, scale: float) -> np.ndarray:
    rr, cc = np.nonzero(mask)
    return np.array(
        [
            cc.min() * scale,
            rr.min() * scale,
            (cc.max() + 1) * scale - 1,
            (rr.max() + 1) * scale - 1,
        ]
    )


def box_mask() -> np.ndarray:
    mask = np.zeros((256, 256), bool)
    mask[80:130, 60:140] = True  # 50 x 80 grid px = 200 x 320 frame px at scale 4
    return mask


def test_noisy_box_std_is_ten_percent_of_side():
    mask, scale, n = box_mask(), 4.0, 8000
    sample = jax.jit(jax.vmap(partial(prompts.noisy_box, scale=scale, max_noise=1e9), (0, None)))
    box, found = sample(keys(n, 2), jnp.asarray(mask))
    assert bool(np.all(found))
    ref = gt_box(mask, scale)
    np.testing.assert_array_equal(prompts.mask_box(jnp.asarray(mask), scale)[0], ref)
    noise = np.asarray(box, np.float64) - ref
    side = np.array([320.0, 200.0, 320.0, 200.0])
    np.testing.assert_allclose(noise.std(axis=0), 0.1 * side, rtol=0.05)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=5 * 0.1 * side.max() / np.sqrt(n))
    # Independent per coordinate.
    corr = np.corrcoef(noise.T) - np.eye(4)
    assert np.abs(corr).max() < 5 / np.sqrt(n)


def test_noisy_box_noise_is_capped():
    mask, scale, n = box_mask(), 4.0, 4000
    sample = jax.jit(jax.vmap(partial(prompts.noisy_box, scale=scale), (0, None)))
    box, _ = sample(keys(n, 3), jnp.asarray(mask))
    noise = np.asarray(box, np.float64) - gt_box(mask, scale)
    assert np.abs(noise).max() <= 20.0 + 1e-4
    # std 32 px on x, 20 px on y: the 20 px cap binds often.
    assert (np.abs(noise) > 19.99).mean() > 0.2


def test_noisy_box_small_box_std_and_order():
    mask = np.zeros((64, 64), bool)
    mask[30:40, 20:30] = True  # 10 px side: std 1 px, cap never binds
    box, _ = jax.jit(jax.vmap(prompts.noisy_box, (0, None)))(keys(8000, 4), jnp.asarray(mask))
    noise = np.asarray(box, np.float64) - gt_box(mask, 1.0)
    np.testing.assert_allclose(noise.std(axis=0), 1.0, rtol=0.05)
    # One pixel with huge relative noise: corners cross and must be reordered.
    dot = jnp.zeros((64, 64), bool).at[30, 20].set(True)
    sample = jax.jit(jax.vmap(partial(prompts.noisy_box, noise_frac=3.0), (0, None)))
    box, _ = sample(keys(2000, 5), dot)
    box = np.asarray(box)
    assert (box[:, 0] <= box[:, 2]).all() and (box[:, 1] <= box[:, 3]).all()


def test_noisy_box_clipped_to_frame():
    mask = np.zeros((64, 80), bool)
    mask[:, 60:] = True  # touches top, bottom and right
    sample = jax.jit(jax.vmap(partial(prompts.noisy_box, scale=2.0), (0, None)))
    box = np.asarray(sample(keys(2000, 6), jnp.asarray(mask))[0])
    assert box.min() >= 0.0
    assert (box[:, [0, 2]] <= 159.0).all() and (box[:, [1, 3]] <= 127.0).all()
    assert (box[:, 2] == 159.0).mean() > 0.3  # pushed out half the time, clipped back
    # A smaller real image inside the padded frame clips harder.
    frame = partial(prompts.noisy_box, scale=2.0, frame_hw=(100.0, 140.0))
    sample = jax.jit(jax.vmap(frame, (0, None)))
    box = np.asarray(sample(keys(2000, 6), jnp.asarray(mask))[0])
    assert (box[:, [0, 2]] <= 139.0).all() and (box[:, [1, 3]] <= 99.0).all()


def test_first_prompt_point_or_box():
    mask, n = irregular_mask(), 4000
    first = jax.jit(jax.vmap(partial(prompts.first_prompt, max_points=5), (0, None)))
    state, found = first(keys(n, 7), jnp.asarray(mask))
    assert bool(np.all(found))
    has_box = np.asarray(state.has_box)
    valid = np.asarray(state.point_valid)
    assert valid.shape == (n, 5) and state.point_coords.shape == (n, 5, 2)
    assert abs(has_box.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # Exactly one prompt: slot 0 holds a foreground point, or there is a box.
    np.testing.assert_array_equal(valid[:, 0], ~has_box)
    assert not valid[:, 1:].any()
    labels = np.asarray(state.point_labels)
    assert (labels[~has_box, 0] == 1).all() and (labels[:, 1:] == -1).all()
    rows, cols = to_pixel(np.asarray(state.point_coords)[~has_box, 0], 1.0)
    assert mask[rows, cols].all()
    boxes = np.asarray(state.box)
    assert (boxes[~has_box] == 0).all()
    assert np.abs(boxes[has_box] - gt_box(mask, 1.0)).max() <= 20.0 + 1e-4


def test_add_point_fills_slots_in_order_and_drops_when_full():
    state = prompts.empty_state(3)
    add = jax.jit(prompts.add_point)
    state = add(state, jnp.array([1.0, 2.0]), 1, jnp.array(True))
    state = add(state, jnp.array([9.0, 9.0]), 0, jnp.array(False))  # nothing found
    state = add(state, jnp.array([3.0, 4.0]), 0, jnp.array(True))
    assert state.point_valid.tolist() == [True, True, False]
    assert state.point_labels.tolist() == [1, 0, -1]
    assert state.point_coords.tolist() == [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]
    state = add(state, jnp.array([5.0, 6.0]), 1, jnp.array(True))
    full = add(state, jnp.array([7.0, 8.0]), 1, jnp.array(True))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, full, state))


def test_schedule_structure():
    n = 900
    adds = np.asarray(jax.jit(jax.vmap(prompts.interactive_schedule))(keys(n, 8)))
    assert adds.shape == (n, 11) and adds.dtype == bool
    assert adds[:, 0].all()  # the first prompt
    assert (adds[:, 1:].sum(axis=1) == 8).all()  # eight error-point rounds
    assert ((~adds).sum(axis=1) == 2).all()  # two rounds without a new point
    assert (~adds[:, -1]).all()  # one of them always last
    # The other is uniform over iterations 1..9.
    position = np.argmin(adds[:, :-1], axis=1)
    assert position.min() >= 1
    assert stats.chisquare(np.bincount(position, minlength=10)[1:]).pvalue > P_FLOOR


def test_schedule_other_sizes():
    adds = np.asarray(prompts.interactive_schedule(jax.random.key(0), 12, 8))
    assert adds[0] and not adds[-1] and adds[1:].sum() == 8 and (~adds).sum() == 3
    adds = np.asarray(prompts.interactive_schedule(jax.random.key(0), 10, 8))
    assert adds.tolist() == [True] * 9 + [False]
    with pytest.raises(ValueError):
        prompts.interactive_schedule(jax.random.key(0), 9, 8)


def test_select_for_feedback():
    logits = jnp.arange(3 * 4 * 4, dtype=jnp.float32).reshape(3, 4, 4)
    iou = jnp.array([[0.2, 0.9, 0.5], [0.7, 0.1, 0.6]])
    out = jax.jit(jax.vmap(prompts.select_for_feedback, (None, 0)))(logits, iou)
    np.testing.assert_array_equal(out, logits[jnp.array([1, 0])])
    single = prompts.select_for_feedback(logits[:1], jnp.array([0.3]))
    np.testing.assert_array_equal(single, logits[0])


def test_same_key_same_prompts():
    mask = jnp.asarray(irregular_mask())

    def everything(k):
        return (
            prompts.sample_point_in_mask(k, mask),
            prompts.noisy_box(k, mask),
            prompts.first_prompt(k, mask),
            prompts.error_region_point(k, mask, ~mask),
            prompts.interactive_schedule(k),
        )

    k = jax.random.key(11)
    fn = jax.jit(everything)
    a, b = fn(k), fn(k)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, a, b))
    # As one row of a vmapped batch: the same draws (up to float rounding, since XLA may
    # fuse the batched arithmetic differently).
    batch = jax.jit(jax.vmap(everything))(jnp.stack([keys(1, 99)[0], k]))
    c = jax.tree.map(lambda x: x[1], batch)
    assert jax.tree.all(jax.tree.map(partial(np.allclose, rtol=1e-6, atol=1e-5), a, c))
    # Different keys, different draws.
    d = jax.tree.map(lambda x: x[0], batch)
    assert not np.array_equal(a[0][0], d[0][0]) or not np.array_equal(a[1][0], d[1][0])


def test_simulated_interaction_under_scan():
    """The pieces compose into the paper's 11-iteration loop inside one jit: a stand-in
    model predicts the target shifted right, the loop adds error points on the schedule."""
    h = w = 32
    gt = np.zeros((h, w), bool)
    gt[8:20, 6:18] = True
    pred = np.roll(gt, 4, axis=1)

    def interact(key, gt):
        k_first, k_sched, k_loop = jax.random.split(key, 3)
        state, _ = prompts.first_prompt(k_first, gt, scale=4.0)
        adds = prompts.interactive_schedule(k_sched)

        def step(state, inputs):
            adds_point, k = inputs
            logits = jnp.where(jnp.asarray(pred), 5.0, -5.0)[None].repeat(3, 0)
            feedback = prompts.select_for_feedback(logits, jnp.array([0.1, 0.8, 0.3]))
            xy, label, found = prompts.error_region_point(k, feedback > 0, gt, scale=4.0)
            return prompts.add_point(state, xy, label, found & adds_point), None

        state, _ = jax.lax.scan(step, state, (adds[1:], jax.random.split(k_loop, 10)))
        return state

    n = 64
    state = jax.jit(jax.vmap(interact, (0, None)))(keys(n, 12), jnp.asarray(gt))
    valid = np.asarray(state.point_valid)
    has_box = np.asarray(state.has_box)
    np.testing.assert_array_equal(valid.sum(axis=1), np.where(has_box, 8, 9))
    rows, cols = to_pixel(np.asarray(state.point_coords)[valid], 4.0)
    labels = np.asarray(state.point_labels)[valid]
    first = valid & (np.arange(9) == 0) & ~has_box[:, None]
    is_first = first[valid]
    # Error points: in the error region, labelled by the target.
    err = (gt ^ pred)[rows, cols]
    assert err[~is_first].all()
    np.testing.assert_array_equal(labels[~is_first], gt[rows, cols][~is_first].astype(int))
    assert (labels[is_first] == 1).all() and gt[rows, cols][is_first].all()
