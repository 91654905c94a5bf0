"""Export a model for deployment without the Python model code.

    python -m sam_jax.cli.export --checkpoint converted/vit_b --model-type vit_b \
        --output exported/vit_b [--format stablehlo] [--dtype float32]

StableHLO (`jax.export`): the image encoder (batch-polymorphic) and the prompt decoder
(symbolic prompt count, points per prompt and image size), with their parameters and a
manifest; run them with `sam_jax.inference.exported.ExportedPredictor`.

ONNX (`--format onnx`, needs `pip install --no-deps -r requirements-onnx.txt`): the prompt
decoder with the reference's ONNX interface (`sam_jax.inference.onnx_export`), for
onnxruntime against an embedding from `SamPredictor.get_image_embedding()`.
With no --checkpoint the model is randomly initialised (the masks mean nothing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from sam_jax.modeling.configs import DTYPES, MODEL_TYPES

FORMATS = ("stablehlo", "onnx")


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing --output unless --overwrite and it is an export (or empty)."""
    from sam_jax.inference.exported import MANIFEST_FILE

    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"--output {path} is a file; give a directory")
    contents = list(path.iterdir())
    if not contents:
        return
    if not overwrite:
        raise FileExistsError(f"--output {path} exists; pass --overwrite to replace it")
    if not (path / MANIFEST_FILE).is_file():
        raise FileExistsError(
            f"--output {path} holds something other than an export "
            f"({len(contents)} entries, no {MANIFEST_FILE}); refusing to replace it"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam_jax.cli.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help=".pth, converted directory or training workdir")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--format", default="stablehlo", choices=FORMATS)
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype of the export"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it holds an export"
    )
    args = parser.parse_args(argv)
    out = Path(args.output)

    from sam_jax import sam_model_registry
    from sam_jax.inference.exported import export_stablehlo
    from sam_jax.inference.onnx_export import export_onnx
    from sam_jax.io.checkpoint import CheckpointError

    try:
        check_output(out, args.overwrite)
        model = sam_model_registry[args.model_type](checkpoint=args.checkpoint, dtype=args.dtype)
        if args.checkpoint is None:
            print(
                "note: no --checkpoint, using random weights (masks are meaningless)",
                file=sys.stderr,
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and moved into place: a failed export leaves nothing.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
            export = export_onnx if args.format == "onnx" else export_stablehlo
            export(model, tmp)
            Path(tmp).chmod(0o755)  # a temporary directory is private; the export is not
            if out.exists():
                shutil.rmtree(out)
            Path(tmp).rename(out)
            Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    except (ValueError, CheckpointError, FileExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(
        f"exported {args.model_type} ({args.dtype}, {args.format}) -> {out} "
        f"({size:.1f} MB: {', '.join(sorted(f.name for f in out.iterdir()))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
