"""The recipe presets (params/recipes/): each loads, names its source, and has a tiny twin with its
structure that `dvc repro` takes to a verified zip on a CPU in its own scratch project (the
checkout's params.yaml, outputs and git status untouched), showing each stage's trait; editing one
stage of a twin re-runs that stage and those after it only. `guie twin` refuses what it cannot use
with one clean line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from support import REPO, make_project, run, stages_run, write_params

from guie.errors import GuieError
from guie.params.load import load_params, parse_params
from guie.recipes import NOT_QUALITY, TWIN_HEADER, structure, tiny_twin, write_twin_project

RECIPES = REPO / "params" / "recipes"
PRESETS = sorted(p.stem for p in RECIPES.glob("*.yaml"))
DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())


def _preset(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def test_the_five_presets_are_there():
    assert PRESETS == ["first", "fourth", "linear-probe-siglip", "second", "sixth"]


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_loads_and_starts_by_naming_its_source_score_and_approximations(name):
    params = load_params(RECIPES / f"{name}.yaml")
    assert params.train.final == list(params.train.stages)[-1]
    header = "\n".join(line for line in (RECIPES / f"{name}.yaml").read_text().splitlines() if line.startswith("#"))
    assert (RECIPES / f"{name}.yaml").read_text().startswith("# ")
    assert re.search(r"0\.\d{3}|4th-place", header), "the reported score (or placing)"
    assert "approximates" in header and "Switch: cp params/" in header


@pytest.mark.parametrize("name", PRESETS)
def test_a_presets_comments_name_only_files_a_clone_has(name):
    comments = " ".join(
        line.split("#", 1)[1] for line in (RECIPES / f"{name}.yaml").read_text().splitlines() if "#" in line
    )
    paths = re.findall(r"(?<![\w.])((?:\.\./|params/|guie/|tests/|benchmarks/)[\w./-]*)", comments)
    assert [p for p in paths if p.startswith("../") or not (REPO / p.rstrip(".")).exists()] == []


def test_the_full_recipe_switch_is_the_sixth_place_preset():
    # params/full-recipe.yaml stays the documented switch until another preset has run on real hardware
    assert (REPO / "params" / "full-recipe.yaml").read_bytes() == (RECIPES / "sixth.yaml").read_bytes()


@pytest.mark.parametrize("name", PRESETS)
def test_a_twin_has_its_presets_structure_on_the_tiny_tower_and_synthetic_data(name):
    preset = _preset(name)
    twin = tiny_twin(preset, DEFAULT)
    params = parse_params(twin)
    assert structure(twin) == structure(preset)
    assert params.model.name in ("guie-tiny-vit", "guie-tiny-siglip") and not params.model.pretrained
    assert {s.type for s in params.data.sources} == {"synthetic"} and params.train.device == "cpu"
    # every source a stage trains on exists in the twin
    names = {s.name for s in params.data.sources}
    assert all(set(stage.sources) <= names for stage in params.train.stages.values())


def _twin_project(tmp_path, name: str):
    """A clone of the embedded default, the preset's twin written by the README's `guie twin` into
    twins/<name>/ and run there by `dvc repro`: the clone's params.yaml and git status stay as they were."""
    clone = make_project(tmp_path / "clone", DEFAULT)
    committed = (clone / "params.yaml").read_bytes()
    out = run(["guie", "twin", str(RECIPES / f"{name}.yaml")], clone, stdout_only=True)
    assert NOT_QUALITY in " ".join(out.split())  # the twin says it proves structure, not quality
    root = clone / "twins" / name
    log = run(["dvc", "repro"], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = {f"train@{s}" for s in params["train"]["stages"]}
    assert stages_run(log) >= stages | {"pca", "export", "verify", "evaluate"}
    assert json.loads((root / "metrics" / "verify.json").read_text())["passed"] is True
    assert (clone / "params.yaml").read_bytes() == committed
    assert run(["git", "status", "--porcelain", "--untracked-files=all"], clone, stdout_only=True) == ""
    assert not (clone / "models").exists() and not (clone / "dvc.lock").exists()
    return root, params


def _state(root, stage: str) -> dict:
    return torch.load(root / "models" / f"{stage}.pt", map_location="cpu", weights_only=True)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lr(root, stage: str) -> dict:
    return json.loads((root / "metrics" / f"train_{stage}" / "metrics.json").read_text())["lr"]


@pytest.mark.slow  # ~190 s: the fast suite's fresh-clone pipeline test covers dvc repro end to end
def test_the_second_place_twin_reaches_a_verified_zip_and_editing_a_stage_reruns_it_and_what_follows(tmp_path):
    root, params = _twin_project(tmp_path, "second")
    head, tower, head2 = (_state(root, s) for s in ("head", "tower", "head2"))
    # tower: every weight at the head's lr x 0.001; head2: the head again on the frozen tower
    assert not torch.equal(tower["tower"]["conv1.weight"], head["tower"]["conv1.weight"])
    assert _equal(head2["tower"], tower["tower"]) and not _equal(head2["head"], tower["head"])
    lrs = _lr(root, "tower")  # one learning rate for all weights (cosine: near 0 at the last step)
    assert lrs["head"] == lrs["backbone"] and 0 < lrs["head"] < 1e-6
    assert head["margin"]["weight"].shape[0] == 2 * len(head["classes"])  # k = 2 sub-centres
    info = json.loads((root / "submission" / "export.json").read_text())
    assert info["tta"] == "flip"

    params["train"]["stages"]["tower"]["lr_backbone"] = 2e-6
    write_params(root / "params.yaml", params)
    status = run(["dvc", "status"], root)
    assert "train@tower" in status and "train@head:" not in status
    assert stages_run(run(["dvc", "repro"], root)) == {
        "train@tower",
        "train@head2",
        "pca",
        "export",
        "verify",
        "evaluate",
    }


@pytest.mark.slow
def test_the_first_place_twin_freezes_the_head_through_the_tower_stages_at_each_grid(tmp_path):
    root, _ = _twin_project(tmp_path, "first")
    states = {s: _state(root, s) for s in ("head", "tower224", "tower280", "tower290", "products")}
    for stage in ("tower224", "tower280", "tower290"):  # head and margin head unchanged, tower trained
        assert _equal(states[stage]["head"], states["head"]["head"])
        assert _equal(states[stage]["margin"], states["head"]["margin"])
    grids = {s: states[s]["tower"]["positional_embedding"].shape[0] - 1 for s in states}
    assert grids == {"head": 49, "tower224": 49, "tower280": 64, "tower290": 100, "products": 100}
    assert states["products"]["definition"]["patch_stride"] == 27
    lrs = _lr(root, "products")
    assert lrs["head"] / lrs["backbone"] == pytest.approx(80)
    assert set(states["products"]["classes"]) < set(states["tower290"]["classes"])  # Products-10K only
    assert all(c.startswith("products10k") for c in states["products"]["classes"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fourth", "linear-probe-siglip", "sixth"])
def test_the_other_twins_reach_a_verified_zip(tmp_path, name):
    root, params = _twin_project(tmp_path, name)
    if name == "fourth":  # a greedy soup of three runs, each ingredient and the soup reported
        report = json.loads((root / "metrics" / "train_tower" / "metrics.json").read_text())
        assert sorted(report["ingredients"]) == ["0", "1", "2"] and report["soup"]["method"] == "greedy"
        assert all("selection_mp5" in entry for entry in report["ingredients"].values())


# ---- guie twin: the scratch project, its commented params, and what it refuses ----------------------


@pytest.fixture
def project(tmp_path):
    """A project root as a tarball would give it (no git): guie's sources, dvc.yaml, the embedded default."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "guie", root / "guie", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    return root


def test_guie_twin_writes_a_scratch_project_with_the_presets_structure_and_both_files_comments(project):
    from typer.testing import CliRunner

    from guie.cli import app

    result = CliRunner().invoke(app, ["twin", str(RECIPES / "fourth.yaml"), "--root", str(project)])
    assert result.exit_code == 0, result.output
    assert NOT_QUALITY in " ".join(result.output.split())
    out = project / "twins" / "fourth"
    text = (out / "params.yaml").read_text()
    assert text.startswith(f"{TWIN_HEADER}{RECIPES / 'fourth.yaml'}") and "not its quality" in text
    assert yaml.safe_load(text) == tiny_twin(_preset("fourth"), DEFAULT)
    load_params(out / "params.yaml")
    # the default's comments on what the twin keeps, the preset's on its stages, the preset's sizes noted
    assert "num_workers: 0                # decode in-process" in text
    assert "soup:                     # trained once per ingredient, each with other augmentations" in text
    assert "method: greedy          # best first on the selection split" in text
    assert "- {seed: 1, augment: {hflip: 0.0, cutout: 0.5}}" in text
    assert re.search(r"epochs: 1 +# the preset's: \d+", text)
    assert (out / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    assert (out / "guie" / "recipes.py").read_bytes() == (REPO / "guie" / "recipes.py").read_bytes()
    assert (out / ".dvc").is_dir() and (out / ".gitignore").read_text().splitlines()[-1] == "*"


def test_guie_twin_run_twice_refreshes_its_project_and_never_reads_a_twinned_default(project):
    preset, out = RECIPES / "first.yaml", project / "twins" / "first"
    write_twin_project(preset, out, project)
    (out / "guie" / "stale.py").write_text("")
    write_twin_project(RECIPES / "second.yaml", out, project)  # the README's command again, another preset
    assert yaml.safe_load((out / "params.yaml").read_text()) == tiny_twin(_preset("second"), DEFAULT)
    assert not (out / "guie" / "stale.py").exists()
    # a working params.yaml that is a twin (copied over) is refused by name, never half-used
    shutil.copy(out / "params.yaml", project / "params.yaml")
    with pytest.raises(GuieError, match=r"params.yaml: is a twin .* --default"):
        write_twin_project(preset, out, project)


def test_guie_twin_takes_the_committed_default_when_the_working_params_is_a_recipe(project):
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "i"]):
        subprocess.run(["git", *cmd], cwd=project, check=True)
    shutil.copy(RECIPES / "sixth.yaml", project / "params.yaml")  # switched to the real recipe, not committed
    twin = write_twin_project(RECIPES / "second.yaml", project / "twins" / "second", project)
    assert twin == tiny_twin(_preset("second"), DEFAULT)


_OLD_STYLE = {"train": {"head": {"epochs": 5}, "finetune": {"epochs": 4}}}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing preset", r"missing.yaml: preset not found"),
        ("preset is a folder", r"not a file"),
        ("preset is a YAML list", r"expected a mapping of sections"),
        ("preset without data", r"data: missing key or section"),
        ("old-style preset", r"(?s)old two fixed stages.*final: finetune"),
        ("unknown source preset", r"unknown preset 'gldv9'"),
        ("-o a file", r"is a file; -o names a folder"),
        ("-o the preset itself", r"is the preset itself"),
        ("-o under /dev/null", r"/dev/null/twin: cannot write the twin's project there"),
        ("-o a folder of other files", r"neither empty nor a twin's project"),
        ("-o the project", r"is the project itself"),
        ("default not the embedded one", r"not the embedded default .*gldv2"),
    ],
)
def test_guie_twin_refuses_cleanly(project, tmp_path, case, message):
    preset, out, default = RECIPES / "first.yaml", tmp_path / "twin", None
    first = yaml.safe_load(preset.read_text())
    if case == "missing preset":
        preset = tmp_path / "missing.yaml"
    elif case == "preset is a folder":
        preset = tmp_path
    elif case in ("preset is a YAML list", "preset without data", "old-style preset", "unknown source preset"):
        raw = {
            "preset is a YAML list": [first],
            "preset without data": {k: v for k, v in first.items() if k != "data"},
            "old-style preset": {**first, **_OLD_STYLE},
            "unknown source preset": {**first, "data": {**first["data"], "sources": [{"preset": "gldv9"}]}},
        }[case]
        preset = write_params(tmp_path / "preset.yaml", raw)
    elif case == "-o a file":
        out.write_text("x")
    elif case == "-o the preset itself":
        out = preset = write_params(tmp_path / "preset.yaml", first)
    elif case == "-o under /dev/null":
        out = Path("/dev/null/twin")
    elif case == "-o a folder of other files":
        (out / "notes").mkdir(parents=True)
    elif case == "-o the project":
        out = project
    elif case == "default not the embedded one":
        default = RECIPES / "sixth.yaml"
    with pytest.raises(GuieError, match=message):
        write_twin_project(preset, out, project, default)
    assert not (tmp_path / "twin" / "params.yaml").exists()


def test_guie_twin_errors_are_one_line_without_a_traceback(tmp_path):
    proc = subprocess.run(
        ["guie", "twin", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "t")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "missing.yaml: preset not found" in proc.stderr
