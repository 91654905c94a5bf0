"""Running a model: `sam_model_registry`, `SamPredictor`, `SamAutomaticMaskGenerator`, the
mask utilities and transforms they share, overlays, and the CLIP text encoder."""
