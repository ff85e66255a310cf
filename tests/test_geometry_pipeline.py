"""A non-native resolution and overlapping patches through every stage: train, PCA, export, then
`guie verify` with the scorer's torch 1.11 running the artifact; for open_clip's own ViT and for a
timm-backed attention-pool tower (SigLIP's kind, in miniature)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from support import tiny_params_dict, write_params
from torch111 import torch111_or_skip
from typer.testing import CliRunner

from guie.cli import app
from guie.layout import Layout

STAGES = (["download"], ["weights"], ["manifest"], ["train", "head"], ["train", "finetune"], ["pca"], ["export"])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Sources, weights and manifest, shared: geometry shapes nothing before training."""
    root = tmp_path_factory.mktemp("geometry")
    params = write_params(root / "params.yaml", tiny_params_dict())
    for command in STAGES[:3]:
        result = CliRunner().invoke(app, [*command, "--params", str(params), "--root", str(root)])
        assert result.exit_code == 0, (command, result.output, result.exception)
    return root


@pytest.mark.parametrize(
    ("model", "image_size", "patch_stride", "position_key", "tokens", "head_tokens"),
    [
        # one geometry from the start: the fast suite's chains below end in these same geometries
        pytest.param("guie-tiny-vit", 160, 0, "positional_embedding", 5 * 5 + 1, None, marks=pytest.mark.slow),
        pytest.param("guie-tiny-vit", 224, 24, "positional_embedding", 9 * 9 + 1, None, marks=pytest.mark.slow),
        pytest.param("guie-tiny-siglip", 160, 12, "trunk.pos_embed", 13 * 13, None, marks=pytest.mark.slow),
        # the 1st place's curriculum in miniature: the head at 160 px, then the tower at 224 px with
        # overlapping patches; the finetune stage resizes the head stage's grid, and the artifact, PCA
        # and verify follow the last stage's geometry (preprocess.image_size says 160)
        ("guie-tiny-vit", None, None, "positional_embedding", 9 * 9 + 1, 5 * 5 + 1),
        ("guie-tiny-siglip", None, None, "trunk.pos_embed", 13 * 13, 10 * 10),
    ],
)
def test_a_geometry_trains_exports_and_runs_in_the_scorers_torch(
    base, tmp_path, model, image_size, patch_stride, position_key, tokens, head_tokens
):
    python111 = torch111_or_skip()
    root = tmp_path / "project"
    shutil.copytree(base, root)
    raw = tiny_params_dict()
    raw["model"]["name"] = model
    if head_tokens is None:  # one geometry from the start
        raw["preprocess"]["image_size"] = image_size
        raw["model"]["patch_stride"] = patch_stride
    else:  # the chain changes it at its last stage
        raw["preprocess"]["image_size"] = 160
        image_size, patch_stride = (224, 24) if model == "guie-tiny-vit" else (160, 12)
        raw["train"]["stages"]["finetune"].update(image_size=image_size, patch_stride=patch_stride)
    params = write_params(root / "params.yaml", raw)
    common = ["--params", str(params), "--root", str(root)]
    for command in [STAGES[1], *STAGES[3:]]:
        result = CliRunner().invoke(app, [*command, *common])
        assert result.exit_code == 0, (command, result.output, result.exception)
    layout = Layout(root)

    trained = torch.load(layout.trained("finetune"), map_location="cpu", weights_only=True)
    assert trained["tower"][position_key].shape[-2] == tokens
    assert trained["definition"]["image_size"] == image_size and trained["definition"]["patch_stride"] == patch_stride
    if head_tokens is not None:
        head = torch.load(layout.trained("head"), map_location="cpu", weights_only=True)
        assert head["tower"][position_key].shape[-2] == head_tokens
    info = json.loads(layout.export_info.read_text())
    assert (info["image_size"], info["patch_stride"]) == (image_size, patch_stride)

    result = CliRunner().invoke(
        app,
        [
            "verify",
            str(layout.submission),
            "--json",
            "--checkpoint",
            str(layout.trained("finetune")),
            "--runtime",
            str(python111),
            "--no-estimate-time",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"parity with eager pipeline", f"runtime {python111}"} <= names
