"""The demo's click latency on this machine: the server's decode of one click (ViT-B by
default, random weights: the decoder's cost does not depend on them) after the image is
embedded, with and without encoding the three mask PNGs, over 20 clicks of 1 to 5 points
(every other one with a box).

    python benchmarks/demo_latency.py [--model-type vit_b] [--onnx]

--onnx also times onnxruntime on the exported ONNX decoder (the in-browser alternative
runs the same graph, in WebAssembly). Prints one JSON line. The page itself shows each
click's latency, mouse release to mask drawn; tests/test_demo_browser.py records it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from sam_jax import sam_model_registry
from sam_jax.cli.demo import DemoSession
from sam_jax.cli.segment import demo_image


def _median_ms(times):
    return round(float(np.median(times)), 1), round(float(np.max(times)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--onnx", action="store_true")
    args = parser.parse_args()
    model = sam_model_registry[args.model_type](seed=0)
    session = DemoSession(model)
    image = demo_image()
    info = session.set_image(image, "sample")
    rng = np.random.default_rng(0)
    decode, total = [], []
    for i in range(args.clicks):
        h, w = image.shape[:2]
        points = [[rng.uniform(0, w), rng.uniform(0, h), 1] for _ in range(1 + i % 5)]
        box = [w * 0.2, h * 0.2, w * 0.6, h * 0.7] if i % 2 else None
        t0 = time.perf_counter()
        result = session.decode({"points": points, "box": box})
        total.append(1000 * (time.perf_counter() - t0))
        decode.append(result["decode_ms"])
    out = {
        "model_type": args.model_type,
        "embed_ms": info["embed_ms"],
        "decode_ms_median_max": _median_ms(decode),
        "decode_and_png_ms_median_max": _median_ms(total),
    }
    if args.onnx:
        import onnxruntime as ort

        from sam_jax.inference.onnx_export import export_onnx_decoder

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx_decoder(model, f"{tmp}/decoder.onnx")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            onnx_session = ort.InferenceSession(str(path), options)
        low = session.predictor.low_res_size
        feeds = {
            "image_embeddings": session.predictor.get_image_embedding(),
            "point_coords": np.array([[[500.0, 400.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1, -1]], np.float32),
            "mask_input": np.zeros((1, 1, low, low), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(image.shape[:2], np.float32),
        }
        onnx_session.run(None, feeds)
        times = []
        for _ in range(args.clicks):
            t0 = time.perf_counter()
            onnx_session.run(None, feeds)
            times.append(1000 * (time.perf_counter() - t0))
        out["onnxruntime_decode_ms_median_max"] = _median_ms(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
