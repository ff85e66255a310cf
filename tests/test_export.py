import json
import zipfile

import torch

from guie.export import build_models, export_submission, parity_error
from guie.verify import verify_submission


def test_export_writes_a_verified_deterministic_zip(trained_project, tmp_path):
    params, layout = trained_project
    a, b = tmp_path / "a" / "submission.zip", tmp_path / "b" / "submission.zip"
    info = export_submission(params, layout.finetune_checkpoint, layout.weights, layout.pca, a, tmp_path / "a" / "export.json")
    export_submission(params, layout.finetune_checkpoint, layout.weights, layout.pca, b, tmp_path / "b" / "export.json")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        assert zf.namelist() == ["saved_model.pt"]
        assert zf.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)
        assert not any(n.endswith(".debug_pkl") for n in zipfile.ZipFile(zf.open("saved_model.pt")).namelist())
    recorded = json.loads((tmp_path / "a" / "export.json").read_text())
    assert recorded == info and recorded["archive_format_version"] <= 9 and recorded["size"] == a.stat().st_size
    report = verify_submission(a)
    assert report.passed, report.failures


def test_scripted_model_equals_eager_pipeline(trained_project):
    params, layout = trained_project
    eager, scripted = build_models(params, layout.finetune_checkpoint, layout.weights, layout.pca)
    assert parity_error(eager, scripted, seed=5) <= 1e-5
    x = torch.randint(0, 256, (3, 3, 200, 100), dtype=torch.uint8)  # a same-size batch
    with torch.no_grad():
        out = scripted(x)
    assert out.shape == (3, 64) and out.dtype == torch.float32
