"""Resizing images, coordinates and boxes so the longest image side equals the model
input size (reference `ResizeLongestSide`; images resized with PIL bilinear, as the
reference's torchvision call on a PIL image does)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def get_preprocess_shape(old_h: int, old_w: int, long_side_length: int) -> tuple[int, int]:
    scale = long_side_length * 1.0 / max(old_h, old_w)
    new_h, new_w = old_h * scale, old_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


class ResizeLongestSide:
    def __init__(self, target_length: int):
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (h, w, 3) with max(h, w) == target_length."""
        h, w = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) x/y in the original image -> the resized frame (float64)."""
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=np.float64, copy=True)
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) XYXY boxes in the original image -> (N, 4) in the resized frame."""
        return self.apply_coords(np.reshape(boxes, (-1, 2, 2)), original_size).reshape(-1, 4)
