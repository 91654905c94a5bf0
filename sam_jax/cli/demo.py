"""A local web page to segment images interactively.

    python -m sam_jax.cli.demo --checkpoint converted/vit_b --model-type vit_b [--port 8000]

Open the printed address; load an image (upload, or the built-in sample), click to add
points (left: foreground; right or shift: background), drag to draw a box, switch among the
three masks, run "segment everything", and download the mask (PNG) or all masks (COCO JSON).

The image embedding is computed once per image on the server; each click is decoded on the
server too, by one compiled program of fixed shapes (points padded to a bucket, the box
switched on or off by a flag), warmed when the image is set, so no click compiles. The page
shows each click's latency: the server's decode time and the whole round trip.

The server binds to 127.0.0.1 unless --host says otherwise, refuses uploads over
--max-upload-mb or --max-pixels and anything that is not an image (HTTP 413 / 400 with a
one-line message), and keeps serving after a bad request.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam_jax.modeling.configs import MODEL_TYPES

MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 40_000_000
MAX_POINTS = 64
MASK_COLOR = (30, 144, 255)


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and a one-line reason."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


def _mask_png(mask: np.ndarray, color=MASK_COLOR, alpha: int = 140) -> bytes:
    """A bool (H, W) mask as a 2-colour palette PNG: transparent, and `color` at `alpha`."""
    im = Image.fromarray(mask.astype(np.uint8))
    im.putpalette([0, 0, 0, *color])
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=bytes([0, alpha]), compress_level=1, bits=1)
    return buf.getvalue()


def _labels_png(labels: np.ndarray, count: int) -> bytes:
    """(H, W) uint8 labels (0: none, 1..count: masks) as a palette PNG, one colour each."""
    rng = np.random.default_rng(0)
    colors = rng.integers(40, 256, (max(count, 1), 3)).astype(np.uint8)
    im = Image.fromarray(labels)
    im.putpalette([0, 0, 0, *colors.reshape(-1).tolist()])
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=bytes([0] + [150] * count), compress_level=1)
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _click_decode(module, params, terms, coords, labels, valid, boxes, box_valid, rows, cols):
    """One prompt of fixed shapes -> (masks (1, 3, H, W) bool, iou (1, 3)). `terms`: the
    predictor's first-layer image terms of the current image (a click has no mask input)."""
    from sam_jax.inference.point_decoder import decode_prompt_arrays
    from sam_jax.modeling.sam import Sam, postprocess_masks

    low_res, iou = decode_prompt_arrays(
        module, params, terms, coords, labels, valid, boxes, box_valid=box_valid
    )
    return postprocess_masks(low_res, rows, cols) > Sam.mask_threshold, iou


class DemoSession:
    """The model, the current image with its embedding, and the last results. One image
    at a time (a local, single-user demo); a lock keeps concurrent requests apart."""

    def __init__(self, model, points_per_side: int = 16, amg_options: dict | None = None):
        import jax

        from sam_jax import SamAutomaticMaskGenerator, SamPredictor

        self.model = model
        self.predictor = SamPredictor(model)
        self.generator = SamAutomaticMaskGenerator(
            model, points_per_side=points_per_side, output_mode="coco_rle", **(amg_options or {})
        )
        self._decode = jax.jit(functools.partial(_click_decode, model.module))
        self.lock = threading.Lock()
        self.image = None
        self.image_name = None
        self.masks = None
        self.records = None

    # ------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray, name: str) -> dict:
        from sam_jax.modeling.sam import postprocess_matrices

        with self.lock:
            t0 = time.perf_counter()
            self.predictor.set_image(image)
            p = self.predictor
            p.features.block_until_ready()  # dispatch is asynchronous: time the work
            low = p.low_res_size
            rows, cols = postprocess_matrices(
                (low, low), self.model.image_size, p.input_size, p.original_size
            )
            self._rows, self._cols = rows, cols
            self.image, self.image_name = image, name
            self.masks = self.records = None
            t1 = time.perf_counter()
            self._run(np.zeros((0, 3)), None)  # compiles for this image size: clicks won't
            t2 = time.perf_counter()
        h, w = image.shape[:2]
        return {
            "width": w,
            "height": h,
            "name": name,
            "embed_ms": round(1000 * (t1 - t0), 1),
            "warmup_ms": round(1000 * (t2 - t1), 1),
        }

    def image_png(self) -> bytes:
        if self.image is None:
            raise BadRequest("no image loaded yet", HTTPStatus.NOT_FOUND)
        buf = io.BytesIO()
        Image.fromarray(self.image).save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    # ---------------------------------------------------------------- prompts
    def _run(self, points: np.ndarray, box):
        p = self.predictor
        n = len(points)
        capacity = max(8, 1 << max(0, n - 1).bit_length())
        coords = np.zeros((1, capacity, 2), np.float32)
        labels = np.full((1, capacity), -1, np.int32)
        valid = np.zeros((1, capacity), bool)
        if n:
            coords[0, :n] = p.transform.apply_coords(points[:, :2], p.original_size)
            labels[0, :n] = points[:, 2]
            valid[0, :n] = True
        boxes = np.zeros((1, 4), np.float32)
        if box is not None:
            boxes[0] = p.transform.apply_boxes(box, p.original_size)[0]
        out = self._decode(
            self.model.params,
            p.decoder_image_terms(),
            coords,
            labels,
            valid,
            boxes,
            np.array([box is not None]),
            self._rows,
            self._cols,
        )
        masks, iou = (np.asarray(x)[0] for x in out)
        return masks, iou

    def decode(self, request: dict) -> dict:
        points, box = self._check_prompt(request)
        with self.lock:
            if self.image is None:
                raise BadRequest("load an image first")
            t0 = time.perf_counter()
            masks, iou = self._run(points, box)
            t1 = time.perf_counter()
            self.masks = masks
            pngs = [_data_url(_mask_png(m)) for m in masks]
            t2 = time.perf_counter()
        areas = [int(m.sum()) for m in masks]
        return {
            "masks": pngs,
            "scores": [round(float(s), 4) for s in iou],
            "areas": areas,
            "best": int(np.argmax(iou)),
            "decode_ms": round(1000 * (t1 - t0), 1),
            "encode_ms": round(1000 * (t2 - t1), 1),
        }

    def _check_prompt(self, request) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(request, dict):
            raise BadRequest("the request body must be a JSON object")
        if self.image is None:
            raise BadRequest("load an image first")
        h, w = self.image.shape[:2]
        raw_points = request.get("points") or []
        raw_box = request.get("box")
        try:
            points = np.asarray(raw_points, np.float64).reshape(-1, 3)
            box = None if raw_box is None else np.asarray(raw_box, np.float64).reshape(4)
        except (TypeError, ValueError):
            raise BadRequest(
                "points must be [[x, y, label], ...] and box [x0, y0, x1, y1]"
            ) from None
        if len(points) > MAX_POINTS:
            raise BadRequest(f"at most {MAX_POINTS} points, got {len(points)}")
        if not len(points) and box is None:
            raise BadRequest("give at least one point or a box")
        if not np.all(np.isfinite(points)) or (box is not None and not np.all(np.isfinite(box))):
            raise BadRequest("coordinates must be finite numbers")
        if len(points) and not np.isin(points[:, 2], (0, 1)).all():
            raise BadRequest("point labels must be 1 (foreground) or 0 (background)")
        points[:, 0] = points[:, 0].clip(0, w)
        points[:, 1] = points[:, 1].clip(0, h)
        if box is not None:
            box = np.array(
                [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
            ).clip(0, [w, h, w, h])
        return points, box

    def mask_png(self, index: int) -> bytes:
        if self.masks is None:
            raise BadRequest("no mask yet: click on the image first", HTTPStatus.NOT_FOUND)
        if not 0 <= index < len(self.masks):
            raise BadRequest(f"mask index must be 0..{len(self.masks) - 1}")
        buf = io.BytesIO()
        Image.fromarray(self.masks[index].astype(np.uint8) * 255).save(buf, "PNG")
        return buf.getvalue()

    # ------------------------------------------------------------- everything
    def everything(self) -> dict:
        from pycocotools import mask as coco_mask

        from sam_jax.inference.automatic_mask_generator import describe_stats

        with self.lock:
            if self.image is None:
                raise BadRequest("load an image first")
            # The generator's predictor is ours: the image is embedded already.
            self.generator.predictor = _KeepEmbedding(self.predictor, self.image)
            t0 = time.perf_counter()
            records = self.generator.generate(self.image)
            ms = 1000 * (time.perf_counter() - t0)
            self.records = records
            h, w = self.image.shape[:2]
            labels = np.zeros((h, w), np.uint8)
            shown = sorted(records, key=lambda r: -r["area"])[:255]
            for i, r in enumerate(shown, start=1):
                rle = r["segmentation"]
                rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                labels[coco_mask.decode(rle).astype(bool)] = i
            png = _labels_png(labels, len(shown))
            why = describe_stats(self.generator.last_stats) if not records else ""
        return {"count": len(records), "overlay": _data_url(png), "ms": round(ms), "note": why}

    def coco_json(self) -> dict:
        if self.records is None:
            raise BadRequest("no masks yet: run segment everything first", HTTPStatus.NOT_FOUND)
        h, w = self.image.shape[:2]
        annotations = []
        for i, r in enumerate(self.records, start=1):
            annotations.append(
                {
                    "id": i,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": r["segmentation"],
                    "area": r["area"],
                    "bbox": r["bbox"],
                    "iscrowd": 0,
                    "score": r["predicted_iou"],
                    "stability_score": r["stability_score"],
                    "point_coords": r["point_coords"],
                }
            )
        return {
            "images": [{"id": 1, "width": w, "height": h, "file_name": self.image_name}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }


class _KeepEmbedding:
    """The demo's predictor as the generator sees it: `set_image` of the image already set
    keeps its embedding (segment everything then costs no second encoder pass)."""

    def __init__(self, predictor, image):
        self._predictor, self._image = predictor, image

    def set_image(self, image, image_format: str = "RGB"):
        if image is not self._image and not np.array_equal(image, self._image):
            self._predictor.set_image(image, image_format)

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def read_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes of an uploaded file -> RGB uint8, or BadRequest saying why not."""
    from sam_jax.data.decode import decode_image

    if not data:
        raise BadRequest("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise BadRequest("not an image: upload a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
    except Exception as e:  # truncated headers and the like
        raise BadRequest(f"cannot read the image: {e}") from None
    if w * h > max_pixels:
        raise BadRequest(
            f"image of {w}x{h} has {w * h} pixels; the limit is {max_pixels}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    try:
        return decode_image(data, where="upload")
    except ValueError as e:
        raise BadRequest(str(e).splitlines()[0]) from None


def make_handler(session: DemoSession, max_upload_bytes: int, max_pixels: int):
    page = resources.files("sam_jax").joinpath("assets/demo.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "sam_jax-demo"

        def log_message(self, format, *args):  # quiet: one line per error only
            pass

        def _send(self, status, body: bytes, content_type: str, extra=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value, status=HTTPStatus.OK):
            self._send(status, json.dumps(value).encode(), "application/json")

        def _error(self, status, message):
            self._json({"error": message}, status)

        def _body(self, limit: int) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise BadRequest("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
            try:
                n = int(length)
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            if n > limit:
                self.close_connection = True  # the unread body must not be parsed as a request
                raise BadRequest(
                    f"upload of {n / 1e6:.1f} MB is over the {limit / 1e6:.1f} MB limit",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            return self.rfile.read(n)

        def _dispatch(self, method):
            path, _, query = self.path.partition("?")
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            try:
                if method == "GET" and path in ("/", "/index.html"):
                    return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                if method == "GET" and path == "/api/image.png":
                    return self._send(HTTPStatus.OK, session.image_png(), "image/png")
                if method == "GET" and path == "/api/mask.png":
                    try:
                        index = int(params.get("index", "0"))
                    except ValueError:
                        raise BadRequest("index must be an integer") from None
                    return self._send(
                        HTTPStatus.OK,
                        session.mask_png(index),
                        "image/png",
                        {"Content-Disposition": f'attachment; filename="mask_{index}.png"'},
                    )
                if method == "GET" and path == "/api/masks.json":
                    body = json.dumps(session.coco_json()).encode()
                    return self._send(
                        HTTPStatus.OK,
                        body,
                        "application/json",
                        {"Content-Disposition": 'attachment; filename="masks_coco.json"'},
                    )
                if method == "POST" and path == "/api/sample":
                    from sam_jax.cli.segment import demo_image

                    return self._json(session.set_image(demo_image(), "sample.png"))
                if method == "POST" and path == "/api/upload":
                    data = self._body(max_upload_bytes)
                    image = read_upload(data, max_pixels)
                    name = params.get("name", "upload")
                    return self._json(session.set_image(image, name))
                if method == "POST" and path == "/api/decode":
                    try:
                        request = json.loads(self._body(1 << 20) or b"null")
                    except json.JSONDecodeError as e:
                        raise BadRequest(f"the request body is not JSON: {e}") from None
                    return self._json(session.decode(request))
                if method == "POST" and path == "/api/everything":
                    return self._json(session.everything())
                raise BadRequest(f"no such page: {method} {path}", HTTPStatus.NOT_FOUND)
            except BadRequest as e:
                self._error(e.status, str(e))
            except Exception as e:  # keep serving: report, answer 500, carry on
                traceback.print_exc(file=sys.stderr)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

    return Handler


def make_server(
    session: DemoSession,
    host: str = "127.0.0.1",
    port: int = 0,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
) -> ThreadingHTTPServer:
    """A server (not yet serving: call serve_forever) on host:port (0: any free port)."""
    handler = make_handler(session, int(max_upload_mb * 1e6), max_pixels)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam_jax.cli.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help=".pth, converted directory or training workdir")
    parser.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local)")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument(
        "--points-per-side", type=int, default=16, help="segment everything's point grid"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be 0..65535, got {args.port}")

    from sam_jax import sam_model_registry
    from sam_jax.io.checkpoint import CheckpointError

    try:
        model = sam_model_registry[args.model_type](checkpoint=args.checkpoint)
        if args.checkpoint is None:
            print(
                "note: no --checkpoint, using random weights (masks are meaningless)",
                file=sys.stderr,
            )
        session = DemoSession(model, points_per_side=args.points_per_side)
        server = make_server(session, args.host, args.port, args.max_upload_mb, args.max_pixels)
    except (ValueError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
