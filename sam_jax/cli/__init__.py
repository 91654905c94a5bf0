"""Command-line tools, each run as `python -m sam_jax.cli.NAME`: segment (one picture from
prompts), amg (automatic mask generation over a folder), convert (a `.pth` to a converted
directory)."""
