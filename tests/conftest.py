"""Shared fixtures: a tiny random-init reference `Sam`, our model with the same weights, and
predictors of both holding the embedding of one real, non-square image.

The test-only packages (torch, segment-anything, scikit-image) are imported inside the
fixtures, so that tests/test_torch_free.py runs where only requirements.txt is installed."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest

from sam_jax import SamPredictor

TINY = "tiny"
SEED = 0
# Spreads logits and IoU predictions as trained weights do, so mask thresholds matter.
OUTPUT_SCALE = 10.0


@pytest.fixture(scope="session", autouse=True)
def _deterministic_torch():
    # Weights and inputs are seeded explicitly; this covers anything torch draws implicitly.
    if importlib.util.find_spec("torch") is not None:  # absent in the torch-free CI step
        import torch

        torch.manual_seed(SEED)


@pytest.fixture(scope="session")
def tiny_ref():
    from reference import build_reference

    return build_reference(TINY, seed=SEED, output_scale=OUTPUT_SCALE)


@pytest.fixture(scope="session")
def tiny_model(tiny_ref):
    from reference import model_from_reference

    return model_from_reference(tiny_ref, TINY)


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    """A 300 x 450 RGB crop: not square and not the model size, so the resize, the
    bottom/right padding and the crop in post-processing all do something."""
    from skimage import data

    img = data.astronaut()[100:400, 31:481]
    assert img.shape == (300, 450, 3) and img.dtype == np.uint8
    return np.ascontiguousarray(img)


@pytest.fixture(scope="session")
def ref_predictor(tiny_ref, image):
    import torch
    from segment_anything import SamPredictor as RefPredictor

    p = RefPredictor(tiny_ref)
    with torch.no_grad():
        p.set_image(image)
    return p


@pytest.fixture(scope="session")
def _session_predictor(tiny_model, image):
    p = SamPredictor(tiny_model)
    p.set_image(image)
    return p


@pytest.fixture
def predictor(_session_predictor):
    """Our predictor with the test image set. A shallow copy: it shares the compiled
    functions (no recompilation per test) but a test may reset or replace its image."""
    return copy.copy(_session_predictor)


@pytest.fixture(scope="session")
def demo_server(tiny_model):
    """The demo server on a free local port, serving in a thread: (base URL, session).

    Small limits (0.2 MB uploads, 250 000 pixels) so the refusals are cheap to test, and
    segment everything without its quality filters, so random weights still give masks."""
    import threading

    from sam_jax.cli.demo import DemoSession, make_server

    session = DemoSession(
        tiny_model,
        points_per_side=8,
        amg_options={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    )
    server = make_server(session, port=0, max_upload_mb=0.2, max_pixels=250_000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", session
    server.shutdown()
    server.server_close()
