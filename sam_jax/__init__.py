"""SAM (Segment Anything) in JAX/Flax."""

from sam_jax.inference.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.inference.build import SamModel, load_sam, sam_model_registry
from sam_jax.inference.predictor import SamPredictor

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamModel",
    "SamPredictor",
    "load_sam",
    "sam_model_registry",
]
__version__ = "0.1.0"
