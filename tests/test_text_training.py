"""Training with text prompts end to end: CLIP crop embeddings through the data pipeline
(with their per-image cache), and the synthetic demonstration that a model trained with the
text switch segments the object a class name names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import tiny_text  # noqa: E402
from sam_jax.training import trainer as trainer_lib  # noqa: E402


def _save_tiny_clip(path, dim: int) -> None:
    import torch

    from sam_jax.io.clip_checkpoint import to_clip_state_dict
    from sam_jax.modeling import clip as clip_lib

    # Widths of 64: a loaded checkpoint gets OpenAI's head count, width // 64.
    config = clip_lib.clip_config(
        "tiny", embed_dim=dim, text_width=64, text_heads=1, vision_heads=1
    )
    state = to_clip_state_dict(clip_lib.init_params(config, 0))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)


def test_training_with_clip_crop_embeddings(tmp_path):
    _save_tiny_clip(tmp_path / "clip.pt", 16)
    c = tiny_text.get_config()
    c.model.text_embed_dim = 16
    c.model.patch_size = 16
    c.num_train_steps = 2
    c.batch_size = 2
    c.log_every_steps = 1
    c.train.masks_per_image = 2
    c.train.num_iterations, c.train.num_point_rounds = 2, 0
    c.data.synthetic_images = 4
    c.data.num_threads = 1
    c.eval.synthetic_images = 1
    c.eval.num_clicks = (1,)
    c.text.source = "clip"
    c.text.clip_checkpoint = str(tmp_path / "clip.pt")
    c.text.min_area = 400
    result = trainer_lib.train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "finished"
    cached = sorted((tmp_path / "run" / "mask_embeddings").glob("*.npz"))
    assert cached, "no per-image embedding cache was written"
    with np.load(cached[0]) as f:
        assert f["embedding"].shape[1] == 16
        np.testing.assert_allclose(np.linalg.norm(f["embedding"], axis=1), 1.0, rtol=1e-5)
    assert "text" in result["eval"]  # synthetic classes: the text-prompt evaluation ran

    c.model.text_embed_dim = 8
    with pytest.raises(ValueError, match="16-d but model.text_embed_dim is 8"):
        trainer_lib.train_and_evaluate(c, tmp_path / "run8")


def test_text_prompt_demonstration(tmp_path):
    """The mechanism of the paper's text-to-mask variant on data built for it.

    Synthetic pictures hold 2-4 objects of distinct named classes ("red disk", "blue
    cross", ...). No trained CLIP exists here, so stand-in vectors play its part: during
    training each mask's prompt embedding is its class vector plus fixed per-mask noise
    (CLIP's image embedding of the crop), and at evaluation a class name's embedding is
    the clean class vector (CLIP's text embedding of the name): aligned, as CLIP's two
    towers are. After a short run (configs/tiny_text.py, shortened), prompting each
    held-out object with its class name alone must segment it far better than prompting it
    with another object's name or with the name of a class that is not in the picture.
    """
    c = tiny_text.get_config()
    c.num_train_steps = 400
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.optimizer.decay_steps = (350,)
    c.data.synthetic_images = 256
    c.eval.synthetic_images = 12
    c.eval.num_clicks = (1,)
    result = trainer_lib.train_and_evaluate(c, tmp_path / "run")
    text = result["eval"]["text"]
    (tmp_path / "text.json").write_text(json.dumps(text))
    miou = text["miou"]
    assert text["num_masks"] >= 30
    assert miou["named"] > 0.45, miou
    assert miou["named"] > miou["wrong_name"] + 0.25, miou
    assert miou["named"] > miou["absent_name"] + 0.15, miou
