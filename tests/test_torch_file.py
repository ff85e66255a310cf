"""Damaged or foreign torch files: a truncated model or PCA file is refused in one line saying how
to make it again; a damaged resume checkpoint or soup run is ignored and trained again; a pickle
payload never runs, and the message never suggests loading it unsafely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support import guie_cli, one_line_error, train_in

from guie.torch_file import DamagedFile, read_torch


class _Payload:
    """Pickles to a call that would create `marker` when unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _payload(path: Path, marker: Path) -> None:
    torch.save({"fingerprint": "x", "tower": _Payload(marker), "head": {}}, path)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "truncated or corrupt"),
        (lambda p: p.write_bytes(os.urandom(300)), "truncated or corrupt"),
        (lambda p: p.write_bytes(b""), "truncated or corrupt"),
        (lambda p: torch.save(torch.zeros(3), p), "not a guie checkpoint (it holds a Tensor, not a dict)"),
        (lambda p: torch.save({"head": {}}, p), "not a guie checkpoint (no tower in it)"),
    ],
)
def test_a_damaged_file_is_named_with_what_to_do(damage, why, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"tower": {"w": torch.ones(100)}, "head": {}}, path)
    damage(path)
    with pytest.raises(DamagedFile) as err:
        read_torch(path, "do this", keys=("tower", "head"))
    assert str(err.value).startswith(f"{path}: {why}")
    assert str(err.value).endswith("; do this")


def test_a_pickle_payload_never_runs_and_is_not_called_a_guie_checkpoint(tmp_path):
    path, marker = tmp_path / "m.pt", tmp_path / "ran"
    _payload(path, marker)
    with pytest.raises(DamagedFile) as err:
        read_torch(path, "do this")
    assert not marker.exists()
    assert "not a guie checkpoint: it holds pickled Python objects" in str(err.value)
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize(
    ("damaged", "remedy"),
    [
        (
            "models/finetune.pt",
            "re-create it with `dvc repro -f -s train@finetune` (or delete it and run `guie train finetune`)",
        ),
        ("models/pca.pt", "re-create it with `dvc repro -f -s pca` (or delete it and run `guie pca`)"),
    ],
)
def test_export_refuses_a_truncated_model_or_pca_in_one_line(trained_copy, damaged, remedy):
    project = trained_copy
    _truncate(project / damaged)
    line = one_line_error(guie_cli("export", root=project))
    why = "truncated or corrupt (not a complete torch archive; a copy or a write cut short?)"
    assert line == f"error: {project / damaged}: {why}; {remedy}"
    assert not (project / "submission" / "submission.zip").exists()


def test_a_pickle_payload_as_the_trained_model_is_refused(trained_copy):
    project, marker = trained_copy, trained_copy / "ran"
    _payload(project / "models" / "finetune.pt", marker)
    line = one_line_error(guie_cli("pca", root=project))
    assert "models/finetune.pt: not a guie checkpoint: it holds pickled Python objects" in line
    assert "dvc repro -f -s train@finetune" in line and "weights_only" not in line
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["garbage", "payload"])
def test_a_damaged_resume_checkpoint_or_feature_cache_is_ignored_and_the_stage_starts_fresh(
    damage, trained_project, tmp_path, capsys
):
    params, layout = trained_project
    paths = {"out": tmp_path / "head.pt", "metrics_dir": tmp_path / "m", "checkpoint": tmp_path / "last.pt"}
    paths["feature_cache"] = tmp_path / "features.pt"
    marker = tmp_path / "ran"
    paths["feature_cache"].write_bytes(b"PK\x03\x04 not really a zip")  # a cache: computed again
    if damage == "garbage":
        paths["checkpoint"].write_bytes(os.urandom(4096))
    else:
        _payload(paths["checkpoint"], marker)
    train_in(params, layout, "head", **paths)
    err = capsys.readouterr().err
    assert f"{paths['checkpoint']} is " in err and "ignoring it, starting fresh" in err
    assert not marker.exists()
    # the same weights as a run that never saw the damaged file
    fresh = {k: tmp_path / f"fresh_{v.name}" for k, v in paths.items()}
    train_in(params, layout, "head", **fresh)
    a, b = torch.load(paths["out"], weights_only=True), torch.load(fresh["out"], weights_only=True)
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
