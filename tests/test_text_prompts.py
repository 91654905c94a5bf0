"""Text prompts: the prompt encoder's text token, the training switch (per-mask embeddings
from the data pipeline, text as the first prompt), the predictor and CLI, and checkpoints
that carry (or lack) the text projection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import tiny  # noqa: E402
from sam_jax.data import mask_embeddings as me  # noqa: E402
from sam_jax.data import synthetic  # noqa: E402
from sam_jax.inference.build import SamModel, load_sam  # noqa: E402
from sam_jax.inference.predictor import SamPredictor  # noqa: E402
from sam_jax.io import checkpoint as ckpt  # noqa: E402
from sam_jax.modeling.configs import build_sam, model_config  # noqa: E402
from sam_jax.training import prompts  # noqa: E402

DIM = 16


def text_model_config(dim: int = DIM):
    c = model_config("tiny")
    c.text_embed_dim = dim
    return c


@pytest.fixture(scope="module")
def text_model() -> SamModel:
    config = text_model_config()
    return SamModel(build_sam(config), ckpt.init_params(config, 0), config)


def _decode(model, text=None, text_valid=None, points=None, multimask=True):
    emb = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 64)), jnp.float32)
    coords = labels = None
    if points is not None:
        coords, labels = points
    return model.module.apply(
        {"params": model.params},
        emb,
        coords,
        labels,
        None,
        None,
        multimask,
        text_embeddings=text,
        text_valid=text_valid,
        method=model.module.decode,
    )


# ------------------------------------------------------------------ prompt encoder / model
def test_released_models_have_no_text_parameters():
    params = ckpt.abstract_params(model_config("tiny"))
    assert "text_projection" not in params["prompt_encoder"]
    params = ckpt.abstract_params(text_model_config(32))
    assert params["prompt_encoder"]["text_projection"]["kernel"].shape == (32, 64)


def test_text_token_changes_masks_and_invalid_text_is_no_text(text_model):
    rng = np.random.default_rng(1)
    text = jnp.asarray(rng.normal(size=(2, DIM)), jnp.float32)
    points = (jnp.array([[[30.0, 40.0]], [[90.0, 20.0]]]), jnp.ones((2, 1), jnp.int32))
    with_text = _decode(text_model, text, points=points)
    without = _decode(text_model, points=points)
    masked = _decode(text_model, text, jnp.zeros((2,), bool), points=points)
    assert float(jnp.abs(with_text[0] - without[0]).max()) > 1e-3
    # A text token marked invalid takes no part in attention: same as no text at all.
    np.testing.assert_allclose(masked[0], without[0], atol=1e-5)
    np.testing.assert_allclose(masked[1], without[1], atol=1e-6)
    # Embeddings are normalised inside: the scale of a CLIP output does not matter.
    scaled = _decode(text_model, 7.0 * text, points=points)
    np.testing.assert_allclose(scaled[0], with_text[0], atol=1e-4)
    # Text alone is a prompt too; rows differ with their embeddings.
    alone = _decode(text_model, text)
    assert alone[0].shape == (2, 3, 64, 64)
    assert float(jnp.abs(alone[0][0] - alone[0][1]).max()) > 1e-3


def test_text_embedding_size_is_checked(text_model):
    with pytest.raises(ValueError, match="text embedding has 5 features, the model takes 16"):
        _decode(text_model, jnp.ones((2, 5)))
    plain = model_config("tiny")
    model = SamModel(build_sam(plain), ckpt.init_params(plain, 0), plain)
    emb = jnp.zeros((1, 16, 16, 64))
    with pytest.raises(ValueError, match="no text prompt"):
        model.module.apply(
            {"params": model.params},
            emb,
            text_embeddings=jnp.ones((1, 8)),
            method=model.module.decode,
        )


# ------------------------------------------------------------------ checkpoints
def test_pth_with_text_projection_loads_with_its_size(tmp_path, text_model):
    import torch

    state = {
        k: torch.from_numpy(np.array(v)) for k, v in ckpt.to_state_dict(text_model.params).items()
    }
    assert ckpt.TEXT_PROJECTION_KEY in state
    torch.save(state, tmp_path / "text.pth")
    model = load_sam("tiny", tmp_path / "text.pth")
    assert model.config.text_embed_dim == DIM


def test_init_from_released_checkpoint_keeps_a_fresh_text_projection(tmp_path):
    import torch

    from sam_jax.training.checkpoints import initial_params

    plain = text_model_config(0)
    released = ckpt.init_params(plain, 5)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ckpt.to_state_dict(released).items()}
    torch.save(state, tmp_path / "released.pth")
    config = tiny.get_config()
    config.model = text_model_config(DIM)
    config.init_from = str(tmp_path / "released.pth")
    params = initial_params(config)
    fresh = ckpt.init_params(config.model, config.seed)
    np.testing.assert_array_equal(
        params["prompt_encoder"]["text_projection"]["kernel"],
        fresh["prompt_encoder"]["text_projection"]["kernel"],
    )
    np.testing.assert_array_equal(
        params["mask_decoder"]["iou_token"]["embedding"],
        released["mask_decoder"]["iou_token"]["embedding"],
    )
    # The other way round is refused: text weights would be dropped silently.
    text_params = ckpt.init_params(config.model, 1)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ckpt.to_state_dict(text_params).items()}
    torch.save(state, tmp_path / "text.pth")
    config.model = text_model_config(0)
    config.init_from = str(tmp_path / "text.pth")
    with pytest.raises(ckpt.CheckpointError, match="set model.text_embed_dim"):
        initial_params(config)


# ------------------------------------------------------------------ training prompts
def test_first_prompt_with_text():
    mask = jnp.zeros((16, 16), bool).at[4:9, 3:12].set(True)
    text = jnp.arange(DIM, dtype=jnp.float32)
    keys = jax.random.split(jax.random.key(0), 200)

    def first(ok, prob):
        fn = jax.vmap(
            lambda k: prompts.first_prompt(
                k, mask, 3, box_prob=0.5, text=text, text_ok=ok, text_prob=prob
            )
        )
        return fn(keys)

    state, found = first(True, 1.0)
    assert bool(found.all()) and bool(state.has_text.all())
    assert not bool(state.has_box.any()) and not bool(state.point_valid.any())
    np.testing.assert_array_equal(state.text[0], text)
    state, _ = first(False, 1.0)  # a mask without an embedding: a point or a box as usual
    assert not bool(state.has_text.any())
    assert bool((state.has_box ^ state.point_valid[:, 0]).all())
    state, _ = first(True, 0.5)
    share = float(state.has_text.mean())
    assert 0.35 < share < 0.65
    # Without text the state has 0-wide text fields and the draws are unchanged.
    plain, _ = jax.vmap(lambda k: prompts.first_prompt(k, mask, 3))(keys)
    with_text_off, _ = first(True, 0.0)
    assert plain.text.shape == (200, 0)
    np.testing.assert_array_equal(plain.point_coords, with_text_off.point_coords)
    np.testing.assert_array_equal(plain.has_box, with_text_off.has_box)


def _text_train_config():
    c = tiny.get_config()
    c.model = text_model_config(DIM)
    c.batch_size = 2
    c.model.image_size = 128  # 8 x 8 tokens: quick
    c.train.masks_per_image = 2
    c.train.num_iterations, c.train.num_point_rounds = 3, 1
    c.text.source = "categories"
    c.text.prob = 1.0
    return c


def _text_batch(config):
    s, k = config.model.image_size, config.train.masks_per_image
    low = 4 * (s // config.model.patch_size)
    masks = np.zeros((2, k, low, low), np.uint8)
    masks[:, 0, 5:15, 6:20] = 1
    masks[:, 1, 20:30, 3:10] = 1
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 255, (2, s, s, 3), dtype=np.uint8),
        "input_size": np.full((2, 2), s, np.int32),
        "masks": masks,
        "mask_valid": np.ones((2, k), bool),
        "text_embedding": rng.normal(size=(2, k, DIM)).astype(np.float32),
        "text_valid": np.array([[True, False], [True, True]]),
    }


def test_train_step_with_text_prompts_trains_the_projection():
    from sam_jax.training.step import compute_loss, loss_and_grads

    config = _text_train_config()
    module = build_sam(config.model)
    params = ckpt.init_params(config.model, 0)
    batch = _text_batch(config)
    key = jax.random.key(3)
    (loss, metrics), grads = jax.jit(lambda p: loss_and_grads(p, module, batch, key, config))(
        params
    )
    whole = jax.jit(
        jax.value_and_grad(lambda p: compute_loss(p, module, batch, key, config), has_aux=True)
    )
    (loss_w, _), grads_w = whole(params)
    np.testing.assert_allclose(loss, loss_w, rtol=1e-6)
    g = grads["prompt_encoder"]["text_projection"]["kernel"]
    assert float(jnp.abs(g).max()) > 0
    np.testing.assert_allclose(
        g, grads_w["prompt_encoder"]["text_projection"]["kernel"], rtol=1e-5, atol=1e-7
    )
    # No mask uses its text: the projection gets no gradient.
    batch["text_valid"][:] = False
    (_, _), grads = jax.jit(lambda p: loss_and_grads(p, module, batch, key, config))(params)
    assert float(jnp.abs(grads["prompt_encoder"]["text_projection"]["kernel"]).max()) == 0


def test_text_source_needs_a_text_model():
    from sam_jax.training.state import Trainer

    config = _text_train_config()
    config.model.text_embed_dim = 0
    with pytest.raises(ValueError, match="needs model.text_embed_dim > 0"):
        Trainer(config)


# ------------------------------------------------------------------ per-mask embeddings
def test_category_embedder_through_prepare_example(tmp_path):
    from sam_jax.data.decode import ExampleSpec, prepare_example
    from sam_jax.data.sources import SA1BDirectorySource

    synthetic.write_sa1b(tmp_path, 3, images_per_shard=None, classes=True, max_objects=4)
    table = synthetic.class_embeddings(DIM)
    embedder = me.CategoryEmbedder(table, noise=0.3)
    source = SA1BDirectorySource(tmp_path)
    spec = ExampleSpec(image_size=128, low_res_size=32, max_masks=6)
    for i in range(len(source)):
        desc = source[i]
        rec = prepare_example(desc, np.random.default_rng(i), spec, embedder)
        ann = json.loads(Path(desc["annotation"][1]).read_text())["annotations"]
        n = int(rec["mask_valid"].sum())
        assert rec["text_embedding"].shape == (6, DIM)
        assert rec["text_valid"].sum() == n and not rec["text_valid"][len(ann) :].any()
        # Each valid row is its mask's class vector plus fixed noise: nearest to its class,
        # and the same vector whenever the mask is drawn again.
        again = prepare_example(desc, np.random.default_rng(i + 10), spec, embedder)
        for row in np.nonzero(rec["text_valid"])[0]:
            emb = rec["text_embedding"][row]
            sims = {name: float(emb @ v) for name, v in table.items()}
            assert abs(np.linalg.norm(emb) - 1) < 1e-5
            nearest = max(sims, key=sims.get)
            match = [j for j in range(6) if np.allclose(again["text_embedding"][j], emb)]
            assert match or not again["text_valid"].any()
            assert nearest in {a["category"] for a in ann}


def test_category_embedder_skips_unknown_and_small_masks():
    table = {"cat": np.ones(4), "dog": -np.ones(4)}
    embedder = me.CategoryEmbedder(table, min_area=10)
    records = [{"category": "cat"}, {"category": "bird"}, {}, {"category": "dog"}]
    emb, ok = embedder("k", None, None, records, np.array([0, 1, 2, 3]), np.array([50, 50, 50, 5]))
    assert ok.tolist() == [True, False, False, False]
    np.testing.assert_allclose(emb[0], np.full(4, 0.5))
    with pytest.raises(ValueError, match="empty"):
        me.CategoryEmbedder({})
    with pytest.raises(ValueError, match=r"\(D,\) vectors"):
        me.CategoryEmbedder({"a": np.ones(3), "b": np.ones(4)})


def test_crop_geometry():
    box = me.expanded_square_box([10, 20, 30, 10], 2.0, (100, 100))
    assert box == (-5, -5, 55, 55)  # centre (25, 25), side 2 x 30
    image = np.full((40, 50, 3), 200, np.uint8)
    crop = me.crop_square(image, (-5, -5, 15, 15))
    assert crop.shape == (20, 20, 3)
    assert (crop[:5] == me.CLIP_MEAN_RGB).all() and (crop[5:, 5:] == 200).all()
    with pytest.raises(ValueError, match="expand"):
        me.ClipCropEmbedder(_CountingClip(), expand=0.5)


class _CountingClip:
    """Stands in for ClipEncoder: the embedding of a crop is its mean colour (3-d)."""

    dim = 3

    def __init__(self):
        self.calls = 0

    def encode_images(self, crops):
        self.calls += 1
        return np.stack([c.reshape(-1, 3).mean(0) for c in crops]).astype(np.float32)


def test_clip_crop_embedder_caches_per_image(tmp_path):
    from pycocotools import mask as mask_utils

    image = np.zeros((60, 80, 3), np.uint8)
    image[10:40, 10:40] = (255, 0, 0)
    image[45:50, 60:70] = (0, 0, 255)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 10:40, 10:40] = 1
    masks[1, 45:50, 60:70] = 1
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    areas = np.array([900, 50])
    clip = _CountingClip()
    embedder = me.ClipCropEmbedder(clip, min_area=100, expand=1.0, cache_dir=tmp_path)
    emb, ok = embedder("img/1", image, rles, [{}, {}], np.array([1, 0]), areas)
    assert ok.tolist() == [False, True]  # the 50 px mask is under min_area
    np.testing.assert_allclose(emb[1], [255, 0, 0], atol=1e-4)  # the crop is the red square
    assert clip.calls == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    emb2, ok2 = embedder("img/1", image, rles, [{}, {}], np.array([0]), areas)
    assert clip.calls == 1  # read from the cache
    np.testing.assert_array_equal(emb2[0], emb[1])
    # A torn cache file is recomputed, not trusted.
    next(tmp_path.glob("*.npz")).write_bytes(b"garbage")
    embedder("img/1", image, rles, [{}, {}], np.array([0]), areas)
    assert clip.calls == 2


def test_synthetic_coco_with_class_names(tmp_path):
    from sam_jax.data.decode import ExampleSpec, prepare_example
    from sam_jax.data.sources import CocoSource

    n_images, n_anns = synthetic.write_coco(
        tmp_path / "ann.json", tmp_path / "img", 3, seed=4, classes=True
    )
    assert n_images == 3 and n_anns >= 6
    source = CocoSource(tmp_path / "ann.json", tmp_path / "img")
    # The source names each annotation's category from the COCO category list.
    names = [ann["category"] for ann in source[0]["annotation"][3]]
    assert names == synthetic.make_class_example(1, 4, max_objects=8)[2]
    embedder = me.CategoryEmbedder(synthetic.class_embeddings(DIM))
    rec = prepare_example(source[0], np.random.default_rng(0), ExampleSpec(128, 32, 4), embedder)
    assert rec["text_valid"].sum() == rec["mask_valid"].sum() > 0
    plain = synthetic.write_coco(tmp_path / "plain.json", tmp_path / "img2", 2)
    data = json.loads((tmp_path / "plain.json").read_text())
    assert plain == (2, len(data["annotations"]))
    assert data["categories"] == [{"id": 1, "name": "shape"}]


# ------------------------------------------------------------------ predictor and CLI
@pytest.fixture(scope="module")
def tiny_clip():
    from sam_jax.inference.text import ClipEncoder
    from sam_jax.modeling import clip as clip_lib

    config = clip_lib.clip_config("tiny")
    return ClipEncoder(config, clip_lib.init_params(config, 0), chunk=4)


def test_predictor_text_embedding_matches_the_module(text_model):
    image = synthetic.make_class_example(0)[0]
    predictor = SamPredictor(text_model)
    predictor.set_image(image)
    text = np.random.default_rng(2).normal(size=(3, DIM)).astype(np.float32)
    masks, iou, low = predictor.predict_batch(text_embeddings=text)
    assert masks.shape == (3, 3, 256, 320)
    ref_low, ref_iou = text_model.module.apply(
        {"params": text_model.params},
        predictor.features.repeat(3, 0),
        text_embeddings=jnp.asarray(text),
        method=text_model.module.decode,
    )
    np.testing.assert_allclose(low, ref_low, atol=1e-4)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-5)
    one = predictor.predict(
        np.array([[50.0, 60.0]]), np.array([1]), text_embedding=text[1], multimask_output=False
    )
    assert one[0].shape == (1, 256, 320)


def test_predictor_text_errors(text_model):
    predictor = SamPredictor(text_model)
    predictor.set_image(synthetic.make_class_example(0)[0])
    with pytest.raises(ValueError, match="need a CLIP text encoder"):
        predictor.predict(text="red disk")
    with pytest.raises(ValueError, match="8-d; this model takes 16-d"):
        predictor.predict(text_embedding=np.ones(8))
    with pytest.raises(ValueError, match="2 text prompt"):
        predictor.predict_batch(
            np.zeros((3, 1, 2)), np.ones((3, 1)), text_embeddings=np.ones((2, DIM))
        )
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(text_embedding=np.full(DIM, np.nan))
    with pytest.raises(ValueError, match="not both"):
        predictor.predict_batch(texts=["a"], text_embeddings=np.ones((1, DIM)))
    plain = load_sam("tiny")
    p = SamPredictor(plain)
    p.set_image(synthetic.make_class_example(0)[0])
    with pytest.raises(ValueError, match="takes no text prompts"):
        p.predict(text_embedding=np.ones(DIM))


def test_predict_with_text_uses_the_clip_text_tower(text_model, tiny_clip):
    import dataclasses

    from sam_jax.inference.text import ClipEncoder
    from sam_jax.modeling import clip as clip_lib

    config = dataclasses.replace(tiny_clip.config, embed_dim=DIM)
    clip = ClipEncoder(config, clip_lib.init_params(config, 1), chunk=2)
    predictor = SamPredictor(text_model, text_encoder=clip)
    predictor.set_image(synthetic.make_class_example(1)[0])
    texts = ["a red disk", "blue cross", "the yellow triangle"]
    emb = clip.encode_texts(texts)  # 3 texts in chunks of 2: padded, one compiled shape
    assert emb.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    by_text = predictor.predict_batch(texts=texts)
    by_embedding = predictor.predict_batch(text_embeddings=emb)
    np.testing.assert_allclose(by_text[2], by_embedding[2], atol=1e-5)
    single = predictor.predict(text="blue cross")
    np.testing.assert_allclose(single[2], by_text[2][1], atol=1e-4)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(text="  ")
    crops = clip.encode_images([np.zeros((20, 30, 3), np.uint8), np.ones((9, 9, 3), np.uint8)])
    assert crops.shape == (2, DIM)


def _save_pth(params, path):
    import torch

    torch.save({k: torch.from_numpy(np.array(v)) for k, v in params.items()}, path)


def test_segment_cli_text_prompts(tmp_path, text_model, capsys):

    from sam_jax.cli import segment
    from sam_jax.io.clip_checkpoint import to_clip_state_dict
    from sam_jax.modeling import clip as clip_lib

    _save_pth(ckpt.to_state_dict(text_model.params), tmp_path / "sam.pth")
    # Widths of 64: a loaded checkpoint gets OpenAI's head count, width // 64.
    config = clip_lib.clip_config(
        "tiny", embed_dim=DIM, text_width=64, text_heads=1, vision_heads=1
    )
    _save_pth(to_clip_state_dict(clip_lib.init_params(config, 0)), tmp_path / "clip.pt")
    common = ["--checkpoint", str(tmp_path / "sam.pth"), "--model-type", "tiny"]
    rc = segment.main(
        [
            *common,
            "--clip-checkpoint",
            str(tmp_path / "clip.pt"),
            "--text",
            "red disk",
            "--output",
            str(tmp_path / "m.png"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads(out.out)
    assert summary["text"] == "red disk" and Path(summary["mask"]).is_file()
    np.save(tmp_path / "e.npy", np.ones(DIM, np.float32))
    rc = segment.main(
        [*common, "--text-embedding", str(tmp_path / "e.npy"), "--output", str(tmp_path / "e.png")]
    )
    assert rc == 0
    np.save(tmp_path / "bad.npy", np.ones((2, DIM), np.float32))
    rc = segment.main(
        [
            *common,
            "--text-embedding",
            str(tmp_path / "bad.npy"),
            "--output",
            str(tmp_path / "b.png"),
        ]
    )
    assert rc == 1 and "must hold one (D,) vector" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment.main([*common, "--text", "a", "--output", str(tmp_path / "x.png")])
    assert "needs --clip-checkpoint" in capsys.readouterr().err
