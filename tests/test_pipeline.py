"""The whole pipeline through `dvc repro` in a fresh clone, on the default shrunk: the user's main job."""

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from support import REPO, fresh_clone, make_project, run, stages_run, tiny_params_dict, write_params
from torchvision.transforms.v2.functional import pil_to_tensor

ALL_STAGES = {"download", "weights", "manifest", "train@head", "train@finetune", "pca", "export", "verify", "evaluate"}


def host_embedding(zip_path: Path, image_path: Path) -> torch.Tensor:
    """Exactly what Kaggle's scorer does with the artifact."""
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["saved_model.pt"]
        model = torch.jit.load(io.BytesIO(zf.read("saved_model.pt")))
    model.eval()
    x = pil_to_tensor(Image.open(image_path).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return torch.flatten(model(x)[0]).cpu()


def untracked(root: Path) -> list[str]:
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], root, stdout_only=True)
    return [line[3:] for line in status.splitlines() if line.startswith("??")]


@pytest.fixture(scope="module")
def tiny_clone(tmp_path_factory) -> tuple[Path, str]:
    """The README's quick start in a fresh clone of this working tree, on the default shrunk (smaller
    synthetic sets, one epoch a stage): the clone and its `dvc repro` log. The full default, byte
    for byte, is tests/test_committed_outputs.py's (slow)."""
    root = fresh_clone(REPO, tmp_path_factory.mktemp("tiny") / "clone")
    write_params(root / "params.yaml", tiny_params_dict())
    return root, run(["dvc", "repro"], root)


def test_dvc_repro_in_a_fresh_clone_builds_a_verified_submission_and_leaves_git_clean(tiny_clone):
    root, first = tiny_clone
    assert stages_run(first) == ALL_STAGES

    zip_path = root / "submission" / "submission.zip"
    image = next((root / "data" / "raw" / "synthetic").rglob("*.jpg"))
    emb = host_embedding(zip_path, image)
    assert emb.shape == (64,) and emb.dtype == torch.float32
    assert abs(float(emb.norm()) - 1) < 1e-4
    assert json.loads((root / "metrics" / "verify.json").read_text())["passed"] is True
    metrics = json.loads((root / "metrics" / "evaluate" / "evaluate.json").read_text())
    assert {"mp5", "mp5_zero_shot", "mp5_by_domain", "queries", "index_size"} <= metrics.keys()
    assert metrics["index_size"] > metrics["queries"] > 0
    assert set(metrics["mp5_by_domain"]) <= {"apparel", "cars", "toys"}
    for png in (
        "metrics/evaluate/mp5_by_domain.png",
        "metrics/evaluate/retrieval_grid.png",
        "metrics/pca/explained_variance.png",
    ):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert untracked(root) == [], "files `dvc repro` writes that git neither tracks nor ignores"

    second = run(["dvc", "repro"], root)
    assert stages_run(second) == set()
    assert "changed" not in run(["dvc", "status"], root).replace("Data and pipelines are up to date", "")

    table = run(["guie", "metrics"], root, stdout_only=True).splitlines()  # `dvc exp show --json`, read
    [workspace] = [line for line in table if line.startswith("workspace ")]
    assert f"{metrics['mp5']:.4f} ± {metrics['mp5_se']:.4f}" in workspace and all(len(x) <= 100 for x in table)


@pytest.mark.slow
def test_an_experiment_reruns_its_stage_and_those_after_and_guie_metrics_compares_it(tiny_clone):
    root, _ = tiny_clone
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny run"], root)

    # a DVC experiment on one stage's knob re-runs that stage and what follows (not the stage before
    # it), and is listed with its metrics
    exp = run(["dvc", "exp", "run", "-n", "lr002", "-S", "train.stages.finetune.lr_backbone=0.002"], root)
    assert stages_run(exp) == {"train@finetune", "pca", "export", "verify", "evaluate"}
    shown = list(
        csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv", "--no-fetch"], root, stdout_only=True)))
    )
    lr_column = next(c for c in shown[0] if c.endswith("lr_backbone"))
    rows = [r for r in shown if r["typ"] != "baseline" and r[lr_column] == "0.002"]
    assert len(rows) == 1, shown
    row = rows[0]
    assert float(row["mp5"]) >= 0 and float(row["metrics/train_finetune/metrics.json:heldout_mp5"]) >= 0

    # `guie metrics` compares them in 100 columns: the experiment's changed knob and its mP@5
    table = run(["guie", "metrics"], root, stdout_only=True).splitlines()
    assert all(len(line) <= 100 for line in table), table
    [at] = [i for i, line in enumerate(table) if line.startswith("lr002 ")]
    assert f"{float(row['mp5']):.4f} ± " in table[at]
    assert "finetune.lr_backbone=0.002" in " ".join(table[at : at + 2])
    assert untracked(root) == []


def test_a_stage_without_its_inputs_names_the_stage_to_run_first(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    write_params(root / "params.yaml", tiny_params_dict())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["guie", "pca"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert (
        "run `dvc repro manifest`" in proc.stderr
        or "run `dvc repro train@finetune` (or `guie train finetune`)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_malformed_params_fail_before_any_work(tmp_path):
    raw = tiny_params_dict()
    raw["train"]["stages"]["head"]["epochz"] = 3
    write_params(tmp_path / "params.yaml", raw)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["guie", "download"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.stages.head.epochz: unknown key" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_two_clean_runs_give_a_byte_identical_submission(tmp_path):
    digests = []
    for name in ("a", "b"):
        root = make_project(tmp_path / name, tiny_params_dict())
        run(["dvc", "repro"], root)
        digests.append((root / "submission" / "submission.zip").read_bytes())
    assert digests[0] == digests[1]
