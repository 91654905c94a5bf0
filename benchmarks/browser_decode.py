"""The in-browser alternative to the demo's server-side decoding: the exported ONNX decoder
run by onnxruntime-web (WebAssembly, as the reference demo does) in headless Chromium.

    npm install --prefix /tmp/ortweb onnxruntime-web@1.30.0
    python benchmarks/browser_decode.py --ort-web /tmp/ortweb/node_modules/onnxruntime-web/dist

Exports the decoder of --model-type (random weights: the cost does not depend on them),
serves it with onnxruntime-web's files from a temporary folder on 127.0.0.1, and times 20
decodes of a one-point prompt in the page after one warm-up. A page served without
cross-origin isolation gets one WebAssembly thread, as a plain static host would give.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

PAGE = """<!doctype html><meta charset="utf-8"><script src="ort.min.js"></script><script>
(async () => {
  const session = await ort.InferenceSession.create("decoder.onnx",
                                                    { executionProviders: ["wasm"] });
  const c = CHANNELS, e = EMB, low = LOW;
  const feeds = {
    image_embeddings: new ort.Tensor("float32", new Float32Array(c * e * e).fill(0.1),
                                     [1, c, e, e]),
    point_coords: new ort.Tensor("float32", new Float32Array([500, 400, 0, 0]), [1, 2, 2]),
    point_labels: new ort.Tensor("float32", new Float32Array([1, -1]), [1, 2]),
    mask_input: new ort.Tensor("float32", new Float32Array(low * low), [1, 1, low, low]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
    orig_im_size: new ort.Tensor("float32", new Float32Array([480, 640]), [2]),
  };
  await session.run(feeds);
  const times = [];
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t0);
  }
  window.result = { times, threads: ort.env.wasm.numThreads, isolated: crossOriginIsolated };
})().catch((err) => { window.result = { error: String(err) }; });
</script>"""


class _Files(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, format, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ort-web", required=True, help="onnxruntime-web's dist folder")
    parser.add_argument("--model-type", default="vit_b")
    args = parser.parse_args()

    import numpy as np
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    from sam_jax import sam_model_registry
    from sam_jax.inference.onnx_export import export_onnx_decoder

    model = sam_model_registry[args.model_type](seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_onnx_decoder(model, root / "decoder.onnx")
        for f in Path(args.ort_web).iterdir():
            if f.name.startswith(("ort.min.js", "ort-wasm-simd-threaded")):
                shutil.copy(f, root / f.name)
        e = model.module.image_embedding_size
        page = PAGE.replace("EMB", str(e)).replace("LOW", str(4 * e))
        page = page.replace("CHANNELS", str(model.module.prompt_embed_dim))
        (root / "index.html").write_text(page)
        handler = functools.partial(_Files, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or ""
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            driver.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            result = WebDriverWait(driver, 600, poll_frequency=0.2).until(
                lambda d: d.execute_script("return window.result")
            )
        finally:
            driver.quit()
            server.shutdown()
    if "error" in result:
        raise SystemExit(f"error: {result['error']}")
    times = result["times"]
    print(
        json.dumps(
            {
                "model_type": args.model_type,
                "onnxruntime_web_decode_ms_median_max": [
                    round(float(np.median(times)), 1),
                    round(max(times), 1),
                ],
                "wasm_threads": result["threads"],
                "cross_origin_isolated": result["isolated"],
            }
        )
    )


if __name__ == "__main__":
    main()
