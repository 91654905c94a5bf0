"""Checkpoint conversion: name mapping, round trips, the `python -m sam_jax.cli.convert` CLI,
loading through `sam_model_registry`, and rejection of bad checkpoints with no partial
output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import reference_state_dict

from sam_jax import SamPredictor, sam_model_registry
from sam_jax.cli import convert as convert_cli
from sam_jax.io.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    abstract_params,
    convert_state_dict,
    infer_model_type,
    load_converted,
    load_torch_state_dict,
    save_converted,
    to_state_dict,
    torch_key,
)
from sam_jax.modeling.configs import model_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def flat(params) -> dict:
    return flax.traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params))


def assert_params_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for path in fa:
        assert fa[path].dtype == fb[path].dtype, path
        np.testing.assert_array_equal(fa[path], fb[path], err_msg="/".join(path))


def state_dict_of(tiny_ref) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny_ref.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_pth(tiny_ref, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pth") / "sam_tiny.pth"
    torch.save(tiny_ref.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def converted_dir(tiny_pth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "tiny"
    assert convert_cli.main(["--checkpoint", str(tiny_pth), "--output", str(out)]) == 0
    return out


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    rc = convert_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# -------------------------------------------------------------------------- name mapping
@pytest.mark.parametrize(
    "flax_path,expected",
    [
        (
            ("image_encoder", "blocks_3", "attn", "qkv", "kernel"),
            "image_encoder.blocks.3.attn.qkv.weight",
        ),
        (
            ("image_encoder", "blocks_0", "attn", "rel_pos_h"),
            "image_encoder.blocks.0.attn.rel_pos_h",
        ),
        (("image_encoder", "pos_embed"), "image_encoder.pos_embed"),
        (("image_encoder", "neck_1", "scale"), "image_encoder.neck.1.weight"),
        (("image_encoder", "patch_embed", "proj", "bias"), "image_encoder.patch_embed.proj.bias"),
        (
            ("prompt_encoder", "point_embeddings_2", "embedding"),
            "prompt_encoder.point_embeddings.2.weight",
        ),
        (
            ("prompt_encoder", "not_a_point_embed", "embedding"),
            "prompt_encoder.not_a_point_embed.weight",
        ),
        (
            ("prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"),
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        ),
        (
            (
                "mask_decoder",
                "transformer",
                "layers_1",
                "cross_attn_image_to_token",
                "q_proj",
                "bias",
            ),
            "mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.bias",
        ),
        (
            ("mask_decoder", "output_hypernetworks_mlps_3", "layers_2", "kernel"),
            "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight",
        ),
        (
            ("mask_decoder", "output_upscaling_0", "kernel"),
            "mask_decoder.output_upscaling.0.weight",
        ),
    ],
)
def test_torch_key(flax_path, expected):
    assert torch_key(flax_path) == expected


def test_every_parameter_maps_to_a_reference_key(tiny_ref):
    ours = {
        torch_key(p) for p in flax.traverse_util.flatten_dict(abstract_params(model_config("tiny")))
    }
    assert ours == set(tiny_ref.state_dict())


def test_layouts(tiny_ref, tiny_model):
    sd = reference_state_dict(tiny_ref)
    p = tiny_model.params
    # Linear (out, in) -> Dense (in, out)
    np.testing.assert_array_equal(
        p["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"],
        sd["image_encoder.blocks.0.attn.qkv.weight"].T,
    )
    # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    np.testing.assert_array_equal(
        p["image_encoder"]["patch_embed"]["proj"]["kernel"],
        sd["image_encoder.patch_embed.proj.weight"].transpose(2, 3, 1, 0),
    )
    # ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out)
    np.testing.assert_array_equal(
        p["mask_decoder"]["output_upscaling_0"]["kernel"],
        sd["mask_decoder.output_upscaling.0.weight"].transpose(2, 3, 0, 1),
    )
    # Position embedding and relative-position tables keep their layout.
    np.testing.assert_array_equal(p["image_encoder"]["pos_embed"], sd["image_encoder.pos_embed"])


def test_round_trip(tiny_ref):
    sd = reference_state_dict(tiny_ref)
    back = to_state_dict(convert_state_dict(sd, model_config("tiny")))
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_convert_accepts_torch_tensors_and_arrays_alike(tiny_ref):
    config = model_config("tiny")
    assert_params_equal(
        convert_state_dict(tiny_ref.state_dict(), config),
        convert_state_dict(reference_state_dict(tiny_ref), config),
    )


def test_infer_model_type(tiny_ref):
    sd = reference_state_dict(tiny_ref)
    assert infer_model_type(sd) == "tiny"
    assert infer_model_type({k: v for k, v in sd.items() if k != "image_encoder.pos_embed"}) is None


# --------------------------------------------------------------------- CLI + registry
def test_cli_converts_and_registry_loads(converted_dir, tiny_pth, tiny_model, image, predictor):
    assert (converted_dir / CONFIG_FILE).is_file()
    # Converted dir and raw .pth both give exactly the weights of model_from_reference.
    from_dir = sam_model_registry["tiny"](checkpoint=converted_dir)
    from_pth = sam_model_registry["tiny"](checkpoint=tiny_pth)
    for loaded in (from_dir, from_pth):
        assert loaded.model_type == "tiny"
        assert loaded.module == tiny_model.module
        assert_params_equal(loaded.params, tiny_model.params)
    # And the same outputs, through the whole predictor.
    p = SamPredictor(from_dir)
    p.set_image(image)
    np.testing.assert_array_equal(p.get_image_embedding(), predictor.get_image_embedding())
    box = np.array([60, 40, 320, 280])
    for a, b in zip(p.predict(box=box), predictor.predict(box=box), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_reports_success(tiny_pth, tmp_path, capsys):
    rc, out, err = run_cli(
        "--checkpoint", tiny_pth, "--model-type", "tiny", "--output", tmp_path / "o", capsys=capsys
    )
    assert rc == 0, err
    assert "tiny" in out and str(tmp_path / "o") in out
    config, params = load_converted(tmp_path / "o")
    assert config.model_type == "tiny"

    # JSON keeps sequences as lists; compare values, not container types.
    def normalized(c):
        return json.loads(json.dumps(c.to_dict(), default=list))

    assert normalized(config) == normalized(model_config("tiny"))
    assert_params_equal(params, convert_state_dict(torch.load(tiny_pth), model_config("tiny")))


def _subprocess_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_cli_as_subprocess(tiny_pth, tiny_model, tmp_path):
    out = tmp_path / "converted"
    cmd = [sys.executable, "-m", "sam_jax.cli.convert", "--checkpoint", str(tiny_pth)]
    done = subprocess.run(
        [*cmd, "--output", str(out)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "converted" in done.stdout
    assert_params_equal(sam_model_registry["tiny"](checkpoint=out).params, tiny_model.params)
    # Failure: a non-zero exit status and the reason on stderr.
    failed = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli.convert", "--checkpoint", str(tmp_path / "nope.pth")]
        + ["--output", str(tmp_path / "never")],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert failed.returncode != 0
    assert "not found" in failed.stderr and "nope.pth" in failed.stderr
    assert not (tmp_path / "never").exists()


def test_wrapped_state_dict_and_ignored_buffers(tiny_ref, tiny_model, tmp_path):
    sd = state_dict_of(tiny_ref)
    # Fine-tuning scripts save {"model": state_dict}, sometimes with the pixel buffers.
    sd["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    sd["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    path = tmp_path / "wrapped.pth"
    torch.save({"model": sd}, path)
    assert set(load_torch_state_dict(path)) == set(sd)
    assert_params_equal(sam_model_registry["tiny"](checkpoint=path).params, tiny_model.params)


# ------------------------------------------------------------------------------ errors
def _write_bad_checkpoints(tiny_ref, tmp_path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, strings the error message must contain)."""
    cases = {}

    def save(name, obj, *expect):
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        cases[name] = (path, list(expect))

    save("list", [torch.zeros(3), torch.ones(2)], "does not hold a state dict")
    save("tensor", torch.zeros(3, 4), "does not hold a state dict")
    save("non_tensor_values", {"a": 1, "b": "x"}, "does not hold a state dict")

    sd = state_dict_of(tiny_ref)
    del sd["mask_decoder.iou_token.weight"], sd["image_encoder.blocks.1.mlp.lin2.bias"]
    save(
        "missing_keys",
        sd,
        "2 missing key(s)",
        "mask_decoder.iou_token.weight",
        "image_encoder.blocks.1.mlp.lin2.bias",
    )

    sd = state_dict_of(tiny_ref)
    sd["mask_decoder.extra_head.weight"] = torch.zeros(3)
    save("extra_key", sd, "1 unexpected key(s)", "mask_decoder.extra_head.weight")

    sd = state_dict_of(tiny_ref)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    save(
        "wrong_shape",
        sd,
        "1 shape mismatch(es)",
        "mask_decoder.iou_token.weight: checkpoint (1, 32), model expects (1, 64)",
    )

    sd = state_dict_of(tiny_ref)
    del sd["prompt_encoder.no_mask_embed.weight"]
    sd["prompt_encoder.unknown"] = torch.zeros(1)
    sd["image_encoder.neck.0.weight"] = torch.zeros(64, 64, 3, 3)
    save(
        "all_problems_at_once",
        sd,
        "prompt_encoder.no_mask_embed.weight",
        "prompt_encoder.unknown",
        "image_encoder.neck.0.weight: checkpoint (64, 64, 3, 3), model expects (64, 64, 1, 1)",
    )

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(9).bytes(4096))
    cases["corrupt"] = (corrupt, ["not a readable PyTorch checkpoint"])
    cases["nonexistent"] = (tmp_path / "does_not_exist.pth", ["not found"])
    return cases


BAD_CASES = [
    "list",
    "tensor",
    "non_tensor_values",
    "missing_keys",
    "extra_key",
    "wrong_shape",
    "all_problems_at_once",
    "corrupt",
    "nonexistent",
]


@pytest.fixture(scope="module")
def bad_checkpoints(tiny_ref, tmp_path_factory):
    return _write_bad_checkpoints(tiny_ref, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_cli(bad_checkpoints, case, tmp_path, capsys):
    path, expected = bad_checkpoints[case]
    out = tmp_path / "out" / "converted"
    rc, stdout, err = run_cli(
        "--checkpoint", path, "--model-type", "tiny", "--output", out, capsys=capsys
    )
    assert rc != 0
    assert err.startswith("error:")
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert "converted" not in stdout
    # Nothing written: no output dir and no leftover temporary sibling.
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_registry(bad_checkpoints, case):
    path, expected = bad_checkpoints[case]
    with pytest.raises(CheckpointError) as info:
        sam_model_registry["tiny"](checkpoint=path)
    for text in expected:
        assert text in str(info.value)


def test_cli_cannot_infer_model_type(tiny_ref, tmp_path, capsys):
    sd = state_dict_of(tiny_ref)
    del sd["image_encoder.pos_embed"]
    path = tmp_path / "no_pos_embed.pth"
    torch.save(sd, path)
    rc, _, err = run_cli("--checkpoint", path, "--output", tmp_path / "o", capsys=capsys)
    assert rc != 0 and "--model-type" in err
    assert not (tmp_path / "o").exists()


def test_cli_wrong_model_type(tiny_pth, tmp_path, capsys):
    rc, _, err = run_cli(
        "--checkpoint", tiny_pth, "--model-type", "vit_b", "--output", tmp_path / "o", capsys=capsys
    )
    assert rc != 0
    assert "'vit_b'" in err and "missing key(s)" in err and "image_encoder.blocks.11" in err
    assert not (tmp_path / "o").exists()


def test_cli_existing_output_needs_overwrite(tiny_pth, tiny_model, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_cli("--checkpoint", tiny_pth, "--output", out, capsys=capsys)
    assert rc != 0 and "exists" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]

    # --overwrite replaces only a converted checkpoint: this folder is refused, untouched
    rc, _, err = run_cli("--checkpoint", tiny_pth, "--output", out, "--overwrite", capsys=capsys)
    assert rc != 0 and "is not a converted checkpoint (it holds keep.txt)" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]

    (out / "keep.txt").unlink()  # an empty folder holds nothing to lose
    rc, _, err = run_cli("--checkpoint", tiny_pth, "--output", out, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert_params_equal(sam_model_registry["tiny"](checkpoint=out).params, tiny_model.params)
    # and a converted checkpoint is replaced, leaving no temporary or old copy beside it
    rc, _, err = run_cli("--checkpoint", tiny_pth, "--output", out, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert_params_equal(sam_model_registry["tiny"](checkpoint=out).params, tiny_model.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_save_converted_refuses_existing_dir(tiny_model, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_converted(tiny_model.params, tiny_model.config, out)
    assert list(out.iterdir()) == []


class _FailingConfig:
    """Stands in for a config whose serialization fails after the params are written."""

    def to_dict(self):
        raise RuntimeError("simulated failure while writing the config")


def test_save_converted_failure_leaves_nothing(tiny_model, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="simulated"):
        save_converted(tiny_model.params, _FailingConfig(), out)
    assert list(tmp_path.iterdir()) == []  # no output and no temporary sibling

    # With overwrite, a failed write keeps the existing checkpoint intact.
    save_converted(tiny_model.params, tiny_model.config, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RuntimeError, match="simulated"):
        save_converted(tiny_model.params, _FailingConfig(), out, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
    assert_params_equal(load_converted(out)[1], tiny_model.params)


def test_registry_rejects_dir_of_another_model_type(converted_dir):
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, not 'vit_b'"):
        sam_model_registry["vit_b"](checkpoint=converted_dir)


def test_registry_rejects_pth_of_another_model_type(tiny_pth):
    with pytest.raises(CheckpointError, match="does not fit model type 'vit_b'") as info:
        sam_model_registry["vit_b"](checkpoint=tiny_pth)
    assert "image_encoder.blocks.11.attn.qkv.weight" in str(info.value)


def test_registry_rejects_plain_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a converted checkpoint"):
        sam_model_registry["tiny"](checkpoint=tmp_path)


def test_registry_rejects_unreadable_config(converted_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG_FILE).write_text("{not json")
    (broken / "params").symlink_to(converted_dir / "params")
    with pytest.raises(CheckpointError, match="cannot read model config"):
        sam_model_registry["tiny"](checkpoint=broken)


# ------------------------------------------------------------------------ random init
def test_random_init_is_deterministic():
    a = sam_model_registry["tiny"]()
    b = sam_model_registry["tiny"]()
    assert_params_equal(a.params, b.params)
    c = sam_model_registry["tiny"](seed=1)
    fa, fc = flat(a.params), flat(c.params)
    assert fa.keys() == fc.keys()
    assert not np.array_equal(
        fa[("image_encoder", "blocks_0", "attn", "qkv", "kernel")],
        fc[("image_encoder", "blocks_0", "attn", "qkv", "kernel")],
    )
    # Shapes match the abstract tree the converter checks against.
    expected = flax.traverse_util.flatten_dict(abstract_params(model_config("tiny")))
    assert {k: v.shape for k, v in fa.items()} == {k: v.shape for k, v in expected.items()}


def test_overrides(converted_dir, tiny_model):
    # From a converted checkpoint: a random init would compile the whole model (~10 s).
    m = sam_model_registry["tiny"](checkpoint=converted_dir, dtype="bfloat16")
    assert m.config.dtype == "bfloat16" and m.module.dtype == jnp.bfloat16
    assert_params_equal(m.params, tiny_model.params)  # params stay float32
    with pytest.raises(ValueError, match=r"unknown model config keys \['not_a_key'\]"):
        sam_model_registry["tiny"](checkpoint=converted_dir, not_a_key=1)


def test_default_registry_entry_is_vit_h():
    assert sam_model_registry["default"].args == ("vit_h",)


def test_resolve_is_the_one_reading_of_a_checkpoint_path(tmp_path):
    from sam_jax.io import resolve

    kind = resolve.checkpoint_kind
    assert kind(None) == kind("") == resolve.RANDOM
    with pytest.raises(CheckpointError, match="not found"):
        kind(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a converted checkpoint .* nor a training"):
        kind(tmp_path)
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"")
    assert kind(pth) == resolve.PTH
    (tmp_path / "conv" / "params").mkdir(parents=True)
    (tmp_path / "conv" / "sam_config.json").write_text("{}")
    assert kind(tmp_path / "conv") == resolve.CONVERTED
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "sam_config.json").write_text("{}")
    assert kind(tmp_path / "run") == resolve.WORKDIR

    config, params = resolve.resolve(None, "tiny", seed=3)
    assert config.model_type == "tiny"
    save_converted(params, config, tmp_path / "tiny")
    loaded_config, loaded = resolve.resolve(tmp_path / "tiny")  # the directory's own type
    assert loaded_config.model_type == "tiny"
    np.testing.assert_array_equal(
        loaded["image_encoder"]["pos_embed"], params["image_encoder"]["pos_embed"]
    )
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, not 'vit_b'"):
        resolve.resolve(tmp_path / "tiny", "vit_b")
    with pytest.raises(ValueError, match="needs a model type"):
        resolve.resolve(None)
