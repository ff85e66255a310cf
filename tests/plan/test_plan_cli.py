"""`guie plan` as typed: the table for every preset and the embedded default, and a clear refusal."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from support import REPO
from typer.testing import CliRunner

from guie.cli import app
from guie.errors import GuieError

PRESETS = sorted((REPO / "params" / "recipes").glob("*.yaml")) + [REPO / "params" / "full-recipe.yaml"]


def plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_prints_its_table_on_an_8_gpu_node(preset, tmp_path, fixed_measurements):
    import yaml

    result = plan("--params", str(preset), "--root", str(tmp_path), "--gpus", "8", "--gpu", "h100", "--cpus", "96")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"plan of {preset} on 8 x h100, 96 CPU cores, 8 training process(es)" in out
    header = next(line for line in out.splitlines() if line.startswith("stage "))
    assert all(h in header for h in ("PFLOPs", "compute", "loader", "all-reduce", "GPU mem/proc", "disk", "bound"))
    for stage in yaml.safe_load(preset.read_text())["train"]["stages"]:
        assert any(line.startswith(f"train@{stage} ") for line in out.splitlines()), stage
    assert "total: " in out and "h wall" in out
    assert "image counts estimated from the params" in out  # no manifest in tmp_path


def test_the_embedded_default_plans_on_this_cpu(tmp_path, fixed_measurements):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = plan("--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "--gpu", "cpu", "--cpus", "2")
    assert result.exit_code == 0, result.output
    assert "on the CPU, 2 CPU cores, 1 training process(es)" in result.output
    assert "GFLOP/s measured here (guie-tiny-vit's first resblock" in result.output
    assert "MFU 0.7" in result.output and not [line for line in result.output.splitlines() if "WARNING" in line]
    # train.device cpu: --gpu defaults to the CPU
    assert "on the CPU" in plan("--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)).output


def test_an_unknown_gpu_is_refused_naming_the_presets(tmp_path):
    refused = plan("--gpu", "a100", "--params", str(REPO / "params.yaml"), "--root", str(tmp_path)).exception
    assert isinstance(refused, GuieError) and "presets: h100, h200, a100-80gb, a100-40gb, l4, t4, cpu" in str(refused)
    done = subprocess.run(
        [sys.executable, "-m", "guie", "plan", "--gpu", "v100", "--params", str(REPO / "params.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        == "error: --gpu: unknown GPU 'v100'; presets: h100, h200, a100-80gb, a100-40gb, l4, t4, cpu"
    )


def test_mfu_must_be_a_share(tmp_path):
    result = plan("--mfu", "35", "--params", str(REPO / "params.yaml"), "--root", str(tmp_path))
    assert isinstance(result.exception, GuieError) and "--mfu: 35 is not a share" in str(result.exception)


def test_markdown_for_a_readme(tmp_path, fixed_measurements):
    sixth = REPO / "params" / "recipes" / "sixth.yaml"
    result = plan("-p", str(sixth), "--root", str(tmp_path), "--gpus", "8", "--gpu", "h100", "--markdown")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("| stage | images | epochs | PFLOPs |") and lines[1].startswith("|---|")
    assert any(line.startswith("| `train@finetune` |") for line in lines)
    assert any(line.startswith("- train@finetune is communication-bound") for line in lines)
