"""The data inventory (`evaluate.py --inventory`) and the checks a run makes before it starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_readers import WRITERS

from sam_jax.data.sources import DataError
from sam_jax.evaluation import inventory, registry
from sam_jax.evaluation.runner import EvalSettings, open_datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """All 23 datasets in their release layouts; returns (root, {name: (images, masks)})."""
    root = tmp_path_factory.mktemp("releases")
    counts = {}
    for name, write in WRITERS.items():
        expected, _ = write(root / name)
        counts[name] = (sum(1 for m in expected.values() if m), sum(map(len, expected.values())))
    return root, counts


def test_inventory_counts_every_dataset_of_the_tree(tree):
    root, counts = tree
    rows = inventory.take_inventory(["all"], root)
    assert [r.name for r in rows] == list(registry.DATASETS)
    for row in rows:
        images, masks = counts[row.name]
        assert row.status == "warn", (row.name, row.problems)  # tiny copies: counts are off
        assert row.images == images, row.name
        # the index counts annotations; a fixture may hold one that fails to decode
        assert masks <= row.masks <= masks + 1, row.name
        assert not row.masks_estimated
        assert row.layout, row.name
        assert row.paper_masks == registry.DATASETS[row.name].paper_masks
        assert inventory.count_warning(row) is not None
    text = inventory.format_table(rows)
    assert "LVIS" in text and "paper: 9642" in text


def test_inventory_estimates_masks_from_a_sample_of_label_maps(tree):
    root, counts = tree
    (row,) = inventory.take_inventory(["iShape"], root, sample_images=1)
    assert row.masks_estimated and row.masks > 0
    (row,) = inventory.take_inventory(["iShape"], root, sample_images=0)
    assert not row.masks_estimated and row.masks == counts["iShape"][1]


def test_missing_and_empty_folders_are_one_line_each(tmp_path):
    (tmp_path / "GTEA").mkdir()
    rows = inventory.take_inventory(["DRAM", "GTEA", "synthetic"], tmp_path)
    assert [r.status for r in rows] == ["error", "error", "ok"]
    assert rows[0].problems[0].startswith("DRAM:") and "not found" in rows[0].problems[0]
    assert rows[1].problems[0].startswith("GTEA:")
    assert "\n" not in rows[0].problems[0]


def test_corrupt_annotation_file_is_named(tmp_path):
    WRITERS["TimberSeg"](tmp_path / "TimberSeg")
    ann = tmp_path / "TimberSeg" / "original" / "coco_annotation.json"
    ann.write_text('{"images": [')
    (row,) = inventory.take_inventory(["TimberSeg"], tmp_path)
    assert row.status == "error" and row.masks == 0
    assert any("coco_annotation.json" in p for p in row.problems), row.problems
    # and a run refuses to start on it, naming the dataset and the file
    settings = EvalSettings(datasets=["TimberSeg"], output_dir=str(tmp_path / "out"))
    settings.data_dir = str(tmp_path)
    with pytest.raises(DataError, match=r"TimberSeg: no masks found .*coco_annotation\.json"):
        open_datasets(settings)
    settings.allow_empty = True
    assert open_datasets(settings)["TimberSeg"].samples == []


def test_a_run_warns_when_counts_are_far_from_the_papers(tree, caplog):
    root, _ = tree
    settings = EvalSettings(datasets=["PIDRay"], output_dir="unused", data_dir=str(root))
    with caplog.at_level("WARNING"):
        opened = open_datasets(settings)
    assert list(opened) == ["PIDRay"]
    assert "PIDRay: found 1 masks (paper: 8892)" in caplog.text


def test_evaluate_inventory_command(tree, tmp_path):
    root, counts = tree
    cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "--inventory",
        f"--data_dir={root}",
        "--datasets=LVIS,STREETS,DRAM,NotThere",
        f"--output_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "unknown dataset 'NotThere'" in proc.stdout
    assert "error: no masks found for NotThere" in proc.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "inventory.json").read_text())}
    for name in ("LVIS", "STREETS", "DRAM"):
        assert rows[name]["images"] == counts[name][0], rows[name]
        assert rows[name]["status"] == "warn"
