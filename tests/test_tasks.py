"""The zero-shot transfer tasks beyond clicks (`evaluate.py --task=...`): metrics with known
answers, per-box masks against the PyTorch reference predictor, the written results against
pycocotools, resume, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from sam_jax.data.sources import DataError
from sam_jax.evaluation import bsds, coco_tasks, registry, tasks
from sam_jax.evaluation.coco_tasks import DetectionsError

ROOT = Path(__file__).resolve().parents[1]
MIN_MASK_AGREEMENT = 0.999  # as tests/test_predictor.py: pixels equal to the reference's


# ------------------------------------------------------------------------------ fixtures
def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ellipse(cx, cy, rx, ry, n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).reshape(-1).round(1).tolist()]


def make_coco_set(root: Path, first_image: np.ndarray, lvis: bool = False) -> dict:
    """COCO2017/ (or LVISv1/) in the release layout: three real photographs (the first one
    the shared test image), instance polygons of three categories."""
    from skimage import data

    pictures = [
        first_image,
        data.coffee()[::2, ::2],
        data.chelsea()[::2, ::2],
    ]
    name = "LVISv1" if lvis else "COCO2017"
    base = root / name
    images_dir = base / "val2017"
    images_dir.mkdir(parents=True)
    images, anns = [], []
    shapes = [
        [
            (1, _polygon(40, 30, 120, 90)),
            (2, _ellipse(300, 150, 60, 40)),
            (3, _polygon(5, 200, 30, 30)),
        ],
        [(2, _ellipse(100, 90, 50, 35)), (1, _polygon(150, 20, 80, 120))],
        [(3, _ellipse(110, 100, 70, 55)), (1, _polygon(20, 20, 40, 30))],
    ]
    for i, (pic, objs) in enumerate(zip(pictures, shapes, strict=True), start=1):
        file_name = f"{i:012d}.png"
        Image.fromarray(np.ascontiguousarray(pic)).save(images_dir / file_name)
        h, w = pic.shape[:2]
        entry = {"id": i, "height": h, "width": w}
        if lvis:
            entry.update(
                coco_url=f"http://images.cocodataset.org/val2017/{file_name}",
                neg_category_ids=[],
                not_exhaustive_category_ids=[],
            )
        else:
            entry["file_name"] = file_name
        images.append(entry)
        for cat, seg in objs:
            rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
            ann = {
                "id": len(anns) + 1,
                "image_id": i,
                "category_id": cat,
                "segmentation": seg,
                "area": float(mask_api.area(rle)),
                "bbox": [float(v) for v in mask_api.toBbox(rle)],
            }
            if not lvis:
                ann["iscrowd"] = 0
            anns.append(ann)
    cats = [{"id": c, "name": n} for c, n in [(1, "box_thing"), (2, "round thing"), (3, "cat")]]
    if lvis:
        for c, f in zip(cats, "rcf", strict=True):
            c["frequency"] = f
            c["image_count"] = 1
            c["instance_count"] = 1
    gt = {"images": images, "annotations": anns, "categories": cats}
    if lvis:
        (base / "lvis_v1_val.json").write_text(json.dumps(gt))
    else:
        (base / "annotations").mkdir()
        (base / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    return gt


def detections_from(gt: dict, jitter: float = 3.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    dets = []
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy = rng.uniform(-jitter, jitter, 2)
        x0, y0 = max(0.0, x + dx), max(0.0, y + dy)
        W, H = sizes[a["image_id"]]
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x0, y0, min(w, W - x0), min(h, H - y0)],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    return dets


@pytest.fixture
def coco_root(tmp_path, image):
    gt = make_coco_set(tmp_path / "data", image)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(detections_from(gt)))
    return tmp_path / "data", gt, dets_path


def _gt_results(gt: dict, category=None) -> list[dict]:
    h = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    out = []
    for a in gt["annotations"]:
        rle = mask_api.merge(mask_api.frPyObjects(a["segmentation"], *h[a["image_id"]]))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"] if category is None else category,
                "segmentation": rle,
                "score": 1.0,
            }
        )
    return out


# --------------------------------------------------------------------- known answers
def test_perfect_instances_give_ap_one(tmp_path, image):
    gt = make_coco_set(tmp_path, image)
    metrics = coco_tasks.coco_mask_ap(gt, _gt_results(gt))
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)


def test_perfect_lvis_instances_give_ap_one(tmp_path, image):
    gt = make_coco_set(tmp_path, image, lvis=True)
    assert coco_tasks.is_lvis(gt)
    metrics = coco_tasks.instance_metrics(gt, _gt_results(gt))
    assert metrics["AP"] == pytest.approx(1.0)
    # one category per frequency group in the fixture: each group is perfect too
    for k in ("APr", "APc", "APf"):
        assert metrics[k] == pytest.approx(1.0)
    assert "float" not in np.__dict__  # the evaluator's NumPy alias is taken back


def test_half_the_instances_found(tmp_path, image):
    """Only the first image's three masks, perfect, scored over all three images: recall
    3/7 at every IoU threshold; COCOeval's AP is then that recall per category, averaged."""
    gt = make_coco_set(tmp_path, image)
    results = [r for r in _gt_results(gt) if r["image_id"] == 1]
    metrics = coco_tasks.coco_mask_ap(gt, results)
    # per category: found / annotated = 1/3, 1/2, 1/2 (101-point interpolation of a
    # precision-1 curve up to that recall)
    expected = np.mean([np.ceil(100 * r + 1e-9) / 101 for r in (1 / 3, 1 / 2, 1 / 2)])
    assert metrics["AP"] == pytest.approx(expected, abs=1e-3)


def test_proposals_recall(tmp_path, image):
    gt = make_coco_set(tmp_path, image, lvis=True)
    perfect = coco_tasks.proposal_metrics(gt, _gt_results(gt, category=1))
    assert perfect["AR@1000"] == pytest.approx(1.0)
    assert perfect["ARr"] == perfect["ARc"] == perfect["ARf"] == pytest.approx(1.0)
    # drop the proposals of category 1 (rare in the fixture): rare recall 0, the rest 1
    some = [
        r
        for r, a in zip(_gt_results(gt, 1), gt["annotations"], strict=True)
        if a["category_id"] != 1
    ]
    m = coco_tasks.proposal_metrics(gt, some)
    assert m["ARr"] == pytest.approx(0.0)
    assert m["ARc"] == pytest.approx(1.0) and m["ARf"] == pytest.approx(1.0)
    assert m["AR@1000"] == pytest.approx(4 / 7)
    # max_dets caps proposals per image, highest score first
    capped = coco_tasks.proposal_metrics(gt, _gt_results(gt, 1), max_dets=1)
    assert capped["AR@1"] == pytest.approx(3 / 7)


def test_bsds_perfect_and_shifted_edges():
    gt = np.zeros((120, 160), bool)
    gt[60, 10:150] = True
    gt[10:110, 80] = True
    soft = np.zeros(gt.shape)
    soft[gt] = np.linspace(1.0, 0.02, int(gt.sum()))  # a ranking, all of it correct
    perfect = bsds.summarize([bsds.evaluate_image(soft, [gt])])
    assert perfect["ODS"] == pytest.approx(1.0)
    assert perfect["OIS"] == pytest.approx(1.0)
    assert perfect["AP"] >= 0.97  # the curve starts at the recall of the top threshold
    assert perfect["R50"] == pytest.approx(1.0)
    # tolerance: 0.0075 x diagonal = 1.5 px: a one-pixel shift matches, three do not
    assert bsds.summarize([bsds.evaluate_image(np.roll(soft, 1, 0), [gt])])["ODS"] > 0.95
    far = np.zeros(gt.shape)
    far[63, 10:150] = 1.0
    assert bsds.summarize([bsds.evaluate_image(far, [gt])])["ODS"] < 0.6


def test_bsds_hand_worked_counts():
    """One 100-pixel line; the prediction holds 50 of its pixels and 50 elsewhere, so
    P = R = 0.5; against a second annotator with nothing near, R = 50 / 200."""
    gt1 = np.zeros((100, 200), bool)
    gt1[50, 0:100] = True
    pred = np.zeros(gt1.shape)
    pred[50, 0:50] = 1.0
    pred[10, 120:170] = 1.0
    c = bsds.evaluate_image(pred, [gt1], n_thresholds=3, thin_edges=False)
    assert c.cnt_p.tolist() == [50, 50, 50] and c.sum_p.tolist() == [100, 100, 100]
    assert c.cnt_r.tolist() == [50, 50, 50] and c.sum_r.tolist() == [100, 100, 100]
    assert bsds.summarize([c], 3)["ODS"] == pytest.approx(0.5)
    gt2 = np.zeros(gt1.shape, bool)
    gt2[90, 0:100] = True
    c2 = bsds.evaluate_image(pred, [gt1, gt2], n_thresholds=3, thin_edges=False)
    assert c2.cnt_r[0] == 50 and c2.sum_r[0] == 200 and c2.cnt_p[0] == 50
    # one-to-one: a thick prediction matches each ground-truth pixel once
    thick = np.zeros(gt1.shape)
    thick[49:52, 0:100] = 1.0
    c3 = bsds.evaluate_image(thick, [gt1], n_thresholds=1, thin_edges=False)
    assert c3.cnt_r[0] == 100 and c3.cnt_p[0] == 100 and c3.sum_p[0] == 300


def test_thinning_equals_skimage():
    from scipy import ndimage
    from skimage.morphology import thin

    rng = np.random.default_rng(0)
    for _ in range(4):
        m = ndimage.binary_opening(rng.random((70, 90)) > 0.35)
        np.testing.assert_array_equal(bsds.thin(m), thin(m))


def _write_bsds(root: Path, pictures: dict[str, np.ndarray], seed=0) -> None:
    from scipy.io import savemat

    base = root / "BSDS500" / "BSR" / "BSDS500" / "data"
    (base / "images" / "test").mkdir(parents=True)
    (base / "groundTruth" / "test").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, pic in pictures.items():
        Image.fromarray(pic).save(base / "images" / "test" / f"{name}.jpg", quality=95)
        h, w = pic.shape[:2]
        cells = np.empty((1, 3), dtype=object)
        for k in range(3):
            seg = np.ones((h, w), np.uint16)
            y = int(rng.integers(h // 4, 3 * h // 4))
            seg[y:] = 2
            bnd = np.zeros((h, w), np.uint8)
            bnd[y, :] = 1
            cells[0, k] = {"Segmentation": seg, "Boundaries": bnd}
        savemat(base / "groundTruth" / "test" / f"{name}.mat", {"groundTruth": cells})


def test_bsds_ground_truth_as_released(tmp_path):
    _write_bsds(tmp_path, {"100007": np.zeros((40, 60, 3), np.uint8)})
    images, truth = registry.locate_bsds500(tmp_path / "BSDS500")
    maps = bsds.read_ground_truth(truth / "100007.mat")
    assert len(maps) == 3 and maps[0].shape == (40, 60) and maps[0].dtype == bool
    assert all(m.sum() == 60 for m in maps)
    with pytest.raises(DataError, match="missing BSDS ground-truth file"):
        bsds.read_ground_truth(truth / "nope.mat")
    (truth / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="unreadable BSDS ground-truth file .*bad.mat"):
        bsds.read_ground_truth(truth / "bad.mat")


# --------------------------------------------------------------------- instances task
def test_instances_masks_equal_reference_and_ap_equals_pycocotools(
    coco_root, tiny_model, ref_predictor, tmp_path
):
    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data_dir, gt, dets_path = coco_root
    # no detection for image 3: its instances count as missed, as in COCOeval's default
    dets_path.write_text(
        json.dumps([d for d in json.loads(dets_path.read_text()) if d["image_id"] != 3])
    )
    out = tmp_path / "out"
    settings = tasks.TaskSettings(
        task="instances",
        datasets=["COCO2017"],
        output_dir=str(out),
        data_dir=str(data_dir),
        boxes=str(dets_path),
    )
    results = tasks.run_task(settings, tiny_model)
    written = json.loads((out / "instances" / "COCO2017.json").read_text())
    summary = results["datasets"]["COCO2017"]["instances"]
    on_3 = sum(a["image_id"] == 3 for a in gt["annotations"])
    assert summary["num_images"] == 2 and summary["num_masks"] == len(gt["annotations"]) - on_3
    # per-box masks of the first image (the shared test image) against the reference
    dets = [d for d in json.loads(dets_path.read_text()) if d["image_id"] == 1]
    dets.sort(key=lambda d: -d["score"])
    ours = [r for r in written if r["image_id"] == 1]
    assert [r["score"] for r in ours] == [d["score"] for d in dets]
    for d, r in zip(dets, ours, strict=True):
        x, y, w, h = d["bbox"]
        with torch.no_grad():
            ref_masks, _, _ = ref_predictor.predict(
                box=np.array([x, y, x + w, y + h]), multimask_output=False
            )
        mask = mask_api.decode(
            {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        )
        assert mask.shape == ref_masks[0].shape
        assert 0 < ref_masks[0].mean() < 1
        agreement = float((mask.astype(bool) == ref_masks[0]).mean())
        assert agreement >= MIN_MASK_AGREEMENT, agreement
        assert r["category_id"] == d["category_id"]
    # the reported AP is pycocotools' on the written results
    coco = COCO(str(data_dir / "COCO2017" / "annotations" / "instances_val2017.json"))
    ev = COCOeval(coco, coco.loadRes(str(out / "instances" / "COCO2017.json")), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    for i, k in enumerate(coco_tasks.AP_KEYS):
        assert summary[k] == pytest.approx(float(ev.stats[i]), abs=1e-12)
    md = (out / "results.md").read_text()
    assert "## instances" in md and "(46.5)" in md


def test_instances_resume_after_interruption(coco_root, tiny_model, tmp_path, monkeypatch):
    data_dir, gt, dets_path = coco_root
    out = tmp_path / "out"
    settings = dict(
        task="instances",
        datasets=["COCO2017"],
        output_dir=str(out),
        data_dir=str(data_dir),
        boxes=str(dets_path),
    )
    calls = []
    real = coco_tasks.box_masks

    def flaky(predictor, boxes, batch_size=64):
        calls.append(len(boxes))
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped during the second image
        return real(predictor, boxes, batch_size)

    monkeypatch.setattr(coco_tasks, "box_masks", flaky)
    with pytest.raises(KeyboardInterrupt):
        tasks.run_task(tasks.TaskSettings(**settings), tiny_model)
    lines = (out / "instances" / "COCO2017.records.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the first image is kept
    # torn last line from a crash: ignored
    with open(out / "instances" / "COCO2017.records.jsonl", "a") as f:
        f.write('{"image_id": "2", "resu')
    calls.clear()
    monkeypatch.setattr(coco_tasks, "box_masks", real)
    resumed = tasks.run_task(tasks.TaskSettings(**settings), tiny_model)
    straight = tasks.run_task(
        tasks.TaskSettings(**{**settings, "output_dir": str(tmp_path / "straight")}), tiny_model
    )
    a = resumed["datasets"]["COCO2017"]["instances"]
    b = straight["datasets"]["COCO2017"]["instances"]
    assert a["AP"] == b["AP"] and a["num_masks"] == b["num_masks"] == len(gt["annotations"])
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        tasks.run_task(tasks.TaskSettings(**{**settings, "max_images": 1}), tiny_model)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[0].update(image_id=999), r"entry 0: unknown image_id 999"),
        (lambda d: d[1].update(bbox=[10, 10, -5, 20]), r"entry 1: empty or negative box"),
        (lambda d: d[1].update(bbox=[10, 10, 0, 20]), r"entry 1: empty or negative box"),
        (lambda d: d[2].update(score=float("nan")), r"entry 2: score nan is not finite"),
        (lambda d: d[0].update(category_id=77), r"entry 0: unknown category_id 77"),
        (lambda d: d[0].pop("bbox"), r"entry 0: missing bbox"),
        (lambda d: d[0].update(bbox=[5000, 10, 5, 5]), r"entry 0: box .* lies outside image 1"),
    ],
)
def test_bad_detections_name_file_and_entry(coco_root, mutate, message):
    _, gt, dets_path = coco_root
    dets = json.loads(dets_path.read_text())
    mutate(dets)
    dets_path.write_text(json.dumps(dets).replace("NaN", "NaN"))
    with pytest.raises(DetectionsError, match=f"dets.json, {message}"):
        coco_tasks.read_detections(dets_path, gt)


def test_detections_malformed_and_clipped(coco_root, tmp_path):
    _, gt, dets_path = coco_root
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,')
    with pytest.raises(DetectionsError, match="bad.json: malformed JSON"):
        coco_tasks.read_detections(bad, gt)
    with pytest.raises(DetectionsError, match="not found"):
        coco_tasks.read_detections(tmp_path / "missing.json", gt)
    dets = json.loads(dets_path.read_text())
    dets[0]["bbox"] = [-4.0, 10.0, 50.0, 20.0]
    dets_path.write_text(json.dumps(dets))
    by_image = coco_tasks.read_detections(dets_path, gt)
    assert by_image[1].clipped == 1 and by_image[1].boxes[:, 0].min() == 0.0
    scores = by_image[1].scores
    assert np.all(np.diff(scores) <= 0)


def test_cli_reports_bad_detections_in_one_line(coco_root, tmp_path):
    data_dir, _, dets_path = coco_root
    dets = json.loads(dets_path.read_text())
    dets[3]["image_id"] = 4242
    dets_path.write_text(json.dumps(dets))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "--task=instances",
            "--config=configs/tiny.py",
            f"--boxes={dets_path}",
            "--datasets=COCO2017",
            f"--data_dir={data_dir}",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: detections file") and "entry 3: unknown image_id 4242" in last
    assert not (tmp_path / "out" / "instances").exists()  # refused before any model work


# ----------------------------------------------------------------- proposals, edges, text
def test_proposals_task(tmp_path, image, tiny_model):
    make_coco_set(tmp_path / "data", image, lvis=True)
    out = tmp_path / "out"
    settings = tasks.TaskSettings(
        task="proposals",
        datasets=["LVISv1"],
        output_dir=str(out),
        data_dir=str(tmp_path / "data"),
        points_per_side=8,
        max_images=2,
    )
    results = tasks.run_task(settings, tiny_model)
    s = results["datasets"]["LVISv1"]["proposals"]
    assert s["num_images"] == 2
    written = json.loads((out / "proposals" / "LVISv1.json").read_text())
    assert {r["image_id"] for r in written} <= {1, 2}
    per_image = {i: [r["score"] for r in written if r["image_id"] == i] for i in (1, 2)}
    for scores in per_image.values():
        assert len(scores) <= 1000 and scores == sorted(scores, reverse=True)
    # the reported AR is the evaluator's on the written proposals
    gt = json.loads((tmp_path / "data" / "LVISv1" / "lvis_v1_val.json").read_text())
    again = coco_tasks.proposal_metrics(gt, written, image_ids=[1, 2])
    assert s["AR@1000"] == pytest.approx(again["AR@1000"])
    for k in ("ARs", "ARm", "ARl", "ARr", "ARc", "ARf"):
        assert k in s


def test_edges_task(tmp_path, image, tiny_model):
    from skimage import data

    _write_bsds(tmp_path, {"100007": image[:160, :240], "101085": data.coffee()[::4, ::4]})
    out = tmp_path / "out"
    settings = tasks.TaskSettings(
        task="edges",
        datasets=["BSDS500"],
        output_dir=str(out),
        data_dir=str(tmp_path),
    )
    results = tasks.run_task(settings, tiny_model)
    s = results["datasets"]["BSDS500"]["edges"]
    assert s["num_images"] == 2
    for k in ("ODS", "OIS", "AP", "R50"):
        assert 0.0 <= s[k] <= 1.0
    assert 0 < s["ods_threshold"] < 1
    png = np.asarray(Image.open(out / "edges" / "BSDS500" / "100007.png"))
    assert png.shape == (160, 240) and png.dtype == np.uint16 and png.max() > 0
    assert "## edges" in (out / "results.md").read_text()


def test_edges_missing_ground_truth_is_named(tmp_path):
    _write_bsds(tmp_path, {"100007": np.zeros((40, 60, 3), np.uint8)})
    (tmp_path / "BSDS500/BSR/BSDS500/data/groundTruth/test/100007.mat").unlink()
    settings = tasks.TaskSettings(
        task="edges", datasets=["BSDS500"], output_dir=str(tmp_path / "o"), data_dir=str(tmp_path)
    )
    with pytest.raises(DataError, match="ground-truth file.*missing.*100007.mat"):
        tasks.open_all(settings)


class _NameEncoder:
    """Stands in for CLIP: a fixed random unit vector per phrase."""

    def __init__(self, dim):
        self.dim = dim
        self.seen = []

    def encode_texts(self, texts):
        self.seen.extend(texts)
        out = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


def test_text_task(tmp_path, image):
    from sam_jax.evaluation.model import load_model
    from sam_jax.modeling.configs import model_config

    cfg = model_config("tiny")
    cfg.text_embed_dim = 16
    model = load_model(cfg, None, seed=0)
    make_coco_set(tmp_path / "data", image)
    encoder = _NameEncoder(16)
    settings = tasks.TaskSettings(
        task="text",
        datasets=["COCO2017"],
        output_dir=str(tmp_path / "out"),
        data_dir=str(tmp_path / "data"),
        text_template="a photo of a {}",
    )
    s = tasks.run_task(settings, model, text_encoder=encoder)["datasets"]["COCO2017"]["text"]
    assert s["num_masks"] == 7 and s["num_images"] == 3
    assert 0 <= s["miou_text"] <= 1 and 0 <= s["miou_points_1click"] <= 1
    assert "a photo of a round thing" in encoder.seen  # underscores and spaces as words
    assert "a photo of a box thing" in encoder.seen


def test_text_task_needs_a_text_model(tmp_path, image, tiny_model):
    make_coco_set(tmp_path / "data", image)
    settings = tasks.TaskSettings(
        task="text",
        datasets=["COCO2017"],
        output_dir=str(tmp_path / "out"),
        data_dir=str(tmp_path / "data"),
    )
    with pytest.raises(ValueError, match="text_embed_dim is 0"):
        tasks.run_task(settings, tiny_model, text_encoder=_NameEncoder(16))


def test_downstream_datasets_in_inventory(tmp_path, image):
    from sam_jax.evaluation import inventory

    make_coco_set(tmp_path, image)
    make_coco_set(tmp_path, image, lvis=True)
    _write_bsds(tmp_path, {"100007": np.zeros((40, 60, 3), np.uint8)})
    rows = {
        r.name: r for r in inventory.take_inventory(["COCO2017", "LVISv1", "BSDS500"], tmp_path)
    }
    assert rows["COCO2017"].masks == 7 and rows["COCO2017"].images == 3
    assert rows["LVISv1"].masks == 7 and "val2017/" in rows["LVISv1"].layout
    assert rows["BSDS500"].images == 1 and rows["BSDS500"].masks == 3
    assert rows["COCO2017"].paper_images == 5000  # the release's count


def test_task_settings_errors():
    with pytest.raises(ValueError, match="needs --boxes"):
        tasks.TaskSettings(task="instances", datasets=[], output_dir="x")
    with pytest.raises(ValueError, match="unknown task"):
        tasks.TaskSettings(task="nope", datasets=[], output_dir="x")
    s = tasks.TaskSettings(task="edges", datasets=[], output_dir="x")
    assert s.datasets == ["BSDS500"]
    assert not math.isnan(tasks.PAPER["edges"]["BSDS500"]["ODS"])


def test_registry_refuses_overrides_that_change_the_parameters():
    from sam_jax import sam_model_registry

    with pytest.raises(ValueError, match=r"\['text_embed_dim'\] change the parameters"):
        sam_model_registry["tiny"](text_embed_dim=16)
    assert sam_model_registry["tiny"](dtype="float32").config.dtype == "float32"


def test_points_and_instances_share_results(coco_root, tiny_model, tmp_path):
    from sam_jax.evaluation import EvalSettings, run_evaluation

    data_dir, _, dets_path = coco_root
    out = tmp_path / "out"
    points = EvalSettings(
        datasets=["COCO2017"], output_dir=str(out), data_dir=str(data_dir), num_clicks=(1,)
    )
    run_evaluation(points, tiny_model)
    tasks.run_task(
        tasks.TaskSettings(
            task="instances",
            datasets=["COCO2017"],
            output_dir=str(out),
            data_dir=str(data_dir),
            boxes=str(dets_path),
        ),
        tiny_model,
    )
    both = json.loads((out / "results.json").read_text())
    assert "miou" in both["datasets"]["COCO2017"] and "instances" in both["datasets"]["COCO2017"]
    md = (out / "results.md").read_text()
    assert "# Zero-shot interactive segmentation" in md and "## instances" in md
    # a points run again in the same folder (resumed) keeps the instances results
    run_evaluation(points, tiny_model)
    again = json.loads((out / "results.json").read_text())
    assert again["datasets"]["COCO2017"]["instances"] == both["datasets"]["COCO2017"]["instances"]
    assert "## instances" in (out / "results.md").read_text()


def test_cli_instances_end_to_end(coco_root, tmp_path):
    data_dir, _, dets_path = coco_root
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "--task=instances",
        "--config=configs/tiny.py",
        f"--boxes={dets_path}",
        "--datasets=COCO2017",
        f"--data_dir={data_dir}",
        f"--output_dir={out}",
        "--max_images=2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((out / "results.json").read_text())["datasets"]["COCO2017"]["instances"]
    assert s["num_images"] == 2 and set(coco_tasks.AP_KEYS) <= set(s)
    assert "instances" in proc.stderr  # the progress bar
    # the same command again resumes: nothing left to do, same figures
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0
    s2 = json.loads((out / "results.json").read_text())["datasets"]["COCO2017"]["instances"]
    assert s2["AP"] == s["AP"] and s2["masks_per_second"] is None


@pytest.mark.parametrize("direction", ["vertical", "horizontal", "diagonal"])
def test_edge_nms_thins_a_blurred_step(direction):
    from scipy import ndimage

    from sam_jax.evaluation import edges

    yy, xx = np.mgrid[0:48, 0:48]
    step = {"vertical": xx >= 24, "horizontal": yy >= 24, "diagonal": xx + yy > 48}[direction]
    g = edges.sobel_magnitude(ndimage.gaussian_filter(step.astype(float), 1.5))
    g /= g.max()
    thin = edges.edge_nms(g, edges.edge_orientation(g))
    line = thin[24] if direction != "horizontal" else thin[:, 24]
    before = g[24] if direction != "horizontal" else g[:, 24]
    assert (before > 0.05).sum() >= 6  # Sobel of a blurred step: a wide ridge
    assert 1 <= (line > 0.05).sum() <= 2  # one or two pixels across after NMS


def test_edges_unreadable_ground_truth_is_a_named_skip(tmp_path, tiny_model):
    from skimage import data

    _write_bsds(tmp_path, {"1": data.coffee()[::8, ::8], "2": data.chelsea()[::8, ::8]})
    (tmp_path / "BSDS500/BSR/BSDS500/data/groundTruth/test/2.mat").write_bytes(b"garbage")
    settings = tasks.TaskSettings(
        task="edges", datasets=["BSDS500"], output_dir=str(tmp_path / "o"), data_dir=str(tmp_path)
    )
    s = tasks.run_task(settings, tiny_model)["datasets"]["BSDS500"]["edges"]
    assert s["num_images"] == 1 and s["skipped"] == 1
    assert "unreadable BSDS ground-truth file" in s["problems"][0] and "2.mat" in s["problems"][0]
