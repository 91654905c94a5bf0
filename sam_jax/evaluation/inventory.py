"""What a data folder holds for each evaluation dataset, before any model work.

`take_inventory` indexes every requested dataset with its reader and counts its images and
masks beside the paper's Table 7, naming the layout the reader recognised and the problems
it met (missing folders or files, unreadable annotations). It loads no model, so a
researcher who has just extracted the releases learns in seconds per dataset what is
wrong with a copy, and `evaluate.py` runs the same check before a long run: a dataset with
no masks stops the run before it starts, and a count far from the paper's is warned about.

Masks are counted from the annotation index where it knows them (COCO-style JSON, one file
per mask); where counting needs the label images decoded (label maps), at most
`sample_images` of them are decoded, in a seeded random order, and the total is
extrapolated (marked as an estimate).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sam_jax.data.sources import DataError
from sam_jax.evaluation import registry
from sam_jax.evaluation.readers import Dataset

log = logging.getLogger(__name__)

# A count further than this from the paper's Table 7 is worth a warning: a missing part of
# the release, another split, or a reader that does not match the copy.
COUNT_TOLERANCE = 0.10


@dataclasses.dataclass
class InventoryRow:
    name: str
    status: str  # "ok", "warn" (counts off the paper's, or problems met) or "error"
    layout: str = ""
    images: int = 0  # images with at least one mask
    masks: int = 0
    masks_estimated: bool = False  # images and masks extrapolated from a sample
    paper_images: int | None = None
    paper_masks: int | None = None
    skipped: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def expand_entries(entries: Iterable[str]) -> list[str]:
    """`all` stands for the 23 registry datasets; blanks are dropped, order kept."""
    out: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if entry.lower() == "all":
            out.extend(n for n in registry.DATASETS if n not in out)
        elif entry and entry not in out:
            out.append(entry)
    return out


def count_masks(dataset: Dataset, sample_images: int = 300, seed: int = 0) -> tuple[int, int, bool]:
    """(masks, images with at least one mask, estimated). Samples whose count the index
    knows are summed; of the others, at most `sample_images` are decoded and the rest
    extrapolated from them. A sample that cannot be read counts as a problem of the
    dataset and as no masks."""
    known = [s for s in dataset.samples if s.num_masks is not None]
    unknown = [s for s in dataset.samples if s.num_masks is None]
    masks = sum(s.num_masks for s in known)
    images = sum(1 for s in known if s.num_masks)
    if not unknown:
        return masks, images, False
    estimated = 0 < sample_images < len(unknown)
    if estimated:
        order = np.random.default_rng(seed).permutation(len(unknown))[:sample_images]
        chosen = [unknown[i] for i in sorted(order)]
    else:
        chosen = unknown
    counted_masks = counted_images = 0
    for sample in chosen:
        try:
            n = sample.count_masks()
        except Exception as e:  # any unreadable label: a problem to report, not a crash
            message = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            dataset.problems.append(f"{sample.image_id}: {message}")
            continue
        counted_masks += n
        counted_images += 1 if n else 0
    if estimated:
        scale = len(unknown) / len(chosen)
        counted_masks, counted_images = round(counted_masks * scale), round(counted_images * scale)
    return masks + counted_masks, images + counted_images, estimated


def inventory_row(dataset: Dataset, seconds: float, sample_images: int = 300) -> InventoryRow:
    spec = registry.lookup(dataset.name)
    masks, images, estimated = count_masks(dataset, sample_images)
    row = InventoryRow(
        name=dataset.name,
        status="ok",
        layout=dataset.layout or (spec.fmt if spec else ""),
        images=images,
        masks=masks,
        masks_estimated=estimated,
        paper_images=spec.paper_images if spec else None,
        paper_masks=spec.paper_masks if spec else None,
        skipped=dataset.skipped,
        problems=list(dataset.problems[:20]),
    )
    if masks == 0:
        row.status = "error"
        row.problems.insert(0, f"{dataset.name}: no masks found")
    elif row.problems or row.skipped or count_warning(row):
        row.status = "warn"
    row.seconds = seconds
    return row


def count_warning(row: InventoryRow) -> str | None:
    """A sentence when the images or masks found are more than COUNT_TOLERANCE off the
    paper's Table 7 (None for datasets the paper has no counts for).

    The paper subsampled datasets of over 15k masks to about 10k by image, so for those its
    image count is a subsample: only fewer masks than the paper's are then a sign of a
    missing part.
    """
    if row.paper_masks is None:
        return None
    off = []
    for what, found, paper in (
        ("masks", row.masks, row.paper_masks),
        ("images", row.images, row.paper_images),
    ):
        if not paper or abs(found - paper) <= COUNT_TOLERANCE * paper:
            continue
        if found > paper and row.masks > 15000:
            continue  # the paper's figure is after its subsampling
        off.append(f"{found} {what} (paper: {paper})")
    if not off:
        return None
    return f"{row.name}: found " + ", ".join(off) + f", more than {COUNT_TOLERANCE:.0%} off"


def take_inventory(
    entries: Iterable[str],
    data_dir: str | Path | None,
    sample_images: int = 300,
    open_options: dict | None = None,
) -> list[InventoryRow]:
    """One row per dataset entry (see `registry.open_dataset`). A dataset that cannot be
    opened (missing folder, no annotation file) gives an "error" row naming the reason;
    the other datasets are still counted."""
    rows = []
    for entry in expand_entries(entries):
        start = time.monotonic()
        try:
            name, dataset = registry.open_dataset(entry, data_dir, **(open_options or {}))
        except (DataError, ValueError) as e:
            spec = registry.lookup(entry)
            rows.append(
                InventoryRow(
                    name=spec.name if spec else entry,
                    status="error",
                    paper_images=spec.paper_images if spec else None,
                    paper_masks=spec.paper_masks if spec else None,
                    problems=[str(e).splitlines()[0]],
                    seconds=time.monotonic() - start,
                )
            )
            continue
        dataset.name = name
        rows.append(inventory_row(dataset, time.monotonic() - start, sample_images))
        rows[-1].seconds = time.monotonic() - start
    return rows


def format_table(rows: list[InventoryRow]) -> str:
    """A plain-text table (one line per dataset, then its problems indented)."""

    def num(v, est=False):
        if v is None:
            return "-"
        return f"~{v}" if est else str(v)

    header = ("dataset", "status", "images", "paper", "masks", "paper", "layout")
    table = [header] + [
        (
            r.name,
            r.status,
            num(r.images),
            num(r.paper_images),
            num(r.masks, r.masks_estimated),
            num(r.paper_masks),
            r.layout,
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
    lines = []
    for i, line in enumerate(table):
        cells = [
            str(c).ljust(w) if j in (0, 1) else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(line[:-1], widths))
        ]
        lines.append("  ".join(cells + [line[-1]]).rstrip())
        if i == 0:
            continue
        row = rows[i - 1]
        warning = count_warning(row) if row.status != "error" else None
        notes = ([warning] if warning else []) + row.problems[:5]
        if row.skipped:
            notes.append(f"{row.skipped} entries skipped while indexing")
        lines.extend(f"    - {n}" for n in notes)
    return "\n".join(lines)
