import io
import json
import warnings
import zipfile

import pytest
import torch
from tiny_submission import make_submission_zip
from typer.testing import CliRunner

from guie.cli import app
from guie.export import zip_model
from guie.model.embedder import l2_normalize
from guie.verify import verify_submission


class Bare64(torch.nn.Module):
    """Returns [64]: the host flattens out[0] to a scalar."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64])[0]


class Unnormalised(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0


class NaNOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 64), float("nan"))


class Dims128(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 43)[:, :128])


class GeluModel(torch.nn.Module):
    """A plain torch 2.x export: aten::gelu makes the archive version 10, unreadable by 1.11."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.gelu(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64])
        return l2_normalize(f + 1.0)


class Good(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0)


def _artifact(tmp_path, module, name="submission.zip"):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    path = tmp_path / name
    path.write_bytes(zip_model(buf.getvalue()))
    return path


def _failed(report):
    return {c.name for c in report.checks if not c.passed}


def test_good_artifact_passes(tmp_path):
    report = verify_submission(_artifact(tmp_path, Good()))
    assert report.passed, report.failures
    assert {"zip", "load", "call 1x1", "call 37x2000", "call cmyk jpeg", "readable by torch 1.11"} <= {c.name for c in report.checks}


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (Bare64(), "must be [1, 64]"),
        (Unnormalised(), "L2 norm"),
        (NaNOut(), "non-finite"),
        (Dims128(), "128 values instead of 64"),
    ],
)
def test_wrong_outputs_fail_with_their_own_message(tmp_path, module, message):
    report = verify_submission(_artifact(tmp_path, module))
    assert not report.passed
    assert any(message in f for f in report.failures), report.failures


def test_plain_gelu_export_is_unreadable_by_torch_111(tmp_path):
    report = verify_submission(_artifact(tmp_path, GeluModel()))
    assert _failed(report) == {"readable by torch 1.11"}
    assert any("version" in f or "gelu" in f for f in report.failures)


def test_wrong_member_name(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.pt", b"x")
    report = verify_submission(path)
    assert not report.passed and "exactly ['saved_model.pt']" in report.failures[0]


def test_extra_members(tmp_path):
    path = make_submission_zip(tmp_path / "s.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", "hi")
    report = verify_submission(path)
    assert "zip" in _failed(report)


def test_folder_prefix_is_refused(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("submission/saved_model.pt", b"x")
    assert "zip" in _failed(verify_submission(path))


def test_corrupt_zip_and_non_zip(tmp_path):
    good = _artifact(tmp_path, Good()).read_bytes()
    (tmp_path / "corrupt.zip").write_bytes(good[: len(good) // 2])
    (tmp_path / "plain.zip").write_text("not a zip at all")
    for name in ("corrupt.zip", "plain.zip"):
        report = verify_submission(tmp_path / name)
        assert not report.passed and report.failures


def test_state_dict_instead_of_torchscript(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    path = tmp_path / "s.zip"
    path.write_bytes(zip_model(buf.getvalue()))
    assert "load" in _failed(verify_submission(path)) or "readable by torch 1.11" in _failed(verify_submission(path))


def test_cli_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    good = _artifact(tmp_path, Good(), "good.zip")
    bad = _artifact(tmp_path, NaNOut(), "bad.zip")
    ok = runner.invoke(app, ["verify", str(good), "--json", "--report", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["passed"] is True
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    fail = runner.invoke(app, ["verify", str(bad)])
    assert fail.exit_code == 1
    assert "non-finite" in fail.output
