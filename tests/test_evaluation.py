"""End-to-end evaluation: evaluate.py's main on a COCO fixture and on `synthetic`, parity
of the one-click IoUs with the PyTorch reference, output consistency and resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from absl import flags
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor as RefPredictor

from sam_jax import SamPredictor
from sam_jax.data.sources import DataError
from sam_jax.data.synthetic import make_example
from sam_jax.evaluation import EvalSettings, protocol, run_evaluation, runner
from sam_jax.io.checkpoint import save_converted

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


@pytest.fixture(scope="module")
def entry_point():
    spec = importlib.util.spec_from_file_location("evaluate_entry_point", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_main(entry_point, args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["evaluate.py", *args])
    return entry_point.main(["evaluate.py"])


@pytest.fixture(scope="module")
def predictor(tiny_model):
    """Shared across runs so they reuse its compiled functions."""
    return SamPredictor(tiny_model, max_batch=BATCH)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / runner.RECORDS).read_text().splitlines()]


def _check_consistent(out: Path, num_clicks) -> dict:
    """results.json agrees with records.jsonl, and the records are well formed."""
    results = json.loads((out / runner.RESULTS).read_text())
    records = _records(out)
    assert results["complete"]
    per_dataset: dict = {}
    for r in records:
        per_dataset.setdefault(r["dataset"], []).append(r)
        assert len(r["ious"]) == len(r["oracle_ious"]) == max(num_clicks)
        assert 1 <= len(r["clicks"]) <= max(num_clicks)
        assert r["clicks"][0][2] == 1 and all(c[2] in (0, 1) for c in r["clicks"])
        assert all(o >= i - 1e-9 for i, o in zip(r["ious"], r["oracle_ious"]))
    for name, d in results["datasets"].items():
        recs = per_dataset.get(name, [])
        assert d["num_masks"] == len(recs)
        for n in num_clicks:
            assert d["miou"][str(n)] == pytest.approx(np.mean([r["ious"][n - 1] for r in recs]))
            assert d["oracle_miou"][str(n)] == pytest.approx(
                np.mean([r["oracle_ious"][n - 1] for r in recs])
            )
    mean = results["mean_over_datasets"]
    scored = [d for d in results["datasets"].values() if d["num_masks"]]
    for n in num_clicks:
        assert mean["miou"][str(n)] == pytest.approx(np.mean([d["miou"][str(n)] for d in scored]))
    assert (out / runner.REPORT).is_file()
    return results


def test_main_on_synthetic_with_converted_checkpoint(entry_point, tiny_model, tmp_path):
    ckpt = save_converted(tiny_model.params, tiny_model.config, tmp_path / "ckpt")
    out = tmp_path / "out"
    # The config's generator settings pick the pictures of `synthetic`.
    config = tmp_path / "tiny_small.py"
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from configs import tiny\n\n\n"
        "def get_config():\n"
        "    c = tiny.get_config()\n"
        "    c.data.synthetic_max_objects = 3\n"
        "    c.data.synthetic_size = (192, 224)\n"
        "    return c\n"
    )
    _run_main(
        entry_point,
        [
            f"--config={config}",
            f"--checkpoint={ckpt}",
            "--datasets=synthetic",
            f"--output_dir={out}",
            "--synthetic_images=3",
            "--num_clicks=1,2,3",
            f"--batch_size={BATCH}",
            "--fixed_batch_shape",
        ],
    )
    results = _check_consistent(out, (1, 2, 3))
    miou1 = results["datasets"]["synthetic"]["miou"]["1"]
    assert 0.0 <= miou1 <= 1.0
    assert results["datasets"]["synthetic"]["num_images"] == 3
    expected = sum(len(make_example(i, 0, (192, 224), 3, held_out=True)[1]) for i in range(3))
    assert results["datasets"]["synthetic"]["num_masks"] == expected
    run = json.loads((out / runner.RUN).read_text())
    assert run["synthetic_max_objects"] == 3 and run["synthetic_size"] == [192, 224]
    assert (out / runner.PLOT).stat().st_size > 1000
    assert "| synthetic |" in (out / runner.REPORT).read_text()


def _write_coco_fixture(root: Path):
    """Three synthetic pictures as PNGs with a COCO JSON (RLE, polygons, a crowd region, an
    invalid polygon) and a fourth image entry whose file is corrupt."""
    images, anns, gts = [], [], {}
    ann_id = 100
    (root / "images").mkdir(parents=True)
    for i in range(3):
        image, masks = make_example(i, seed=7)
        h, w = image.shape[:2]
        Image.fromarray(image).save(root / "images" / f"img_{i}.png")
        images.append({"id": i, "file_name": f"img_{i}.png", "height": h, "width": w})
        for m in masks:
            ann_id += 1
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": ann_id, "image_id": i, "segmentation": rle, "iscrowd": 0})
            gts[(str(i), str(ann_id))] = m
        anns.append({"id": 900 + i, "image_id": i, "segmentation": rle, "iscrowd": 1})
    poly = [10, 10, 60, 10, 60, 50, 10, 50]
    anns.append({"id": 950, "image_id": 0, "segmentation": [poly], "iscrowd": 0})
    gts[("0", "950")] = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    ).astype(bool)
    anns.append({"id": 951, "image_id": 1, "segmentation": [[1, 2, 3]], "iscrowd": 0})
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images.append({"id": 3, "file_name": "broken.png", "height": h, "width": w})
    anns.append({"id": 999, "image_id": 3, "segmentation": [poly], "iscrowd": 0})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return gts


def test_main_on_coco_fixture_with_random_tiny_model(entry_point, tmp_path):
    gts = _write_coco_fixture(tmp_path / "coco")
    out = tmp_path / "out"
    ann, imgs = tmp_path / "coco" / "instances.json", tmp_path / "coco" / "images"
    _run_main(
        entry_point,
        [
            f"--config={ROOT / 'configs' / 'tiny.py'}",
            f"--datasets=coco:{ann}:{imgs}",
            f"--output_dir={out}",
            "--num_clicks=1,3",
            f"--batch_size={BATCH}",
            "--fixed_batch_shape",
        ],
    )
    results = _check_consistent(out, (1, 3))
    d = results["datasets"]["coco:instances"]
    assert d["num_masks"] == len(gts)
    assert d["skipped"] == 2  # the corrupt image and the invalid polygon
    assert d["num_images"] == 3  # the images scored: not the corrupt one
    records = _records(out)
    assert {(r["image_id"], r["annotation_id"]) for r in records} == set(gts)
    for r in records:
        # Clicks are in original-image pixels: the first is the GT's farthest-from-boundary
        # point, every later one is on the GT (positive) or off it (negative).
        gt = gts[(r["image_id"], r["annotation_id"])]
        c = protocol.first_click(gt)
        assert r["clicks"][0] == [c.x, c.y, 1]
        for x, y, label in r["clicks"]:
            assert gt[y, x] == bool(label)


def test_one_click_iou_matches_reference(tiny_ref, tiny_model, predictor, tmp_path):
    out = tmp_path / "out"
    settings = EvalSettings(
        datasets=["synthetic"],
        output_dir=str(out),
        num_clicks=(1,),
        synthetic_images=3,
        batch_size=BATCH,
        fixed_batch_shape=True,
    )
    run_evaluation(settings, tiny_model, predictor)
    records = _records(out)
    ref = RefPredictor(tiny_ref)
    checked = 0
    for i in range(3):
        image, masks = make_example(i, 0, held_out=True)
        with torch.no_grad():
            ref.set_image(image)
        for r in records:
            if r["image_id"] != f"synthetic_0_{i}":
                continue
            gt = masks[int(r["annotation_id"])]
            x, y, label = r["clicks"][0]
            with torch.no_grad():
                m, scores, _ = ref.predict(np.array([[x, y]], float), np.array([label]))
            ref_ious = [protocol.mask_iou(mm, gt) for mm in m]
            assert abs(r["ious"][0] - ref_ious[int(np.argmax(scores))]) <= 0.02
            assert abs(r["oracle_ious"][0] - max(ref_ious)) <= 0.02
            checked += 1
    assert checked == len(records) >= 6
    assert max(r["oracle_ious"][0] for r in records) > 0.05  # not a degenerate comparison


def test_resume_after_interruption(tiny_model, predictor, tmp_path, monkeypatch):
    out = tmp_path / "out"
    settings = EvalSettings(
        datasets=["synthetic"],
        output_dir=str(out),
        num_clicks=(1, 2),
        synthetic_images=3,
        batch_size=BATCH,
        fixed_batch_shape=True,
    )
    first = run_evaluation(settings, tiny_model, predictor)
    n_records = len(_records(out))
    # An interruption while the last image was being written: its progress line is
    # missing and its records end in a torn line.
    progress = (out / runner.PROGRESS).read_text().splitlines()
    (out / runner.PROGRESS).write_text("\n".join(progress[:-1]) + "\n")
    with open(out / runner.RECORDS, "a") as f:
        f.write('{"dataset": "synthetic", "image_id": "synth')
    calls = []
    evaluate_sample = runner._evaluate_sample

    def counting(predictor, sample, *args):
        calls.append(sample.image_id)
        return evaluate_sample(predictor, sample, *args)

    monkeypatch.setattr(runner, "_evaluate_sample", counting)
    second = run_evaluation(settings, tiny_model, predictor)
    assert calls == ["synthetic_0_2"]
    assert len(_records(out)) == n_records
    a, b = first["datasets"]["synthetic"], second["datasets"]["synthetic"]
    assert b["miou"] == pytest.approx(a["miou"])
    assert b["oracle_miou"] == pytest.approx(a["oracle_miou"])
    for key in ("num_masks", "num_images", "skipped"):
        assert b[key] == a[key]
    _check_consistent(out, (1, 2))

    other = EvalSettings(
        datasets=["synthetic"],
        output_dir=str(out),
        num_clicks=(1,),
        synthetic_images=3,
        batch_size=BATCH,
        fixed_batch_shape=True,
    )
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(other, tiny_model, predictor)
    other.overwrite = True
    calls.clear()
    run_evaluation(other, tiny_model, predictor)
    assert len(calls) == 3


def test_registry_datasets_through_the_runner(tiny_model, predictor, tmp_path):
    """Every image and mask of the 23 release-layout fixtures is scored, none twice."""
    from test_eval_readers import WRITERS

    expected = {name: write(tmp_path / "data" / name)[0] for name, write in WRITERS.items()}
    out = tmp_path / "out"
    settings = EvalSettings(
        datasets=["all"],
        data_dir=str(tmp_path / "data"),
        output_dir=str(out),
        num_clicks=(1, 2),
        batch_size=BATCH,
        fixed_batch_shape=True,
    )
    results = run_evaluation(settings, tiny_model, predictor)
    assert list(results["datasets"]) == list(WRITERS)
    for name, masks in expected.items():
        got = results["datasets"][name]
        assert got["num_images"] == sum(1 for m in masks.values() if m), name
        assert got["num_masks"] == sum(len(m) for m in masks.values()), name
    assert results["datasets"]["GTEA"]["paper_sam_minus_ritm"] == -21.4
    assert results["mean_over_datasets"]["num_datasets"] == 23
    _check_consistent(out, (1, 2))
    assert "| GTEA | 3 | 0 |" in (out / runner.REPORT).read_text()
    with pytest.raises(DataError, match="not found"):
        run_evaluation(
            EvalSettings(
                datasets=["LVIS"],
                data_dir=str(tmp_path / "nothing"),
                output_dir=str(tmp_path / "o2"),
            ),
            tiny_model,
            predictor,
        )


def test_random_init_builds_the_whole_model_section():
    import ml_collections

    from sam_jax.evaluation import load_model
    from sam_jax.modeling.configs import model_config

    cfg = model_config("tiny")
    cfg.image_size = 128
    model = load_model(ml_collections.ConfigDict(cfg), None, seed=3)
    assert model.image_size == 128 and model.model_type == "tiny"
    with pytest.raises(ValueError, match="--config is needed"):
        load_model(None, None)
