"""`SamPredictor`: embed an image once, then decode any number of prompts against it.

Same arguments, shapes and return values as the reference predictor. Prompts are padded
to fixed shape buckets (prompt count and points per prompt rounded up to powers of two;
padding tokens are masked out of attention), so a new number of points reuses a compiled
function instead of recompiling. Prompts without a mask input (clicks, boxes, text) decode
with `point_decoder.decode_sparse`, the same function arranged so the image-side terms of
the decoder's first layer are computed once per image; a mask input takes `Sam.decode`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.inference import point_decoder
from sam_jax.inference.build import SamModel
from sam_jax.inference.transforms import ResizeLongestSide
from sam_jax.modeling.sam import Sam, dense_pe, postprocess_masks, postprocess_matrices

VALID_LABELS = (-1, 0, 1)


def _bucket(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def fill_canvas(canvas: np.ndarray, image: np.ndarray, transform) -> tuple[int, int]:
    """Resize `image` (longest side to the model size) into the top left of `canvas`
    (S, S, 3) uint8, zero padding the rest; returns the resized (height, width)."""
    resized = transform.apply_image(np.ascontiguousarray(image))
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return int(resized.shape[0]), int(resized.shape[1])


def as_uint8_rgb(image, name: str = "image") -> np.ndarray:
    """Check an H x W x 3 image and return it as uint8, or raise ValueError naming why.

    Accepted: uint8; integer arrays with values in 0..255; float arrays with values in
    [0, 1] (scaled by 255 and rounded). Anything else is rejected rather than guessed at.
    """
    try:
        arr = np.asarray(image)
    except Exception as e:
        raise ValueError(f"{name} cannot be read as an array: {e}") from e
    if arr.dtype == object:
        raise ValueError(f"{name} is not a numeric array (dtype object)")
    if arr.ndim != 3 or arr.shape[2] != 3:
        hint = ""
        if arr.ndim == 2:
            hint = " (a grayscale image: stack it to 3 channels)"
        elif arr.ndim == 3 and arr.shape[2] == 4:
            hint = " (RGBA: drop the alpha channel)"
        elif arr.ndim == 3 and arr.shape[0] == 3:
            hint = " (channels first: transpose to H x W x 3)"
        raise ValueError(f"{name} must be H x W x 3, got shape {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        raise ValueError(f"{name} has dtype bool; expected uint8 RGB")
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name} has dtype {arr.dtype} with values in [{lo}, {hi}]; expected 0..255"
            )
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name} is a float image with values in [{lo:g}, {hi:g}]; float images must "
                "be in [0, 1] (for 0..255 values pass image.astype(np.uint8))"
            )
        return np.round(arr * 255.0).astype(np.uint8)
    raise ValueError(f"{name} has unsupported dtype {arr.dtype}; expected uint8")


class SamPredictor:
    """Prompted mask prediction on one image at a time.

    max_batch: prompts decoded per compiled call in `predict_batch` (bounds memory; larger
    batches are split).
    text_encoder: a `sam_jax.inference.text.ClipEncoder`, for `predict(text=...)` with a
    model trained with text prompts (`model.text_embed_dim` > 0). Precomputed CLIP embeddings
    (`text_embedding=`) need none.
    """

    def __init__(self, sam_model: SamModel, max_batch: int = 64, text_encoder=None):
        if not isinstance(sam_model, SamModel):
            raise TypeError(
                "SamPredictor takes the model bundle from sam_model_registry[...](...), got "
                f"{type(sam_model).__name__}"
            )
        self.model = sam_model
        self.text_encoder = text_encoder
        self.max_batch = _bucket(max_batch)
        self.transform = ResizeLongestSide(sam_model.image_size)
        module = sam_model.module
        self._embed = jax.jit(
            lambda params, images, sizes: module.apply(
                {"params": params}, images, sizes, method=Sam.embed_images
            )
        )
        # Decoding (compiled once per prompt bucket) and upsampling to the image (a small
        # function compiled per image size) are separate calls, so an image of a new size
        # does not recompile the decoder.
        self._decode = jax.jit(
            functools.partial(_decode, module), static_argnames="multimask_output"
        )
        self._postprocess = jax.jit(_postprocess, static_argnames="return_logits")
        # The image-grid positional encoding is the same for every prompt: made once.
        self._image_pe = jax.jit(functools.partial(dense_pe, module))(sam_model.params)
        # Without a mask input, the decoder's first-layer image terms are the same for every
        # prompt on an image: made once per image (by set_image, or on the first such prompt
        # after set_images), then shared.
        self._image_terms = jax.jit(functools.partial(point_decoder.image_terms, module))
        self._decode_sparse = jax.jit(
            functools.partial(point_decoder.decode_prompt_arrays, module),
            static_argnames="multimask_output",
        )
        self.reset_image()

    @property
    def low_res_size(self) -> int:
        return 4 * (self.model.image_size // self.model.module.patch_size)

    # ------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an H x W x 3 image (uint8, or float in [0, 1])."""
        image = self._prepare(image, image_format)
        s = self.model.image_size
        canvas = np.zeros((1, s, s, 3), np.uint8)
        input_size = fill_canvas(canvas[0], image, self.transform)
        self.reset_image()
        features = self._embed(self.model.params, canvas, np.array([input_size], np.int32))
        self._use(features, image.shape[:2], input_size)
        # Dispatched now (asynchronously), so the first click does not wait for them.
        self._terms = self._image_terms(self.model.params, self.features)

    def set_images(self, images, image_format: str = "RGB", images_per_call: int = 8) -> None:
        """Embed several images (a sequence of H x W x 3 arrays, sizes may differ), up to
        `images_per_call` per compiled call (batches padded to 1, 2, 4, 8, ...: one
        compilation per bucket). Then `predict_batch` takes one prompt set per image and
        returns one result per image (`set_image_batch` in SAM 2); `predict` needs
        `set_image`."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("set_images takes a sequence of images; use set_image for one")
        images = [self._prepare(im, image_format, f"images[{i}]") for i, im in enumerate(images)]
        if not images:
            raise ValueError("set_images needs at least one image")
        if images_per_call < 1:
            raise ValueError(f"images_per_call must be >= 1, got {images_per_call}")
        self.reset_image()
        s = self.model.image_size
        states = []
        for start in range(0, len(images), images_per_call):
            chunk = images[start : start + images_per_call]
            n = _bucket(len(chunk))
            canvas = np.zeros((n, s, s, 3), np.uint8)
            sizes = np.zeros((n, 2), np.int32)
            sizes[:] = s  # padding slots: a full canvas of zeros, dropped below
            resized_shapes = []
            for i, im in enumerate(chunk):
                sizes[i] = fill_canvas(canvas[i], im, self.transform)
                resized_shapes.append(tuple(sizes[i]))
            features = self._embed(self.model.params, canvas, sizes)
            for i, im in enumerate(chunk):
                states.append((features[i : i + 1], tuple(im.shape[:2]), resized_shapes[i]))
        self._batch = states
        self._use(*states[0])
        self.is_image_set = True

    @property
    def num_images(self) -> int:
        """How many images are set: 0, 1 after `set_image`, N after `set_images`."""
        if not self.is_image_set:
            return 0
        return len(self._batch) if self._batch is not None else 1

    def _prepare(self, image, image_format: str, name: str = "image") -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = as_uint8_rgb(image, name)
        return image[..., ::-1] if image_format == "BGR" else image

    def _use(self, features, original_size, input_size) -> None:
        """Make one embedded image the current one."""
        s = self.model.image_size
        self.features = features
        self._terms = None
        self.original_size = tuple(int(v) for v in original_size)
        self.input_size = tuple(int(v) for v in input_size)
        rows, cols = postprocess_matrices(
            (self.low_res_size, self.low_res_size), s, self.input_size, self.original_size
        )
        self._post_rows, self._post_cols = jnp.asarray(rows), jnp.asarray(cols)
        self.is_image_set = True

    def decoder_image_terms(self) -> dict:
        """The current image's first-layer decoder terms, shared by every prompt without a
        mask input (`point_decoder.image_terms`), made once per image."""
        self._require_image()
        if self._terms is None:
            self._terms = self._image_terms(self.model.params, self.features)
        return self._terms

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, (1, C, h, w) as in the reference; after
        `set_images`, all of them, (N, C, h, w)."""
        self._require_image()
        if self._batch is not None:
            return np.concatenate([np.asarray(f) for f, _, _ in self._batch]).transpose(0, 3, 1, 2)
        return np.asarray(self.features).transpose(0, 3, 1, 2)

    def reset_image(self) -> None:
        self.is_image_set = False
        self._batch = None
        self.features = None
        self._terms = None
        self.original_size = None
        self.input_size = None
        self._post_rows = self._post_cols = None

    def _require_image(self):
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # ---------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: str | None = None,
        text_embedding: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt -> (masks (C, H, W), iou_predictions (C,), low_res_logits (C, 256, 256)).

        point_coords (N, 2) as (x, y) pixels of the original image; point_labels (N,) with
        1 foreground, 0 background; box (4,) XYXY; mask_input (1, 256, 256) low-res logits
        from a previous call. text: a phrase ("a red car"), embedded by the predictor's
        `text_encoder`; or text_embedding (D,), a CLIP embedding computed elsewhere. Text
        combines with points and boxes; only models trained with text prompts take it.
        """
        self._require_image()
        if self._batch is not None:
            raise RuntimeError(
                f"{len(self._batch)} images are set (set_images): use predict_batch with one "
                "prompt set per image, or set_image for predict"
            )
        if point_coords is not None:
            point_coords = np.asarray(point_coords)
            if point_coords.ndim != 2:
                raise ValueError(f"point_coords must be (N, 2), got shape {point_coords.shape}")
            point_coords = point_coords[None]
            if point_labels is not None:
                point_labels = np.asarray(point_labels)
                if point_labels.ndim != 1:
                    raise ValueError(f"point_labels must be (N,), got shape {point_labels.shape}")
                point_labels = point_labels[None]
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            box = np.asarray(box)
            if box.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must be (4,) XYXY, got shape {box.shape}")
            box = box.reshape(1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input)
            m = self.low_res_size
            if mask_input.shape != (1, m, m):
                raise ValueError(f"mask_input must be (1, {m}, {m}), got shape {mask_input.shape}")
            mask_input = mask_input[None]
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if text_embedding is not None:
            text_embedding = np.asarray(text_embedding)
            if text_embedding.ndim != 1:
                raise ValueError(f"text_embedding must be (D,), got shape {text_embedding.shape}")
            text_embedding = text_embedding[None]
        masks, iou, low_res = self.predict_batch(
            point_coords,
            point_labels,
            box,
            mask_input,
            multimask_output,
            return_logits,
            texts=None if text is None else [text],
            text_embeddings=text_embedding,
        )
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        texts: list[str] | None = None,
        text_embeddings: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts at once -> (masks (B, C, H, W), iou (B, C), low_res_logits (B, C, 256, 256)).

        After `set_images` (N images): each argument is a sequence of N such arrays (or
        None), one per image, and the result is three lists of N arrays; an image with no
        prompt gets empty (0, C, ...) arrays.

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4) XYXY, mask_input
        (B, 1, 256, 256) or (B, 256, 256); coordinates in the original image frame. texts:
        B phrases, or text_embeddings (B, D) CLIP embeddings (see `predict`).
        """
        self._require_image()
        if self._batch is not None:
            return self._predict_images(
                point_coords,
                point_labels,
                boxes,
                mask_input,
                multimask_output,
                return_logits,
                texts,
                text_embeddings,
            )
        coords, labels, boxes, masks, batch = self._check_prompts(
            point_coords, point_labels, boxes, mask_input
        )
        text, batch = self._check_text(texts, text_embeddings, batch, point_coords, boxes)
        out_masks, out_iou, out_low = [], [], []
        for start in range(0, batch, self.max_batch):
            stop = min(start + self.max_batch, batch)
            masks_c, iou_c, low_c = self._decode_chunk(
                coords, labels, boxes, masks, text, start, stop, multimask_output, return_logits
            )
            out_masks.append(masks_c)
            out_iou.append(iou_c)
            out_low.append(low_c)
        return np.concatenate(out_masks), np.concatenate(out_iou), np.concatenate(out_low)

    def _predict_images(
        self,
        point_coords,
        point_labels,
        boxes,
        mask_input,
        multimask_output,
        return_logits,
        texts,
        text_embeddings,
    ):
        n = len(self._batch)
        args = {
            "point_coords": point_coords,
            "point_labels": point_labels,
            "boxes": boxes,
            "mask_input": mask_input,
            "texts": texts,
            "text_embeddings": text_embeddings,
        }
        for name, value in args.items():
            if value is not None and (isinstance(value, (np.ndarray, str)) or len(value) != n):
                raise ValueError(
                    f"{name}: {n} images are set, so give a sequence of {n} entries (one per "
                    "image, None for none), not "
                    + (
                        f"an array of shape {np.shape(value)}"
                        if isinstance(value, np.ndarray)
                        else f"{len(value)} entries"
                        if not isinstance(value, str)
                        else "a string"
                    )
                )
        out = ([], [], [])
        states = self._batch
        c = 3 if multimask_output else 1
        try:
            for i, state in enumerate(states):
                per_image = {k: (v[i] if v is not None else None) for k, v in args.items()}
                self._batch = None
                self._use(*state)
                if all(v is None for v in per_image.values()):
                    h, w = self.original_size
                    m = self.low_res_size
                    dtype = np.float32 if return_logits else np.bool_
                    results = (
                        np.zeros((0, c, h, w), dtype),
                        np.zeros((0, c), np.float32),
                        np.zeros((0, c, m, m), np.float32),
                    )
                else:
                    try:
                        results = self.predict_batch(
                            multimask_output=multimask_output,
                            return_logits=return_logits,
                            **per_image,
                        )
                    except ValueError as e:
                        raise ValueError(f"image {i}: {e}") from None
                for acc, r in zip(out, results):
                    acc.append(r)
        finally:
            self._batch = states
            self._use(*states[0])
        return out

    def _decode_chunk(
        self, coords, labels, boxes, masks, text, start, stop, multimask_output, return_logits
    ):
        n = stop - start
        padded = _bucket(n)

        def take(x, fill=0):
            if x is None:
                return None
            x = x[start:stop]
            pad = [(0, padded - n)] + [(0, 0)] * (x.ndim - 1)
            return np.pad(x, pad, constant_values=fill)

        valid = None
        if coords is not None:
            num_points = coords.shape[1]
            p = _bucket(num_points)
            c = np.zeros((padded, p, 2), np.float32)
            lab = np.full((padded, p), -1, np.int32)
            valid = np.zeros((padded, p), bool)
            c[:n, :num_points] = coords[start:stop]
            lab[:n, :num_points] = labels[start:stop]
            valid[:n, :num_points] = True
            coords_b, labels_b = c, lab
        else:
            coords_b = labels_b = None
        if masks is None:
            low, iou = self._decode_sparse(
                self.model.params,
                self.decoder_image_terms(),
                coords_b,
                labels_b,
                valid,
                take(boxes),
                text=take(text),
                multimask_output=bool(multimask_output),
            )
        else:
            low, iou = self._decode(
                self.model.params,
                self.features,
                coords_b,
                labels_b,
                valid,
                take(boxes),
                take(masks),
                take(text),
                multimask_output=bool(multimask_output),
                image_pe=self._image_pe,
            )
        out = (
            self._postprocess(
                low, self._post_rows, self._post_cols, return_logits=bool(return_logits)
            ),
            iou,
            low,
        )
        return tuple(np.asarray(x)[:n] for x in jax.device_get(out))

    def _check_prompts(self, point_coords, point_labels, boxes, mask_input):
        h, w = self.original_size
        batch = None

        def agree(n, what):
            nonlocal batch
            if batch is None:
                batch = n
            elif n != batch:
                raise ValueError(f"{what} has batch size {n}, but other prompts have {batch}")

        coords = labels = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
                raise ValueError(f"point_coords must be (B, N, 2) with N >= 1, got {coords.shape}")
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels shape {labels.shape} does not match point_coords "
                    f"{coords.shape} (one label per point)"
                )
            if not np.all(np.isfinite(coords)):
                raise ValueError("point_coords contain NaN or infinite values")
            bad = (
                (coords[..., 0] < 0)
                | (coords[..., 0] > w)
                | (coords[..., 1] < 0)
                | (coords[..., 1] > h)
            )
            if bad.any():
                raise ValueError(
                    f"point_coords outside the {w}x{h} (width x height) image: "
                    f"{coords[bad].tolist()[:5]}; coordinates are (x, y) pixels"
                )
            if not np.isin(labels, VALID_LABELS).all():
                raise ValueError(
                    f"point_labels must be 1 (foreground), 0 (background) or -1 (ignored), "
                    f"got {sorted(set(np.unique(labels).tolist()) - set(VALID_LABELS))}"
                )
            agree(coords.shape[0], "point_coords")
            coords = self.transform.apply_coords(coords, self.original_size).astype(np.float32)
            labels = labels.astype(np.int32)
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"boxes must be (B, 4) XYXY, got shape {boxes.shape}")
            if not np.all(np.isfinite(boxes)):
                raise ValueError("boxes contain NaN or infinite values")
            if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
                raise ValueError("boxes must be XYXY with x0 <= x1 and y0 <= y1")
            out = (boxes[:, [0, 2]] < 0).any(1) | (boxes[:, [0, 2]] > w).any(1)
            out |= (boxes[:, [1, 3]] < 0).any(1) | (boxes[:, [1, 3]] > h).any(1)
            if out.any():
                raise ValueError(
                    f"boxes outside the {w}x{h} (width x height) image: {boxes[out].tolist()[:5]}"
                )
            agree(boxes.shape[0], "boxes")
            boxes = self.transform.apply_boxes(boxes, self.original_size).astype(np.float32)
        masks = None
        if mask_input is not None:
            masks = np.asarray(mask_input, dtype=np.float32)
            m = self.low_res_size
            if masks.ndim == 4 and masks.shape[1] == 1:
                masks = masks[:, 0]
            if masks.ndim != 3 or masks.shape[1:] != (m, m):
                raise ValueError(
                    f"mask_input must be (B, 1, {m}, {m}), got shape {np.shape(mask_input)}"
                )
            agree(masks.shape[0], "mask_input")
        if batch == 0:
            raise ValueError("no prompts: the batch is empty")
        return coords, labels, boxes, masks, batch

    def _check_text(self, texts, text_embeddings, batch, point_coords, boxes):
        """-> (text embeddings (B, D) float32 or None, batch size)."""
        if texts is None and text_embeddings is None:
            return None, 1 if batch is None else batch
        dim = self.model.module.text_embed_dim
        if not dim:
            raise ValueError(
                "this model takes no text prompts (it was not trained with them: "
                "model.text_embed_dim is 0)"
            )
        if texts is not None and text_embeddings is not None:
            raise ValueError("give texts or text_embeddings, not both")
        if texts is not None:
            if isinstance(texts, str):
                raise TypeError("texts must be a list of strings (for one string use predict)")
            if self.text_encoder is None:
                raise ValueError(
                    "text prompts need a CLIP text encoder: SamPredictor(model, text_encoder="
                    "sam_jax.inference.text.ClipEncoder.from_checkpoint(PATH)), or pass "
                    "text_embeddings"
                )
            emb = self.text_encoder.encode_texts(list(texts))
        else:
            emb = np.asarray(text_embeddings, dtype=np.float32)
            if emb.ndim != 2:
                raise ValueError(f"text_embeddings must be (B, D), got shape {emb.shape}")
            if not np.all(np.isfinite(emb)):
                raise ValueError("text_embeddings contain NaN or infinite values")
            if not np.all(np.linalg.norm(emb, axis=-1) > 0):
                raise ValueError("a text embedding is all zeros")
        if emb.shape[1] != dim:
            raise ValueError(f"text embeddings are {emb.shape[1]}-d; this model takes {dim}-d")
        if batch is not None and emb.shape[0] != batch:
            raise ValueError(f"{emb.shape[0]} text prompt(s) for a batch of {batch} other prompts")
        if emb.shape[0] == 0:
            raise ValueError("no prompts: the batch is empty")
        return emb, emb.shape[0]


def _decode(
    module,
    params,
    features,
    coords,
    labels,
    valid,
    boxes,
    masks,
    text,
    multimask_output,
    image_pe=None,
):
    return module.apply(
        {"params": params},
        features,
        coords,
        labels,
        boxes,
        masks,
        multimask_output,
        valid,
        text_embeddings=text,
        image_pe=image_pe,
        method=Sam.decode,
    )


def _postprocess(low, rows, cols, return_logits):
    out = postprocess_masks(low, rows, cols)
    return out if return_logits else out > Sam.mask_threshold
