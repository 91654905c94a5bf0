"""Helpers for comparing against the PyTorch reference (`segment-anything==1.0`).

Test-only: it lives beside the tests, outside the installed package, and needs the
test-only dependencies (requirements-dev.txt); torch is imported lazily. The benchmarks
import it from here too.
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from sam_jax.inference.build import SamModel
from sam_jax.io.checkpoint import convert_state_dict
from sam_jax.modeling.configs import build_sam, model_config


def build_reference(
    config: ml_collections.ConfigDict | str,
    seed: int = 0,
    perturb: bool = True,
    output_scale: float = 1.0,
):
    """A randomly initialised reference `Sam` (eval mode) with the shape of `config`.

    perturb: give the zero-initialised tables (rel_pos_*, pos_embed) random values so
    parity tests exercise them. output_scale: multiply the last layers of the mask
    hypernetworks and the IoU head, to spread logits and IoU predictions (as trained
    weights do) so thresholds in downstream code matter.
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    c = model_config(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    e = c.image_size // c.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c.encoder_depth,
            embed_dim=c.encoder_embed_dim,
            img_size=c.image_size,
            mlp_ratio=c.mlp_ratio,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c.encoder_num_heads,
            patch_size=c.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(c.encoder_global_attn_indexes),
            window_size=c.window_size,
            out_chans=c.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(e, e),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=c.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=c.decoder_depth,
                embedding_dim=c.prompt_embed_dim,
                mlp_dim=c.decoder_mlp_dim,
                num_heads=c.decoder_num_heads,
            ),
            transformer_dim=c.prompt_embed_dim,
            iou_head_depth=c.iou_head_depth,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
        ),
        pixel_mean=list(c.pixel_mean),
        pixel_std=list(c.pixel_std),
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if perturb and ("rel_pos" in name or name.endswith("pos_embed")):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            last_hyper = "output_hypernetworks_mlps" in name and f"layers.{2}." in name
            last_iou = f"iou_prediction_head.layers.{c.iou_head_depth - 1}." in name
            if output_scale != 1.0 and (last_hyper or last_iou):
                p.mul_(output_scale)
    return sam.eval()


def reference_state_dict(sam) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in sam.state_dict().items()}


def model_from_reference(sam, config: ml_collections.ConfigDict | str, **overrides) -> SamModel:
    """Our model bundle holding the reference's weights."""
    c = model_config(config) if isinstance(config, str) else ml_collections.ConfigDict(config)
    params = convert_state_dict(sam.state_dict(), c)
    c.update(overrides)
    return SamModel(build_sam(c), params, c)


def localize_masks(sam, seed: int = 0, sharpness: float = 4.0, strength: float = 5.0):
    """Make a random-init reference `Sam` paint compact masks around each point prompt
    (in place; returns `sam`).

    Random decoders give salt-and-pepper masks spread over the whole image: every mask box
    is the image, box NMS keeps one mask and crop-edge filtering drops all crop masks, so
    automatic mask generation has nothing to decide. Here the decoder's image->token
    attention compares image and point positions (shared query/key projections,
    `sharpness` times larger), its output weighs `strength` times more, and the upscaling
    has no sub-pixel texture, so pixels near the point differ from the rest.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        decoder = sam.mask_decoder
        for layer in decoder.transformer.layers:
            attn = layer.cross_attn_image_to_token
            shape = attn.q_proj.weight.shape
            w = torch.randn(shape, generator=gen) * sharpness / shape[1] ** 0.5
            attn.q_proj.weight.copy_(w)
            attn.k_proj.weight.copy_(w)
            attn.q_proj.bias.zero_()
            attn.k_proj.bias.zero_()
            attn.out_proj.weight.mul_(strength)
        for i in (0, 3):  # ConvTranspose2d weights (in, out, kh, kw)
            w = decoder.output_upscaling[i].weight
            w.copy_(w.mean((2, 3), keepdim=True).expand_as(w))
    return sam
