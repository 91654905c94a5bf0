"""CLIP parity with open_clip (random weights, same state dict): both towers with QuickGELU
and GELU, the tokenizer on a varied set of strings, the preprocessing, and the converter's
errors. The ViT-B-32 check is marked `fullsize`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data

from sam_jax.inference.clip_tokenizer import CLIPTokenizer, tokenize
from sam_jax.io.checkpoint import CheckpointError
from sam_jax.io.clip_checkpoint import (
    convert_clip_state_dict,
    infer_config,
    load_clip,
    load_clip_state_dict,
    to_clip_state_dict,
)
from sam_jax.modeling.clip import (
    CLIP,
    CLIP_CONFIGS,
    abstract_params,
    clip_config,
    normalize,
    preprocess_images,
)

# float32 on both sides; what is left is reassociation in the matmuls and LayerNorms.
EMBED_ATOL = 1e-5
EMBED_RTOL = 1e-4
# Twelve blocks at 768 channels accumulate more float32 error: relative to the output's std.
FULLSIZE_REL_TOL = 1e-4
# uint8 -> float after the same PIL resize: only the normalisation's rounding differs.
PREPROCESS_ATOL = 1e-6
SEED = 0

TEXTS = [
    "a photo of a dog",
    "",
    "Hello, World!!! 123 4567",
    "naïve café — “quoted” it’s",
    "ﬁne ＦＵＬＬ width　space",
    "日本語のテキスト",
    "emoji 🐶🐱 ok",
    "A&amp;B &lt;tag&gt; &amp;amp;",
    "<b>&amp;amp;</b>",
    "don't I'LL we've 's' !'s it's'sam",
    "x" * 300,
    " ".join(["word"] * 100),
    "tab\tnew\nline  \r\n  spaces ",
    "<start_of_text>hi<end_of_text>",
    "Ⅻ ½ ² 一二三 ٣ 3.14159",
    "e\u0301 combining",
    "ctrl\x07char\ufeff",
    "Straße İstanbul ΣΑΣ",
    "ŉ ǆ ｶﾀｶﾅ ‘single’ „low”",
    "a_b-c.d/e@f#g$h%i^j&k*l(m)n",
]


def reference_model(config, seed: int = SEED) -> torch.nn.Module:
    """An open_clip CLIP of our config's sizes, random weights from a fixed seed."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        config.embed_dim,
        dict(
            image_size=config.image_size,
            patch_size=config.patch_size,
            width=config.vision_width,
            layers=config.vision_layers,
            head_width=config.vision_width // config.vision_heads,
            mlp_ratio=config.mlp_ratio,
        ),
        dict(
            context_length=config.context_length,
            vocab_size=config.vocab_size,
            width=config.text_width,
            heads=config.text_heads,
            layers=config.text_layers,
        ),
        quick_gelu=config.quick_gelu,
    )
    # open_clip leaves LayerNorms at ones/zeros and biases at zero: randomise them too,
    # so that a swapped or transposed parameter cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def inputs(config, batch: int = 3, seed: int = SEED):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, config.image_size, config.image_size, 3), np.float32)
    tokens = np.zeros((batch, config.context_length), np.int64)
    for row, length in enumerate(rng.integers(2, config.context_length, batch)):
        tokens[row, 0] = config.vocab_size - 2
        tokens[row, 1 : length - 1] = rng.integers(1, config.vocab_size - 2, length - 2)
        tokens[row, length - 1] = config.vocab_size - 1  # end of text: the largest id
    return images, tokens


def run_both(config, model):
    _, params = convert_clip_state_dict(model.state_dict(), config)
    images, tokens = inputs(config)
    with torch.no_grad():
        ref_image = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        ref_text = model.encode_text(torch.from_numpy(tokens)).numpy()
    module = CLIP(config)
    ours_image = module.apply({"params": params}, jnp.asarray(images), method="encode_image")
    ours_text = module.apply({"params": params}, jnp.asarray(tokens), method="encode_text")
    return (np.asarray(ours_image), ref_image), (np.asarray(ours_text), ref_text)


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quick_gelu", "gelu"])
def test_towers_match_open_clip(quick_gelu):
    config = clip_config("tiny", quick_gelu=quick_gelu)
    (ours_image, ref_image), (ours_text, ref_text) = run_both(config, reference_model(config))
    assert ours_image.shape == ref_image.shape == (3, config.embed_dim)
    assert ours_text.shape == ref_text.shape == (3, config.embed_dim)
    np.testing.assert_allclose(ours_image, ref_image, atol=EMBED_ATOL, rtol=EMBED_RTOL)
    np.testing.assert_allclose(ours_text, ref_text, atol=EMBED_ATOL, rtol=EMBED_RTOL)


def test_activation_matters():
    """The two activations give different outputs, so the parametrised test checks both."""
    config = clip_config("tiny", quick_gelu=True)
    _, params = convert_clip_state_dict(reference_model(config).state_dict(), config)
    images, _ = inputs(config)
    outs = [
        CLIP(dataclasses.replace(config, quick_gelu=q)).apply(
            {"params": params}, images, method="encode_image"
        )
        for q in (True, False)
    ]
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3


def test_text_features_read_at_end_token_only():
    """Tokens after <end_of_text> (padding) cannot change the text embedding: causal mask."""
    config = CLIP_CONFIGS["tiny"]
    model = reference_model(config)
    _, params = convert_clip_state_dict(model.state_dict(), config)
    _, tokens = inputs(config)
    changed = tokens.copy()
    eot = tokens.argmax(-1)
    for row, pos in enumerate(eot):
        changed[row, pos + 1 :] = 7
    module = CLIP(config)
    a = module.apply({"params": params}, tokens, method="encode_text")
    b = module.apply({"params": params}, changed, method="encode_text")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_dict_round_trip_and_inferred_config():
    config = clip_config("tiny")
    state = reference_model(config).state_dict()
    _, params = convert_clip_state_dict(state, config)
    back = to_clip_state_dict(params)
    ignored = {"logit_scale"}
    assert set(back) == set(state) - ignored
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)
    # Head counts are not in the weights; with OpenAI's 64 channels per head they are.
    inferred = infer_config(state)
    assert dataclasses.replace(inferred, vision_heads=4, text_heads=4) == config
    assert infer_config(to_clip_state_dict(params), quick_gelu=False).quick_gelu is False


def test_normalize():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(normalize(x)), [[0.6, 0.8], [0.0, 0.0]])


def test_tokenizer_matches_open_clip():
    ours = tokenize(TEXTS)
    ref = open_clip.get_tokenizer("ViT-L-14-336")(TEXTS).numpy()
    assert ours.shape == ref.shape == (len(TEXTS), 77)
    assert ours.dtype == np.int32
    for text, a, b in zip(TEXTS, ours, ref):
        np.testing.assert_array_equal(a, b, err_msg=repr(text))
    np.testing.assert_array_equal(tokenize(TEXTS[0]), open_clip.tokenize(TEXTS[0]).numpy())


def test_tokenizer_truncates_keeping_end_token_and_decodes():
    tok = CLIPTokenizer()
    ids = tok(" ".join(["word"] * 100))[0]
    assert ids[0] == tok.sot_token_id and ids[-1] == tok.eot_token_id
    assert tok.vocab_size == 49408 == CLIP_CONFIGS["ViT-L-14-336"].vocab_size
    short = tok("a photo of a dog", context_length=4)
    np.testing.assert_array_equal(short[0], [tok.sot_token_id, 320, 1125, tok.eot_token_id])
    row = tok("A photo of a dog!")[0]
    assert tok.decode(row[1 : row.argmax()]).strip() == "a photo of a dog !"


def test_tokenizer_bad_merges_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="merges file"):
        CLIPTokenizer(tmp_path / "absent.txt.gz")
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="expected a version line"):
        CLIPTokenizer(bad)


def test_preprocess_matches_open_clip():
    size = 224
    transform = open_clip.image_transform(size, is_train=False)
    for img in (data.astronaut()[:300, :450], data.coffee(), data.astronaut()[:200, :120]):
        ours = preprocess_images(img, size)
        ref = transform(Image.fromarray(np.ascontiguousarray(img))).numpy().transpose(1, 2, 0)
        assert ours.shape == (1, size, size, 3)
        np.testing.assert_allclose(ours[0], ref, atol=PREPROCESS_ATOL)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(np.zeros((8, 8, 3), np.float32), size)


def test_input_shape_errors():
    config = CLIP_CONFIGS["tiny"]
    module = CLIP(config)
    with pytest.raises(ValueError, match="images must be"):
        jax.eval_shape(
            module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 77), int)
        )
    with pytest.raises(ValueError, match="token_ids must be"):
        jax.eval_shape(
            module.init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)), jnp.zeros((1, 10), int)
        )
    with pytest.raises(ValueError, match="unknown CLIP config"):
        clip_config("ViT-Z")


# Converter errors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state():
    return reference_model(CLIP_CONFIGS["tiny"]).state_dict()


def test_missing_key_named(tiny_state):
    state = dict(tiny_state)
    del state["visual.transformer.resblocks.1.attn.in_proj_bias"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): visual\.transformer"):
        convert_clip_state_dict(state, CLIP_CONFIGS["tiny"])


def test_unexpected_key_named(tiny_state):
    state = {**tiny_state, "visual.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): visual\.extra\.weight"):
        convert_clip_state_dict(state, CLIP_CONFIGS["tiny"])


def test_wrong_shape_named(tiny_state):
    state = {**tiny_state, "ln_final.weight": torch.zeros(5)}
    with pytest.raises(
        CheckpointError, match=r"ln_final\.weight: checkpoint \(5,\), model expects \(48,\)"
    ):
        convert_clip_state_dict(state, CLIP_CONFIGS["tiny"])
    state = {**tiny_state, "transformer.resblocks.0.mlp.c_fc.weight": torch.zeros(192, 40)}
    with pytest.raises(CheckpointError, match=r"c_fc\.weight: checkpoint \(192, 40\), model"):
        convert_clip_state_dict(state, CLIP_CONFIGS["tiny"])


def test_not_a_clip_state_dict(tiny_state):
    with pytest.raises(CheckpointError, match="not a CLIP state dict"):
        convert_clip_state_dict({"image_encoder.pos_embed": torch.zeros(1)})


def test_file_loading(tmp_path, tiny_state):
    from safetensors.torch import save_file

    config = CLIP_CONFIGS["tiny"]
    wrapped = tmp_path / "epoch_1.pt"
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, wrapped
    )
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, st)
    _, expected = convert_clip_state_dict(tiny_state, config)
    for path in (wrapped, st):
        _, params = load_clip(path, config)
        jax.tree.map(np.testing.assert_array_equal, params, expected)

    with pytest.raises(CheckpointError, match="not found"):
        load_clip_state_dict(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_clip_state_dict(junk)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_clip_state_dict(junk_st)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_dict)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_clip_state_dict(not_dict)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_clip_state_dict(path)


@pytest.mark.fullsize
def test_vit_b_32_matches_open_clip():
    config = CLIP_CONFIGS["ViT-B-32"]
    model = reference_model(config)
    assert infer_config(model.state_dict()) == config
    for ours, ref in run_both(config, model):
        err = float(np.abs(ours - ref).max())
        assert err <= FULLSIZE_REL_TOL * float(ref.std()), err


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_presets_match_open_clip_configs(name):
    """Our presets have open_clip's parameter shapes (built on the meta device: no memory)."""
    cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    state = model.state_dict()
    assert infer_config(state) == CLIP_CONFIGS[name]
    # Zero-stride arrays of the right shapes: the layout change without the memory.
    shapes = jax.tree.map(
        lambda a: np.broadcast_to(np.int8(0), a.shape), abstract_params(CLIP_CONFIGS[name])
    )
    ours = to_clip_state_dict(shapes)
    assert set(ours) == set(state) - {"logit_scale"}
    for key, value in ours.items():
        assert tuple(value.shape) == tuple(state[key].shape), key
