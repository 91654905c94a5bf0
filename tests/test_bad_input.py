"""Bad input on the command lines and in the library: every case gets a clear message and
a non-zero exit where it is an error, and nothing already written is lost.

One section per kind of bad input: a non-8-bit image, an image that yields no masks, a
--overwrite onto a directory that is not a converted checkpoint, a damaged newest training
checkpoint, a dataset that yields no masks, and configuration mistakes; and results.md,
which puts the paper's mean only beside a run it is comparable to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import amg, segment
from sam_jax.data.decode import decode_image, load_image
from sam_jax.data.sources import DataError
from sam_jax.evaluation import readers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ and tests/ as packages


# ------------------------------------------------------------------ non-8-bit images
def _scaled(values16: np.ndarray) -> np.ndarray:
    return np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


@pytest.fixture(scope="module")
def deep_images(tmp_path_factory):
    """16-bit grey (PIL and OpenCV), 16-bit colour (OpenCV), float in [0, 1] and float out
    of range, with the 8-bit RGB each should decode to (None: refused)."""
    folder = tmp_path_factory.mktemp("deep")
    rng = np.random.default_rng(0)
    grey = rng.integers(1000, 30000, (24, 32)).astype(np.uint16)  # max far below 65535
    colour = rng.integers(0, 65536, (24, 32, 3)).astype(np.uint16)
    Image.fromarray(grey).save(folder / "grey16_pil.png")
    cv2.imwrite(str(folder / "grey16_cv2.png"), grey)
    cv2.imwrite(str(folder / "rgb16_cv2.png"), colour[:, :, ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(folder / "rgb16_cv2.tif"), colour[:, :, ::-1])
    unit = rng.uniform(0, 1, (24, 32)).astype(np.float32)
    Image.fromarray(unit).save(folder / "float_unit.tif")
    Image.fromarray(unit * 4000).save(folder / "float_big.tif")
    grey_rgb = np.repeat(_scaled(grey)[:, :, None], 3, axis=2)
    return folder, {
        "grey16_pil.png": grey_rgb,
        "grey16_cv2.png": grey_rgb,
        "rgb16_cv2.png": _scaled(colour),
        "rgb16_cv2.tif": _scaled(colour),
        "float_unit.tif": np.repeat(np.round(unit * 255).astype(np.uint8)[:, :, None], 3, 2),
        "float_big.tif": None,
    }


def test_deep_images_are_scaled_by_bit_depth_everywhere(deep_images):
    """The one decoder, as the data pipeline, the evaluation readers and `segment` reach it:
    16-bit values become v * 255 / 65535 (16-bit colour: PIL keeps the high byte, within
    one level), never clipped to white nor stretched to the image's maximum."""
    folder, expected = deep_images
    for name, want in expected.items():
        path = folder / name
        if want is None:
            continue
        readers_of = {
            "decode_image(path)": lambda p: decode_image(p),
            "decode_image(bytes)": lambda p: decode_image(p.read_bytes(), p.name),
            "data pipeline": lambda p: load_image(("file", str(p))),
            "evaluation reader": readers.read_rgb,
            "evaluation reader (bytes)": lambda p: readers.read_rgb_bytes(p.read_bytes(), "x"),
            "segment": segment.load_image,
        }
        for who, read in readers_of.items():
            got = read(path)
            assert got.dtype == np.uint8 and got.shape == want.shape, (name, who)
            diff = np.abs(got.astype(int) - want.astype(int)).max()
            assert diff <= (1 if "rgb16" in name else 0), (name, who, diff)
    grey = decode_image(folder / "grey16_pil.png")
    assert grey.max() < 120  # 30000 / 65535 of white: not clipped, not stretched


def test_images_without_a_white_level_are_refused(deep_images, tmp_path, capsys):
    folder, _ = deep_images
    bad = folder / "float_big.tif"
    for read in (decode_image, readers.read_rgb, lambda p: load_image(("file", str(p)))):
        with pytest.raises(DataError, match=r"float_big.tif is 32-bit float with values in"):
            read(bad)
    # `segment`: one error line, exit status 1, nothing written
    out = tmp_path / "mask.png"
    code = segment.main(["--model-type", "tiny", "--image", str(bad), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: image ") and "32-bit float" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_amg_reads_deep_images_and_reports_refused_ones(deep_images, tmp_path, capsys):
    folder, _ = deep_images
    out = tmp_path / "out"
    args = ["--model-type", "tiny", "--points-per-side", "2", "--pred-iou-thresh", "0"]
    code = amg.main(["--input", str(folder), "--output", str(out), *args])
    captured = capsys.readouterr()
    assert code == 1  # one file refused
    assert "done: 5 image(s), skipped: 1" in captured.out
    assert "float_big.tif" in captured.out and "32-bit float" in captured.err
    assert len(list(out.iterdir())) == 5


# ------------------------------------------------------------- images with no masks
def test_amg_says_why_an_image_gave_no_masks(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / "flat.png")
    out = tmp_path / "out"
    code = amg.main(
        ["--input", str(folder), "--output", str(out), "--model-type", "tiny"]
        + ["--points-per-side", "4", "--pred-iou-thresh", "0.99"]
    )
    captured = capsys.readouterr()
    assert code == 0  # no masks is an answer, not an error
    line = next(x for x in captured.err.splitlines() if "flat.png: 0 masks" in x)
    assert "of 48 candidates" in line
    assert "48 below pred_iou_thresh=0.99" in line and "best predicted IoU" in line
    assert "lower --pred-iou-thresh" in line
    assert "1 image(s) gave no masks: flat.png" in captured.out
    assert (out / "flat" / "metadata.csv").read_text().strip() == amg.METADATA_HEADER


def test_generator_stats_add_up(tmp_path):
    from sam_jax import SamAutomaticMaskGenerator, sam_model_registry
    from sam_jax.inference.automatic_mask_generator import describe_stats

    model = sam_model_registry["tiny"]()
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    gen = SamAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, crop_n_layers=1
    )
    records = gen.generate(image)
    s = gen.last_stats
    assert s["candidates"] == 3 * (16 + 4 * 16)
    assert s["below_pred_iou_thresh"] == s["below_stability_score_thresh"] == 0
    assert s["masks"] == len(records)
    assert s["candidates"] - s["at_crop_edge"] - s["duplicates"] == s["masks"]
    assert describe_stats(s).startswith(f"{len(records)} masks (of 240 candidates")


# ----------------------------------------------------------- convert --overwrite
@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    import torch
    from reference import build_reference

    path = tmp_path_factory.mktemp("pth") / "sam_tiny.pth"
    torch.save(build_reference("tiny", seed=0).state_dict(), path)
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_convert_overwrite_replaces_only_a_converted_checkpoint(tiny_pth, tmp_path, capsys):
    from sam_jax.cli import convert

    def run(output, *extra):
        code = convert.main(["--checkpoint", str(tiny_pth), "--output", str(output), *extra])
        captured = capsys.readouterr()
        return code, captured.err

    # a folder holding someone's file
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not mine to delete")
    code, err = run(folder, "--overwrite")
    assert code == 1
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "is not a converted checkpoint (it holds holiday.jpg)" in err
    assert _tree(folder) == {"holiday.jpg": b"not mine to delete"}

    # a file
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    code, err = run(notes, "--overwrite")
    assert code == 1 and "is a file, not a converted checkpoint" in err
    assert notes.read_text() == "keep"

    # a converted checkpoint is replaced; one with something else beside it is not
    ckpt = tmp_path / "converted"
    assert run(ckpt)[0] == 0
    assert run(ckpt, "--overwrite")[0] == 0
    (ckpt / "README.txt").write_text("my notes")
    before = _tree(ckpt)
    code, err = run(ckpt, "--overwrite")
    assert code == 1 and "(it holds README.txt)" in err
    assert _tree(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "notes.txt", "photos"]


# ------------------------------------------------------- a damaged training checkpoint
def _cli(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _steps(workdir: Path) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_train_falls_back_from_a_truncated_checkpoint(tmp_path, capsys):
    from sam_jax.training import checkpoints
    from sam_jax.training import trainer as trainer_lib
    from tests.test_train import small_config

    c = small_config(2)
    c.checkpoint_every_steps = 1
    c.eval.synthetic_images = 0
    trainer_lib.train_and_evaluate(c, tmp_path)
    assert _steps(tmp_path) == [1, 2]
    # truncate the largest data file of the newest checkpoint, as a full disk would
    step_dir = tmp_path / checkpoints.CHECKPOINT_DIR / "2"
    victim = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    damaged = _tree(step_dir)
    capsys.readouterr()

    c = small_config(3)
    c.checkpoint_every_steps = 1
    c.eval.synthetic_images = 0
    result = trainer_lib.train_and_evaluate(c, tmp_path)
    err = capsys.readouterr().err
    assert result["status"] == "finished" and result["step"] == 3
    relative = victim.relative_to(tmp_path)
    line = next(x for x in err.splitlines() if "is unreadable" in x)
    assert line.startswith(f"warning: checkpoint step 2 is unreadable: {relative}: ")
    assert line.endswith("and resuming from step 1")
    # the damaged step is kept aside, byte for byte; training went on from step 1
    aside = tmp_path / checkpoints.UNREADABLE_DIR / "2"
    assert f"moved it to {aside}" in line
    assert _tree(aside) == damaged
    mngr = checkpoints.make_manager(tmp_path)
    assert mngr.all_steps() == [1, 2, 3]
    mngr.close()
    # metrics.jsonl: step 2 of the first run dropped on resume, no step twice
    assert _steps(tmp_path) == [1, 2, 3]


def test_train_with_no_readable_checkpoint_stops_with_one_line(tmp_path):
    from sam_jax.training import checkpoints
    from sam_jax.training import trainer as trainer_lib
    from tests.test_train import small_config

    c = small_config(1)
    c.eval.synthetic_images = 0
    trainer_lib.train_and_evaluate(c, tmp_path)
    metadata = tmp_path / checkpoints.CHECKPOINT_DIR / "1" / "state" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[:100])
    checkpoint_files = _tree(tmp_path / checkpoints.CHECKPOINT_DIR)
    metrics = (tmp_path / "metrics.jsonl").read_text()

    proc = _cli(
        "train.py",
        f"--workdir={tmp_path}",
        "--config.num_train_steps=2",
        "--config.batch_size=2",
        "--config.model.patch_size=16",
        "--config.data.synthetic_images=8",
        "--config.data.num_threads=1",
        "--config.train.masks_per_image=2",
        "--config.train.num_iterations=2",
        "--config.train.num_point_rounds=0",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = _error_lines(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert line.startswith(f"error: no checkpoint in {tmp_path / 'checkpoints'} is readable (")
    assert "step 1: checkpoints/1/state/_METADATA: JSONDecodeError" in line
    assert "Nothing was moved or deleted" in line
    assert _tree(tmp_path / checkpoints.CHECKPOINT_DIR) == checkpoint_files
    assert not (tmp_path / checkpoints.UNREADABLE_DIR).exists()
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


# --------------------------------------------------------- a dataset with no masks
def test_evaluate_refuses_a_malformed_coco_json(tmp_path):
    (tmp_path / "images").mkdir()
    ann = tmp_path / "instances.json"
    ann.write_text('{"images": [{"id": 1, "file_name": "a.png"')  # cut off
    out = tmp_path / "out"
    proc = _cli(
        "evaluate.py",
        "--config=configs/tiny.py",
        f"--datasets=coco:{ann}:{tmp_path / 'images'}",
        f"--output_dir={out}",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = _error_lines(proc.stderr)
    assert line.startswith("error: coco:instances: no masks found (malformed JSON ")
    assert str(ann) in line and "--allow_empty" in line
    assert not (out / "results.json").exists()  # nothing claims to be a result


def test_a_dataset_that_yields_no_masks_fails_the_run_and_keeps_the_others(tmp_path):
    from sam_jax import sam_model_registry
    from sam_jax.evaluation import EvalSettings, run_evaluation, runner

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    ann = tmp_path / "instances.json"
    rle = {"size": [32, 32], "counts": [0, 1024]}
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
                "annotations": [{"id": 5, "image_id": 1, "segmentation": rle, "iscrowd": 0}],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    model = sam_model_registry["tiny"]()
    datasets = ["synthetic", f"coco:{ann}:{tmp_path / 'images'}"]

    def settings(out, allow_empty=False):
        return EvalSettings(
            datasets=datasets,
            output_dir=str(out),
            num_clicks=(1,),
            synthetic_images=1,
            synthetic_size=(64, 80),
            synthetic_max_objects=2,
            allow_empty=allow_empty,
        )

    out = tmp_path / "out"
    with pytest.raises(runner.EmptyDatasetError) as info:
        run_evaluation(settings(out), model)
    message = str(info.value)
    assert message.startswith("coco:instances: 0 masks (1 skipped: 1: corrupt image ")
    assert "images/a.png: not a known image format" in message and "--allow_empty" in message
    results = json.loads((out / runner.RESULTS).read_text())
    assert results["complete"] is False
    assert results["empty_datasets"] == ["coco:instances"]
    assert results["datasets"]["synthetic"]["num_masks"] > 0  # the other dataset's results
    assert (out / runner.RECORDS).read_text().count('"dataset": "synthetic"') > 0

    # asked to go on: the same run completes, resuming the finished images
    results = run_evaluation(settings(out, allow_empty=True), model)
    assert results["complete"] is True
    assert results["datasets"]["coco:instances"]["num_masks"] == 0


# ------------------------------------------------------------ configuration mistakes
CONFIG_MISTAKES = [
    (["--config.batch_size=0"], "error: config key batch_size=0: must be an integer >= 1"),
    (
        ["--config.batch_sise=2"],
        "error: unknown config key 'batch_sise' (did you mean 'batch_size'?)",
    ),
    (
        ["--config.data.source=synthtic"],
        "error: config key data.source='synthtic': must be one of 'sa1b', 'coco', 'tfds', "
        "'synthetic' (did you mean 'synthetic'?)",
    ),
    (["--config.optimizer.lr=-1"], "error: config key optimizer.lr=-1.0: must be a number > 0"),
    (
        ["--config.mesh.tensor=0"],
        "error: config key mesh.tensor=0: must be an integer >= 1, or -1 (the remaining devices)",
    ),
    (
        ["--config.mesh.fsdp=3"],
        "error: config key mesh={'data': -1, 'fsdp': 3, 'tensor': 1}: data x fsdp x tensor must "
        "be ",
    ),
    (
        ["--config.optimizer.foo.bar=1"],
        "error: cannot apply --config.optimizer.foo.bar: unknown config key 'foo'",
    ),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal for int()"),
    (["--config=configs/nope.py"], "error: cannot load --config configs/nope.py: [Errno 2]"),
]


@pytest.mark.parametrize("args,expected", CONFIG_MISTAKES, ids=[a[0] for a, _ in CONFIG_MISTAKES])
def test_train_config_mistakes_are_one_line_before_any_work(tmp_path, args, expected):
    workdir = tmp_path / "run"
    proc = _cli("train.py", f"--workdir={workdir}", *args)
    assert proc.returncode == 1
    (line,) = _error_lines(proc.stderr)
    assert line.startswith(expected), line
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()  # no data generated, nothing written


def test_evaluate_config_and_flag_mistakes_are_one_line(tmp_path):
    out = tmp_path / "out"
    for args, expected in [
        (["--config.batch_sise=2"], "error: unknown config key 'batch_sise' (did you mean"),
        (["--batch_size=0"], "error: batch_size must be >= 1, got 0"),
        (["--num_clicks=1,x"], "error: --num_clicks: 'x' is not a whole number of clicks"),
    ]:
        proc = _cli("evaluate.py", "--config=configs/tiny.py", f"--output_dir={out}", *args)
        assert proc.returncode == 1, (args, proc.stderr[-2000:])
        (line,) = _error_lines(proc.stderr)
        assert line.startswith(expected), line
        assert "Traceback" not in proc.stderr
        assert not out.exists()


def test_validate_config_names_every_problem():
    from configs import tiny
    from sam_jax.training.config import ConfigError, validate_config

    config = tiny.get_config()
    validate_config(config, num_devices=1)
    config.unlock()
    config.optimiser = {"lr": 1.0}
    config.train.num_iterations = 1
    with pytest.raises(ConfigError) as info:
        validate_config(config, num_devices=1)
    assert str(info.value) == "unknown config key 'optimiser.lr' (did you mean 'optimizer.lr'?)"
    del config["optimiser"]
    with pytest.raises(ConfigError, match=r"train.num_iterations=1: must be >= train.num_point"):
        validate_config(config, num_devices=1)


# ------------------------------------------------ results.md: comparable figures only
def test_results_md_shows_the_paper_mean_only_beside_the_paper_suite():
    from sam_jax.evaluation import registry, report

    def entry(miou):
        return report.dataset_summary([[miou, miou]], [[miou, miou]], (1, 2), 1, 0, [])

    synthetic = {"synthetic": entry(0.6), "coco:val": entry(0.5)}
    results = {
        "datasets": synthetic,
        "mean_over_datasets": report.mean_over_datasets(synthetic, (1, 2)),
    }
    text = report.markdown(results, (1, 2))
    assert "paper, SAM ViT-H" not in text and "58.1" not in text
    assert "this run's mean is over 2 dataset(s), 0 of them from the paper's suite" in text
    assert "not comparable" in text

    suite = {name: entry(0.5) for name in registry.DATASETS}
    results = {"datasets": suite, "mean_over_datasets": report.mean_over_datasets(suite, (1, 2))}
    text = report.markdown(results, (1, 2))
    assert "| paper, SAM ViT-H, mean of 23 |  |  | 58.1 | - |  |  |" in text
    assert report.covers_paper_suite(suite)
    assert not report.covers_paper_suite({**suite, "synthetic": entry(0.9)})
