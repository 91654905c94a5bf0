"""The mask decoder for many prompts without a mask input on one image, as the automatic
mask generator (single points) and `SamPredictor` (clicks, boxes, text) run it.

It is the model's mask decoder (`image_terms` once per image, then `decode_sparse` per
batch of prompts; `decode_prompts` / `decode_points` for one foreground point each): the
same parameters and the same function as `Sam.decode` (tests hold the two together), but
arranged so the image-side terms shared by all prompts are computed once and the
per-prompt attention over image tokens is contracted on the (few) token side: about half
the multiply-adds of the general decoder. It always computes in float32, whatever the
model's dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.common import gelu
from sam_jax.modeling.sam import Sam


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _layer_norm(x, p, eps):
    return nn.LayerNorm(epsilon=eps).apply({"params": p}, x)


def _mlp(p, x):
    n = len(p)
    for i in range(n):
        x = _dense(x, p[f"layers_{i}"])
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def _split_heads(x, heads):
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def _token_self_attention(p, q, k, v, heads, token_mask=None):
    """Attention among the prompt tokens (B, T, C); token_mask (B, T) False: a padding
    token, which no token attends to."""
    qh = _split_heads(_dense(q, p["q_proj"]), heads)
    kh = _split_heads(_dense(k, p["k_proj"]), heads)
    vh = _split_heads(_dense(v, p["v_proj"]), heads)
    s = jnp.einsum("bqhd,bkhd->bhqk", qh * (1 / np.sqrt(qh.shape[-1])), kh)
    if token_mask is not None:
        s = jnp.where(token_mask[:, None, None, :], s, -jnp.inf)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vh)
    return _dense(o.reshape(*o.shape[:2], -1), p["out_proj"])


def _tokens_to_shared_image(p, q, kh, vh, heads):
    """Tokens (B, T, C) attend to image tokens that are the same for every prompt, whose
    key and value projections kh, vh (N, H, d) are computed once per image."""
    qh = _split_heads(_dense(q, p["q_proj"]), heads)
    s = jnp.einsum("bthd,nhd->bhtn", qh * (1 / np.sqrt(qh.shape[-1])), kh)
    o = jnp.einsum("bhtn,nhd->bthd", jax.nn.softmax(s, -1), vh)
    return _dense(o.reshape(*o.shape[:2], -1), p["out_proj"])


def _tokens_to_image(p, q, keys_k, keys_v, heads):
    """Tokens (B, T, C) attend to per-prompt image tokens (B, N, C).

    q.(x Wk + bk) = x.(Wk q) + q.bk, and softmax-weighted sums commute with the value
    projection (the weights sum to one), so both projections move to the token side. Per
    image token that costs 2 * T * heads * C multiply-adds (T = 7 tokens) instead of the
    C * C of projecting the image tokens for every prompt.
    """
    qh = _split_heads(_dense(q, p["q_proj"]), heads)
    qh = qh * (1 / np.sqrt(qh.shape[-1]))
    qw = jnp.einsum("bthd,chd->bhtc", qh, _split_heads(p["k_proj"]["kernel"], heads))
    qb = jnp.einsum("bthd,hd->bht", qh, _split_heads(p["k_proj"]["bias"], heads))
    s = jnp.einsum("bnc,bhtc->bhtn", keys_k, qw) + qb[..., None]
    weighted = jnp.einsum("bhtn,bnc->bhtc", jax.nn.softmax(s, -1), keys_v)
    o = jnp.einsum("bhtc,chd->bthd", weighted, _split_heads(p["v_proj"]["kernel"], heads))
    o = o + _split_heads(p["v_proj"]["bias"], heads)
    return _dense(o.reshape(*o.shape[:2], -1), p["out_proj"])


def _image_to_tokens(p, image_q, token_k, token_v, heads, shared_qh=None, token_mask=None):
    """Image tokens attend to the prompt tokens (B, T, C) -> (B, N, C).

    With `shared_qh` (N, H, d), the image queries are the same for all prompts and already
    projected; otherwise image_q is (B, N, C) and, as in `_tokens_to_image`, the query
    projection moves to the token side. The output projection is applied to the T values
    before the attention weights, so no (B, N, C) x (C, C) product is needed. token_mask
    (B, T): padding tokens get no weight.
    """
    kh = _split_heads(_dense(token_k, p["k_proj"]), heads)  # (B, T, H, d)
    vh = _split_heads(_dense(token_v, p["v_proj"]), heads)
    d = kh.shape[-1]
    kh = kh * (1 / np.sqrt(d))
    if shared_qh is not None:
        s = jnp.einsum("nhd,bthd->bhnt", shared_qh, kh)
    else:
        kw = jnp.einsum("bthd,chd->bhtc", kh, _split_heads(p["q_proj"]["kernel"], heads))
        kb = jnp.einsum("bthd,hd->bht", kh, _split_heads(p["q_proj"]["bias"], heads))
        s = jnp.einsum("bnc,bhtc->bhnt", image_q, kw) + kb[:, :, None, :]
    if token_mask is not None:
        s = jnp.where(token_mask[:, None, None, :], s, -jnp.inf)
    w_out = p["out_proj"]["kernel"].reshape(heads, d, -1)
    values = jnp.einsum("bthd,hdc->bhtc", vh, w_out)
    return jnp.einsum("bhnt,bhtc->bnc", jax.nn.softmax(s, -1), values) + p["out_proj"]["bias"]


def image_terms(module: Sam, params, features) -> dict:
    """What the decoder computes from the image alone, once for all prompts: the image
    tokens (N, C), their positional encoding, and the first layer's projections of them
    (the image tokens only start to differ between prompts after that layer)."""
    _, h, w, c = features.shape
    pe, dense = module.apply(
        {"params": params},
        method=lambda m: (
            m.prompt_encoder.get_dense_pe(),
            m.prompt_encoder(None, None, None)[2],
        ),
    )
    src = (features[0] + dense[0]).astype(jnp.float32).reshape(h * w, c)
    pe = pe[0].reshape(h * w, c)
    first = params["mask_decoder"]["transformer"]["layers_0"]
    heads = module.decoder_num_heads
    t2i, i2t = first["cross_attn_token_to_image"], first["cross_attn_image_to_token"]
    return {
        "src": src,
        "pe": pe,
        "t2i_k": _split_heads(_dense(src + pe, t2i["k_proj"]), heads),
        "t2i_v": _split_heads(_dense(src, t2i["v_proj"]), heads),
        "i2t_q": _split_heads(_dense(src + pe, i2t["q_proj"]), heads),
    }


def decode_prompts(module: Sam, params, image: dict, point_coords):
    """One foreground point per prompt -> (low-res logits (B, 3, 4h, 4w), iou (B, 3)).
    `image` is `image_terms` of the image."""
    labels = jnp.ones(point_coords.shape[:1] + (1,), jnp.int32)
    return decode_prompt_arrays(module, params, image, point_coords[:, None, :], labels, None, None)


def decode_prompt_arrays(
    module: Sam,
    params,
    image: dict,
    coords,
    labels,
    point_valid,
    boxes,
    box_valid=None,
    text=None,
    multimask_output: bool = True,
):
    """Prompt arrays in the model's input frame (points (B, N, 2) with labels and validity,
    or None; boxes (B, 4) or None, box_valid (B,); text embeddings (B, D) or None), no mask
    input -> `decode_sparse`'s (low-res logits, iou): the prompt encoder, then the decoder
    with `image`'s shared terms. Without point_valid and box_valid every token is a real
    one, and the decoder runs without a token mask."""
    points = None if coords is None else (coords, labels)
    sparse, sparse_valid, _ = module.apply(
        {"params": params},
        method=lambda m: m.prompt_encoder(
            points, boxes, None, point_valid=point_valid, box_valid=box_valid, text=text
        ),
    )
    if point_valid is None and box_valid is None:
        sparse_valid = None
    return decode_sparse(module, params, image, sparse, sparse_valid, multimask_output)


def decode_sparse(
    module: Sam,
    params,
    image: dict,
    sparse,
    sparse_valid=None,
    multimask_output: bool = True,
):
    """Any prompt without a mask input -> (low-res logits (B, M, 4h, 4w), iou (B, M)), as
    `Sam.decode` gives them (M = 3 with multimask_output, else 1).

    sparse (B, T, C): the prompt encoder's sparse embeddings (points, box corners, text);
    sparse_valid (B, T) marks padding tokens (None: none is padding). `image` is
    `image_terms` of the image: without a mask input the dense prompt is the same for every
    prompt, so the first layer's image-side projections are shared.
    """
    b = sparse.shape[0]
    h = w = module.image_embedding_size
    src, pe = image["src"], image["pe"]
    md = params["mask_decoder"]
    tp = md["transformer"]
    heads = module.decoder_num_heads
    out_tokens = jnp.concatenate([md["iou_token"]["embedding"], md["mask_tokens"]["embedding"]])
    tokens = jnp.concatenate(
        [jnp.broadcast_to(out_tokens, (b, *out_tokens.shape)), sparse.astype(jnp.float32)], 1
    )
    token_mask = None
    if sparse_valid is not None:
        token_mask = jnp.concatenate(
            [jnp.ones((b, out_tokens.shape[0]), bool), sparse_valid.astype(bool)], 1
        )
    queries, query_pe, keys = tokens, tokens, src
    for i in range(module.decoder_depth):
        lp = tp[f"layers_{i}"]
        first = i == 0  # the image tokens are still shared by all prompts
        if first:  # the reference skips the positional encoding and residual here
            queries = _token_self_attention(
                lp["self_attn"], queries, queries, queries, heads, token_mask
            )
        else:
            q = queries + query_pe
            queries = queries + _token_self_attention(
                lp["self_attn"], q, q, queries, heads, token_mask
            )
        queries = _layer_norm(queries, lp["norm1"], 1e-5)
        q = queries + query_pe
        t2i, i2t = lp["cross_attn_token_to_image"], lp["cross_attn_image_to_token"]
        if first:
            out = _tokens_to_shared_image(t2i, q, image["t2i_k"], image["t2i_v"], heads)
        else:
            out = _tokens_to_image(t2i, q, keys + pe, keys, heads)
        queries = _layer_norm(queries + out, lp["norm2"], 1e-5)
        mlp = _dense(jax.nn.relu(_dense(queries, lp["mlp"]["lin1"])), lp["mlp"]["lin2"])
        queries = _layer_norm(queries + mlp, lp["norm3"], 1e-5)
        q = queries + query_pe
        if first:
            out = _image_to_tokens(
                i2t, None, q, queries, heads, shared_qh=image["i2t_q"], token_mask=token_mask
            )
        else:
            out = _image_to_tokens(i2t, keys + pe, q, queries, heads, token_mask=token_mask)
        keys = _layer_norm(keys + out, lp["norm4"], 1e-5)
    out = _tokens_to_image(
        tp["final_attn_token_to_image"], queries + query_pe, keys + pe, keys, heads
    )
    queries = _layer_norm(queries + out, tp["norm_final_attn"], 1e-5)

    # Both transposed convolutions have kernel 2 and stride 2, i.e. per-pixel matmuls. The
    # 2x2 sub-pixel axes stay separate until the masks are small (3 channels, not 32).
    c = keys.shape[-1]
    up0, up3 = md["output_upscaling_0"], md["output_upscaling_3"]
    y = keys @ jnp.transpose(up0["kernel"], (2, 0, 1, 3)).reshape(c, -1)
    y = y.reshape(b, h * w * 4, -1) + up0["bias"]
    y = gelu(_layer_norm(y, md["output_upscaling_1"], 1e-6))
    c1 = y.shape[-1]
    y = y @ jnp.transpose(up3["kernel"], (2, 0, 1, 3)).reshape(c1, -1)
    y = gelu(y.reshape(b, h * w * 16, -1) + up3["bias"])
    n_multi = module.num_multimask_outputs
    outputs = range(1, n_multi + 1) if multimask_output else range(1)
    hyper = jnp.stack(
        [_mlp(md[f"output_hypernetworks_mlps_{j}"], queries[:, 1 + j]) for j in outputs],
        axis=1,
    )
    masks = jnp.einsum("bpc,bmc->bmp", y, hyper)
    # pixel (y, x) = (4 r + 2 i + k, 4 s + 2 j + l) for p = (r, s, i, j, k, l)
    m = len(outputs)
    masks = masks.reshape(b, m, h, w, 2, 2, 2, 2).transpose(0, 1, 2, 4, 6, 3, 5, 7)
    masks = masks.reshape(b, m, 4 * h, 4 * w)
    iou = _mlp(md["iou_prediction_head"], queries[:, 0])[:, outputs.start : outputs.stop]
    return masks, iou


def decode_points(module: Sam, params, features, point_coords):
    """Multimask outputs for B one-point prompts on one image, as `Sam.decode` gives them.

    features (1, h, w, C) image embedding; point_coords (B, 2) (x, y) foreground points in
    the model's input frame. Returns (low-res logits (B, 3, 4h, 4w), iou (B, 3)).
    """
    return decode_prompts(module, params, image_terms(module, params, features), point_coords)


# ------------------------------------------------------------------------ batch on device
