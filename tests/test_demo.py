"""The demo server over HTTP, without a browser: what it answers to good and bad requests,
and that it keeps serving after a bad one. (tests/test_demo_browser.py drives the page.)"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from sam_jax.cli import demo


def _request(url, data=None, content_type="application/octet-stream"):
    """-> (status, body bytes); HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _png(width, height, seed=0, flat=False) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels * (not flat)).save(buf, "PNG")
    return buf.getvalue()


def _error(status_body) -> tuple[int, str]:
    status, body = status_body
    message = json.loads(body)["error"]
    assert "\n" not in message
    return status, message


def test_page_and_a_session_of_good_requests(demo_server):
    url, session = demo_server
    status, page = _request(url + "/")
    assert status == 200 and b'id="canvas"' in page
    status, body = _request(url + "/api/upload?name=noise.png", _png(300, 200))
    info = json.loads(body)
    assert status == 200 and (info["width"], info["height"]) == (300, 200)
    status, png = _request(url + "/api/image.png")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (300, 200)

    prompt = {"points": [[150, 100, 1], [20, 20, 0]], "box": [60, 40, 240, 180]}
    status, body = _request(url + "/api/decode", json.dumps(prompt).encode(), "application/json")
    result = json.loads(body)
    assert status == 200 and len(result["masks"]) == len(result["scores"]) == 3
    assert result["best"] == int(np.argmax(result["scores"]))
    # the server's masks are the predictor's (same prompt through SamPredictor.predict)
    ref_masks, ref_scores, _ = session.predictor.predict(
        np.array([[150, 100], [20, 20]]), np.array([1, 0]), np.array([60, 40, 240, 180])
    )
    np.testing.assert_allclose(result["scores"], ref_scores, atol=1e-4)
    assert result["areas"] == [int(m.sum()) for m in ref_masks]

    status, png = _request(url + "/api/mask.png?index=2")
    mask = np.asarray(Image.open(io.BytesIO(png)))
    assert status == 200 and mask.shape == (200, 300)
    assert np.array_equal(mask > 0, ref_masks[2])

    assert _error(_request(url + "/api/masks.json"))[0] == 404  # before segment everything
    status, body = _request(url + "/api/everything", b"")
    count = json.loads(body)["count"]
    assert status == 200 and count > 0
    status, body = _request(url + "/api/masks.json")
    coco = json.loads(body)
    assert status == 200 and len(coco["annotations"]) == count
    assert coco["images"][0]["file_name"] == "noise.png"
    ann = coco["annotations"][0]
    rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
    assert coco_mask.decode(rle).sum() == ann["area"] and coco_mask.decode(rle).shape == (200, 300)


def test_bad_requests_get_a_message_and_the_server_keeps_serving(demo_server):
    url, _ = demo_server
    assert _request(url + "/api/sample", b"")[0] == 200
    cases = [
        (_request(url + "/api/upload", b"this is not an image"), 400, "not an image"),
        (_request(url + "/api/upload", b""), 400, "empty"),
        (_request(url + "/api/upload", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 400, "image"),
        (_request(url + "/api/upload", _png(600, 600, flat=True)), 413, "pixels"),
        (_request(url + "/api/upload", b"x" * 300_000), 413, "MB limit"),
        (_request(url + "/api/decode", b"{not json", "application/json"), 400, "not JSON"),
        (_request(url + "/api/decode", b"[]", "application/json"), 400, "JSON object"),
        (_request(url + "/api/decode", b"{}", "application/json"), 400, "point or a box"),
        (
            _request(url + "/api/decode", b'{"points": [[1, 2, 7]]}', "application/json"),
            400,
            "labels",
        ),
        (
            _request(url + "/api/decode", b'{"points": [["a", 2]]}', "application/json"),
            400,
            "points must be",
        ),
        (_request(url + "/api/mask.png?index=0"), 404, "no mask yet"),
        (_request(url + "/api/nothing"), 404, "no such page"),
    ]
    for answer, status, words in cases:
        got_status, message = _error(answer)
        assert (got_status, words in message) == (status, True), (status, words, message)
    # the image set before the bad uploads is still the current one
    status, body = _request(url + "/api/decode", b'{"points": [[320, 240, 1]]}', "application/json")
    assert status == 200 and len(json.loads(body)["masks"]) == 3
    assert _error(_request(url + "/api/mask.png?index=9")) == (400, "mask index must be 0..2")
    assert _request(url + "/")[0] == 200


def test_a_session_without_an_image_refuses_prompts(tiny_model):
    session = demo.DemoSession(tiny_model)
    with pytest.raises(demo.BadRequest, match="load an image first"):
        session.decode({"points": [[1, 1, 1]]})


def test_demo_cli_refuses_a_missing_checkpoint_with_one_line(tmp_path, capsys):
    argv = ["--model-type", "tiny", "--checkpoint", str(tmp_path / "none.pth"), "--port", "0"]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not found" in err and "\n" not in err
