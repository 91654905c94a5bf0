"""Per-module parity with the PyTorch reference at the tiny size (same weights).

Our layout is channel-last (NHWC), the reference's NCHW: reference maps are transposed
before comparing.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from segment_anything.modeling import image_encoder as ref_image_encoder

from sam_jax.modeling.image_encoder import get_rel_pos, window_partition, window_unpartition

# Max abs difference allowed, as a fraction of the reference output's standard deviation.
ENCODER_REL_TOL = 1e-4
DECODER_REL_TOL = 1e-4
# Prompt embeddings are sin/cos features plus learned vectors, all O(1): absolute tolerance.
PROMPT_ATOL = 1e-5
REL_POS_ATOL = 1e-6
# Padding tokens get exactly zero attention weight; what is left is float reassociation
# from the different matrix shapes.
PADDING_ATOL = 1e-5

IMAGE_SIZE = 256  # tiny model input
EMBED_HW = 16
LOW_RES = 64


def to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def nchw_to_nhwc(x) -> np.ndarray:
    return to_np(x).transpose(0, 2, 3, 1)


def assert_close_rel(actual, expected, rel_tol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    std = float(expected.std())
    assert std > 0, f"{what}: reference output is constant, the comparison would be vacuous"
    err = float(np.abs(actual - expected).max())
    assert err <= rel_tol * std, f"{what}: max abs diff {err:.3g} > {rel_tol:g} * std {std:.3g}"


def apply(model, fn, *args):
    return model.module.apply({"params": model.params}, *args, method=fn)


def run_encoder(m, x):
    return m.image_encoder(x)


def run_prompt_encoder(m, points, boxes, masks):
    return m.prompt_encoder(points, boxes, masks)


def run_dense_pe(m):
    return m.prompt_encoder.get_dense_pe()


def run_mask_decoder(m, emb, pe, sparse, dense, multimask):
    return m.mask_decoder(emb, pe, sparse, dense, multimask)


# ---------------------------------------------------------------------------------- encoder
def test_image_encoder_parity(tiny_ref, tiny_model):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_ref.image_encoder(torch.from_numpy(x)).numpy()
    ours = apply(tiny_model, run_encoder, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert ours.shape == (1, EMBED_HW, EMBED_HW, 64)
    assert_close_rel(ours, nchw_to_nhwc(expected), ENCODER_REL_TOL, "image embedding")


# --------------------------------------------------------------------------- prompt encoder
def _prompts(rng, batch, num_points):
    coords = rng.uniform(0, IMAGE_SIZE, (batch, num_points, 2)).astype(np.float32)
    # Every label value, including -1 ("not a point") as a real, valid token.
    labels = np.resize(np.array([1, 0, -1], np.int32), (batch, num_points))
    labels[:, 0] = 1
    xy0 = rng.uniform(0, IMAGE_SIZE / 2, (batch, 2))
    boxes = np.concatenate([xy0, xy0 + rng.uniform(10, IMAGE_SIZE / 2, (batch, 2))], axis=1)
    masks = 5 * rng.standard_normal((batch, LOW_RES, LOW_RES)).astype(np.float32)
    return coords, labels, boxes.astype(np.float32), masks


PROMPT_CASES = {
    "points": (True, False, False),  # no box: the padding point is appended
    "points+box": (True, True, False),
    "box": (False, True, False),
    "mask": (False, False, True),
    "points+mask": (True, False, True),
    "points+box+mask": (True, True, True),
    "nothing": (False, False, False),
}


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_prompt_encoder_parity(tiny_ref, tiny_model, case):
    use_points, use_box, use_mask = PROMPT_CASES[case]
    rng = np.random.default_rng(2)
    batch, num_points = 2, 4
    coords, labels, boxes, masks = _prompts(rng, batch, num_points)
    ref_args = (
        (torch.from_numpy(coords), torch.from_numpy(labels)) if use_points else None,
        torch.from_numpy(boxes) if use_box else None,
        torch.from_numpy(masks[:, None]) if use_mask else None,
    )
    with torch.no_grad():
        ref_sparse, ref_dense = tiny_ref.prompt_encoder(*ref_args)
    sparse, valid, dense = apply(
        tiny_model,
        run_prompt_encoder,
        (jnp.asarray(coords), jnp.asarray(labels)) if use_points else None,
        jnp.asarray(boxes) if use_box else None,
        jnp.asarray(masks) if use_mask else None,
    )
    expected_tokens = (num_points + (0 if use_box else 1) if use_points else 0) + 2 * use_box
    assert ref_sparse.shape[1] == expected_tokens
    assert sparse.shape == tuple(ref_sparse.shape)
    assert valid.shape == sparse.shape[:2] and bool(np.all(valid))
    np.testing.assert_allclose(sparse, to_np(ref_sparse), rtol=0, atol=PROMPT_ATOL)
    assert dense.shape == (
        batch if use_points or use_box or use_mask else 1,
        EMBED_HW,
        EMBED_HW,
        64,
    )
    np.testing.assert_allclose(dense, nchw_to_nhwc(ref_dense), rtol=0, atol=PROMPT_ATOL)
    if use_mask:  # a real computation, not the broadcast no-mask vector
        assert float(np.asarray(dense).std(axis=(1, 2)).min()) > 0


def test_dense_positional_encoding_parity(tiny_ref, tiny_model):
    with torch.no_grad():
        expected = tiny_ref.prompt_encoder.get_dense_pe().numpy()
    ours = apply(tiny_model, run_dense_pe)
    assert ours.shape == (1, EMBED_HW, EMBED_HW, 64)
    np.testing.assert_allclose(ours, nchw_to_nhwc(expected), rtol=0, atol=PROMPT_ATOL)


# ----------------------------------------------------------------------------- mask decoder
@pytest.mark.parametrize("multimask", [True, False])
def test_mask_decoder_parity(tiny_ref, tiny_model, multimask):
    rng = np.random.default_rng(3)
    batch = 3
    emb = rng.standard_normal((1, 64, EMBED_HW, EMBED_HW)).astype(np.float32)
    dense = rng.standard_normal((batch, 64, EMBED_HW, EMBED_HW)).astype(np.float32)
    coords, labels, boxes, _ = _prompts(rng, batch, 2)
    with torch.no_grad():
        sparse, _ = tiny_ref.prompt_encoder(
            (torch.from_numpy(coords), torch.from_numpy(labels)), torch.from_numpy(boxes), None
        )
        pe = tiny_ref.prompt_encoder.get_dense_pe()
        ref_masks, ref_iou = tiny_ref.mask_decoder(
            image_embeddings=torch.from_numpy(emb),
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=torch.from_numpy(dense),
            multimask_output=multimask,
        )
    masks, iou = apply(
        tiny_model,
        run_mask_decoder,
        jnp.asarray(nchw_to_nhwc(emb)),
        jnp.asarray(nchw_to_nhwc(pe)),
        jnp.asarray(to_np(sparse)),
        jnp.asarray(nchw_to_nhwc(dense)),
        multimask,
    )
    num_masks = 3 if multimask else 1
    assert masks.shape == (batch, num_masks, LOW_RES, LOW_RES) == tuple(ref_masks.shape)
    assert iou.shape == (batch, num_masks) == tuple(ref_iou.shape)
    assert_close_rel(masks, to_np(ref_masks), DECODER_REL_TOL, "mask logits")
    assert_close_rel(iou, to_np(ref_iou), DECODER_REL_TOL, "iou predictions")


# ------------------------------------------------------------------ encoder building blocks
@pytest.mark.parametrize(
    "q_size,k_size,table_len",
    [
        (10, 10, 13),  # table shorter than 2*10-1: upsampled
        (7, 7, 27),  # longer than 2*7-1: downsampled
        (8, 8, 15),  # exact length: no interpolation
        (4, 8, 15),  # query and key extents differ: coordinate scaling
        (6, 3, 7),  # ... both ways, with interpolation (needs 11)
    ],
)
def test_get_rel_pos_parity(q_size, k_size, table_len):
    rng = np.random.default_rng(4)
    table = rng.standard_normal((table_len, 5)).astype(np.float32)
    expected = ref_image_encoder.get_rel_pos(q_size, k_size, torch.from_numpy(table)).numpy()
    ours = np.asarray(get_rel_pos(q_size, k_size, jnp.asarray(table)))
    assert ours.shape == expected.shape == (q_size, k_size, 5)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=REL_POS_ATOL)


@pytest.mark.parametrize("hw", [(10, 13), (14, 7), (5, 5)])
def test_window_partition_round_trip(hw):
    window = 7 if hw == (14, 7) else 4
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    windows, padded_hw = window_partition(jnp.asarray(x), window)
    ref_windows, ref_padded_hw = ref_image_encoder.window_partition(torch.from_numpy(x), window)
    assert tuple(padded_hw) == tuple(ref_padded_hw)
    assert padded_hw[0] % window == 0 and padded_hw[1] % window == 0
    np.testing.assert_array_equal(np.asarray(windows), ref_windows.numpy())
    back = window_unpartition(windows, window, padded_hw, hw)
    np.testing.assert_array_equal(np.asarray(back), x)


# ----------------------------------------------------------------------- padded point tokens
def run_decode(m, emb, coords, labels, boxes, multimask, valid):
    return m.decode(emb, coords, labels, boxes, None, multimask, valid)


@pytest.mark.parametrize("with_box", [False, True])
@pytest.mark.parametrize("multimask", [True, False])
def test_padded_point_tokens_are_ignored(tiny_model, with_box, multimask):
    """Prompts padded to a bucket with point_valid=False decode exactly as unpadded ones
    (the predictor relies on this to reuse compiled shapes)."""
    rng = np.random.default_rng(6)
    batch, num_points, padded_to = 2, 3, 8
    emb = jnp.asarray(rng.standard_normal((1, EMBED_HW, EMBED_HW, 64)).astype(np.float32))
    coords, labels, boxes, _ = _prompts(rng, batch, num_points)
    box_arg = jnp.asarray(boxes) if with_box else None

    plain = apply(
        tiny_model,
        run_decode,
        emb,
        jnp.asarray(coords),
        jnp.asarray(labels),
        box_arg,
        multimask,
        None,
    )
    # Padding entries hold arbitrary coordinates and every label value: none may matter.
    pad_coords = np.concatenate(
        [coords, rng.uniform(0, IMAGE_SIZE, (batch, padded_to - num_points, 2))], axis=1
    ).astype(np.float32)
    pad_labels = np.concatenate(
        [labels, rng.integers(-1, 2, (batch, padded_to - num_points)).astype(np.int32)], axis=1
    )
    valid = np.arange(padded_to)[None, :].repeat(batch, 0) < num_points
    padded = apply(
        tiny_model,
        run_decode,
        emb,
        jnp.asarray(pad_coords),
        jnp.asarray(pad_labels),
        box_arg,
        multimask,
        jnp.asarray(valid),
    )
    for name, a, b in zip(("logits", "iou"), plain, padded, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(
            np.asarray(b), np.asarray(a), rtol=0, atol=PADDING_ATOL, err_msg=name
        )

    # Control: the same padding marked valid does change the result.
    unmasked = apply(
        tiny_model,
        run_decode,
        emb,
        jnp.asarray(pad_coords),
        jnp.asarray(pad_labels),
        box_arg,
        multimask,
        None,
    )
    assert float(np.abs(np.asarray(unmasked[0]) - np.asarray(plain[0])).max()) > 100 * PADDING_ATOL


def run_decode_all(m, emb, coords, labels, boxes, box_valid):
    return m.decode_all(emb, coords, labels, boxes, None, None, box_valid)


def test_box_valid_mixes_box_and_point_only_prompts(tiny_model):
    """Training batches mix prompts with and without a box: each row must decode as the
    reference treats it on its own (box tokens, or the appended "not a point" token)."""
    rng = np.random.default_rng(7)
    emb = jnp.asarray(rng.standard_normal((1, EMBED_HW, EMBED_HW, 64)).astype(np.float32))
    coords, labels, boxes, _ = _prompts(rng, 4, 2)
    has_box = np.array([True, False, False, True])
    mixed = apply(
        tiny_model,
        run_decode_all,
        emb,
        jnp.asarray(coords),
        jnp.asarray(labels),
        jnp.asarray(boxes),
        jnp.asarray(has_box),
    )
    with_box = apply(
        tiny_model,
        run_decode_all,
        emb,
        jnp.asarray(coords),
        jnp.asarray(labels),
        jnp.asarray(boxes),
        None,
    )
    without = apply(
        tiny_model, run_decode_all, emb, jnp.asarray(coords), jnp.asarray(labels), None, None
    )
    for out_mixed, out_box, out_none in zip(mixed, with_box, without, strict=True):
        expected = np.where(has_box.reshape(-1, *[1] * (out_box.ndim - 1)), out_box, out_none)
        np.testing.assert_allclose(np.asarray(out_mixed), expected, rtol=0, atol=PADDING_ATOL)
    # all mask tokens come back, the single-mask one first, as decode() slices them
    single = apply(
        tiny_model, run_decode, emb, jnp.asarray(coords), jnp.asarray(labels), None, False, None
    )
    np.testing.assert_allclose(np.asarray(without[0][:, :1]), np.asarray(single[0]), atol=1e-6)
