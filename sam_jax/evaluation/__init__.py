"""Zero-shot interactive segmentation evaluation (SAM paper section 7.1, appendix D.1).

`registry` lists the 23 datasets and reads them in their release layouts (`readers`),
`protocol` places the clicks, `interactive` runs them through a `SamPredictor`, `runner`
drives a whole evaluation with resumable outputs and `report` writes the summaries.
"""

from sam_jax.evaluation.model import load_model
from sam_jax.evaluation.registry import DATASETS, open_dataset
from sam_jax.evaluation.runner import EvalSettings, run_evaluation

__all__ = [
    "DATASETS",
    "EvalSettings",
    "load_model",
    "open_dataset",
    "run_evaluation",
]
