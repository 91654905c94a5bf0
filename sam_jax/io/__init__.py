"""Checkpoint formats: the official PyTorch `.pth` files, converted directories, training
workdirs, MAE-pretrained encoders and CLIP checkpoints; `resolve` says what a path is."""
