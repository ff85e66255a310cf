"""The generated notebook, run here with /kaggle/ mapped into tmp_path, on each layout Kaggle may give."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from fake_kaggle import USER
from tiny_submission import make_submission_zip

from guie.errors import GuieError
from guie.kaggle.notebook import kernel_metadata, notebook_json, write_notebook_folder
from guie.kaggle.provenance import Provenance, model_sha256
from guie.kaggle.settings import Target
from guie.kaggle.submit import resolve_enable_gpu
from guie.params.kaggle import KaggleParams

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TARGET = Target("alice", "guie-submission-model", "guie-submission", "google-universal-image-embedding")
PROVENANCE = Provenance("abc1234", "p4r4ms", "0" * 64)


def run_notebook(text: str, kaggle_root: Path) -> None:
    """Execute the code cells in one namespace, as Kaggle does, with /kaggle/ moved to kaggle_root."""
    namespace: dict = {}
    for cell in nbformat.reads(text, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source.replace("/kaggle/", f"{kaggle_root}/"), "notebook", "exec"), namespace)


def _as_uploaded(zip_path: Path, inputs: Path) -> None:
    (inputs / "guie-submission-model").mkdir(parents=True)
    shutil.copy(zip_path, inputs / "guie-submission-model" / "submission.zip")


def _unpacked_by_kaggle(zip_path: Path, inputs: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(inputs / "guie-submission-model" / "submission")


@pytest.mark.parametrize("layout", [_as_uploaded, _unpacked_by_kaggle])
def test_notebook_writes_the_uploaded_model_as_submission_zip(tmp_path, submission_zip, layout):
    root = tmp_path / "kaggle"
    layout(submission_zip, root / "input")
    # The competition's own files are attached too and must be ignored.
    (root / "input" / "google-universal-image-embedding").mkdir()
    (root / "input" / "google-universal-image-embedding" / "sample.zip").write_bytes(b"not a zip")

    run_notebook(notebook_json(TARGET, PROVENANCE, model_sha256(submission_zip)), root)

    written = root / "working" / "submission.zip"
    with zipfile.ZipFile(written) as out, zipfile.ZipFile(submission_zip) as original:
        assert out.namelist() == ["saved_model.pt"]
        assert out.read("saved_model.pt") == original.read("saved_model.pt")


def test_notebook_refuses_a_stale_dataset_version(tmp_path, submission_zip):
    root = tmp_path / "kaggle"
    older = make_submission_zip(tmp_path / "older" / "submission.zip", seed=1)
    _as_uploaded(older, root / "input")
    with pytest.raises(FileNotFoundError, match=model_sha256(submission_zip)):
        run_notebook(notebook_json(TARGET, PROVENANCE, model_sha256(submission_zip)), root)
    assert not (root / "working" / "submission.zip").exists()


class _BareOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(64)  # flattening out[0] gives the host a scalar


def test_notebook_fails_loudly_on_a_model_with_a_bare_64_output(tmp_path):
    bad = make_submission_zip(tmp_path / "bad.zip", module=_BareOutput())
    root = tmp_path / "kaggle"
    _as_uploaded(bad, root / "input")
    with pytest.raises(AssertionError, match=r"shape \(64,\); the scorer needs \(1, 64\)"):
        run_notebook(notebook_json(TARGET, PROVENANCE, model_sha256(bad)), root)


def test_notebook_is_valid_deterministic_and_records_provenance():
    text = notebook_json(TARGET, PROVENANCE, "f" * 64)
    assert text == notebook_json(TARGET, PROVENANCE, "f" * 64)
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {"display_name": "Python 3", "language": "python", "name": "python3"}
    assert all(s in nb.cells[0].source for s in ("abc1234", "p4r4ms", "0" * 64, TARGET.dataset))


def test_kernel_metadata_sets_every_field_the_client_would_default(tmp_path):
    from slugify import slugify

    meta = kernel_metadata(TARGET, True)
    assert meta == {
        "id": "alice/guie-submission",
        "title": "guie submission",
        "code_file": "guie-submission.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": ["alice/guie-submission-model"],
        "competition_sources": ["google-universal-image-embedding"],
        "kernel_sources": [],
        "model_sources": [],
    }
    assert slugify(meta["title"]) == TARGET.kernel_slug  # else the client prints a warning
    folder = write_notebook_folder(tmp_path / "nb", TARGET, False, PROVENANCE, "f" * 64)
    assert json.loads((folder / "kernel-metadata.json").read_text())["enable_gpu"] is False


def test_notebook_checks_a_cuda_placed_artifact_on_a_cpu_kernel(tmp_path, cuda_submission_zip):
    # What Kaggle's CPU kernel does with an `export.device: cuda` artifact: the check cell must not
    # call torch.jit.load without a map location there.
    if not torch.cuda.is_available():
        with zipfile.ZipFile(cuda_submission_zip) as zf, pytest.raises(RuntimeError, match="NVIDIA|CUDA"):
            torch.jit.load(io.BytesIO(zf.read("saved_model.pt")))
    root = tmp_path / "kaggle"
    _as_uploaded(cuda_submission_zip, root / "input")
    run_notebook(notebook_json(TARGET, PROVENANCE, model_sha256(cuda_submission_zip)), root)
    with zipfile.ZipFile(root / "working" / "submission.zip") as out, zipfile.ZipFile(cuda_submission_zip) as src:
        assert out.read("saved_model.pt") == src.read("saved_model.pt")  # the CUDA placement is what gets scored


def test_enable_gpu_follows_the_artifact_and_refuses_false_for_a_cuda_one(submission_zip, cuda_submission_zip):
    assert resolve_enable_gpu(KaggleParams(), cuda_submission_zip) is True
    assert resolve_enable_gpu(KaggleParams(), submission_zip) is False
    assert resolve_enable_gpu(KaggleParams(enable_gpu=True), submission_zip) is True
    assert resolve_enable_gpu(KaggleParams(enable_gpu=True), cuda_submission_zip) is True
    assert resolve_enable_gpu(KaggleParams(enable_gpu=False), submission_zip) is False
    with pytest.raises(GuieError, match=r"kaggle.enable_gpu is false but submission.zip's weights are on cuda:0.*auto"):
        resolve_enable_gpu(KaggleParams(enable_gpu=False), cuda_submission_zip)


def test_full_recipe_params_make_a_gpu_notebook_that_runs(
    tmp_path, cuda_submission_zip, env_credentials, fake, console, run_submit
):
    from guie.params.load import load_params

    recipe = load_params(Path(__file__).parents[2] / "params" / "full-recipe.yaml")
    assert recipe.export.device == "cuda"  # so its submission.zip is CUDA-placed, like cuda_submission_zip
    result = run_submit(recipe.kaggle, cuda_submission_zip, tmp_path / "work", console, dry_run=True)
    meta = json.loads((result.notebook_dir / "kernel-metadata.json").read_text())
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False and meta["id"] == f"{USER}/guie-submission"
    assert fake.calls == []
    # ... and the notebook it wrote runs here, where (like a CPU session) there may be no GPU
    root = tmp_path / "kaggle"
    _as_uploaded(cuda_submission_zip, root / "input")
    run_notebook((result.notebook_dir / meta["code_file"]).read_text(), root)
    assert (root / "working" / "submission.zip").is_file()
