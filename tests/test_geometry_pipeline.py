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
    ("model", "image_size", "patch_stride", "position_key", "tokens"),
    [
        ("guie-tiny-vit", 160, 0, "positional_embedding", 5 * 5 + 1),
        ("guie-tiny-vit", 224, 24, "positional_embedding", 9 * 9 + 1),
        ("guie-tiny-siglip", 160, 12, "trunk.pos_embed", 13 * 13),  # no class token
    ],
)
def test_a_geometry_trains_exports_and_runs_in_the_scorers_torch(
    base, tmp_path, model, image_size, patch_stride, position_key, tokens
):
    python111 = torch111_or_skip()
    root = tmp_path / "project"
    shutil.copytree(base, root)
    raw = tiny_params_dict()
    raw["preprocess"]["image_size"] = image_size
    raw["model"]["patch_stride"] = patch_stride
    raw["model"]["name"] = model
    params = write_params(root / "params.yaml", raw)
    common = ["--params", str(params), "--root", str(root)]
    for command in [STAGES[1], *STAGES[3:]]:
        result = CliRunner().invoke(app, [*command, *common])
        assert result.exit_code == 0, (command, result.output, result.exception)
    layout = Layout(root)

    trained = torch.load(layout.finetune_checkpoint, map_location="cpu", weights_only=True)
    assert trained["tower"][position_key].shape[-2] == tokens
    assert trained["definition"]["image_size"] == image_size and trained["definition"]["patch_stride"] == patch_stride
    info = json.loads(layout.export_info.read_text())
    assert (info["image_size"], info["patch_stride"]) == (image_size, patch_stride)

    result = CliRunner().invoke(
        app,
        [
            "verify",
            str(layout.submission),
            "--json",
            "--checkpoint",
            str(layout.finetune_checkpoint),
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
