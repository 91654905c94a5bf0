"""Convert an official SAM `.pth` checkpoint into a directory that loads without torch.

    python -m sam_jax.cli.convert --checkpoint sam_vit_b_01ec64.pth --model-type vit_b \
        --output converted/vit_b
"""

from __future__ import annotations

import argparse
import math
import sys

from sam_jax.io.checkpoint import (
    CheckpointError,
    check_output_dir,
    convert_state_dict,
    infer_model_type,
    load_torch_state_dict,
    save_converted,
)
from sam_jax.modeling.configs import MODEL_TYPES, model_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam_jax.cli.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="PyTorch .pth state dict")
    parser.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        help="model type (default: inferred from the checkpoint)",
    )
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it is a converted checkpoint (anything else is refused)",
    )
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output, args.overwrite)  # before the (slow) conversion
        state_dict = load_torch_state_dict(args.checkpoint)
        model_type = args.model_type or infer_model_type(state_dict)
        if model_type is None:
            raise CheckpointError(
                f"cannot infer the model type of {args.checkpoint}; pass --model-type"
            )
        params = convert_state_dict(state_dict, model_config(model_type))
        out = save_converted(params, model_config(model_type), args.output, args.overwrite)
    except (CheckpointError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(math.prod(v.shape) for v in state_dict.values())  # tensor.size is a method
    print(f"converted {args.checkpoint} ({model_type}, {n / 1e6:.2f}M values) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
