"""Training data: on-disk sources (SA-1B, COCO-style, synthetic), decoding and pipelines."""
